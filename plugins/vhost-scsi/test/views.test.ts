// The operator's one screen on a VM with four devices (virtio-blk, virtio-net on a TAP, virtio-scsi,
// vhost-scsi with the project's vhost-user back-end): `info virtqueues` checked line by line against
// x-query-virtio-queue-status, the request a lost kick left in virtio-blk's ring read back with
// x-query-virtio-queue-element (and hostile arguments), query-qmp-schema, feature names, and the
// clear error where a debug action cannot apply (a vhost back-end's interrupts never pass the VMM).
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { describeKvm } from '@tsvmm/kvm-native/testing';
import { GUEST_ELF, QmpClient, startNode, VMM_BIN } from '@tsvmm/testing';
import { Backend, image, Proc, requireBuilt, startBackend, tmp, until } from './harness';

const NS = `vmmviews${process.pid}`;
type Status = Record<string, unknown>;

/** The cells `info virtqueues` must print for a queue, worked out here from its QMP status. */
function expectedCells(dev: string, q: number, name: string, s: Status): (string | RegExp)[] {
  const active = s.active === true;
  const v = s['msix-vector'] as number;
  const flags = [s['vector-masked'] === true ? 'masked' : '', s['vector-pending'] === true ? 'pending' : ''].filter(Boolean);
  const vector = v === 0xffff ? 'none' : `${v}${flags.length ? `(${flags.join(',')})` : ''}`;
  const age = (k: string) => (typeof s[k] === 'number' ? /^\d+ms$/ : '-');
  const stall = s.stall as { side: string; cause: string } | null | undefined;
  const verdict = !active
    ? 'off'
    : stall === undefined
      ? '-'
      : stall === null
        ? 'ok'
        : new RegExp(`^STALL ${stall.side} ${stall.cause} \\d+ms$`);
  return [
    dev,
    String(q),
    name,
    String(s.size),
    active ? String(s['avail-idx']) : '-',
    active ? String(s['last-avail-idx']) : '-',
    active ? String(s['used-idx']) : '-',
    String((s['kicks-eventfd'] as number) + (s['kicks-exit'] as number)),
    String(s['interrupts-injected']),
    vector,
    age('last-kick-ms-ago'),
    age('last-interrupt-ms-ago'),
    verdict,
  ];
}

describeKvm("the operator's views on a VM with four devices", () => {
  let be: Backend;
  let vm: Proc | undefined;
  beforeAll(() => {
    requireBuilt();
    execFileSync('ip', ['netns', 'add', NS]);
    execFileSync('ip', ['netns', 'exec', NS, 'ip', 'tuntap', 'add', 'tapviews', 'mode', 'tap', 'vnet_hdr']);
  });
  afterAll(async () => {
    if (vm && vm.proc.exitCode === null) vm.proc.kill('SIGKILL');
    await vm?.exited;
    await be?.stop();
    execFileSync('ip', ['netns', 'del', NS]);
  });

  it('info virtqueues line by line, x-query-virtio-queue-element on a queued request, query-qmp-schema, feature names', async () => {
    const disk = image(64 * 512);
    const lun = image(1 << 20);
    be = await startBackend([`0:file=${image(1 << 20)}`]);
    const sock = path.join(tmp, 'qmp-views.sock');
    vm = startNode(
      [
        VMM_BIN,
        'run',
        '-S',
        '--kernel',
        GUEST_ELF,
        '--memory',
        '64M',
        '--cmdline',
        'test=blk-get-id timeout-ms=60000',
        '--qmp',
        `unix:${sock}`,
        '--device',
        `virtio-blk,id=d0,file=${disk},serial=VIEWS`,
        '--device',
        'virtio-net,id=n0,tap=tapviews',
        '--device',
        'virtio-scsi,id=s0',
        '--device',
        `scsi-hd,bus=s0,lun=0,file=${lun}`,
        '--device',
        `vhost-scsi,id=vs0,socket=${be.socket}`,
      ],
      { wrap: ['ip', 'netns', 'exec', NS] },
    );
    const qmp = await QmpClient.connect(sock);
    await qmp.run('qmp_capabilities');
    const status = (dev: string, q: number) => qmp.run('x-query-virtio-queue-status', { path: dev, queue: q }) as Promise<Status>;
    const hmp = (line: string) => qmp.run('human-monitor-command', { 'command-line': line }) as Promise<string>;
    const error = async (cmd: string, args: Record<string, unknown>) =>
      (await qmp.execute(cmd, args)).error as { class: string; desc: string };

    // The guest's GET_ID waits in the ring: its kick was dropped.
    await qmp.run('x-debug-virtqueue-drop', { dev: 'd0', queue: 0, kicks: 1 });
    await qmp.run('cont');
    await until(
      () => status('d0', 0),
      (s) => s['kicks-dropped'] === 1 && s['avail-idx'] === 1,
      'the dropped kick',
    );
    await qmp.run('stop');

    // --- info virtqueues: a header and one line per queue, each agreeing with the queue's status ---
    const text = await hmp('info virtqueues');
    const lines = text.trimEnd().split('\n');
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
    const queues: [string, number, string][] = [
      ['d0', 0, 'req0'],
      ['n0', 0, 'rx0'],
      ['n0', 1, 'tx0'],
      ['n0', 2, 'ctrl'],
      ['s0', 0, 'ctrl'],
      ['s0', 1, 'event'],
      ['s0', 2, 'req0'],
      ['vs0', 0, 'ctrl'],
      ['vs0', 1, 'event'],
      ['vs0', 2, 'req0'],
    ];
    expect(lines).toHaveLength(1 + queues.length);
    for (const [i, [dev, q, name]] of queues.entries()) {
      const cells = lines[1 + i].split(/\s+/);
      const got = [...cells.slice(0, 12), cells.slice(12).join(' ')];
      const want = expectedCells(dev, q, name, await status(dev, q));
      want.forEach((w, c) => (typeof w === 'string' ? expect(`${c}:${got[c]}`).toBe(`${c}:${w}`) : expect(got[c]).toMatch(w)));
    }
    // The blk line shows the lost kick at a glance: one request available, none taken, no kick counted.
    expect(lines[1].split(/\s+/).slice(0, 10)).toEqual(['d0', '0', 'req0', '64', '1', '0', '0', '0', '0', '1']);
    const cellsOf = (l: string[]) => l.map((x) => x.split(/\s+/));
    expect(cellsOf((await hmp('info virtqueues vs0')).trimEnd().split('\n'))).toEqual(cellsOf([lines[0], ...lines.slice(8)]));
    expect(await hmp('info virtqueues nope')).toBe("Error: Device 'nope' not found\n");

    // --- x-query-virtio-queue-element: the GET_ID request as the guest queued it, read-only ---
    const element = { name: 'd0', index: 0, avail: { flags: 0, idx: 1, ring: 0 }, used: { flags: 0, idx: 0 } };
    const e = (await qmp.run('x-query-virtio-queue-element', { path: '/machine/peripheral/d0', queue: 0 })) as Record<string, unknown>;
    expect(e).toMatchObject(element);
    expect((e.descs as { len: number; flags: string[] }[]).map((d) => [d.len, d.flags])).toEqual([
      [16, ['next']],
      [20, ['next', 'write']],
      [1, ['write']],
    ]);
    expect(await qmp.run('x-query-virtio-queue-element', { path: 'd0', queue: 0, index: 0 })).toEqual(e);
    expect(await status('d0', 0)).toMatchObject({ 'avail-idx': 1, 'last-avail-idx': 0, chains: 0 });
    expect(await hmp('info virtio-queue-element d0 0')).toMatch(
      /^d0 queue 0: head 0, avail flags 0x0 idx 1, used flags 0x0 idx 0\n  desc 0: addr 0x[0-9a-f]+ len 16 \(next\)\n  desc 1: addr 0x[0-9a-f]+ len 20 \(next, write\)\n  desc 2: addr 0x[0-9a-f]+ len 1 \(write\)\n$/,
    );
    // Hostile arguments: each a clear error, the VMM carries on.
    expect(await error('x-query-virtio-queue-element', { path: 'nope', queue: 0 })).toEqual({
      class: 'DeviceNotFound',
      desc: "Device 'nope' not found",
    });
    expect((await error('x-query-virtio-queue-element', { path: 'd0', queue: 1 })).desc).toBe(
      "Invalid queue 1: device 'd0' has queues 0-0",
    );
    expect((await error('x-query-virtio-queue-element', { path: 'd0', queue: -1 })).desc).toBe(
      "Invalid queue -1: device 'd0' has queues 0-0",
    );
    expect((await error('x-query-virtio-queue-element', { path: 'd0', queue: 0, index: 64 })).desc).toBe(
      "Invalid index 64: queue 0 of device 'd0' has 64 entries (0-63)",
    );
    expect((await error('x-query-virtio-queue-element', { path: 'd0', queue: 0, index: 2 ** 53 })).desc).toMatch(
      /^Invalid index 9007199254740992/,
    );
    expect((await error('x-query-virtio-queue-element', { path: 'd0', queue: 0, index: 1.5 })).desc).toBe(
      "Invalid parameter type for 'index', expected: integer",
    );
    expect((await error('x-query-virtio-queue-element', { path: 'd0', queue: '0' })).desc).toBe(
      "Invalid parameter type for 'queue', expected: integer",
    );
    expect((await error('x-query-virtio-queue-element', { path: 'd0', queue: 0, head: 0 })).desc).toBe("Parameter 'head' is unexpected");
    expect((await error('x-query-virtio-queue-element', { path: 'n0', queue: 1 })).desc).toBe(
      "Queue 1 of device 'n0' is not active (the driver has not set it up and DRIVER_OK)",
    );
    expect(await hmp('info virtio-queue-element d0 zero')).toBe("Error: QUEUE: expected a number, got 'zero'\n");

    // --- query-qmp-schema: every command, with its arguments ---
    const schema = (await qmp.run('query-qmp-schema')) as Record<string, unknown>[];
    const byName = new Map(schema.map((s) => [s.name as string, s]));
    const commands = ((await qmp.run('query-commands')) as { name: string }[]).map((c) => c.name);
    expect(
      schema
        .filter((s) => s['meta-type'] === 'command')
        .map((s) => s.name)
        .sort(),
    ).toEqual([...commands].sort());
    for (const c of commands) expect(byName.get(byName.get(c)!['arg-type'] as string)).toMatchObject({ 'meta-type': 'object' });
    expect(byName.get(byName.get('x-query-virtio-queue-element')!['arg-type'] as string)!.members).toEqual([
      { name: 'path', type: 'str' },
      { name: 'queue', type: 'int' },
      { name: 'index', type: 'int', default: null },
    ]);
    const eventArg = (
      byName.get(byName.get('x-debug-device-event')!['arg-type'] as string)!.members as { name: string; type: string }[]
    )[1];
    expect(byName.get(eventArg.type)).toMatchObject({ 'meta-type': 'enum', values: ['kick', 'call'] });

    // --- feature bits by name ---
    const st = (await qmp.run('x-query-virtio-status', { path: 'd0' })) as Record<
      string,
      { transports: string[]; 'dev-features': string[] }
    >;
    expect(st['driver-features-decoded'].transports).toContain('VIRTIO_F_VERSION_1');
    expect(st['device-features-decoded']['dev-features']).toEqual(
      expect.arrayContaining(['VIRTIO_BLK_F_SEG_MAX', 'VIRTIO_BLK_F_BLK_SIZE', 'VIRTIO_BLK_F_FLUSH']),
    );
    expect(await hmp('info virtio-status d0')).toMatch(
      /\n  driver-features: 0x[0-9a-f]+\n    transports: [A-Z_0-9, ]*VIRTIO_F_VERSION_1[A-Z_0-9, ]*\n    dev-features: [A-Z_0-9, ]*VIRTIO_BLK_F_FLUSH/,
    );
    const scsi = (await qmp.run('x-query-virtio-status', { path: 's0' })) as Record<
      string,
      { transports: string[]; 'dev-features': string[] }
    >;
    expect(scsi['device-features-decoded'].transports).toEqual([
      'VIRTIO_RING_F_INDIRECT_DESC',
      'VIRTIO_RING_F_EVENT_IDX',
      'VIRTIO_F_VERSION_1',
    ]);
    expect(await hmp('info virtio-status s0')).toContain(
      `\n    dev-features: ${scsi['device-features-decoded']['dev-features'].join(', ') || '-'}\n`,
    );

    // --- where a debug action cannot apply: a vhost back-end's interrupts go to KVM directly ---
    expect(await error('x-debug-virtqueue-drop', { dev: 'vs0', queue: 2, interrupts: 1 })).toEqual({
      class: 'GenericError',
      desc: "drop-interrupts cannot apply to queue 2 of device 'vs0': the vhost user back-end signals its interrupts to KVM directly (irqfd), past the VMM, so none can be dropped; drop kicks instead",
    });
    expect(await qmp.run('x-debug-virtqueue-drop', { dev: 'vs0', queue: 2, kicks: 0, interrupts: 0 })).toEqual({
      'drop-kicks': 0,
      'drop-interrupts': 0,
    });

    // The kick the guest lost, delivered from the monitor: the request completes and the guest passes.
    await qmp.run('x-debug-device-event', { dev: 'd0', event: 'kick', queue: 0 });
    expect(await status('d0', 0)).toMatchObject({ chains: 1, 'last-avail-idx': 1, 'used-idx': 1, 'debug-events': 1 });
    await qmp.run('cont');
    expect(await vm.exited).toBe(0);
    expect(vm.out()).toContain('blk-id serial="VIEWS"');
    qmp.close();
    fs.rmSync(sock, { force: true });
  });
});
