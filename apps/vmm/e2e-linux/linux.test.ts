// A real Linux guest (tools/linux-guest) drives the VMM and its plugins.
import { spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { describeKvm } from '@tsvmm/kvm-native/testing';
import { QmpClient } from '@tsvmm/testing';
import {
  canUseTap,
  checkExt2Image,
  DrillSide,
  expectGuestPass,
  ioPattern,
  LinuxRun,
  MonitorDrill,
  ROOT,
  runLinux,
  stopDrillIo,
  TapNetns,
} from './linux';
import { QMP_EVENTS } from '../src/monitor/events';
import { mismatch, q } from '../src/monitor/qapi-types';
import { RETURNS } from '../src/monitor/returns';

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
function expectBigDio(out: string, dev: string, segMax = 254): void {
  const limits = new RegExp(`linux-guest: note ${dev} queue max_segments=(\\d+) max_sectors_kb=(\\d+)`).exec(out);
  expect(limits).not.toBeNull();
  const maxSegments = Number(limits![1]);
  expect(maxSegments).toBe(segMax); // the device's seg_max (queue size - 2)
  for (const op of ['write', 'read'])
    for (const bytes of [2 ** 20, 4 * 2 ** 20]) {
      const pages = bytes / 4096;
      const m = new RegExp(
        `linux-guest: dio ${op} dev=${dev} offset=${bytes} bytes=${bytes} iovecs=${pages} segments=(\\d+) requests=(\\d+) sectors=(\\d+)`,
      ).exec(out);
      expect(m).not.toBeNull();
      const [segments, requests, sectors] = [Number(m![1]), Number(m![2]), Number(m![3])];
      expect(segments).toBe(pages); // no two pages physically adjacent
      expect(sectors).toBe(bytes / 512);
      // Linux's direct I/O builds bios of at most 256 pages and splits each at max_segments.
      expect(requests).toBe(Math.ceil(pages / 256) * Math.ceil(256 / maxSegments));
    }
}

/**
 * No false alarm (docs/qmp.md "Stall detector"): the boots run with stall-ms=500 on every virtio device
 * (virtio-blk in-process and on an iothread, virtio-scsi with its event queue, virtio-net with an idle RX
 * queue). No stall of any cause may be reported besides the drills' own (`drilled`: one log line each),
 * driver-silent included: the detector counts VM run time, so a vCPU thread that waits for a CPU on an
 * overloaded host no longer makes a healthy driver look silent (docs/debugging-lost-kicks.md). The idle
 * periods assert no event.
 */
function expectNoStall(r: { err: string }, drilled: RegExp[] = []): void {
  let lines = r.err.split('\n').filter((l) => / stalled on the (kick|interrupt) side/.test(l));
  for (const re of drilled) {
    const i = lines.findIndex((l) => re.test(l));
    expect(i).toBeGreaterThanOrEqual(0); // the drill's own stall was logged
    lines = lines.filter((_, j) => j !== i);
  }
  expect(lines).toEqual([]);
}

const STALL_MS = 500;
const num = (m: Record<string, unknown>, k: string) => m[k] as number;

/**
 * What the operator sees in the lost-kick and lost-interrupt drills (docs/debugging-lost-kicks.md), and
 * that each counter moved by exactly one. `oneRequest`: the guest had exactly one request in flight
 * (drill_io); `waiting`: the interrupt the driver waits on is the one for the last used entry.
 */
function expectDrill(
  d: { kick: DrillSide; interrupt: DrillSide },
  o: { dev: string; kick: [number, string]; irq: [number, string]; oneRequest: boolean },
  events: Record<string, unknown>[],
): void {
  const path = `/machine/peripheral/${o.dev}`;
  const line = (s: DrillSide, q: number, name: string, verdict: string) => {
    const st = s.stall;
    const cells = `${o.dev}\\s+${q}\\s+${name}\\s+${num(s.hung, 'size')}\\s+${num(st, 'avail-idx')}\\s+${num(st, 'last-avail-idx')}\\s+${num(st, 'used-idx')}`;
    // kicks, irqs, the vector (live: neither masked nor pending), last kick and last interrupt ages, the verdict
    expect(s.line).toMatch(new RegExp(`^${cells}\\s+\\d+\\s+\\d+\\s+\\d+\\s+(\\d+ms|-)\\s+(\\d+ms|-)\\s+STALL ${verdict} \\d+ms$`));
  };
  // Lost kick: the driver published a buffer after the device's last kick and was required to notify.
  const [kq, kname] = o.kick;
  const k = d.kick;
  expect(k.stall).toMatchObject({ device: o.dev, path, queue: kq, side: 'kick', cause: 'no-notify' });
  const waiting = (num(k.stall, 'avail-idx') - num(k.stall, 'last-avail-idx')) & 0xffff;
  if (o.oneRequest) expect(waiting).toBe(1);
  else expect(waiting).toBeGreaterThanOrEqual(1);
  expect(k.stall['used-idx']).toBe(k.stall['last-avail-idx']); // all it took is done
  expect(k.stall['avail-event']).toBe(k.stall['last-avail-idx']); // EVENT_IDX: a kick was due at the next buffer
  expect(num(k.stall, 'stalled-ms')).toBeGreaterThanOrEqual(STALL_MS);
  line(k, kq, kname, 'kick no-notify');
  expect(k.hung.stall).toMatchObject({ side: 'kick', cause: 'no-notify' });
  expect(num(k.hung, 'kicks-dropped') - num(k.before, 'kicks-dropped')).toBe(1);
  expect(num(k.after, 'debug-events') - num(k.hung, 'debug-events')).toBe(1);
  expect(k.after['pending-drop-kicks']).toBe(0);
  expect(num(k.after, 'last-avail-idx')).not.toBe(num(k.hung, 'last-avail-idx')); // the recovering kick took the request
  expect(k.cleared).toMatchObject({ device: o.dev, path, queue: kq, side: 'kick', cause: 'no-notify' });
  // Lost interrupt: the device completed the request, the interrupt the driver asked for never came.
  const [iq, iname] = o.irq;
  const c = d.interrupt;
  expect(c.stall).toMatchObject({ device: o.dev, path, queue: iq, side: 'interrupt', cause: 'dropped' });
  if (o.oneRequest) expect(c.stall['avail-idx']).toBe(c.stall['last-avail-idx']);
  const behind = (num(c.stall, 'used-idx') - num(c.stall, 'used-event')) & 0xffff; // used entries not consumed
  if (o.oneRequest) expect(behind).toBe(1);
  else expect(behind).toBeGreaterThanOrEqual(1);
  expect(num(c.stall, 'stalled-ms')).toBeGreaterThanOrEqual(STALL_MS);
  line(c, iq, iname, 'interrupt dropped');
  expect(c.hung.stall).toMatchObject({ side: 'interrupt', cause: 'dropped' });
  expect(num(c.hung, 'interrupts-dropped') - num(c.before, 'interrupts-dropped')).toBe(1);
  expect(num(c.after, 'debug-events') - num(c.hung, 'debug-events')).toBe(1);
  expect(c.after['pending-drop-interrupts']).toBe(0);
  expect(c.cleared).toMatchObject({ device: o.dev, path, queue: iq, side: 'interrupt', cause: 'dropped' });
  // What the monitor sent fits what query-qmp-schema declares.
  for (const s of [k, c])
    for (const st of [s.before, s.hung, s.after]) expect(mismatch(RETURNS['x-query-virtio-queue-status'], st)).toBeUndefined();
  for (const e of events) expect(mismatch(q.obj(QMP_EVENTS[e.event as keyof typeof QMP_EVENTS]), e.data ?? {})).toBeUndefined();
  // One event per episode.
  const stalls = events.filter((m) => m.event === 'VIRTQUEUE_STALL');
  expect(stalls.map((m) => m.data)).toEqual([k.stall, c.stall]);
  process.stdout.write(`drill on ${o.dev} (tries ${k.tries}/${c.tries}):\n${k.screen}${c.screen}`);
}

/** The idle period: no VIRTQUEUE_STALL at all, and every queue's verdict `ok`. */
function expectIdle(drill: MonitorDrill): void {
  expect(drill.idleStalls()).toEqual([]);
  const lines = drill.idleScreen!.trimEnd().split('\n').slice(1);
  expect(lines.length).toBeGreaterThan(0);
  for (const l of lines) expect(l).toMatch(/\sok$/);
}

/** The runLinux hook of a boot whose guest runs drill_io on DEV (tools/linux-guest): idle period, then the drills. */
function blockDrill(
  sock: string,
  dev: string,
  img: string,
  queue: number,
  out: { result?: Promise<{ kick: DrillSide; interrupt: DrillSide }> },
) {
  const drill = new MonitorDrill(sock, dev);
  let idle: Promise<void> | undefined;
  const onLine = (l: string) => {
    if (l.startsWith('linux-guest: init start')) drill.connect().catch(() => undefined);
    else if (l.startsWith('linux-guest: drill idle')) idle = drill.idleStart();
    else if (l.startsWith('linux-guest: drill io start') && !out.result) {
      drill.idleEnd();
      out.result = (async () => {
        await idle;
        return drill.run({ kickQueue: queue, irqQueue: queue });
      })().finally(() => stopDrillIo(img));
    }
  };
  return { drill, onLine };
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
  // also runs the ext2 workload on a second disk. Then an idle period and the lost-kick and lost-interrupt
  // drills over QMP on req0 while the guest writes one block at a time (drill_io).
  it.each(['on', 'off'])(
    'virtio-blk (ioeventfd=%s): virtio_blk binds with MSI-X, O_DIRECT pattern round trip, discard, flush, 1 MiB and 4 MiB O_DIRECT requests of seg_max segments; idle without a stall; lost-kick and lost-interrupt drills',
    async (ioeventfd) => {
      const img = path.join(tmp, `vda-${ioeventfd}.img`);
      fs.writeFileSync(img, Buffer.alloc(4 * 2 ** 20, 0xee));
      fs.truncateSync(img, 8 * 2 ** 20); // the rest sparse
      const withFs = ioeventfd === 'on';
      const fsImg = path.join(tmp, 'vdb-ext2.img');
      const sock = path.join(tmp, `drill-blk-${ioeventfd}.sock`);
      const args = ['--device', `virtio-blk,id=d0,file=${img},ioeventfd=${ioeventfd},stall-ms=${STALL_MS}`, '--qmp', `unix:${sock}`];
      // The seccomp filter, and nobody's uid with no capabilities, under a real Linux driver (docs/security.md).
      if (withFs) args.push('--sandbox', 'on', '--run-with', 'user=nobody');
      if (withFs) {
        fs.writeFileSync(fsImg, '');
        fs.truncateSync(fsImg, 16 * 2 ** 20); // sparse
        // On an iothread: the ext2 workload is continuous I/O that the worker completes (no false alarm from
        // the detector reading the worker's indices and interrupt records). The iothread polls (Linux's
        // virtio_blk then finds its kicks suppressed through avail_event), under the seccomp filter.
        args.push('--object', 'iothread,id=io0,poll-max-ns=1000000,poll-shrink=2');
        args.push('--device', `virtio-blk,id=d1,file=${fsImg},ioeventfd=${ioeventfd},iothread=io0,stall-ms=${STALL_MS}`);
      }
      // The ioeventfd=off boot's second disk is a full host disk: an 8 MiB sparse image on a 1 MiB tmpfs.
      const fullDir = path.join(tmp, 'full-fs');
      const fullImg = path.join(fullDir, 'vdb-full.img');
      if (!withFs) {
        fs.mkdirSync(fullDir, { recursive: true });
        const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tsvmm-full', fullDir], { encoding: 'utf8' });
        if (m.status !== 0) throw new Error(`mount -t tmpfs: ${m.stderr}`);
        fs.writeFileSync(fullImg, '');
        fs.truncateSync(fullImg, 8 * 2 ** 20);
        args.push('--device', `virtio-blk,id=d1,file=${fullImg},ioeventfd=${ioeventfd}`);
      }
      const out: { result?: Promise<{ kick: DrillSide; interrupt: DrillSide }> } = {};
      const { drill, onLine } = blockDrill(sock, 'd0', img, 0, out);
      let fullData: Buffer | undefined;
      let r: Awaited<ReturnType<typeof runLinux>>;
      try {
        r = await runLinux('virtio-blk', {
          args,
          params: `tsvmm.dio=1 tsvmm.drill=1${withFs ? ' tsvmm.fs=vdb' : ' tsvmm.full=vdb'}`,
          timeoutMs: 540_000,
          onLine,
        });
        if (!withFs) fullData = fs.readFileSync(fullImg);
      } finally {
        if (!withFs) spawnSync('umount', [fullDir]);
      }
      drill.close();
      if (!out.result) throw new Error(`the guest never started its drill I/O:\n${r.out.slice(-6000)}\n${r.err}`);
      const d = await out.result;
      expectGuestPass(r, 'virtio-blk');
      expectIdle(drill);
      expectDrill(d, { dev: 'd0', kick: [0, 'req0'], irq: [0, 'req0'], oneRequest: true }, drill.events);
      expectNoStall(r, [
        /^.*d0: queue 0 stalled on the kick side \(no-notify\)/,
        /^.*d0: queue 0 stalled on the interrupt side \(dropped\)/,
      ]);
      expect(r.out).toMatch(/linux-guest: irq \d+: +[1-9]\d* +PCI-MSI .*virtio0-req\.0/);
      expect(r.out).toContain('blkdiscard ok');
      expectBigDio(r.out, 'vda');
      // The drill's I/O finished, every block written intact (the guest compared them too).
      expect(Number(/linux-guest: drill io done dev=vda rounds=(\d+)/.exec(r.out)?.[1])).toBeGreaterThanOrEqual(16);
      const data = fs.readFileSync(img);
      expect(data.length).toBe(8 * 2 ** 20);
      expect(data.subarray(0, 65536).equals(guestPattern())).toBe(true);
      expect(data.subarray(65536, 131072).every((b) => b === 0)).toBe(true); // discarded
      expect(data[131072]).toBe(0xee);
      expect(data.subarray(2 ** 20, 2 * 2 ** 20).equals(ioPattern(2 ** 20, 2 ** 20, 1))).toBe(true);
      expect(data[2 * 2 ** 20]).toBe(0xee);
      expect(data.subarray(3 * 2 ** 20, 3 * 2 ** 20 + 65536).equals(guestPattern())).toBe(true);
      expect(data.subarray(4 * 2 ** 20, 8 * 2 ** 20).equals(ioPattern(4 * 2 ** 20, 4 * 2 ** 20, 4))).toBe(true);
      if (!withFs) {
        // The full disk: the write that did not fit failed in the guest (IOERR, never OK), and every block
        // the device reported written is in the image (the guest read them back too); the VMM stayed up.
        const m = /linux-guest: note full-disk dev=vdb written=(\d+) error=(.*)/.exec(r.out);
        expect(m?.[2]).toMatch(/Input\/output error/);
        const written = Number(m![1]);
        expect(written).toBeGreaterThanOrEqual(1);
        expect(written).toBeLessThanOrEqual(16); // 1 MiB of room, 64 KiB blocks
        for (let i = 0; i < written; i++) expect(fullData!.subarray(i * 65536, (i + 1) * 65536).equals(guestPattern())).toBe(true);
        expect(r.err).toMatch(/d1: host I\/O error on write/);
      }
      if (withFs) {
        expect(r.err).toContain('running as uid 65534, gid 65534, groups 65534, no capabilities');
        expect(r.out).toContain('linux-guest: note ext2 ok dev=vdb files=3');
        expect(r.err).toContain('iothread io0: worker thread started');
        checkExt2Image(fsImg);
      }
    },
    600_000,
  );

  it('virtio-scsi: virtio_scsi + sd find the LUNs with their sizes, vendor, model and serials; O_DIRECT pattern round trip; 1 MiB and 4 MiB O_DIRECT requests from scattered pages; ext2 that e2fsck finds clean; idle without a stall; lost-kick and lost-interrupt drills', async () => {
    const a = path.join(tmp, 'scsi-a.img');
    const b = path.join(tmp, 'scsi-b.img');
    const c = path.join(tmp, 'scsi-c-ext2.img');
    fs.writeFileSync(a, Buffer.alloc(8 * 2 ** 20, 0xee));
    fs.writeFileSync(b, Buffer.alloc(2 * 2 ** 20, 0x11));
    fs.writeFileSync(c, '');
    fs.truncateSync(c, 16 * 2 ** 20); // sparse
    const sock = path.join(tmp, 'drill-scsi.sock');
    const out: { result?: Promise<{ kick: DrillSide; interrupt: DrillSide }> } = {};
    const { drill, onLine } = blockDrill(sock, 'scsi0', a, 2, out);
    const r = await runLinux('scsi', {
      args: [
        '--qmp',
        `unix:${sock}`,
        '--device',
        `virtio-scsi,id=scsi0,stall-ms=${STALL_MS}`,
        '--device',
        `scsi-hd,bus=scsi0,lun=0,file=${a},serial=LINUX-A`,
        '--device',
        `scsi-hd,bus=scsi0,lun=3,file=${b},readonly=on,serial=LINUX-B`,
        '--device',
        `scsi-hd,bus=scsi0,lun=5,file=${c},serial=LINUX-C`,
      ],
      params: 'tsvmm.dio=1 tsvmm.fs=sdc tsvmm.drill=1',
      timeoutMs: 540_000,
      onLine,
    });
    drill.close();
    if (!out.result) throw new Error(`the guest never started its drill I/O:\n${r.out.slice(-6000)}\n${r.err}`);
    const d = await out.result;
    expectGuestPass(r, 'scsi');
    expectIdle(drill); // ctrl and the event queue holding its buffers included
    expectDrill(d, { dev: 'scsi0', kick: [2, 'req0'], irq: [2, 'req0'], oneRequest: true }, drill.events);
    // request queue under load, the event queue holding its buffers throughout
    expectNoStall(r, [
      /^.*scsi0: queue 2 stalled on the kick side \(no-notify\)/,
      /^.*scsi0: queue 2 stalled on the interrupt side \(dropped\)/,
    ]);
    expect(Number(/linux-guest: drill io done dev=sda rounds=(\d+)/.exec(r.out)?.[1])).toBeGreaterThanOrEqual(16);
    expect(r.out).toContain(
      "linux-guest: scsi-disk dev=sda hctl=0:0:0:0 sectors=16384 ro=0 vendor='TSVMM' model='VIRTUAL DISK' serial='LINUX-A'",
    );
    expect(r.out).toContain(
      "linux-guest: scsi-disk dev=sdb hctl=0:0:0:3 sectors=4096 ro=1 vendor='TSVMM' model='VIRTUAL DISK' serial='LINUX-B'",
    );
    expect(r.out).toContain(
      "linux-guest: scsi-disk dev=sdc hctl=0:0:0:5 sectors=32768 ro=0 vendor='TSVMM' model='VIRTUAL DISK' serial='LINUX-C'",
    );
    expect(r.out).toMatch(/linux-guest: irq \d+: +[1-9]\d* +PCI-MSI .*virtio0-request/);
    expectBigDio(r.out, 'sda');
    expect(r.out).toContain('linux-guest: note ext2 ok dev=sdc files=3');
    const data = fs.readFileSync(a);
    expect(data.subarray(0, 65536).equals(guestPattern())).toBe(true);
    expect(data[65536]).toBe(0xee);
    expect(data.subarray(2 ** 20, 2 * 2 ** 20).equals(ioPattern(2 ** 20, 2 ** 20, 1))).toBe(true);
    expect(data[2 * 2 ** 20]).toBe(0xee);
    expect(data.subarray(3 * 2 ** 20, 3 * 2 ** 20 + 65536).equals(guestPattern())).toBe(true); // the drill's writes
    expect(data.subarray(4 * 2 ** 20, 8 * 2 ** 20).equals(ioPattern(4 * 2 ** 20, 4 * 2 ** 20, 4))).toBe(true);
    expect(fs.readFileSync(b).every((x) => x === 0x11)).toBe(true);
    checkExt2Image(c);
  }, 600_000);

  it('vhost-scsi (backend=user): Linux finds the LUNs the vhost-user-scsi back-end serves; the pattern, 1 MiB and 4 MiB O_DIRECT requests from scattered pages and an ext2 that e2fsck finds clean land through the back-end', async () => {
    const a = path.join(tmp, 'vu-a.img');
    const b = path.join(tmp, 'vu-b.img');
    fs.writeFileSync(a, Buffer.alloc(8 * 2 ** 20, 0xee));
    fs.writeFileSync(b, Buffer.alloc(2 * 2 ** 20, 0x11));
    const c = path.join(tmp, 'vu-c-ext2.img');
    fs.writeFileSync(c, '');
    fs.truncateSync(c, 16 * 2 ** 20); // sparse
    const sock = path.join(tmp, 'vu.sock');
    const backend = spawn(
      process.execPath,
      [
        path.join(ROOT, 'apps/vhost-user-scsi/bin/vhost-user-scsi.js'),
        '--socket',
        sock,
        '--lun',
        `0:file=${a},serial=VU-A`,
        '--lun',
        `3:file=${b},readonly=on,serial=VU-B`,
        '--lun',
        `5:file=${c},serial=VU-C`,
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let backendErr = '';
    backend.stderr.on('data', (d) => (backendErr += d));
    try {
      for (let i = 0; i < 200 && !fs.existsSync(sock) && backend.exitCode === null; i++) await new Promise((r) => setTimeout(r, 50));
      if (!fs.existsSync(sock)) throw new Error(`vhost-user-scsi did not start: ${backendErr}`);
      const r = await runLinux('scsi', {
        args: ['--device', `vhost-scsi,id=vs0,backend=user,socket=${sock}`],
        params: 'tsvmm.dio=1 tsvmm.fs=sdc',
        timeoutMs: 540_000,
      });
      expectGuestPass(r, 'scsi');
      expect(r.out).toContain(
        "linux-guest: scsi-disk dev=sda hctl=0:0:0:0 sectors=16384 ro=0 vendor='TSVMM' model='VIRTUAL DISK' serial='VU-A'",
      );
      expect(r.out).toContain(
        "linux-guest: scsi-disk dev=sdb hctl=0:0:0:3 sectors=4096 ro=1 vendor='TSVMM' model='VIRTUAL DISK' serial='VU-B'",
      );
      expect(r.out).toContain(
        "linux-guest: scsi-disk dev=sdc hctl=0:0:0:5 sectors=32768 ro=0 vendor='TSVMM' model='VIRTUAL DISK' serial='VU-C'",
      );
      expect(r.out).toMatch(/linux-guest: irq \d+: +[1-9]\d* +PCI-MSI .*virtio0-request/);
      expectBigDio(r.out, 'sda', 126); // the back-end's queues hold 128
      expect(r.out).toContain('linux-guest: note ext2 ok dev=sdc files=3');
      const data = fs.readFileSync(a);
      expect(data.subarray(0, 65536).equals(guestPattern())).toBe(true);
      expect(data.subarray(2 ** 20, 2 * 2 ** 20).equals(ioPattern(2 ** 20, 2 ** 20, 1))).toBe(true);
      expect(data.subarray(4 * 2 ** 20, 8 * 2 ** 20).equals(ioPattern(4 * 2 ** 20, 4 * 2 ** 20, 4))).toBe(true);
      expect(fs.readFileSync(b).every((x) => x === 0x11)).toBe(true);
    } finally {
      backend.kill('SIGKILL');
    }
    // After the back-end is gone, so e2fsck sees the image it closed.
    checkExt2Image(c);
  }, 600_000);

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
          seen.stalls = c.messages.some((m) => m.event === 'VIRTQUEUE_STALL');
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
    process.stdout.write(
      `Linux migration (128 MiB, I/O loop): total ${m['total-time']} ms, downtime ${m.downtime} ms, ${(m.ram.transferred / 2 ** 20).toFixed(1)} MiB sent\n`,
    );
  }, 600_000);

  describe('virtio-net over a TAP in a network namespace', () => {
    const MAC = '52:54:00:00:09:02';
    let ns: TapNetns | undefined;
    beforeAll(() => TapNetns.removeStale(NETNS_PREFIX));
    afterEach(() => ns?.delete()); // also when the test failed or timed out

    // While the guest holds: an idle period, the lost-kick drill on tx0 (the guest's echo reply waits in
    // the ring) and the lost-interrupt drill on rx0 (the host's echo request waits unseen in the used
    // ring), each provoked by one host ping; then the host's pings.
    (canUseTap() ? it : it.skip)(
      'virtio_net (the device on an iothread) binds with MSI-X; the guest pings the host side, then the host pings the guest; idle without a stall; lost-kick (tx0) and lost-interrupt (rx0) drills',
      async () => {
        ns = new TapNetns(`${NETNS_PREFIX}${process.pid}`, 'tap0', '10.0.9.1/24');
        const sock = path.join(tmp, 'drill-net.sock');
        const drill = new MonitorDrill(sock, 'n0');
        const pings: { ok: boolean; out: string }[] = [];
        const ping = (n: number) => ns!.ping('10.0.9.2', n).then((p) => (pings.push(p), p));
        const WANT = 5; // echo requests the guest waits for: one per drill side (more if one was tried again), the rest the host's pings
        let hold: Promise<{ kick: DrillSide; interrupt: DrillSide; host: { ok: boolean; out: string; count: number } }> | undefined;
        const r = await runLinux('net-ping', {
          args: [
            '--device',
            // On an iothread: Linux's virtio_net against the worker's queues and TAP I/O, drills included.
            `virtio-net,id=n0,tap=tap0,mac=${MAC},stall-ms=${STALL_MS},iothread=io0`,
            '--qmp',
            `unix:${sock}`,
            // Under the seccomp filter, as nobody with no capabilities (docs/security.md): the TAP is opened before the drop.
            '--sandbox',
            'on',
            '--run-with',
            'user=nobody',
          ],
          // After its own pings the guest waits (up to 120 s) for WANT echo requests from the host.
          params: `tsvmm.ip=10.0.9.2/24 tsvmm.peer=10.0.9.1 tsvmm.hold=120 tsvmm.pings=${WANT}`,
          wrap: ns.exec,
          onLine: (l) => {
            if (l.startsWith('linux-guest: init start')) drill.connect().catch(() => undefined);
            if (hold || !l.startsWith('linux-guest: holding')) return;
            hold = (async () => {
              await drill.idleStart(2000);
              await new Promise((res) => setTimeout(res, 2000));
              drill.idleEnd();
              const d = await drill.run({ kickQueue: 1, irqQueue: 0, provokeKick: () => ping(1), provokeIrq: () => ping(1) });
              const count = Math.max(1, WANT - pings.length);
              return { ...d, host: { ...(await ping(count)), count } };
            })();
            hold.catch(() => undefined);
          },
        });
        drill.close();
        if (!hold) throw new Error(`the guest never printed "linux-guest: holding":\n${r.out.slice(-6000)}\n${r.err}`);
        const d = await hold;
        expectGuestPass(r, 'net-ping');
        expect(r.err).toContain('running as uid 65534, gid 65534, groups 65534, no capabilities');
        expect(r.err).toContain('iothread io0: worker thread started');
        expectIdle(drill); // the receive queue idles with its buffers
        expectDrill(d, { dev: 'n0', kick: [1, 'tx0'], irq: [0, 'rx0'], oneRequest: false }, drill.events);
        expectNoStall(r, [
          /^.*n0: queue 1 stalled on the kick side \(no-notify\)/,
          /^.*n0: queue 0 stalled on the interrupt side \(dropped\)/,
        ]);
        // Every ping was answered: the drills' (late, after the recovery) and the host's.
        for (const p of pings) expect(p.out).toMatch(/(\d+) packets transmitted, \1 (packets )?received/);
        expect(d.host.out).toMatch(new RegExp(`${d.host.count} packets transmitted, ${d.host.count} (packets )?received`));
        expect(r.out).toContain(`linux-guest: note eth0 driver=virtio_net mac=${MAC}`);
        expect(r.out).toMatch(/^3 packets transmitted, 3 packets received/m); // the guest's busybox ping
        expect(Number(/linux-guest: PASS test=net-ping peer=10\.0\.9\.1 echo-requests=(\d+)/.exec(r.out)?.[1])).toBeGreaterThanOrEqual(
          WANT,
        );
        // Per-queue MSI-X vectors, and the receive queue's actually fired.
        expect(r.out).toMatch(/linux-guest: irq \d+: +[1-9]\d* +PCI-MSI .*virtio0-input\.0/);
        expect(r.out).toMatch(/linux-guest: irq \d+: +\d+ +PCI-MSI .*virtio0-output\.0/);
      },
      600_000,
    );
  });
});

// `npm run demo` is `scripts/setup.sh` (done by the suite's dependencies) and then scripts/demo-linux.js.
describeKvm('npm run demo (scripts/demo-linux.js)', () => {
  const demo = path.join(ROOT, 'scripts/demo-linux.js');
  const runDemo = (id: string, onLine?: (l: string, p: ReturnType<typeof spawn>) => void) =>
    new Promise<{ code: number | null; out: string }>((resolve, reject) => {
      const p = spawn(process.execPath, [demo], { env: { ...process.env, DEMO_ID: id }, stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      let partial = '';
      const grab = (d: Buffer) => {
        out += d.toString('latin1');
        partial += d.toString('latin1');
        const lines = partial.split('\n');
        partial = lines.pop()!;
        if (onLine) for (const l of lines) onLine(l, p);
      };
      p.stdout.on('data', grab);
      p.stderr.on('data', grab);
      const t = setTimeout(() => p.kill('SIGKILL'), 880_000);
      p.on('error', reject);
      p.on('close', (code) => {
        clearTimeout(t);
        resolve({ code, out });
      });
    });
  const netnsList = () => spawnSync('ip', ['netns', 'list'], { stdio: 'pipe' }).stdout?.toString() ?? '';
  /** PIDs of processes whose command line mentions `s` (the demo's temp directory is in the VMM's). */
  const processesWith = (s: string) =>
    fs
      .readdirSync('/proc')
      .filter((p) => /^\d+$/.test(p))
      .filter((p) => {
        try {
          return fs.readFileSync(`/proc/${p}/cmdline`, 'latin1').includes(s);
        } catch {
          return false;
        }
      });

  it('boots Linux with an ext2 disk, a NIC on a TAP in its own netns and QMP; the guest writes a file and pings the host; the monitor shows the queues and quits; the host reads the file from the image; everything is removed', async () => {
    const id = `e2e${process.pid}`;
    const r = await runDemo(id);
    if (r.code !== 0) throw new Error(`the demo exited ${r.code}:\n${r.out}`);
    expect(r.out).not.toContain('demo: ERROR');
    expect(r.out).not.toMatch(/at .*\.js:\d+/); // no stack trace
    expect(r.out).toMatch(/^ {2}guest\| {3}pci 0000:00:01\.0 vendor=0x1af4 device=0x1042 driver=virtio-pci$/m);
    expect(r.out).toMatch(/^ {2}guest\| {3}disk \/dev\/vda 64 MiB driver=virtio_blk$/m);
    // What the guest wrote is what the host's debugfs reads from the image afterwards.
    const wrote = /^ {2}guest\| {3}(Hello from Linux (\S+) on tsvmm \(virtio-blk vda\))$/m.exec(r.out);
    expect(wrote).not.toBeNull();
    expect(r.out).toContain(`Linux version ${wrote![2]} `);
    expect(r.out).toContain(`$ debugfs -R 'cat /hello.txt' `);
    expect(r.out).toMatch(new RegExp(`^ +\\| ${wrote![1].replace(/[().]/g, '\\$&')}$`, 'm'));
    expect(r.out).toMatch(/^ +\| demo: 12\/\d+ files .*\(exit 0: clean\)$/m);
    // The monitor's view: the disk's queue carried the guest's requests.
    const disk = /^ +disk0 \(virtio-blk\) +0 +256 +(\d+) +(\d+) +(\d+) +(\d+) +(\d+)$/m.exec(r.out);
    expect(disk).not.toBeNull();
    expect(Number(disk![3])).toBeGreaterThan(0); // chains
    expect(r.out).toContain('vmm| vmm: quit from the monitor');
    expect(r.out).toContain('the VMM exited with status 0');
    if (canUseTap()) {
      expect(r.out).toContain('guest|   nic eth0 mac=52:54:00:de:00:01 driver=virtio_net');
      expect(r.out).toMatch(/^ {2}guest\| 3 packets transmitted, 3 packets received/m);
      for (const q of [0, 1, 2]) expect(r.out).toMatch(new RegExp(`^ +net0 \\(virtio-net\\) +${q} +256 `, 'm'));
      expect(r.out).toContain(`cleaned up: network namespace tsvmm-demo-${id} (with tsvmmdemo0), `);
      expect(r.out).toContain('and pinged the host over virtio-net');
    } else {
      expect(r.out).toMatch(/^demo: skipping the network: .+/m);
    }
    expect(netnsList()).not.toContain(`tsvmm-demo-${id}`);
    const tmpDir = new RegExp(`(${os.tmpdir()}/tsvmm-demo-${id}-\\w+)`).exec(r.out)![1];
    expect(fs.existsSync(tmpDir)).toBe(false);
  }, 900_000); // 4 minutes alone, 8 on a host busy with other VMs

  it('as an unprivileged user (nobody): says what it cannot do and why, exits cleanly, no stack trace', async () => {
    const asNobody = ['setpriv', '--reuid=nobody', '--regid=nogroup', '--clear-groups'];
    const kvmOk = spawnSync(asNobody[0], [...asNobody.slice(1), 'test', '-r', '/dev/kvm', '-a', '-w', '/dev/kvm']).status === 0;
    const r = await new Promise<{ code: number | null; out: string }>((resolve, reject) => {
      const p = spawn(asNobody[0], [...asNobody.slice(1), process.execPath, demo], {
        env: { ...process.env, DEMO_ID: `nob${process.pid}` },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let out = '';
      const grab = (d: Buffer) => {
        out += d.toString('latin1');
        // Far enough: the network step is behind it; no need to boot.
        if (out.includes('(the whole console goes to')) p.kill('SIGINT');
      };
      p.stdout.on('data', grab);
      p.stderr.on('data', grab);
      p.on('error', reject);
      p.on('close', (code) => resolve({ code, out }));
    });
    expect(r.out).not.toMatch(/\n\s+at /);
    if (kvmOk) {
      // /dev/kvm open to all: the network is what it skips.
      expect(r.out).toContain('demo: skipping the network: not root: creating a network namespace and a TAP needs CAP_NET_ADMIN');
      expect(r.code).toBe(130);
    } else {
      expect(r.out).toMatch(/^demo: ERROR: cannot open \/dev\/kvm \(EACCES\): the VMM needs read and write access to it/m);
      expect(r.code).toBe(1);
    }
  }, 600_000);

  it('Ctrl-C while the VM starts: the VMM is stopped, the namespace and the temp files are removed, no stack trace', async () => {
    const id = `int${process.pid}`;
    let sent = false;
    const r = await runDemo(id, (l, p) => {
      // Right after the VMM was started (step 4 printed its command).
      if (!sent && l.includes('(the whole console goes to')) {
        sent = true;
        setTimeout(() => p.kill('SIGINT'), 500);
      }
    });
    expect(sent).toBe(true);
    expect(r.code).toBe(130);
    expect(r.out).toContain('demo: interrupted (SIGINT); stopping the VM and cleaning up');
    expect(r.out).not.toMatch(/at .*\.js:\d+/);
    const tmpDir = new RegExp(`(${os.tmpdir()}/tsvmm-demo-${id}-\\w+)`).exec(r.out)![1];
    expect(r.out).toContain(`cleaned up: ${canUseTap() ? `network namespace tsvmm-demo-${id} (with tsvmmdemo0), ` : ''}${tmpDir}`);
    expect(fs.existsSync(tmpDir)).toBe(false);
    expect(netnsList()).not.toContain(`tsvmm-demo-${id}`);
    for (let i = 0; i < 50 && processesWith(tmpDir).length; i++) await new Promise((res) => setTimeout(res, 100));
    expect(processesWith(tmpDir)).toEqual([]); // the VMM is gone
  }, 600_000); // build.sh may wait for another build holding the cache lock
});

describeKvm('docs/getting-started.md', () => {
  // The page's `sh test` blocks, in order, as one bash script: one Linux boot, then a snapshot, a live
  // migration and a restore of that same guest.
  (canUseTap() ? it : it.skip)(
    "the page's commands work: Linux with a disk, a NIC and QMP; queues; snapshot, live migration, restore; the file read back from the image",
    async () => {
      const md = fs.readFileSync(path.join(ROOT, 'docs/getting-started.md'), 'utf8');
      const blocks = [...md.matchAll(/^```sh test\n([\s\S]*?)^```$/gm)].map((m) => m[1]);
      expect(blocks.length).toBe(11);
      const ns = `tsvmmgs${process.pid}`;
      const scratch = fs.mkdtempSync(path.join(tmp, 'gs-'));
      // The page pings the guest with the host's `ping`; a host without one gets busybox's under that name.
      const bin = fs.mkdtempSync(path.join(tmp, 'gs-bin-'));
      if (spawnSync('sh', ['-c', 'command -v ping']).status !== 0) fs.symlinkSync('/bin/busybox', path.join(bin, 'ping'));
      const script = ['set -euo pipefail', ...blocks.map((b, i) => `echo "=== block ${i + 1}"\n${b}`), 'echo "=== all blocks ran"'].join(
        '\n',
      );
      let out = '';
      let code: number | null = null;
      try {
        code = await new Promise<number | null>((resolve, reject) => {
          const p = spawn('bash', ['-c', script], {
            cwd: ROOT,
            env: { ...process.env, NS: ns, TMPDIR: scratch, PATH: `${process.env.PATH}:${bin}` },
            stdio: ['ignore', 'pipe', 'pipe'],
          });
          p.stdout.on('data', (d) => (out += d));
          p.stderr.on('data', (d) => (out += d));
          const t = setTimeout(() => p.kill('SIGKILL'), 1_750_000);
          p.on('error', reject);
          // Not 'close': a VMM the page started in the background holds the pipes until it ends.
          p.on('exit', (c) => {
            clearTimeout(t);
            setTimeout(() => resolve(c), 500);
          });
        });
      } finally {
        // Whatever a failed run left: its VMMs (their command lines name the scratch directory) and the namespace.
        for (const pid of fs.readdirSync('/proc').filter((x) => /^\d+$/.test(x)))
          try {
            if (fs.readFileSync(`/proc/${pid}/cmdline`, 'latin1').includes(scratch)) process.kill(Number(pid), 'SIGKILL');
          } catch {
            // gone
          }
        spawnSync('ip', ['netns', 'del', ns], { stdio: 'pipe' });
      }
      if (code !== 0) throw new Error(`the page's commands exited ${code}:\n${out.slice(-8000)}`);
      expect(out).toContain('=== all blocks ran');
      expect(out).toMatch(/^linux-guest: demo wrote \/hello\.txt on \/dev\/vda \(ext2\):$/m);
      expect(out).toMatch(/^linux-guest: demo {3}nic eth0 mac=52:54:00:12:34:56 driver=virtio_net$/m);
      // The host pinged the guest on the first VMM and after the migration.
      expect(out.match(/^3 packets transmitted, 3 (packets )?received/gm)?.length).toBe(2);
      expect(out).toContain('"name": "virtio-blk"');
      expect(out).toContain('"name": "virtio-net"');
      expect(Number(/"chains": (\d+)/.exec(out)?.[1])).toBeGreaterThan(0);
      expect(out).toMatch(/"status": "paused"[\s\S]*"status": "completed"[\s\S]*"status": "running"[\s\S]*"status": "running"/);
      expect(out).toMatch(/^Hello from Linux \S+ on tsvmm \(virtio-blk vda\)$/m); // debugfs
      expect(out).toMatch(/^demo: 12\/\d+ files/m); // e2fsck -fn, exit 0
      expect(fs.readdirSync(scratch)).toEqual([]); // the page's clean-up removed its directory
      expect(spawnSync('ip', ['netns', 'list'], { stdio: 'pipe' }).stdout.toString()).not.toContain(ns);
    },
    1_800_000,
  ); // 6 minutes alone; three times that on a host busy with other VMs
});
