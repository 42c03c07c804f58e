// Live migration and snapshot/restore of a virtio-scsi adapter between real `vmm` processes, in the
// middle of the guest kit's mig-scsi-loop: every round's write lands in the image exactly once.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { describeKvm } from '@tsvmm/kvm-native/testing';
import {
  checkScsiLoopImage,
  migrateAndWait,
  QmpClient,
  qmpConnect,
  shareWithTestVmmUser,
  startVmm,
  VmmProc,
  waitGuestHolding,
  waitUntil,
} from '@tsvmm/testing';

const tmp = shareWithTestVmmUser(fs.mkdtempSync(path.join(os.tmpdir(), 'virtio-scsi-mig-')));
const uniq = () => Math.random().toString(36).slice(2, 8);
const running: VmmProc[] = [];
const clients: QmpClient[] = [];

const ROUNDS = 80;
const LOOP = `test=mig-scsi-loop rounds=${ROUNDS} blocks=4 every=10 delay=20000 hold=1`;

function vmm(args: string[]): VmmProc {
  const p = startVmm(tmp, ['--memory', '64M', ...args]);
  running.push(p);
  return p;
}

async function client(p: VmmProc): Promise<QmpClient> {
  const c = await qmpConnect(p);
  clients.push(c);
  return c;
}

function image(): string {
  const f = path.join(tmp, `lun-${uniq()}.img`);
  fs.writeFileSync(f, Buffer.alloc(4 << 20));
  return f;
}

function devices(file: string, adapter = 'virtio-scsi,id=scsi0'): string[] {
  return ['--device', adapter, '--device', `scsi-hd,bus=scsi0,lun=0,file=${file}`];
}

/** WRITE commands LUN 0 of scsi0 executed in this process. */
async function lunWrites(c: QmpClient): Promise<number> {
  const s = (await c.run('x-query-virtio-status', { path: 'scsi0' })) as { 'device-info': { luns: Record<string, { writes: number }> } };
  return s['device-info'].luns['0'].writes;
}

afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
  for (const p of running.splice(0)) {
    p.proc.kill('SIGKILL');
    await p.exited;
  }
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describeKvm('virtio-scsi migration', () => {
  it.each([[''], [',iothread=iotscsi0']])(
    'live%s: moves a guest writing a LUN in a loop (ioeventfd=on); the destination finishes, every round lands exactly once',
    async (extra) => {
      const disk = image();
      const incoming = path.join(tmp, `in-${uniq()}.sock`);
      const adapter = `virtio-scsi,id=scsi0${extra}`;
      const dst = vmm([...devices(disk, adapter), '--cmdline', LOOP, '--incoming', `unix:${incoming}`]);
      const src = vmm([...devices(disk, adapter), '--cmdline', LOOP]);
      await waitUntil('source progress', () => /mig-scsi-loop progress i=20\b/.test(src.out()), 60_000);
      await waitUntil('destination listening', () => fs.existsSync(incoming));
      const s = await client(src);
      const t0 = Date.now();
      const r = await migrateAndWait(s, `unix:${incoming}`);
      expect(r).toMatchObject({ status: 'completed' });
      console.log(`virtio-scsi live migration: total ${Date.now() - t0} ms, downtime ${String(r.downtime)} ms`);
      expect(await s.run('query-status')).toMatchObject({ status: 'postmigrate', running: false });
      await waitGuestHolding(dst, 'destination PASS');
      expect(dst.out()).toContain(`mig-scsi-loop done rounds=${ROUNDS}`);
      expect(src.out()).not.toContain('mig-scsi-loop done');
      const d = await client(dst);
      const st = (await d.run('x-query-virtio-status', { path: 'scsi0' })) as Record<string, unknown>;
      expect(st['host-notifiers-active']).toBe(true);
      // Exactly once: one WRITE per round, counted by the source's and the destination's LUN together
      // (on an iothread: the source's worker's final count, taken by the drain, and the destination
      // worker's, which it reports every 100 ms).
      const sw = await lunWrites(s);
      let dw = await lunWrites(d);
      for (let i = 0; i < 50 && sw + dw < ROUNDS; i++) {
        await new Promise((res) => setTimeout(res, 100));
        dw = await lunWrites(d);
      }
      expect(sw).toBeGreaterThanOrEqual(20);
      expect(dw).toBeGreaterThan(0);
      expect(sw + dw).toBe(ROUNDS);
      checkScsiLoopImage(disk, { rounds: ROUNDS, blocks: 4 });
      if (extra) {
        // The destination's worker owns request queue 0: its exact indices, and the guest kicks it read
        // from the queue's ioeventfd itself (none reached the main thread).
        const q = (await d.run('x-query-virtio-queue-status', { path: 'scsi0', queue: 2 })) as Record<string, unknown>;
        expect(q['data-plane']).toBe('iothread iotscsi0');
        expect(q['used-idx']).toBe(q['avail-idx']);
        expect(q['last-avail-idx']).toBe(q['avail-idx']);
        expect(q['kicks-iothread'] as number).toBeGreaterThan(0);
        expect(q['kicks-iothread']).toBe(q['kicks-eventfd']);
        const info = (await d.run('x-query-virtio-status', { path: 'scsi0' })) as { 'device-info': Record<string, unknown> };
        expect(info['device-info']).toMatchObject({ iothread: 'iotscsi0', 'in-flight': 0 });
      }
    },
    120_000,
  );

  it('snapshot mid-loop, restore in a new process: the restored guest finishes, every round lands exactly once', async () => {
    const disk = image();
    const snap = path.join(tmp, `vm-${uniq()}.snap`);
    const src = vmm([...devices(disk), '--cmdline', LOOP]);
    await waitUntil('source progress', () => /mig-scsi-loop progress i=30\b/.test(src.out()), 60_000);
    const s = await client(src);
    await s.run('x-snapshot-save', { file: snap });
    const sw = await lunWrites(s);
    src.proc.kill('SIGKILL');
    await src.exited;
    const dst = vmm([...devices(disk), '--cmdline', LOOP, '--restore', snap]);
    await waitGuestHolding(dst, 'restored PASS');
    expect(dst.out()).toContain(`mig-scsi-loop done rounds=${ROUNDS}`);
    const d = await client(dst);
    expect(sw + (await lunWrites(d))).toBe(ROUNDS);
    checkScsiLoopImage(disk, { rounds: ROUNDS, blocks: 4 });
  }, 120_000);
});
