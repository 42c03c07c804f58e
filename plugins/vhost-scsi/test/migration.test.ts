// Live migration of vhost-scsi,backend=user between real `vmm` processes, each with its own
// vhost-user-scsi back-end process on the same image, in the middle of the guest kit's mig-scsi-loop.
// The source's back-end logs the pages it writes into the shared dirty log (LOG_SHMFD); the rings
// come back with GET_VRING_BASE at the stop and go to the destination's back-end from the restored indices.
import * as fs from 'fs';
import * as path from 'path';
import { describeKvm } from '@tsvmm/kvm-native/testing';
import { checkScsiLoopImage, QmpClient, qmpConnect, startVmm, VmmProc, waitGuestHolding, waitUntil } from '@tsvmm/testing';
import { Backend, image, requireBuilt, startBackend, tmp, uniq } from './harness';

// No delay between rounds: the back-end writes guest memory all through the migration.
const ROUNDS = 150;
const LOOP = `test=mig-scsi-loop rounds=${ROUNDS} blocks=4 every=10 hold=1`;

const procs: VmmProc[] = [];
const backends: Backend[] = [];
const clients: QmpClient[] = [];

function vmm(args: string[]): VmmProc {
  const p = startVmm(tmp, ['--memory', '64M', ...args]);
  procs.push(p);
  return p;
}

async function backend(file: string, extra: string[] = []): Promise<Backend> {
  const b = await startBackend([`0:file=${file},serial=MIG0`], extra);
  backends.push(b);
  return b;
}

async function client(p: VmmProc): Promise<QmpClient> {
  const c = await qmpConnect(p);
  clients.push(c);
  return c;
}

const lunWrites = async (b: Backend) => ((await b.stats()).device as { luns: Record<string, { writes: number }> }).luns['0'].writes;
const dirtyLog = async (b: Backend) => ((await b.stats()) as unknown as { 'dirty-log': { logBases: number; marks: number } })['dirty-log'];

/**
 * Migrates with the live phase held open while back-end `b` serves the
 * guest with the dirty log on: max-bandwidth 1 byte/s holds the first RAM
 * pass until `b` has the log (SET_LOG_BASE) and has since completed two
 * WRITEs (or logged a page), then the limit is lifted. The whole pass is a
 * few hundred KiB (RAM never written is skipped) and is over before the
 * guest's next round: without the hold the back-end would have had nothing
 * to log, and the test would not check the log.
 */
async function migrateHeldWhileLogging(s: QmpClient, b: Backend, uri: string): Promise<Record<string, unknown>> {
  const active = async () => {
    const st = (await s.run('query-migrate')) as Record<string, unknown>;
    if (st.status !== 'active' && st.status !== 'setup')
      throw new Error(`the migration ended (${String(st.status)}) before back-end A served the guest with the log on`);
    await new Promise((res) => setTimeout(res, 10));
  };
  await s.run('migrate-set-parameters', { 'max-bandwidth': 1 });
  await s.run('migrate', { uri });
  while ((await dirtyLog(b)).logBases === 0) await active();
  const w0 = await lunWrites(b);
  while ((await dirtyLog(b)).marks === 0 && (await lunWrites(b)) < w0 + 2) await active();
  await s.run('migrate-set-parameters', { 'max-bandwidth': 0 });
  for (;;) {
    const st = (await s.run('query-migrate')) as Record<string, unknown>;
    if (st.status === 'completed' || st.status === 'failed' || st.status === 'cancelled') return st;
    await new Promise((res) => setTimeout(res, 20));
  }
}

describeKvm('vhost-scsi,backend=user live migration', () => {
  beforeAll(requireBuilt);
  afterEach(async () => {
    for (const c of clients.splice(0)) c.close();
    for (const p of procs.splice(0)) {
      p.proc.kill('SIGKILL');
      await p.exited;
    }
    for (const b of backends.splice(0)) await b.stop();
  });

  it.each(['on', 'off'])(
    'moves a guest writing a LUN in a loop from back-end A to back-end B (ioeventfd=%s): every round lands exactly once, B serves kicks after the switch',
    async (ioeventfd) => {
      const disk = image(4 << 20);
      const a = await backend(disk);
      const b = await backend(disk);
      const incoming = path.join(tmp, `in-${uniq()}.sock`);
      const dev = (sock: string) => ['--device', `vhost-scsi,id=vs0,backend=user,socket=${sock},ioeventfd=${ioeventfd}`, '--cmdline', LOOP];
      const dst = vmm([...dev(b.socket), '--incoming', `unix:${incoming}`]);
      const src = vmm(dev(a.socket));
      await waitUntil('source progress', () => /mig-scsi-loop progress i=20\b/.test(src.out()), 60_000);
      await waitUntil('destination listening', () => fs.existsSync(incoming));
      const s = await client(src);
      const r = await migrateHeldWhileLogging(s, a, `unix:${incoming}`);
      if (r.status !== 'completed')
        throw new Error(`migration ${String(r.status)}: ${String(r['error-desc'])}\n${src.err()}\n${dst.err()}`);
      console.log(
        `vhost-scsi (backend=user) live migration (held while A served writes with the log on): total ${String(r['total-time'])} ms, downtime ${String(r.downtime)} ms, ` +
          `dirty syncs ${String((r.ram as Record<string, number>)['dirty-sync-count'])}`,
      );
      expect(await s.run('query-status')).toMatchObject({ status: 'postmigrate', running: false });

      // The source's back-end logged its writes into the log the VMM gave it, and its rings are stopped.
      const sa = await a.stats();
      expect((sa as unknown as { 'dirty-log': unknown })['dirty-log']).toMatchObject({
        offered: true,
        logBases: 1,
        marks: expect.any(Number),
      });
      expect((sa as unknown as { 'dirty-log': { marks: number } })['dirty-log'].marks).toBeGreaterThan(0);
      // ... and the VMM took those pages from the log.
      const st = (await s.run('x-query-virtio-status', { path: 'vs0' })) as { 'device-info': { dirtyPages: number } };
      expect(st['device-info'].dirtyPages).toBeGreaterThan(0);
      expect(sa.rings.every((x) => !x.started)).toBe(true);

      await waitGuestHolding(dst, 'destination PASS');
      expect(dst.out()).toContain(`mig-scsi-loop done rounds=${ROUNDS}`);
      expect(src.out()).not.toContain('mig-scsi-loop done');
      const sb = await b.stats();
      expect(sb.connections).toBe(1);
      expect(sb.rings[2].started).toBe(true);
      expect(sb.rings[2].kicks).toBeGreaterThan(0); // the destination's guest kicks reach B's kick eventfd
      // The control queue is never kicked by this guest after its set-up on the source: B's kick there
      // is the one kick per queue sent on resume after the restore.
      expect(sb.rings[0].kicks).toBeGreaterThanOrEqual(1);
      expect(sb.rings[2].calls).toBeGreaterThan(0);
      // Exactly once: one WRITE per round, done by A or by B.
      const [wa, wb] = [await lunWrites(a), await lunWrites(b)];
      expect(wa).toBeGreaterThanOrEqual(20);
      expect(wb).toBeGreaterThan(0);
      expect(wa + wb).toBe(ROUNDS);
      checkScsiLoopImage(disk, { rounds: ROUNDS, blocks: 4 });
      const d = await client(dst);
      const q = (await d.run('x-query-virtio-queue-status', { path: 'vs0', queue: 2 })) as {
        vhost: { notifier: string; started: boolean };
      };
      expect(q.vhost).toMatchObject({ started: true, notifier: ioeventfd === 'on' ? 'backend' : 'exit' });
    },
    150_000,
  );

  it('snapshot mid-loop with back-end A, restore in a new VMM on back-end B: the restored guest finishes, every round once', async () => {
    const disk = image(4 << 20);
    const a = await backend(disk);
    const b = await backend(disk);
    const snap = path.join(tmp, `vm-${uniq()}.snap`);
    const dev = (sock: string) => ['--device', `vhost-scsi,id=vs0,backend=user,socket=${sock}`, '--cmdline', LOOP];
    const src = vmm(dev(a.socket));
    await waitUntil('source progress', () => /mig-scsi-loop progress i=30\b/.test(src.out()), 60_000);
    const s = await client(src);
    await s.run('x-snapshot-save', { file: snap });
    const wa = await lunWrites(a);
    src.proc.kill('SIGKILL');
    await src.exited;
    const dst = vmm([...dev(b.socket), '--restore', snap]);
    await waitGuestHolding(dst, 'restored PASS');
    expect(dst.out()).toContain(`mig-scsi-loop done rounds=${ROUNDS}`);
    expect((await b.stats()).rings[2].kicks).toBeGreaterThan(0);
    expect(wa + (await lunWrites(b))).toBe(ROUNDS);
    checkScsiLoopImage(disk, { rounds: ROUNDS, blocks: 4 });
  }, 120_000);

  it('a back-end without LOG_SHMFD: migrate is refused naming the device and the feature; the guest keeps running', async () => {
    const disk = image(4 << 20);
    const a = await backend(disk, ['--no-log-shmfd']);
    const src = vmm(['--device', `vhost-scsi,id=vs0,backend=user,socket=${a.socket}`, '--cmdline', LOOP]);
    await waitUntil('source progress', () => /mig-scsi-loop progress i=10\b/.test(src.out()), 60_000);
    const s = await client(src);
    const r = await s.execute('migrate', { uri: `unix:${path.join(tmp, `nobody-${uniq()}.sock`)}` });
    expect('error' in r && (r.error as { desc: string }).desc).toMatch(/vs0.*VHOST_USER_PROTOCOL_F_LOG_SHMFD/);
    expect(await s.run('query-status')).toMatchObject({ status: 'running' });
    await waitGuestHolding(src, 'guest PASS');
    expect(src.out()).toContain(`mig-scsi-loop done rounds=${ROUNDS}`);
    checkScsiLoopImage(disk, { rounds: ROUNDS, blocks: 4 });
  }, 120_000);
});
