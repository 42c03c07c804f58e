// Live migration and snapshot/restore of virtio-blk with its data plane in an iothread
// (--object iothread,id=io0 and iothread=io0, or the name alone), between real `vmm` processes
// running the guest kit's mig-blk-loop.
import * as fs from 'fs';
import * as path from 'path';
import { describeKvm } from '@tsvmm/kvm-native/testing';
import { mismatch } from '../src/monitor/qapi-types';
import { RETURNS } from '../src/monitor/returns';
import { checkMigLoopImage, migLoopImage, migrateAndWait, qmpConnect, QmpClient, uniq, VmmFleet, waitUntil } from '@tsvmm/testing';

const fleet = new VmmFleet('vmm-mig-io-');
const tmp = fleet.tmp;
const vmm = (args: string[], wrap?: string[]) => fleet.start(args, wrap);
const client = qmpConnect;
const until = waitUntil;
const image = () => migLoopImage(fleet);
const checkImage = checkMigLoopImage;

/** The device's counters (with an iothread: the worker's, as it last reported them). */
async function blkInfo(c: QmpClient): Promise<{ writes: number; reads: number; iothread: string | null; 'in-flight': number }> {
  const s = (await c.run('x-query-virtio-status', { path: 'd0' })) as {
    'device-info': { writes: number; reads: number; iothread: string | null; 'in-flight': number };
  };
  return s['device-info'];
}

afterEach(() => fleet.killAll());

const LOOP = 'test=mig-blk-loop iters=60 sectors=1 every=10 delay=4000 hold=1';

describeKvm('live migration with iothread=io0', () => {
  for (const ioeventfd of ['on', 'off']) {
    it(`moves a guest writing virtio-blk (iothread=io0, ioeventfd=${ioeventfd}) mid-loop: every write lands exactly once`, async () => {
      const disk = image();
      const dev = ['--object', 'iothread,id=io0', '--device', `virtio-blk,id=d0,file=${disk},iothread=io0,ioeventfd=${ioeventfd}`];
      dev.push('--cmdline', LOOP);
      const incoming = path.join(tmp, `in-${uniq()}.sock`);
      const dst = vmm([...dev, '--incoming', `unix:${incoming}`]);
      const src = vmm(dev);
      await until('source progress', () => /progress i=20\b/.test(src.out()));
      await until('destination listening', () => fs.existsSync(incoming));
      const s = await client(src);
      const r = await migrateAndWait(s, `unix:${incoming}`);
      expect(r.error ?? '').toBe('');
      expect(r.status).toBe('completed');
      expect((r.ram as Record<string, number>)['dirty-sync-count']).toBeGreaterThanOrEqual(2);
      expect(await s.run('query-status')).toMatchObject({ status: 'postmigrate', running: false });
      await until('destination PASS', () => dst.out().includes('guest-kit: holding'));
      expect(dst.out()).toContain('mig-blk-loop done writes=60');
      expect(dst.out()).toContain('guest-kit: PASS test=mig-blk-loop');
      expect(src.out()).not.toContain('guest-kit: PASS');
      const d = await client(dst);
      // Exactly once: the source's worker (final: it was drained) and the destination's worker
      // counted 60 writes between them, and the destination's worker did the 60 read-backs.
      const si = await blkInfo(s);
      expect(si).toMatchObject({ iothread: 'io0', 'in-flight': 0 });
      let di = await blkInfo(d);
      for (let i = 0; i < 50 && di.reads < 60; i++) {
        await new Promise((res) => setTimeout(res, 100)); // the worker reports its counters every 100 ms
        di = await blkInfo(d);
      }
      expect(di.iothread).toBe('io0');
      expect(si.writes).toBeGreaterThanOrEqual(20);
      expect(di.writes).toBeGreaterThan(0);
      expect(si.writes + di.writes).toBe(60);
      expect(di.reads).toBe(60);
      // The queue as the worker has it: the ring caught up with the guest, and the chains it took here.
      const q = (await d.run('x-query-virtio-queue-status', { path: 'd0', queue: 0 })) as Record<string, unknown>;
      expect(q['data-plane']).toBe('iothread io0');
      expect(mismatch(RETURNS['x-query-virtio-queue-status'], q)).toBeUndefined(); // every field declared (query-qmp-schema)
      // With ioeventfd=on the worker watches the queue's ioeventfd itself: every guest kick the
      // device counted here (the restore's kick included) was read on the iothread, none on the main thread.
      if (ioeventfd === 'on') {
        expect(q['kicks-iothread'] as number).toBeGreaterThan(0);
        expect(q['kicks-iothread']).toBe(q['kicks-eventfd']);
      } else expect(q['kicks-iothread']).toBe(0);
      expect(q['used-idx']).toBe(q['avail-idx']);
      expect(q['last-avail-idx']).toBe(q['avail-idx']);
      expect(q.chains as number).toBeGreaterThanOrEqual(di.writes + di.reads);
      const st = (await d.run('x-query-virtio-status', { path: 'd0' })) as Record<string, unknown>;
      expect(st['host-notifiers-active']).toBe(ioeventfd === 'on');
      checkImage(disk, 60);
      s.close();
      d.close();
    }, 90_000);
  }
});

describeKvm('live migration with iothread=io0: bus mastering off', () => {
  it('moves a device with bus mastering off and its held-back kick; the destination worker finishes the request once', async () => {
    const disk = image();
    const dev = ['--device', `virtio-blk,id=d0,file=${disk},iothread=io0`, '--cmdline', 'test=blk-busmaster spins=400000 rekick=0'];
    const incoming = path.join(tmp, `in-${uniq()}.sock`);
    const dst = vmm([...dev, '--incoming', `unix:${incoming}`]);
    const src = vmm(dev);
    const s = await client(src);
    await until('destination listening', () => fs.existsSync(incoming));
    // The guest's first kick is the one made while bus mastering is off (held back, not processed).
    for (;;) {
      const st = (await s.run('x-query-virtio-status', { path: 'd0' })) as { disabled: boolean };
      const q = (await s.run('x-query-virtio-queue-status', { path: 'd0', queue: 0 })) as Record<string, number>;
      if (st.disabled && q['kicks-eventfd'] + q['kicks-exit'] > 0) break;
      await new Promise((r) => setTimeout(r, 10));
    }
    const r = await migrateAndWait(s, `unix:${incoming}`);
    expect(r.status).toBe('completed');
    expect(await dst.exited).toBe(0);
    expect(dst.out()).toContain('blk-busmaster used_while_disabled=0');
    expect(dst.out()).toContain('blk-busmaster verify ok');
    expect(dst.out()).toContain('guest-kit: PASS test=blk-busmaster');
    expect((await blkInfo(s)).writes).toBe(0);
  }, 90_000);
});

describeKvm('snapshot and restore with iothread=io0', () => {
  it('x-snapshot-save mid-loop, kill, --restore in a new process: the guest finishes every write once', async () => {
    const disk = image();
    const snap = path.join(tmp, 'snap-io.bin');
    // A second disk and a SCSI adapter on the same iothread: one worker serves all three, of two device
    // types (the guest drives d0; d1 and s1 stay idle).
    const idle = path.join(tmp, `idle-${uniq()}.img`);
    fs.writeFileSync(idle, Buffer.alloc(64 * 512));
    const lun = path.join(tmp, `idle-lun-${uniq()}.img`);
    fs.writeFileSync(lun, Buffer.alloc(64 * 512));
    const dev = ['--object', 'iothread,id=io0', '--device', `virtio-blk,id=d0,file=${disk},iothread=io0`];
    dev.push('--device', `virtio-blk,id=d1,file=${idle},iothread=io0`);
    dev.push('--device', 'virtio-scsi,id=s1,iothread=io0', '--device', `scsi-hd,bus=s1,lun=0,file=${lun}`, '--cmdline', LOOP);
    const src = vmm(dev);
    await until('progress', () => /progress i=30\b/.test(src.out()));
    expect(src.err().match(/iothread io0: worker thread started/g)).toHaveLength(1);
    expect(src.err()).toContain('d1: data plane on iothread io0, shared with d0');
    expect(src.err()).toContain('s1: data plane on iothread io0, shared with d0, d1');
    const s = await client(src);
    // query-iothreads: the one worker, by its kernel thread id (a thread of this VMM: what an operator pins), and its devices.
    const iothreads = (await s.run('query-iothreads')) as Record<string, unknown>[];
    expect(iothreads).toEqual([
      expect.objectContaining({ id: 'io0', 'poll-max-ns': 0, 'poll-grow': 0, 'poll-shrink': 0, 'x-devices': ['d0', 'd1', 's1'] }),
    ]);
    const tid = iothreads[0]['thread-id'] as number;
    expect(tid).not.toBe(src.proc.pid);
    expect(fs.existsSync(`/proc/${src.proc.pid}/task/${tid}`)).toBe(true);
    const hmp = (await s.run('human-monitor-command', { 'command-line': 'info iothreads' })) as string;
    expect(hmp).toBe(`io0:\n  thread_id=${tid}\n  poll-max-ns=0\n  poll-grow=0\n  poll-shrink=0\n  aio-max-batch=0\n  devices=d0,d1,s1\n`);
    await s.run('x-snapshot-save', { file: snap });
    expect(await s.run('query-status')).toMatchObject({ status: 'paused', running: false });
    const before = await blkInfo(s);
    expect(before['in-flight']).toBe(0);
    expect(before.writes).toBeGreaterThanOrEqual(30);
    src.proc.kill('SIGKILL');
    await src.exited;
    const dst = vmm([...dev, '--restore', snap]);
    await until('restored guest PASS', () => dst.out().includes('guest-kit: holding'));
    expect(dst.out()).toContain('mig-blk-loop done writes=60');
    expect(dst.out()).not.toContain('guest-kit: hello');
    const d = await client(dst);
    let di = await blkInfo(d);
    for (let i = 0; i < 50 && di.reads < 60; i++) {
      await new Promise((res) => setTimeout(res, 100));
      di = await blkInfo(d);
    }
    expect(before.writes + di.writes).toBe(60);
    expect(di.reads).toBe(60);
    expect(dst.err().match(/iothread io0: worker thread started/g)).toHaveLength(1);
    const d1 = (await d.run('x-query-virtio-status', { path: 'd1' })) as { 'device-info': { iothread: string } };
    expect(d1['device-info'].iothread).toBe('io0');
    const s1 = (await d.run('x-query-virtio-status', { path: 's1' })) as { 'device-info': { iothread: string } };
    expect(s1['device-info'].iothread).toBe('io0');
    checkImage(disk, 60);
    s.close();
    d.close();
  }, 90_000);

  it('a snapshot taken while paused, then cont: the source worker takes requests again and the guest finishes', async () => {
    const disk = image();
    const src = vmm(['--device', `virtio-blk,id=d0,file=${disk},iothread=io0`, '--cmdline', LOOP]);
    await until('progress', () => /progress i=20\b/.test(src.out()));
    const s = await client(src);
    await s.run('x-snapshot-save', { file: path.join(tmp, `snap-${uniq()}.bin`) });
    await s.run('cont');
    await until('guest PASS after cont', () => src.out().includes('guest-kit: holding'));
    expect(src.out()).toContain('mig-blk-loop done writes=60');
    checkImage(disk, 60);
    s.close();
  }, 90_000);
});
