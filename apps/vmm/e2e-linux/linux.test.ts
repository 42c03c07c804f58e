// A real Linux guest (tools/linux-guest) drives the VMM and its plugins.
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { describeKvm } from '@tsvmm/kvm-native/testing';
import { QmpClient } from '@tsvmm/testing';
import { canUseTap, checkExt2Image, expectGuestPass, ioPattern, LinuxRun, ROOT, runLinux, TapNetns } from './linux';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmm-linux-'));
const NETNS_PREFIX = 'vmmlx';

/** The guest's /pattern (64 KiB): byte i = (i + (i >> 8) * 37 + 0x5a) & 0xff, as tools/linux-guest/build.sh writes it. */
function guestPattern(): Buffer {
  return Buffer.from(Array.from({ length: 65536 }, (_, i) => (i + (i >> 8) * 37 + 0x5a) & 0xff));
}

/**
 * The guest's big_dio lines for DEV: seg_max (254 here) segments per request,
 * and the 1 MiB and 4 MiB requests, each page its own segment, went out in
 * as few requests as those limits allow (so each carried up to 254 segments).
 */
function expectBigDio(out: string, dev: string): void {
  const limits = new RegExp(`linux-guest: note ${dev} queue max_segments=(\\d+) max_sectors_kb=(\\d+)`).exec(out);
  expect(limits).not.toBeNull();
  const maxSegments = Number(limits![1]);
  expect(maxSegments).toBe(254); // the device's seg_max (queue size - 2)
  for (const op of ['write', 'read'])
    for (const bytes of [2 ** 20, 4 * 2 ** 20]) {
      const pages = bytes / 4096;
      const m = new RegExp(`linux-guest: dio ${op} dev=${dev} offset=${bytes} bytes=${bytes} iovecs=${pages} segments=(\\d+) requests=(\\d+) sectors=(\\d+)`).exec(out);
      expect(m).not.toBeNull();
      const [segments, requests, sectors] = [Number(m![1]), Number(m![2]), Number(m![3])];
      expect(segments).toBe(pages); // no two pages physically adjacent
      expect(sectors).toBe(bytes / 512);
      // Linux's direct I/O builds bios of at most 256 pages and splits each at max_segments.
      expect(requests).toBe(Math.ceil(pages / 256) * Math.ceil(256 / maxSegments));
    }
}

/**
 * No false alarm (docs/qmp.md "Stall detector"): the boots run with stall-ms=500 on every virtio device.
 * No kick-side stall and no undeliverable interrupt may be reported. driver-silent (an interrupt delivered,
 * its used entries not consumed for 500 ms) is printed, not failed: on this host the kernel runs emulated
 * at CPL0 and under load once took 750 ms to run virtio_scsi's completion handler (reported, then cleared).
 */
function expectNoStall(r: { err: string }): void {
  const lines = r.err.split('\n').filter((l) => / stalled on the (kick|interrupt) side/.test(l));
  const silent = lines.filter((l) => l.includes('(driver-silent)'));
  if (silent.length) process.stdout.write(`stall detector, driver-silent under a slow guest (not a failure):\n${silent.join('\n')}\n`);
  expect(lines.filter((l) => !l.includes('(driver-silent)'))).toEqual([]);
}

describeKvm('Linux guest', () => {
  it('boots to /init through the bzImage 64-bit boot protocol and ends the VMM with reboot -f', async () => {
    const r = await runLinux('boot');
    expectGuestPass(r, 'boot');
    expect(r.out).toContain('found SMP MP-table');
    expect(r.out).toMatch(/BIOS-e820: \[mem 0x0000000000100000-0x0000000007ffffff\] usable/);
    expect(r.err).toContain('guest requested a reset');
  });

  // Both boots also send 1 MiB and 4 MiB O_DIRECT requests from scattered pages; the ioeventfd=on one
  // also runs the ext2 workload on a second disk.
  it.each(['on', 'off'])('virtio-blk (ioeventfd=%s): virtio_blk binds with MSI-X, O_DIRECT pattern round trip, discard, flush, 1 MiB and 4 MiB O_DIRECT requests of seg_max segments', async (ioeventfd) => {
    const img = path.join(tmp, `vda-${ioeventfd}.img`);
    fs.writeFileSync(img, Buffer.alloc(4 * 2 ** 20, 0xee));
    fs.truncateSync(img, 8 * 2 ** 20); // the rest sparse
    const withFs = ioeventfd === 'on';
    const fsImg = path.join(tmp, 'vdb-ext2.img');
    const args = ['--device', `virtio-blk,id=d0,file=${img},ioeventfd=${ioeventfd},stall-ms=500`];
    if (withFs) {
      fs.writeFileSync(fsImg, '');
      fs.truncateSync(fsImg, 16 * 2 ** 20); // sparse
      args.push('--device', `virtio-blk,id=d1,file=${fsImg},ioeventfd=${ioeventfd},stall-ms=500`);
    }
    const r = await runLinux('virtio-blk', { args, params: `tsvmm.dio=1${withFs ? ' tsvmm.fs=vdb' : ''}`, timeoutMs: 540_000 });
    expectGuestPass(r, 'virtio-blk');
    expectNoStall(r);
    expect(r.out).toMatch(/linux-guest: irq \d+: +[1-9]\d* +PCI-MSI .*virtio0-req\.0/);
    expect(r.out).toContain('blkdiscard ok');
    expectBigDio(r.out, 'vda');
    const data = fs.readFileSync(img);
    expect(data.length).toBe(8 * 2 ** 20);
    expect(data.subarray(0, 65536).equals(guestPattern())).toBe(true);
    expect(data.subarray(65536, 131072).every((b) => b === 0)).toBe(true); // discarded
    expect(data[131072]).toBe(0xee);
    expect(data.subarray(2 ** 20, 2 * 2 ** 20).equals(ioPattern(2 ** 20, 2 ** 20, 1))).toBe(true);
    expect(data[2 * 2 ** 20]).toBe(0xee);
    expect(data.subarray(4 * 2 ** 20, 8 * 2 ** 20).equals(ioPattern(4 * 2 ** 20, 4 * 2 ** 20, 4))).toBe(true);
    if (withFs) {
      expect(r.out).toContain('linux-guest: note ext2 ok dev=vdb files=3');
      checkExt2Image(fsImg);
    }
  }, 600_000);

  it('virtio-scsi: virtio_scsi + sd find the LUNs with their sizes, vendor, model and serials; O_DIRECT pattern round trip; 1 MiB and 4 MiB O_DIRECT requests from scattered pages; ext2 that e2fsck finds clean', async () => {
    const a = path.join(tmp, 'scsi-a.img');
    const b = path.join(tmp, 'scsi-b.img');
    const c = path.join(tmp, 'scsi-c-ext2.img');
    fs.writeFileSync(a, Buffer.alloc(8 * 2 ** 20, 0xee));
    fs.writeFileSync(b, Buffer.alloc(2 * 2 ** 20, 0x11));
    fs.writeFileSync(c, '');
    fs.truncateSync(c, 16 * 2 ** 20); // sparse
    const r = await runLinux('scsi', {
      args: ['--device', 'virtio-scsi,id=scsi0,stall-ms=500', '--device', `scsi-hd,bus=scsi0,lun=0,file=${a},serial=LINUX-A`,
        '--device', `scsi-hd,bus=scsi0,lun=3,file=${b},readonly=on,serial=LINUX-B`, '--device', `scsi-hd,bus=scsi0,lun=5,file=${c},serial=LINUX-C`],
      params: 'tsvmm.dio=1 tsvmm.fs=sdc',
      timeoutMs: 540_000,
    });
    expectGuestPass(r, 'scsi');
    expectNoStall(r); // request queue under load, the event queue holding its buffers throughout
    expect(r.out).toContain("linux-guest: scsi-disk dev=sda hctl=0:0:0:0 sectors=16384 ro=0 vendor='TSVMM' model='VIRTUAL DISK' serial='LINUX-A'");
    expect(r.out).toContain("linux-guest: scsi-disk dev=sdb hctl=0:0:0:3 sectors=4096 ro=1 vendor='TSVMM' model='VIRTUAL DISK' serial='LINUX-B'");
    expect(r.out).toContain("linux-guest: scsi-disk dev=sdc hctl=0:0:0:5 sectors=32768 ro=0 vendor='TSVMM' model='VIRTUAL DISK' serial='LINUX-C'");
    expect(r.out).toMatch(/linux-guest: irq \d+: +[1-9]\d* +PCI-MSI .*virtio0-request/);
    expectBigDio(r.out, 'sda');
    expect(r.out).toContain('linux-guest: note ext2 ok dev=sdc files=3');
    const data = fs.readFileSync(a);
    expect(data.subarray(0, 65536).equals(guestPattern())).toBe(true);
    expect(data[65536]).toBe(0xee);
    expect(data.subarray(2 ** 20, 2 * 2 ** 20).equals(ioPattern(2 ** 20, 2 ** 20, 1))).toBe(true);
    expect(data[2 * 2 ** 20]).toBe(0xee);
    expect(data.subarray(4 * 2 ** 20, 8 * 2 ** 20).equals(ioPattern(4 * 2 ** 20, 4 * 2 ** 20, 4))).toBe(true);
    expect(fs.readFileSync(b).every((x) => x === 0x11)).toBe(true);
    checkExt2Image(c);
  }, 600_000);

  it('vhost-scsi (backend=user): Linux finds the LUNs the vhost-user-scsi back-end serves; the pattern lands through the back-end', async () => {
    const a = path.join(tmp, 'vu-a.img');
    const b = path.join(tmp, 'vu-b.img');
    fs.writeFileSync(a, Buffer.alloc(8 * 2 ** 20, 0xee));
    fs.writeFileSync(b, Buffer.alloc(2 * 2 ** 20, 0x11));
    const sock = path.join(tmp, 'vu.sock');
    const backend = spawn(process.execPath, [path.join(ROOT, 'apps/vhost-user-scsi/bin/vhost-user-scsi.js'), '--socket', sock,
      '--lun', `0:file=${a},serial=VU-A`, '--lun', `3:file=${b},readonly=on,serial=VU-B`], { stdio: ['ignore', 'ignore', 'pipe'] });
    let backendErr = '';
    backend.stderr.on('data', (d) => (backendErr += d));
    try {
      for (let i = 0; i < 200 && !fs.existsSync(sock) && backend.exitCode === null; i++) await new Promise((r) => setTimeout(r, 50));
      if (!fs.existsSync(sock)) throw new Error(`vhost-user-scsi did not start: ${backendErr}`);
      const r = await runLinux('scsi', { args: ['--device', `vhost-scsi,id=vs0,backend=user,socket=${sock}`] });
      expectGuestPass(r, 'scsi');
      expect(r.out).toContain("linux-guest: scsi-disk dev=sda hctl=0:0:0:0 sectors=16384 ro=0 vendor='TSVMM' model='VIRTUAL DISK' serial='VU-A'");
      expect(r.out).toContain("linux-guest: scsi-disk dev=sdb hctl=0:0:0:3 sectors=4096 ro=1 vendor='TSVMM' model='VIRTUAL DISK' serial='VU-B'");
      expect(r.out).toMatch(/linux-guest: irq \d+: +[1-9]\d* +PCI-MSI .*virtio0-request/);
      expect(fs.readFileSync(a).subarray(0, 65536).equals(guestPattern())).toBe(true);
    } finally {
      backend.kill('SIGKILL');
    }
  });

  it('monitor (--stall-ms 500): queue counters move under I/O; stop freezes them with ioeventfd off, cont resumes with it on; no I/O lost; no VIRTQUEUE_STALL', async () => {
    const img = path.join(tmp, 'io-loop.img');
    fs.writeFileSync(img, Buffer.alloc(4 * 2 ** 20, 0xee));
    const sock = path.join(tmp, 'qmp.sock');
    type QueueStatus = { 'kicks-eventfd': number; 'used-idx': number; chains: number; ioeventfd: boolean };
    const seen: Record<string, QueueStatus | boolean> = {};
    let monitor: Promise<void> | undefined;
    const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
    const r = await runLinux('io-loop', {
      args: ['--device', `virtio-blk,id=d0,file=${img}`, '--qmp', `unix:${sock}`, '--stall-ms', '500'],
      params: 'tsvmm.rounds=16',
      onLine: (l) => {
        if (monitor || !l.startsWith('linux-guest: io-loop start')) return;
        monitor = (async () => {
          const c = await QmpClient.connect(sock);
          await c.run('qmp_capabilities');
          const q = async () => (await c.run('x-query-virtio-queue-status', { path: 'd0', queue: 0 })) as QueueStatus;
          seen.a = await q();
          await sleep(2000);
          seen.b = await q();
          await c.run('stop');
          await sleep(300); // let requests already submitted complete
          seen.stopped = await q();
          seen.running = ((await c.run('query-status')) as { running: boolean }).running;
          await sleep(2500);
          seen.stillStopped = await q();
          await c.run('cont');
          seen.resumed = await q();
          await sleep(2000);
          seen.stalls = c.messages.some((m) => m.event === 'VIRTQUEUE_STALL' && (m.data as { cause: string }).cause !== 'driver-silent');
          c.close();
        })();
      },
    });
    if (!monitor) throw new Error(`the guest never started its I/O loop:\n${r.out}`);
    await monitor;
    expectGuestPass(r, 'io-loop');
    const [a, b, stopped, still, resumed] = [seen.a, seen.b, seen.stopped, seen.stillStopped, seen.resumed] as QueueStatus[];
    expect(b['kicks-eventfd']).toBeGreaterThan(a['kicks-eventfd']);
    expect(b['used-idx']).not.toBe(a['used-idx']);
    expect(seen.running).toBe(false);
    expect(stopped.ioeventfd).toBe(false);
    expect(still.chains).toBe(stopped.chains); // nothing moves while stopped
    expect(still['used-idx']).toBe(stopped['used-idx']);
    expect(resumed.ioeventfd).toBe(true);
    expect(seen.stalls).toBe(false);
    expectNoStall(r);
    const data = fs.readFileSync(img);
    for (let i = 0; i < 16; i++) expect(data.subarray(i * 65536, (i + 1) * 65536).equals(guestPattern())).toBe(true);
    expect(data[16 * 65536]).toBe(0xee);
  });

  it('live migration mid I/O loop: Linux continues on the destination, every slot written once, ioeventfd re-registered', async () => {
    const img = path.join(tmp, 'mig-loop.img');
    fs.writeFileSync(img, Buffer.alloc(4 * 2 ** 20, 0xee));
    const srcQmp = path.join(tmp, 'mig-src.sock');
    const dstQmp = path.join(tmp, 'mig-dst.sock');
    const incoming = path.join(tmp, 'mig-in.sock');
    // Each 64 KiB O_DIRECT dd takes about 1 s here (emulated guest kernel): 16 rounds of writes, then reads.
    const rounds = 16;
    const args = ['--device', `virtio-blk,id=d0,file=${img}`];
    const params = `tsvmm.rounds=${rounds}`;
    const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
    type QueueStatus = { 'kicks-eventfd': number; 'used-idx': number; ioeventfd: boolean };
    const seen: { migration?: Record<string, unknown>; srcStatus?: unknown; dstQueue?: QueueStatus; dstQueueLater?: QueueStatus } = {};
    let dst: Promise<LinuxRun> | undefined;
    let driver: Promise<void> | undefined;
    const src = await runLinux('io-loop', {
      args: [...args, '--qmp', `unix:${srcQmp}`],
      params,
      onLine: (l) => {
        if (driver || !l.startsWith('linux-guest: io-loop start')) return;
        driver = (async () => {
          // The destination: same configuration, waiting for the stream (its kernel and initrd are loaded, then replaced).
          dst = runLinux('io-loop', { args: [...args, '--incoming', `unix:${incoming}`, '--qmp', `unix:${dstQmp}`], params });
          for (let i = 0; i < 600 && !fs.existsSync(incoming); i++) await sleep(50);
          await sleep(1000); // some slots written on the source
          const c = await QmpClient.connect(srcQmp);
          await c.run('qmp_capabilities');
          await c.run('migrate', { uri: `unix:${incoming}` });
          for (;;) {
            const m = (await c.run('query-migrate')) as Record<string, unknown>;
            if (m.status === 'completed' || m.status === 'failed') {
              seen.migration = m;
              break;
            }
            await sleep(50);
          }
          seen.srcStatus = await c.run('query-status');
          if (seen.migration.status === 'completed') {
            const d = await QmpClient.connect(dstQmp);
            await d.run('qmp_capabilities');
            const q = async () => (await d.run('x-query-virtio-queue-status', { path: 'd0', queue: 0 })) as QueueStatus;
            seen.dstQueue = await q();
            await sleep(1500);
            seen.dstQueueLater = await q();
            d.close();
          }
          await c.run('quit');
          c.close();
        })().catch((e) => {
          seen.migration = { status: 'failed', 'error-desc': `test driver: ${(e as Error).message}` };
        });
      },
    });
    if (!driver) throw new Error(`the guest never started its I/O loop:\n${src.out}`);
    await driver;
    expect(seen.migration).toMatchObject({ status: 'completed' });
    const d = await dst!;
    expectGuestPass(d, 'io-loop');
    // The source stopped mid-loop and stayed paused; the destination did not boot again, it went on.
    expect(src.out).not.toContain('linux-guest: PASS');
    expect(seen.srcStatus).toMatchObject({ status: 'postmigrate', running: false });
    expect(d.out).not.toContain('Linux version');
    expect(d.out).toContain(`linux-guest: io-loop written rounds=${rounds}`);
    // ioeventfd is back on the destination and the guest's kicks arrive through it.
    expect(seen.dstQueue!.ioeventfd).toBe(true);
    expect(seen.dstQueueLater!['kicks-eventfd']).toBeGreaterThan(seen.dstQueue!['kicks-eventfd']);
    const data = fs.readFileSync(img);
    for (let i = 0; i < rounds; i++) expect(data.subarray(i * 65536, (i + 1) * 65536).equals(guestPattern())).toBe(true);
    expect(data[rounds * 65536]).toBe(0xee);
    const m = seen.migration as { downtime: number; 'total-time': number; ram: { transferred: number } };
    process.stdout.write(`Linux migration (128 MiB, I/O loop): total ${m['total-time']} ms, downtime ${m.downtime} ms, ${(m.ram.transferred / 2 ** 20).toFixed(1)} MiB sent\n`);
  }, 600_000);

  describe('virtio-net over a TAP in a network namespace', () => {
    const MAC = '52:54:00:00:09:02';
    let ns: TapNetns | undefined;
    beforeAll(() => TapNetns.removeStale(NETNS_PREFIX));
    afterEach(() => ns?.delete()); // also when the test failed or timed out

    (canUseTap() ? it : it.skip)('virtio_net binds with MSI-X; the guest pings the host side, then the host pings the guest', async () => {
      ns = new TapNetns(`${NETNS_PREFIX}${process.pid}`, 'tap0', '10.0.9.1/24');
      let hostPing: Promise<{ ok: boolean; out: string }> | undefined;
      const r = await runLinux('net-ping', {
        args: ['--device', `virtio-net,id=n0,tap=tap0,mac=${MAC},stall-ms=500`],
        // After its own pings the guest waits (up to 120 s) for 3 echo requests from the host.
        params: 'tsvmm.ip=10.0.9.2/24 tsvmm.peer=10.0.9.1 tsvmm.hold=120 tsvmm.pings=3',
        wrap: ns.exec,
        onLine: (l) => {
          if (!hostPing && l.startsWith('linux-guest: holding')) hostPing = ns!.ping('10.0.9.2', 3);
        },
      });
      const host = hostPing ? await hostPing : { ok: false, out: 'the guest never printed "linux-guest: holding"' };
      expectGuestPass(r, 'net-ping');
      expectNoStall(r); // the receive queue idles with its buffers while the guest holds
      expect(r.out).toContain(`linux-guest: note eth0 driver=virtio_net mac=${MAC}`);
      expect(r.out).toMatch(/^3 packets transmitted, 3 packets received/m); // the guest's busybox ping
      expect(host.out).toMatch(/3 packets transmitted, 3 (packets )?received/);
      expect(r.out).toContain('linux-guest: PASS test=net-ping peer=10.0.9.1 echo-requests=3');
      // Per-queue MSI-X vectors, and the receive queue's actually fired.
      expect(r.out).toMatch(/linux-guest: irq \d+: +[1-9]\d* +PCI-MSI .*virtio0-input\.0/);
      expect(r.out).toMatch(/linux-guest: irq \d+: +\d+ +PCI-MSI .*virtio0-output\.0/);
    });
  });
});
