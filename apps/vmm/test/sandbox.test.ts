// --sandbox on: real `vmm` processes confined by the seccomp filter (docs/security.md, "Seccomp sandbox").
import * as fs from 'fs';
import * as path from 'path';
import { describeKvm } from '@tsvmm/kvm-native/testing';
import { PLUGIN_API_VERSION } from '@tsvmm/pci';
import { checkMigLoopImage, migLoopImage, migrateAndWait, qmpConnect, uniq, VmmFleet, waitUntil } from '@tsvmm/testing';

const fleet = new VmmFleet('vmm-seccomp-');
const tmp = fleet.tmp;
afterEach(() => fleet.killAll());

const LOOP = 'test=mig-blk-loop iters=60 sectors=1 every=10 delay=4000 hold=1';

/** Seccomp, Seccomp_filters and NoNewPrivs of every thread of `pid`, with the thread's name. */
function threadStatus(pid: number): { tid: string; name: string; seccomp: string; filters: string; noNewPrivs: string }[] {
  return fs.readdirSync(`/proc/${pid}/task`).map((tid) => {
    const s = fs.readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8');
    const field = (k: string) => new RegExp(`^${k}:\\s*(.*)$`, 'm').exec(s)?.[1] ?? 'missing';
    return { tid, name: field('Name'), seccomp: field('Seccomp'), filters: field('Seccomp_filters'), noNewPrivs: field('NoNewPrivs') };
  });
}

describeKvm('--sandbox on', () => {
  it('every thread shows Seccomp 2 and NoNewPrivs 1 (vCPUs, the iothread worker, libuv pool); snapshot, restore and a live migration work inside it', async () => {
    const disk = migLoopImage(fleet);
    const dev = ['--sandbox', 'on', '--device', `virtio-blk,id=d0,file=${disk},iothread=io0`, '--cmdline', LOOP];
    const src = fleet.start(dev);
    await waitUntil('source progress', () => /progress i=20\b/.test(src.out()));
    const threads = threadStatus(src.proc.pid!);
    // Main thread, V8 platform threads, libuv's pool, the iothread worker and the vCPU thread.
    expect(threads.length).toBeGreaterThanOrEqual(8);
    for (const t of threads) expect(t).toEqual({ ...t, seccomp: '2', filters: '1', noNewPrivs: '1' });

    // A snapshot file written from inside the sandbox, then the guest goes on.
    const s = await qmpConnect(src);
    const snap = path.join(tmp, 'sandboxed.snap');
    await s.run('x-snapshot-save', { file: snap });
    expect(fs.statSync(snap).size).toBeGreaterThan(0); // its content is checked by the --restore below
    const diskAtSnapshot = path.join(tmp, `disk-at-snapshot-${uniq()}.img`);
    fs.copyFileSync(disk, diskAtSnapshot);
    await s.run('cont');

    // A live migration to a sandboxed destination over a unix socket.
    const incoming = path.join(tmp, `in-${uniq()}.sock`);
    const dst = fleet.start([...dev, '--incoming', `unix:${incoming}`]);
    await waitUntil('destination listening', () => fs.existsSync(incoming));
    const r = await migrateAndWait(s, `unix:${incoming}`);
    expect(r.status).toBe('completed');
    await waitUntil('destination finished', () => dst.out().includes('guest-kit: holding') || dst.proc.exitCode !== null);
    expect(dst.out()).toContain('mig-blk-loop done writes=60');
    for (const t of threadStatus(dst.proc.pid!)) expect(t).toEqual({ ...t, seccomp: '2', noNewPrivs: '1' });
    checkMigLoopImage(disk, 60);
    s.close();

    // --restore inside the sandbox, on the disk as it was at the snapshot.
    const restored = fleet.start([
      '--sandbox',
      'on',
      '--device',
      `virtio-blk,id=d0,file=${diskAtSnapshot},iothread=io0`,
      '--cmdline',
      LOOP,
      '--restore',
      snap,
    ]);
    await waitUntil('restored guest finished', () => restored.out().includes('guest-kit: holding') || restored.proc.exitCode !== null);
    expect(restored.out()).toContain('mig-blk-loop done writes=60');
    expect(restored.err()).not.toContain('sandbox:');
    checkMigLoopImage(diskAtSnapshot, 60);
  }, 120_000);

  /** A compiled run-time plugin whose device, once the VM runs, tries to run a program that would create `marker`. */
  function execPlugin(marker: string): string {
    const dir = path.join(tmp, 'rt', 'vmm-rt-exec');
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(
      path.join(dir, 'package.json'),
      JSON.stringify({
        name: 'vmm-rt-exec',
        version: '1.0.0',
        main: 'index.js',
        vmmPlugin: { apiVersion: PLUGIN_API_VERSION, deviceTypes: ['rt-exec'] },
      }),
    );
    fs.writeFileSync(
      path.join(dir, 'index.js'),
      `
const { execFileSync } = require('child_process');
exports.plugin = {
  apiVersion: ${PLUGIN_API_VERSION}, name: 'vmm-rt-exec', version: '1.0.0',
  deviceTypes: [{ type: 'rt-exec', description: 'tries to run a program after start-up', properties: {}, create: (ctx, id) => {
    setTimeout(() => {
      try { execFileSync('/bin/sh', ['-c', 'echo ran > ' + ${JSON.stringify(marker)}]); process.stderr.write('rt-exec: the program ran\\n'); }
      catch (e) { process.stderr.write('rt-exec: ' + e.message + '\\n'); }
    }, 50);
    return { id, type: 'rt-exec' };
  } }],
};
`,
    );
    return path.dirname(dir);
  }

  it('a run-time plugin that tries to exec a program after start-up is stopped; the log names the syscall; nothing was executed', async () => {
    const marker = path.join(tmp, `exec-marker-${uniq()}`);
    const env = ['env', `VMM_PLUGIN_PATH=${execPlugin(marker)}`];
    const args = [
      '--device',
      'rt-exec,id=x0',
      '--cmdline',
      'test=mig-blk-loop iters=20 sectors=1 every=10',
      '--device',
      `virtio-blk,id=d0,file=${migLoopImage(fleet)}`,
    ];
    // Without the sandbox the plugin does run the program (so the test below can tell).
    const free = fleet.start(['--sandbox', 'off', ...args], env);
    expect(await free.exited).toBe(0);
    expect(free.err()).toContain('rt-exec: the program ran');
    expect(fs.readFileSync(marker, 'utf8')).toBe('ran\n');
    fs.unlinkSync(marker);

    const boxed = fleet.start(['--sandbox', 'on', ...args], env);
    expect(await boxed.exited).toBe(159);
    // libuv forks before it execs: the fork (clone without CLONE_THREAD) is the call that stops the VMM.
    expect(boxed.err()).toContain('vmm: sandbox: system call clone (56) is not allowed under --sandbox on; the VMM stops');
    expect(boxed.err()).not.toContain('rt-exec: the program ran');
    expect(fs.existsSync(marker)).toBe(false);
  }, 60_000);
});
