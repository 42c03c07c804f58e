// The guest kit's virtio-blk driver against this plugin, through the real `vmm` binary.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { describeKvm } from '@tsvmm/kvm-native/testing';
import { expectGuestPass as expectPass, requireBuilt, Run, runGuestKit } from '@tsvmm/testing';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'virtio-blk-guest-'));

/** Byte i of sector s as the guest kit writes it. */
const patternByte = (s: number, i: number, seed: number) => (s * 31 + i * 7 + seed) & 0xff;

function image(name: string, sectors: number, fill?: (s: number, buf: Buffer) => void): string {
  const p = path.join(tmp, name);
  const b = Buffer.alloc(sectors * 512);
  if (fill) for (let s = 0; s < sectors; s++) fill(s, b.subarray(s * 512, (s + 1) * 512));
  fs.writeFileSync(p, b);
  return p;
}

function vmm(cmdline: string, device: string, timeoutMs = 60_000, extra?: string[]): Promise<Run> {
  return runGuestKit(cmdline, [device], { timeoutMs, extra });
}

/** An iothread that polls (a long window: the adaptive one grows up to what the guest's turnaround on a busy host needs). */
const POLLING_IOTHREAD = ['--object', 'iothread,id=io0,poll-max-ns=50000000,poll-grow=65536,poll-shrink=2'];

describeKvm('virtio-blk driven by the guest kit', () => {
  beforeAll(() => requireBuilt());

  describe.each<[string, string, string[]?]>([
    ['ioeventfd=on', 'ioeventfd=on'],
    ['ioeventfd=off', 'ioeventfd=off'],
    ['aio=threads', 'aio=threads'],
    ['iothread=io0', 'iothread=io0'],
    ['iothread=io0 and ioeventfd=off', 'iothread=io0,ioeventfd=off'],
    ['a polling iothread (poll-max-ns)', 'iothread=io0', POLLING_IOTHREAD],
  ])('read/write/flush round trip with %s', (name, opt, extra) => {
    it.each([
      ['event-idx', 'event-idx=1'],
      ['no event-idx', 'event-idx=0'],
    ])('%s: the image holds exactly what the guest wrote', async (_n, eventIdx) => {
      const img = image(`rw-${name.replace(/[^a-z0-9]/gi, '_')}-${eventIdx}.img`, 2048);
      const r = await vmm(`test=blk-rw lba=100 sectors=64 seed=5 ${eventIdx}`, `virtio-blk,id=d0,file=${img},${opt}`, 60_000, extra);
      expectPass(r, 'blk-rw');
      expect(r.out).toContain('blk-rw verify ok sectors=64');
      const data = fs.readFileSync(img);
      for (let s = 0; s < 2048; s++) {
        const sec = data.subarray(s * 512, (s + 1) * 512);
        if (s >= 100 && s < 164) {
          for (let i = 0; i < 512; i += 37) expect(sec[i]).toBe(patternByte(s, i, 5));
        } else expect(sec.every((b) => b === 0)).toBe(true);
      }
    });
  });

  it('reads what the host wrote into the image', async () => {
    const img = image('read.img', 1024, (s, b) => b.forEach((_, i) => (b[i] = patternByte(s, i, 9))));
    expectPass(await vmm('test=blk-read-check lba=300 sectors=32 seed=9', `virtio-blk,id=d0,file=${img}`), 'blk-read-check');
  });

  it('reports the serial with GET_ID', async () => {
    const img = image('id.img', 64);
    const r = await vmm('test=blk-get-id', `virtio-blk,id=d0,file=${img},serial=TSVMM-DISK-0001`);
    expectPass(r, 'blk-get-id');
    expect(r.out).toContain('blk-id serial="TSVMM-DISK-0001"');
  });

  it('discards and writes zeroes; the image reads back zero there', async () => {
    const img = image('discard.img', 256, (_s, b) => b.fill(0x77));
    const r = await vmm('test=blk-discard lba=64 sectors=16', `virtio-blk,id=d0,file=${img}`);
    expectPass(r, 'blk-discard');
    const data = fs.readFileSync(img);
    expect(data.subarray(64 * 512, 80 * 512).every((b) => b === 0)).toBe(true);
    expect(data[63 * 512]).toBe(0x77);
    expect(data[80 * 512]).toBe(0x77);
  });

  it('answers unknown request types with UNSUPP and reads beyond capacity with IOERR', async () => {
    const img = image('unsupp.img', 64);
    const r = await vmm('test=blk-unsupp', `virtio-blk,id=d0,file=${img}`);
    expectPass(r, 'blk-unsupp');
    expect(r.out).toContain('blk-unsupp status=2');
    expect(r.out).toContain('blk-beyond status=1');
  });

  it('serves every queue with num-queues=4', async () => {
    const img = image('mq.img', 512);
    const r = await vmm('test=blk-mq', `virtio-blk,id=d0,file=${img},num-queues=4`);
    expectPass(r, 'blk-mq');
    for (let q = 0; q < 4; q++) expect(r.out).toMatch(new RegExp(`blk-mq queue=${q} ok`));
  });

  it('MSI-X masking: a masked vector sets its PBA bit and is delivered on unmask', async () => {
    const img = image('mask.img', 64);
    const r = await vmm('test=blk-msix-mask', `virtio-blk,id=d0,file=${img}`);
    expectPass(r, 'blk-msix-mask');
    expect(r.out).toContain('blk-msix-mask pba=1 interrupts_while_masked=0');
    expect(r.out).toContain('blk-msix-mask delivered_after_unmask=1');
  });

  it('bus mastering cleared: nothing is processed until it is set again', async () => {
    const img = image('bm.img', 512);
    const r = await vmm('test=blk-busmaster', `virtio-blk,id=d0,file=${img}`);
    expectPass(r, 'blk-busmaster');
    expect(r.out).toContain('blk-busmaster used_while_disabled=0');
    const data = fs.readFileSync(img);
    expect(data[200 * 512 + 5]).toBe(patternByte(200, 5, 77));
  });

  it('iothread: MSI-X masking, bus mastering and multiqueue work from the worker', async () => {
    const img = image('io-misc.img', 512);
    for (const t of ['blk-msix-mask', 'blk-busmaster', 'blk-mq'])
      expectPass(await vmm(`test=${t}`, `virtio-blk,id=d0,file=${img},iothread=io0,num-queues=2`), t);
  });

  it('iothread polling (poll-max-ns): the worker polls the ring, so the driver is told not to kick; bus mastering and multiqueue still work', async () => {
    const img = image('io-poll.img', 512);
    const dev = `virtio-blk,id=d0,file=${img},iothread=io0,num-queues=2`;
    const extra = POLLING_IOTHREAD;
    for (const t of ['blk-busmaster', 'blk-mq']) expectPass(await runGuestKit(`test=${t}`, [dev], { extra }), t);
    const count = 400;
    const polled = await runGuestKit(`test=blk-bench mode=randread bs=4096 count=${count} depth=1 irq=0`, [dev], { extra });
    expectPass(polled, 'blk-bench');
    expect(polled.out).toContain(`blk-bench mode=randread bs=4096 count=${count} `);
    const notifies = Number(/blk-bench ring=3 .* notifies=(\d+) errors=0/.exec(polled.out)?.[1]);
    // The driver kicks only when the device asks (EVENT_IDX avail_event): most requests were found by the poll.
    expect(notifies).toBeLessThan(count / 2);
    // poll-max-ns=0: no polling, every request is kicked.
    const off = await runGuestKit(`test=blk-bench mode=randread bs=4096 count=${count} depth=1 irq=0`, [dev], {
      extra: ['--object', 'iothread,id=io0,poll-max-ns=0'],
    });
    expectPass(off, 'blk-bench');
    expect(off.out).toContain(`notifies=${count} errors=0`);
  }, 180_000);

  it('iothread-vq-mapping: the multiqueue bench keeps both queues busy on io0 and io1; every read completes with the image data', async () => {
    const img = image('mq-bench.img', 2048, (s, b) => b.forEach((_, i) => (b[i] = patternByte(s, i, 3))));
    const r = await runGuestKit(
      'test=blk-bench queues=2 depth=8 count=2000 irq=0 verify=1 pattern=3',
      [`virtio-blk,id=d0,file=${img},num-queues=2,iothread-vq-mapping=io0;io1`],
      { timeoutMs: 60_000, extra: ['--object', 'iothread,id=io0', '--object', 'iothread,id=io1'] },
    );
    expectPass(r, 'blk-bench');
    expect(r.err).toMatch(/d0: queue 0 on iothread io0/);
    expect(r.err).toMatch(/d0: queue 1 on iothread io1/);
    expect(r.out).toContain('blk-bench mode=randread bs=4096 count=2000 bytes=8192000');
    expect(r.out).toMatch(/blk-bench ring=3 depth=8 irq=0 interrupts=\d+ notifies=\d+ errors=0/);
    // Both queues carried requests, and together every one of them; each read matched the pattern of its LBA.
    const perQueue = [0, 1].map((q) => Number(new RegExp(`blk-bench queue=${q} count=(\\d+) `).exec(r.out)?.[1]));
    for (const n of perQueue) expect(n).toBeGreaterThan(0);
    expect(perQueue[0] + perQueue[1]).toBe(2000);
    expect(r.out).toContain('blk-bench verified=2000');
  });

  it('aio: without io_uring the default falls back to threads with a log line; aio=bogus and an impossible aio=io_uring are refused', async () => {
    const img = image('aio-fallback.img', 512);
    const noUring = { TSVMM_NO_IO_URING: '1' };
    const r = await runGuestKit('test=blk-rw lba=10 sectors=8 seed=2', [`virtio-blk,id=d0,file=${img}`], {
      timeoutMs: 60_000,
      env: noUring,
    });
    expectPass(r, 'blk-rw');
    expect(r.err).toMatch(/d0: io_uring is not available \(TSVMM_NO_IO_URING is set\); using aio=threads/);
    const bad = await vmm('test=blk-rw', `virtio-blk,id=d0,file=${img},aio=bogus`);
    expect(bad.code).not.toBe(0);
    expect(bad.err).toMatch(/aio.*one of io_uring, threads/);
    const forced = await runGuestKit('test=blk-rw', [`virtio-blk,id=d0,file=${img},aio=io_uring`], { env: noUring });
    expect(forced.code).not.toBe(0);
    expect(forced.err).toMatch(/aio=io_uring: io_uring is not available here/);
  });

  describe('hostile guest', () => {
    it.each([
      ['loop', ''],
      ['oob', ''],
      ['long', ''],
      ['wrongdir', ''],
      ['loop', ',iothread=io0'],
      ['wrongdir', ',iothread=io0'],
    ])('%s%s: needs-reset, the VMM stays up, a reset makes the device work again', async (kind, extra) => {
      const img = image(`hostile-${kind}${extra ? '-io' : ''}.img`, 512);
      const r = await vmm(`test=blk-hostile kind=${kind}`, `virtio-blk,id=d0,file=${img}${extra}`);
      expectPass(r, 'blk-hostile');
      expect(r.out).toContain(`blk-hostile kind=${kind} needs_reset=1`);
      expect(r.out).toContain('blk-hostile recovered=1');
      expect(r.err).toMatch(/d0: guest error, device needs reset/);
    });
  });
});
