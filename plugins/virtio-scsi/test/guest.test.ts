// The guest kit's virtio-scsi driver against this plugin and libs/scsi, through the real `vmm` binary.
// The guest tests run with strict=1: only the answer SPC/SBC/SAM prescribe passes (QEMU's deviations
// are accepted only without it; see tools/guest-kit/README.md).
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { describeKvm } from '@tsvmm/kvm-native/testing';
import { expectGuestPass as expectPass, requireBuilt, Run, runGuestKit, stallDrill } from '@tsvmm/testing';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'virtio-scsi-guest-'));

/** Byte at image offset o as the guest kit writes it. */
const patternByte = (o: number, seed: number) => (Math.floor(o / 512) * 31 + (o % 512) * 7 + seed) & 0xff;

function image(name: string, bytes: number, fill = 0): string {
  const p = path.join(tmp, name);
  fs.writeFileSync(p, Buffer.alloc(bytes, fill));
  return p;
}

function vmm(cmdline: string, devices: string[], extra?: string[]): Promise<Run> {
  return runGuestKit(cmdline, devices, { extra });
}

/** An adapter with a writable 16 MiB LUN 0 and a read-only 4 MiB LUN 1. */
function twoLuns(adapter = 'virtio-scsi,id=scsi0', diskOpt = ''): { a: string; b: string; devices: string[] } {
  const a = image(`a-${Math.random().toString(36).slice(2)}.img`, 16 << 20);
  const b = image(`b-${Math.random().toString(36).slice(2)}.img`, 4 << 20, 0x3c);
  return {
    a,
    b,
    devices: [
      adapter,
      `scsi-hd,bus=scsi0,lun=0,file=${a},serial=SER0${diskOpt}`,
      `scsi-hd,bus=scsi0,lun=1,file=${b},readonly=on,serial=SER1${diskOpt}`,
    ],
  };
}

describeKvm('virtio-scsi driven by the guest kit', () => {
  beforeAll(() => requireBuilt());
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('scan: REPORT LUNS finds both LUNs; INQUIRY, VPD pages and capacities are right; an absent LUN has qualifier 3', async () => {
    const { devices } = twoLuns();
    const r = await vmm('test=scsi-scan strict=1', devices);
    expectPass(r, 'scsi-scan');
    expect(r.out).toContain('scsi-lun lun=0');
    expect(r.out).toContain('scsi-lun lun=1');
    expect(r.out).toContain("scsi-inquiry lun=0 type=0 vendor='TSVMM' product='VIRTUAL DISK'");
    expect(r.out).toContain("scsi-vpd lun=0 page=0x80 serial='SER0'");
    expect(r.out).toContain("scsi-vpd lun=1 page=0x80 serial='SER1'");
    expect(r.out).toContain('scsi-vpd lun=0 page=0x00 pages=00,80,83,b0,b1,b2');
    expect(r.out).toContain('scsi-capacity lun=0 blocks=32768 block_size=512');
    expect(r.out).toContain('scsi-capacity lun=1 blocks=8192 block_size=512');
    expect(r.out).toMatch(/scsi-vpd lun=0 page=0xb2 lbpu=1 lbpws=1 lbpws10=1 lbprz=1/);
    expect(r.out).toMatch(/scsi-vpd lun=1 page=0xb2 lbpu=0/); // read-only: no provisioning
    expect(r.out).toContain('scsi-absent lun=5 qualifier=3 type=0x1f');
  });

  describe.each([
    ['ioeventfd=on', 'virtio-scsi,id=scsi0'],
    ['ioeventfd=off', 'virtio-scsi,id=scsi0,ioeventfd=off'],
    ['4 request queues', 'virtio-scsi,id=scsi0,num-queues=4'],
    ['aio=threads', 'virtio-scsi,id=scsi0', ',aio=threads'],
    ['iothread=iotscsi0 (2 request queues)', 'virtio-scsi,id=scsi0,iothread=iotscsi0,num-queues=2'],
    ['iothread=iotscsi0 and ioeventfd=off', 'virtio-scsi,id=scsi0,iothread=iotscsi0,ioeventfd=off'],
    // A long adaptive window: the worker polls the rings and the LUN's completion ring, the driver told not to kick.
    [
      'a polling iothread (poll-max-ns)',
      'virtio-scsi,id=scsi0,iothread=iotscsi0',
      '',
      ['--object', 'iothread,id=iotscsi0,poll-max-ns=50000000,poll-grow=65536,poll-shrink=2'],
    ],
  ])('with %s', (_name, adapter, diskOpt = '', extra: string[] | undefined = undefined) => {
    it('READ/WRITE 6/10/12/16, WRITE AND VERIFY, VERIFY with BYTCHK, SYNCHRONIZE CACHE: the image holds the pattern', async () => {
      const { a, devices } = twoLuns(adapter, diskOpt);
      const r = await vmm('test=scsi-rw lun=0 lba=100 blocks=48 seed=7 strict=1', devices, extra);
      expectPass(r, 'scsi-rw');
      for (const op of [
        'write10',
        'write16',
        'write6',
        'read6',
        'read10',
        'read12',
        'read16',
        'write-verify10',
        'verify10',
        'sync-cache10',
        'sync-cache16',
      ])
        expect(r.out).toMatch(new RegExp(`scsi-rw op=${op} .* ok`));
      expect(r.out).toContain('scsi-sense case=verify-miscompare key=0x0e asc=0x1d ascq=0x00');
      expect(r.out).toContain('scsi-rw lun=0 written=48 verified=48');
      const img = fs.readFileSync(a);
      for (let o = 100 * 512; o < 148 * 512; o++)
        if (img[o] !== patternByte(o, 7)) throw new Error(`image byte ${o} is ${img[o]}, expected ${patternByte(o, 7)}`);
      expect(img.subarray(0, 100 * 512).every((x) => x === 0)).toBe(true);
      expect(img.subarray(148 * 512, 200 * 512).every((x) => x === 0)).toBe(true);
      // On an iothread: one worker took the adapter's queues (the main thread ran none of its requests).
      expect(r.err.match(/iothread iotscsi0: worker thread started/g) ?? []).toHaveLength(adapter.includes('iothread=') ? 1 : 0);
    });
  });

  it.each([[''], [',iothread=iotscsi0']])(
    'Lost kick and lost interrupt on request queue 0 with stall-ms=300%s: VIRTQUEUE_STALL names side and cause, the device event recovers I/O, counters move by exactly one; the event queue never stalls',
    async (extra) => {
      const { devices } = twoLuns(`virtio-scsi,id=scsi0,stall-ms=300${extra}`);
      const d = await stallDrill({ cmdline: 'test=scsi-scan timeout-ms=60000', devices, dev: 'scsi0', kickQueue: 2, irqQueue: 2 });
      expectPass(d.run, 'scsi-scan');
      expect(d.kickStall).toMatchObject({
        device: 'scsi0',
        queue: 2,
        side: 'kick',
        cause: 'no-notify',
        'last-avail-idx': 0,
        'avail-idx': 1,
      });
      expect(d.irqStall).toMatchObject({ device: 'scsi0', queue: 2, side: 'interrupt', cause: 'dropped', 'used-idx': 1 });
      const kicks = (s: Record<string, unknown>) => (s['kicks-eventfd'] as number) + (s['kicks-exit'] as number);
      expect(kicks(d.kick.after) - kicks(d.kick.before)).toBe(1);
      expect(d.kick.after['debug-events']).toBe((d.kick.before['debug-events'] as number) + 1);
      expect(d.kick.after.chains).toBe((d.kick.before.chains as number) + 1);
      expect(d.call.before['interrupts-dropped']).toBe(1);
      expect(d.call.after['interrupts-injected']).toBe((d.call.before['interrupts-injected'] as number) + 1);
      expect(d.events.filter((m) => m.event === 'VIRTQUEUE_STALL').map((m) => m.data)).toEqual([d.kickStall, d.irqStall]);
      // The kick side moved again while the VM ran on (the interrupt side clears at the first check after the
      // guest moves on, which may come after it has finished).
      expect(d.events.find((m) => m.event === 'VIRTQUEUE_STALL_CLEARED')?.data).toMatchObject({
        queue: 2,
        side: 'kick',
        cause: 'no-notify',
      });
    },
  );

  it('UNMAP and WRITE SAME(16) with UNMAP read back zeros; WRITE SAME(10) replicates a block; the image agrees', async () => {
    const { a, devices } = twoLuns();
    const r = await vmm('test=scsi-unmap lun=0 lba=1024 blocks=24 seed=9 strict=1', devices);
    expectPass(r, 'scsi-unmap');
    expect(r.out).toContain('scsi-unmap lun=0 unmapped=8 zeroed=16 replicated=8');
    const img = fs.readFileSync(a);
    const block = (lba: number) => img.subarray(lba * 512, (lba + 1) * 512);
    for (let lba = 1024; lba < 1040; lba++) expect(block(lba).every((x) => x === 0)).toBe(true);
    const src = Buffer.from(Array.from({ length: 512 }, (_, i) => patternByte(1040 * 512 + i, 9)));
    for (let lba = 1040; lba < 1048; lba++) expect(block(lba).equals(src)).toBe(true);
  });

  it('each error case returns the exact sense key/ASC/ASCQ, in fixed and descriptor format; the device stays usable', async () => {
    const { b, devices } = twoLuns();
    const r = await vmm('test=scsi-errors strict=1', devices);
    expectPass(r, 'scsi-errors');
    expect(r.out).toContain('scsi-sense case=invalid-opcode key=0x05 asc=0x20 ascq=0x00');
    expect(r.out).toContain('scsi-sense case=invalid-field-in-cdb key=0x05 asc=0x24 ascq=0x00');
    expect(r.out).toContain('scsi-sense case=lba-out-of-range key=0x05 asc=0x21 ascq=0x00');
    expect(r.out).toContain('scsi-sense case=write-protected key=0x07 asc=0x27 ascq=0x00');
    expect(r.out).toContain('scsi-sense case=lun-not-supported key=0x05 asc=0x25 ascq=0x00');
    expect(r.out).toContain('scsi-sense-format case=invalid-opcode-descriptor code=0x72');
    expect(r.out).toContain('scsi-errors read ok lun=0');
    expect(fs.readFileSync(b).every((x) => x === 0x3c)).toBe(true); // the read-only LUN was not written
  });

  it.each([[''], [',iothread=iotscsi0']])(
    'task management%s: ABORT TASK on an in-flight READ, LUN and I_T nexus resets with their unit attentions, AN query',
    async (extra) => {
      const { devices } = twoLuns(`virtio-scsi,id=scsi0${extra}`);
      const r = await vmm('test=scsi-tmf strict=1', devices);
      expectPass(r, 'scsi-tmf');
      expect(r.out).toMatch(/scsi-tmf type=abort-task response=0 task=(aborted task_response=2|completed task_response=0)/);
      expect(r.out).toContain('scsi-tmf-ua type=lun-reset lun=0 asc=0x29 ascq=0x03');
      expect(r.out).toContain('scsi-tmf-ua type=it-nexus-reset lun=0 asc=0x29 ascq=0x07');
      expect(r.out).toContain('scsi-tmf type=an-query response=0 event_actual=0x0');
      expect(r.out).toContain('scsi-tmf read ok lun=0');
    },
  );

  it.each([
    ['shortreq', 1, /command request needs 51 device-readable bytes/],
    ['noresp', 1, /command response needs 108 device-writable bytes/],
    ['loop', 1, /descriptor chain loops/],
  ])(
    'hostile chain (%s) marks the adapter needs-reset; the guest resets it and it works again; the VMM stays up',
    async (kind, needsReset, reason) => {
      const { devices } = twoLuns();
      const r = await vmm(`test=scsi-hostile kind=${kind}`, devices);
      expectPass(r, 'scsi-hostile');
      expect(r.out).toContain(`scsi-hostile kind=${kind} needs_reset=${needsReset} response=none recovered=1`);
      expect(r.err).toMatch(reason);
    },
  );

  it('on an iothread shared with a virtio-blk: a hostile chain marks only the adapter needs-reset, the worker stays up, the reset adapter works on it again', async () => {
    const { devices } = twoLuns('virtio-scsi,id=scsi0,iothread=iotscsi0');
    const blk = image('shared-blk.img', 64 * 512);
    const r = await vmm('test=scsi-hostile kind=loop', [...devices, `virtio-blk,id=d9,file=${blk},iothread=iotscsi0`]);
    expectPass(r, 'scsi-hostile');
    expect(r.out).toContain('scsi-hostile kind=loop needs_reset=1 response=none recovered=1');
    expect(r.err).toMatch(/descriptor chain loops/);
    expect(r.err.match(/scsi0: guest error, device needs reset/g)).toHaveLength(1);
    expect(r.err).toContain('d9: data plane on iothread iotscsi0, shared with scsi0');
    // One worker for both devices, never restarted; the blk device was not touched.
    expect(r.err.match(/iothread iotscsi0: worker thread started/g)).toHaveLength(1);
    expect(r.err).not.toMatch(/restarted|d9: .*needs reset|internal error|Unhandled/);
  });

  it('a READ offered only device-readable buffers is answered OVERRUN without breaking the adapter', async () => {
    const { devices } = twoLuns();
    const r = await vmm('test=scsi-hostile kind=dirmix', devices);
    expectPass(r, 'scsi-hostile');
    expect(r.out).toContain('scsi-hostile kind=dirmix needs_reset=0 response=1 recovered=1');
    expect(r.err).not.toMatch(/needs reset/);
  });

  it('a 4096-byte logical block LUN reports its size and round-trips the pattern', async () => {
    const a = image('lbs4k.img', 8 << 20);
    const r = await vmm('test=scsi-rw lun=0 lba=10 blocks=8 seed=2 strict=1', [
      'virtio-scsi,id=scsi0',
      `scsi-hd,bus=scsi0.0,lun=0,file=${a},logical-block-size=4096`,
    ]);
    expectPass(r, 'scsi-rw');
    expect(r.out).toContain('scsi-capacity lun=0 blocks=2048 block_size=4096');
    const img = fs.readFileSync(a);
    for (let o = 10 * 4096; o < 18 * 4096; o += 97) expect(img[o]).toBe(patternByte(o, 2));
  });

  it.each([
    [['scsi-hd,id=d0,bus=nope,file=/dev/null'], /--device scsi-hd,id=d0: bus=nope: no virtio-scsi adapter with that id/],
    [
      ['virtio-scsi,id=scsi0', 'scsi-hd,id=d0,bus=scsi0,file=IMG', 'scsi-hd,id=d1,bus=scsi0,file=IMG'],
      /--device scsi-hd,id=d1: lun=0: bus scsi0 already has a device on that LUN/,
    ],
    [
      ['virtio-scsi,id=scsi0', 'scsi-hd,id=d0,bus=scsi0,file=/nonexistent.img'],
      /--device scsi-hd,id=d0: file=\/nonexistent.img: no such file/,
    ],
    [
      ['virtio-scsi,id=scsi0', 'scsi-hd,id=d0,bus=scsi0,file=IMG,lun=16384'],
      /--device scsi-hd,id=d0: property 'lun' must be at most 16383/,
    ],
    [['virtio-scsi,id=scsi0,iothread=0io', 'scsi-hd,id=d0,bus=scsi0,file=IMG'], /--device virtio-scsi,id=scsi0: property 'iothread'/],
    [
      ['virtio-scsi,id=scsi0', 'scsi-hd,id=d0,bus=scsi0,file=IMG,aio=posix'],
      /--device scsi-hd,id=d0: property 'aio' must be one of io_uring, threads/,
    ],
  ])('configuration errors name the device and the property: %j', async (devices, message) => {
    const img = image('cfg.img', 1 << 20);
    const r = await vmm(
      'test=pci-scan',
      devices.map((d) => d.replace('IMG', img)),
    );
    expect(r.code).not.toBe(0);
    expect(r.err).toMatch(message);
  });
});
