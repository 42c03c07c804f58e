// The operator's views without a VM: feature names, the `info virtqueues` table, the
// descriptor chain reader (x-query-virtio-queue-element) on hostile rings, query-qmp-schema.
import type { VirtioPciDevice } from '@tsvmm/pci';
import { SplitVirtqueue, virtioUapi as V } from '@tsvmm/virtio-core';
import { fakeMemory, MockDriverQueue } from '@tsvmm/virtio-core/testing';
import { CommandError, CommandRegistry, qmpSchema } from './commands';
import { EMPTY } from './qapi-types';
import { decodeFeatures, formatVirtqueues, queueElement, VirtqueueRow, virtqueueCells } from './virtio-info';

describe('decodeFeatures', () => {
  it('names transport and device bits and reports the rest as a number', () => {
    const blk = (1n << 32n) | (1n << 29n) | (1n << 28n) | (1n << 9n) | (1n << 2n) | (1n << 3n);
    expect(decodeFeatures(2, blk)).toEqual({
      transports: ['VIRTIO_RING_F_INDIRECT_DESC', 'VIRTIO_RING_F_EVENT_IDX', 'VIRTIO_F_VERSION_1'],
      'dev-features': ['VIRTIO_BLK_F_SEG_MAX', 'VIRTIO_BLK_F_FLUSH'],
      'unknown-dev-features': 0x8,
    });
  });

  it('decodes by device type: bit 5 is MAC on virtio-net, RO on virtio-blk; virtio-scsi has its own', () => {
    expect(decodeFeatures(1, 1n << 5n)['dev-features']).toEqual(['VIRTIO_NET_F_MAC']);
    expect(decodeFeatures(2, 1n << 5n)['dev-features']).toEqual(['VIRTIO_BLK_F_RO']);
    expect(decodeFeatures(8, 0b11n)['dev-features']).toEqual(['VIRTIO_SCSI_F_INOUT', 'VIRTIO_SCSI_F_HOTPLUG']);
    expect(decodeFeatures(99, 1n << 63n)).toEqual({ transports: [], 'dev-features': [], 'unknown-dev-features': 2 ** 63 });
  });
});

describe('info virtqueues formatting', () => {
  const base = {
    size: 128,
    ready: true,
    active: true,
    'avail-idx': 7,
    'last-avail-idx': 5,
    'used-idx': 4,
    'kicks-eventfd': 3,
    'kicks-exit': 2,
    'interrupts-injected': 4,
    'msix-vector': 1,
    'vector-masked': false,
    'vector-pending': false,
  };
  const row = (status: Record<string, unknown>, name = 'req0'): VirtqueueRow => ({ device: 'd0', queue: 0, name, status });

  it('shows unknown ages and verdict as "-" when the status has no stall-detector fields', () => {
    expect(virtqueueCells(row(base))).toEqual(['d0', '0', 'req0', '128', '7', '5', '4', '5', '4', '1', '-', '-', '-']);
  });

  it('takes the ages and the verdict from the stall-detector fields when present', () => {
    const ok = { ...base, 'last-kick-ms-ago': 12.4, 'last-interrupt-ms-ago': null, stall: null };
    expect(virtqueueCells(row(ok)).slice(-3)).toEqual(['12ms', '-', 'ok']);
    const stalled = {
      ...base,
      'last-kick-ms-ago': 900,
      'last-interrupt-ms-ago': 30,
      stall: { side: 'kick', cause: 'no-notify', 'stalled-ms': 812 },
    };
    expect(virtqueueCells(row(stalled)).slice(-3)).toEqual(['900ms', '30ms', 'STALL kick no-notify 812ms']);
  });

  it('shows the vector state, an inactive queue and a device that needs a reset', () => {
    expect(virtqueueCells(row({ ...base, 'vector-masked': true, 'vector-pending': true }))[9]).toBe('1(masked,pending)');
    expect(virtqueueCells(row({ ...base, 'msix-vector': 0xffff, 'vector-masked': null }))[9]).toBe('none');
    const off = virtqueueCells(
      row({
        size: 256,
        ready: false,
        active: false,
        'avail-idx': null,
        'msix-vector': 0xffff,
        'kicks-eventfd': 0,
        'kicks-exit': 0,
        'interrupts-injected': 0,
      }),
    );
    expect(off).toEqual(['d0', '0', 'req0', '256', '-', '-', '-', '0', '0', 'none', '-', '-', 'off']);
    expect(virtqueueCells({ ...row(base), broken: true })[12]).toBe('NEEDS-RESET');
  });

  it('pads columns so every line lines up under the header', () => {
    const text = formatVirtqueues([
      row(base, 'rx0'),
      { device: 'net0', queue: 2, name: 'ctrl', status: { ...base, 'msix-vector': 3, 'vector-masked': true } },
    ]);
    const lines = text.trimEnd().split('\n');
    expect(lines).toHaveLength(3);
    expect(lines[0].split(/\s+/)).toEqual([
      'dev',
      'q',
      'name',
      'size',
      'avail',
      'last-avail',
      'used',
      'kicks',
      'irqs',
      'vector',
      'last-kick',
      'last-irq',
      'verdict',
    ]);
    expect(lines[2].split(/\s+/)).toEqual(['net0', '2', 'ctrl', '128', '7', '5', '4', '5', '4', '3(masked)', '-', '-', '-']);
    const col = lines[0].indexOf('vector');
    expect(lines[1].slice(col).startsWith('1 ')).toBe(true);
    expect(lines[2].slice(col).startsWith('3(masked)')).toBe(true);
  });
});

describe('queueElement (x-query-virtio-queue-element)', () => {
  function setup(size = 8, features = { eventIdx: false, indirect: true }) {
    const mem = fakeMemory(1 << 20);
    const drv = new MockDriverQueue(mem, size);
    const q = new SplitVirtqueue(0, size);
    drv.program(q);
    expect(q.activate(mem, features)).toBeUndefined();
    const device = { id: 'd0', queues: [q], memory: mem, disabled: false };
    return { mem, drv, q, pci: { device } as unknown as VirtioPciDevice, device };
  }

  it('returns the chain the guest queued, in order, with flags by name, and changes nothing', () => {
    const { drv, q, pci } = setup();
    const head = drv.addChain([
      { addr: 0x10000, len: 16 },
      { addr: 0x11000, len: 512, write: true },
      { addr: 0x12000, len: 1, write: true },
    ]);
    const e = queueElement(pci, 0);
    expect(e).toEqual({
      name: 'd0',
      index: head,
      descs: [
        { addr: 0x10000, len: 16, flags: ['next'] },
        { addr: 0x11000, len: 512, flags: ['next', 'write'] },
        { addr: 0x12000, len: 1, flags: ['write'] },
      ],
      avail: { flags: 0, idx: 1, ring: head },
      used: { flags: 0, idx: 0 },
    });
    expect(q.lastAvailIdx).toBe(0);
    expect(q.pending()).toBe(1);
  });

  it("defaults to the position the device reports as its last-avail-idx (an iothread worker's)", () => {
    const { drv, pci, device } = setup();
    drv.addChain([{ addr: 0x10000, len: 16 }]);
    const second = drv.addChain([{ addr: 0x11000, len: 32, write: true }]);
    Object.assign(device, { queueInfo: () => ({ 'last-avail-idx': 1 }) });
    expect(queueElement(pci, 0)).toMatchObject({ index: second, descs: [{ addr: 0x11000, len: 32, flags: ['write'] }] });
  });

  it('follows an indirect descriptor into its table and picks a chain by avail ring position', () => {
    const { drv, pci } = setup();
    drv.addChain([{ addr: 0x10000, len: 16 }]);
    const head = drv.addIndirect(0x20000, [
      { addr: 0x30000, len: 16 },
      { addr: 0x31000, len: 4096, write: true },
    ]);
    const e = queueElement(pci, 0, 1);
    expect(e.index).toBe(head);
    expect(e.descs).toEqual([
      { addr: 0x30000, len: 16, flags: ['next'] },
      { addr: 0x31000, len: 4096, flags: ['write'] },
    ]);
  });

  it('stops a looping chain after the queue size and says so', () => {
    const { drv, mem, pci } = setup(4);
    drv.writeDesc(0, 0x10000, 8, V.VRING_DESC_F_NEXT, 1);
    drv.writeDesc(1, 0x11000, 8, V.VRING_DESC_F_NEXT, 0);
    drv.publish(0);
    const e = queueElement(pci, 0);
    expect((e.descs as unknown[]).length).toBe(4);
    expect(e['x-error']).toMatch(/longer than 4 descriptors/);
    expect(mem.readU16(drv.avail + 2)).toBe(1);
  });

  it('reports hostile rings as x-error, not a crash: head, next and indirect table out of range', () => {
    let s = setup(4);
    s.drv.publish(9);
    expect(queueElement(s.pci, 0)['x-error']).toMatch(/names descriptor 9, outside the table of 4/);
    s = setup(4);
    s.drv.writeDesc(0, 0x10000, 8, V.VRING_DESC_F_NEXT, 7);
    s.drv.publish(0);
    expect(queueElement(s.pci, 0)['x-error']).toMatch(/next 7 is outside the table of 4/);
    s = setup(4);
    s.drv.writeDesc(0, 0x7fff_0000_0000, 64, V.VRING_DESC_F_INDIRECT, 0);
    s.drv.publish(0);
    expect(queueElement(s.pci, 0)['x-error']).toMatch(/descriptor 0 at 0x7fff00000000 is not guest RAM/);
    s = setup(4);
    s.drv.writeDesc(0, 0x20000, 10, V.VRING_DESC_F_INDIRECT, 0);
    s.drv.publish(0);
    expect(queueElement(s.pci, 0)['x-error']).toMatch(/indirect table length 10/);
  });

  it('refuses a bad queue, an index out of range, an inactive queue and a device with bus mastering off', () => {
    const { pci, device } = setup(8);
    const err = (f: () => unknown) => {
      try {
        f();
      } catch (e) {
        expect(e).toBeInstanceOf(CommandError);
        return (e as Error).message;
      }
      throw new Error('no error');
    };
    expect(err(() => queueElement(pci, 1))).toBe("Invalid queue 1: device 'd0' has queues 0-0");
    expect(err(() => queueElement(pci, -1))).toMatch(/Invalid queue -1/);
    expect(err(() => queueElement(pci, 0, 8))).toBe("Invalid index 8: queue 0 of device 'd0' has 8 entries (0-7)");
    expect(err(() => queueElement(pci, 0, -1))).toMatch(/Invalid index -1/);
    device.disabled = true;
    expect(err(() => queueElement(pci, 0))).toMatch(/bus mastering off/);
    device.queues[0].reset();
    expect(err(() => queueElement(pci, 0))).toMatch(/not active/);
  });
});

describe('query-qmp-schema', () => {
  it('lists every command with an object type of its arguments, enums and optional members', () => {
    const r = new CommandRegistry();
    r.add({ name: 'query-status', args: {}, help: '', returns: EMPTY, run: () => ({}) });
    r.add({
      name: 'x-debug-device-event',
      args: {
        dev: { type: 'str' },
        event: { type: 'enum', values: ['kick', 'call'] },
        queue: { type: 'int' },
        force: { type: 'bool', optional: true },
      },
      help: '',
      returns: EMPTY,
      run: () => ({}),
    });
    const schema = qmpSchema(r);
    const byName = new Map(schema.map((s) => [s.name, s]));
    const commands = schema.filter((s) => s['meta-type'] === 'command').map((s) => s.name);
    expect(commands).toEqual(['qmp_capabilities', 'query-status', 'x-debug-device-event']);
    const cmd = byName.get('x-debug-device-event')!;
    const args = byName.get(cmd['arg-type'] as string)!;
    expect(args).toEqual({
      name: 'x-debug-device-event-arg',
      'meta-type': 'object',
      members: [
        { name: 'dev', type: 'str' },
        { name: 'event', type: 'x-debug-device-event-event-enum' },
        { name: 'queue', type: 'int' },
        { name: 'force', type: 'bool', default: null },
      ],
    });
    expect(byName.get('x-debug-device-event-event-enum')).toMatchObject({ 'meta-type': 'enum', values: ['kick', 'call'] });
    // Every type a member or command names is defined.
    for (const s of schema) {
      for (const t of [s['arg-type'], s['ret-type'], ...((s.members as { type?: string }[] | undefined) ?? []).map((m) => m.type)])
        if (typeof t === 'string') expect(byName.has(t)).toBe(true);
    }
  });
});
