// The VMM confined: `vmm jail` (docs/security.md#the-jailer), and `--sandbox on --run-with user=nobody`
// together, each running the guest kit on virtio-blk and virtio-net over a real TAP.
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { describeKvm } from '@tsvmm/kvm-native/testing';
import {
  checkMigLoopImage,
  GUEST_ELF,
  migrateAndWait,
  Proc,
  QmpClient,
  qmpConnect,
  requireBuilt,
  startNode,
  uniq,
  VMM_BIN,
  VmmFleet,
  waitGuestHolding,
  waitUntil,
} from '@tsvmm/testing';
import { cgroupMounts, ownCgroups } from '../src/jail/cgroups';

const NOBODY = 65534;
const NS = `vmmjail${process.pid}`;
// Owned by nobody: the jailed VMM attaches to it as that user; a --run-with VMM opens it as root, before the drop.
const TAP = 'tapjl0';
const fleet = new VmmFleet('vmm-jail-');
const tmp = fleet.tmp;
const base = path.join(tmp, 'base');

afterEach(() => fleet.killAll());

const ns = (...a: string[]) => execFileSync('ip', ['netns', 'exec', NS, ...a]);
const mode = (f: string) => fs.statSync(f).mode & 0o7777;

/** Each thread's Name, Seccomp, NoNewPrivs, Uid, Gid, CapEff, CapPrm and CapBnd lines of /proc/PID/task/TID/status. */
function threads(pid: number): Record<string, string>[] {
  return fs.readdirSync(`/proc/${pid}/task`).map((tid) => {
    const s = fs.readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8');
    const f = (k: string) => (new RegExp(`^${k}:\\s*(.*)$`, 'm').exec(s)?.[1] ?? 'missing').trim().replace(/\s+/g, ' ');
    return Object.fromEntries(['Name', 'Seccomp', 'NoNewPrivs', 'Uid', 'Gid', 'CapEff', 'CapPrm', 'CapBnd'].map((k) => [k, f(k)]));
  });
}

function expectConfined(pid: number): void {
  const ts = threads(pid);
  // Main thread, V8's and libuv's threads, the vCPU thread.
  expect(ts.length).toBeGreaterThanOrEqual(6);
  for (const t of ts)
    expect(t).toEqual({
      ...t,
      Seccomp: '2',
      NoNewPrivs: '1',
      Uid: '65534 65534 65534 65534',
      Gid: '65534 65534 65534 65534',
      CapEff: '0000000000000000',
      CapPrm: '0000000000000000',
    });
}

/** The cgroup files of this host's hierarchies for the jail's limits: v2 spellings where the unified hierarchy has the controller. */
function cgroupKeys(): { args: string[]; expect: [string, string, string][] } {
  const mounts = cgroupMounts(fs.readFileSync('/proc/self/mountinfo', 'utf8'));
  const v2 = mounts.find((m) => m.version === 2);
  const v2c = v2 ? fs.readFileSync(path.join(v2.mountPoint, 'cgroup.controllers'), 'utf8').split(/\s+/) : [];
  const mem: [string, string, string] = v2c.includes('memory')
    ? ['memory', 'memory.max', '268435456']
    : ['memory', 'memory.limit_in_bytes', '268435456'];
  const cpu: [string, string, string] = v2c.includes('cpu') ? ['cpu', 'cpu.weight', '50'] : ['cpu', 'cpu.shares', '512'];
  const pids: [string, string, string] = ['pids', 'pids.max', '100'];
  const value = (k: string, v: string) => (k.startsWith('memory') ? '256M' : v);
  return { args: [mem, cpu, pids].flatMap(([, k, v]) => ['--cgroup', `${k}=${value(k, v)}`]), expect: [mem, cpu, pids] };
}

/** Where process `pid`'s cgroup for `controller` is on the host (v2 where the unified hierarchy has the controller). */
function cgroupDir(pid: number, controller: string): string {
  const mounts = cgroupMounts(fs.readFileSync('/proc/self/mountinfo', 'utf8'));
  const own = ownCgroups(fs.readFileSync(`/proc/${pid}/cgroup`, 'utf8'));
  const v1 = mounts.find((m) => m.version === 1 && m.controllers.includes(controller));
  if (v1) return path.join(v1.mountPoint, own.get(controller)!);
  return path.join(mounts.find((m) => m.version === 2)!.mountPoint, own.get('')!);
}

function startJail(id: string, jailArgs: string[], run: string[]): Proc {
  return startNode([
    VMM_BIN,
    'jail',
    '--id',
    id,
    '--chroot-base-dir',
    base,
    ...jailArgs,
    '--',
    '--kernel',
    GUEST_ELF,
    '--memory',
    '64M',
    ...run,
  ]);
}

/** A zeroed 1 MiB image owned by nobody (the jailed VMM opens it as that user). */
function nobodysImage(): string {
  const f = path.join(tmp, `disk-${uniq()}.img`);
  fs.writeFileSync(f, Buffer.alloc(1 << 20), { mode: 0o600 });
  fs.chownSync(f, NOBODY, NOBODY);
  return f;
}

beforeAll(() => {
  requireBuilt();
  if (process.getuid!() !== 0) throw new Error('these tests make jails, TAPs and namespaces: run them as root (as CI does)');
  fs.chmodSync(tmp, 0o711);
  fs.chmodSync(GUEST_ELF, fs.statSync(GUEST_ELF).mode | 0o444);
  execFileSync('ip', ['netns', 'add', NS]);
  ns('ip', 'link', 'set', 'lo', 'up');
  for (const c of ['all', 'default']) ns('sysctl', '-qw', `net.ipv6.conf.${c}.disable_ipv6=1`);
  ns('ip', 'tuntap', 'add', TAP, 'mode', 'tap', 'vnet_hdr', 'user', String(NOBODY));
  ns('ip', 'addr', 'add', '10.0.2.2/24', 'dev', TAP);
  ns('ip', 'link', 'set', TAP, 'up');
});
afterAll(() => {
  execFileSync('ip', ['netns', 'del', NS]);
  fs.rmSync(tmp, { recursive: true, force: true });
});

describeKvm('vmm jail', () => {
  it('the guest kit writes virtio-blk with a virtio-net TAP inside the jail: uid 65534, Seccomp 2 and NoNewPrivs 1 on every thread, no capabilities, its own PID namespace and root, the cgroup limits in the hierarchy; QMP through the jail socket; nothing left after exit', async () => {
    const id = `jt-${uniq()}`;
    const disk = nobodysImage();
    const cg = cgroupKeys();
    const jail = startJail(
      id,
      ['--uid', String(NOBODY), '--gid', String(NOBODY), '--netns', `/var/run/netns/${NS}`, ...cg.args],
      [
        '--cmdline',
        'test=mig-blk-loop iters=20 sectors=1 hold=1',
        '--device',
        `virtio-blk,id=d0,file=${disk}`,
        '--device',
        `virtio-net,id=n0,tap=${TAP}`,
      ],
    );
    try {
      await waitGuestHolding(jail, 'the jailed guest');
      const [, vmmPid, initPid] = /VMM pid (\d+) \(init (\d+)\)/.exec(jail.err())!;
      const pid = Number(vmmPid);
      const jailDir = path.join(base, 'vmm', id);
      const root = path.join(jailDir, 'root');
      expect(jail.err()).toContain(
        `jail ${id}: VMM pid ${pid} (init ${initPid}) as uid 65534, gid 65534 in ${root}; QMP at ${root}/run/qmp.sock`,
      );
      expectConfined(pid);
      const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
      // Its own PID namespace: PID 2 there, under the jailer's init (PID 1, as the same user).
      expect(status).toMatch(new RegExp(`^NSpid:\\s+${pid}\\s+2$`, 'm'));
      const init = fs.readFileSync(`/proc/${initPid}/status`, 'utf8');
      expect(init).toMatch(new RegExp(`^NSpid:\\s+${initPid}\\s+1$`, 'm'));
      expect(init).toMatch(/^Uid:\s+65534\s+65534\s+65534\s+65534$/m);
      expect(init).toMatch(/^CapEff:\s+0+$/m);
      // Its root is the jail: the VM's files, its device nodes, the runtime read-only; none of the host's.
      const seen = fs.readdirSync(`/proc/${pid}/root`);
      expect(seen).toEqual(expect.arrayContaining(['dev', 'run', 'vm.json', 'vmm', 'guest.elf', path.basename(disk)]));
      for (const hostOnly of ['etc', 'home', 'root', 'tmp', 'srv', 'work']) expect(seen).not.toContain(hostOnly);
      expect(fs.readdirSync(`/proc/${pid}/root/dev`).sort()).toEqual(['kvm', 'net', 'null', 'urandom']);
      expect(fs.statSync(path.join(root, 'dev/kvm'))).toMatchObject({ uid: NOBODY, gid: NOBODY });
      expect(mode(path.join(root, 'dev/kvm'))).toBe(0o600);
      // The cgroup limits, read back from the hierarchy the VMM is in.
      for (const [controller, file, value] of cg.expect) {
        const dir = cgroupDir(pid, controller);
        expect(dir.endsWith(`/vmm/${id}`)).toBe(true);
        expect(fs.readFileSync(path.join(dir, file), 'utf8').trim()).toBe(value);
        expect(fs.readFileSync(path.join(dir, 'cgroup.procs'), 'utf8').split('\n')).toContain(String(pid));
      }
      // QMP at the jail's socket, nobody's and 0600; a snapshot lands inside the jail.
      const sock = path.join(root, 'run/qmp.sock');
      expect(fs.statSync(sock)).toMatchObject({ uid: NOBODY });
      expect(mode(sock)).toBe(0o600);
      const q = await QmpClient.connect(sock);
      await q.run('qmp_capabilities');
      expect(await q.run('query-status')).toMatchObject({ status: 'running', running: true });
      await q.run('x-snapshot-save', { file: '/run/vm.snap' });
      expect(fs.statSync(path.join(root, 'run/vm.snap'))).toMatchObject({ uid: NOBODY });
      await expect(q.run('x-snapshot-save', { file: '/etc/vm.snap' })).rejects.toThrow('directory /etc does not exist');
      const cgDirs = cg.expect.map(([c]) => cgroupDir(pid, c));
      await q.run('quit');
      q.close();
      expect(await jail.exited).toBe(0);
      // The guest's writes went to the image through the jail's hard link.
      checkMigLoopImage(disk, 20);
      expect(fs.existsSync(jailDir)).toBe(false);
      for (const d of cgDirs) expect(fs.existsSync(d)).toBe(false);
    } finally {
      // On a failure: the jailer passes SIGTERM on to the VMM, then removes the jail and cgroups.
      jail.proc.kill('SIGTERM');
      await jail.exited;
    }
  }, 120_000);

  it('net-ping over the TAP of a joined network namespace; --keep leaves the jail directory', async () => {
    const id = `jk-${uniq()}`;
    const jail = startJail(
      id,
      ['--user', 'nobody', '--netns', `/var/run/netns/${NS}`, '--keep'],
      ['--cmdline', 'test=net-ping count=3', '--device', `virtio-net,id=n0,tap=${TAP}`],
    );
    expect(await jail.exited).toBe(0);
    expect(jail.out()).toContain('net-ping received=3');
    expect(jail.out()).toContain('guest-kit: PASS test=net-ping');
    const jailDir = path.join(base, 'vmm', id);
    expect(jail.err()).toContain(`jail ${id}: kept ${jailDir}`);
    expect(fs.readdirSync(path.join(jailDir, 'root')).sort()).toEqual(expect.arrayContaining(['dev', 'guest.elf', 'run', 'vm.json']));
    // Its config: the paths inside the jail, QMP at the known socket, the sandbox on.
    expect(JSON.parse(fs.readFileSync(path.join(jailDir, 'root/vm.json'), 'utf8'))).toMatchObject({
      kernel: '/guest.elf',
      qmp: ['unix:/run/qmp.sock'],
      sandbox: 'on',
    });
    // A second jail with the same id is refused while the kept one is there.
    const again = startJail(id, ['--user', 'nobody'], ['--cmdline', 'test=pci-scan']);
    expect(await again.exited).toBe(1);
    expect(again.err()).toContain(
      `vmm: jail: ${jailDir} exists already (a VMM with this --id runs, or a --keep jail was left): remove it first`,
    );
    fs.rmSync(jailDir, { recursive: true });
  }, 90_000);

  it('SIGTERM to the jailer stops the VM through its init: the VMM ends as on SIGTERM, the jail is removed', async () => {
    const id = `js-${uniq()}`;
    const jail = startJail(
      id,
      ['--uid', String(NOBODY), '--gid', String(NOBODY)],
      ['--cmdline', 'test=mig-blk-loop iters=5 sectors=1 hold=1', '--device', `virtio-blk,id=d0,file=${nobodysImage()}`],
    );
    await waitGuestHolding(jail, 'the jailed guest');
    jail.proc.kill('SIGTERM');
    expect(await jail.exited).toBe(0);
    expect(jail.err()).toContain('vmm: terminated by signal');
    expect(fs.existsSync(path.join(base, 'vmm', id))).toBe(false);
  }, 90_000);

  it("--incoming into a jail: a confined source migrates a running guest through the socket the jail exposes at ROOT/run; it goes on in the jail, its serial, log and metrics files in ROOT/run (0600, the user's own); a snapshot path escaping the jail stays inside", async () => {
    const id = `ji-${uniq()}`;
    const disk = nobodysImage();
    const loop = 'test=mig-blk-loop iters=60 sectors=1 every=10 delay=4000 hold=1';
    // The disk on an iothread: its worker runs in the jail too.
    const vm = [
      '--cmdline',
      loop,
      '--object',
      'iothread,id=io0,poll-max-ns=32768',
      '--device',
      `virtio-blk,id=d0,file=${disk},iothread=io0`,
    ];
    const root = path.join(base, 'vmm', id, 'root');
    const jail = startJail(
      id,
      ['--uid', String(NOBODY), '--gid', String(NOBODY), '--keep'],
      [
        ...vm,
        '--incoming',
        'unix:/run/in.sock',
        '--serial',
        'file:/run/serial.log',
        '--log-file',
        '/run/vmm.log',
        '--metrics',
        'file:/run/vmm.prom,interval=0.5',
      ],
    );
    // The source: another user's VMM would be refused by the socket's 0600; this one runs as the jail's user, confined too.
    const src = fleet.start(['--memory', '64M', ...vm, '--sandbox', 'on', '--run-with', 'user=nobody']);
    try {
      const incoming = path.join(root, 'run/in.sock');
      await waitUntil('the jail listening', () => fs.existsSync(incoming) || jail.proc.exitCode !== null);
      expect(jail.err()).toContain(
        `; QMP at ${root}/run/qmp.sock; incoming migration at ${incoming}; serial at ${root}/run/serial.log; log at ${root}/run/vmm.log; metrics at ${root}/run/vmm.prom`,
      );
      expect(fs.statSync(incoming)).toMatchObject({ uid: NOBODY });
      expect(mode(incoming)).toBe(0o600);
      await waitUntil('source progress', () => /progress i=10\b/.test(src.out()));
      const s = await qmpConnect(src);
      expect((await migrateAndWait(s, `unix:${incoming}`)).status).toBe('completed');
      s.close();
      const serial = path.join(root, 'run/serial.log');
      await waitUntil(
        'the migrated guest finishing in the jail',
        () =>
          /guest-kit: holding|guest-kit: FAIL/.test(fs.existsSync(serial) ? fs.readFileSync(serial, 'latin1') : '') ||
          jail.proc.exitCode !== null,
        60_000,
      );
      // The guest went on in the jail (it never booted there: no hello), its console in the serial file.
      const out = fs.readFileSync(serial, 'latin1');
      expect(out).toContain('mig-blk-loop done writes=60');
      expect(out).not.toContain('guest-kit: hello');
      expect(jail.out()).toBe('');
      const [, vmmPid] = /VMM pid (\d+)/.exec(jail.err())!;
      expectConfined(Number(vmmPid));
      for (const f of ['serial.log', 'vmm.log', 'vmm.prom']) {
        expect(fs.statSync(path.join(root, 'run', f))).toMatchObject({ uid: NOBODY, gid: NOBODY });
        expect(mode(path.join(root, 'run', f))).toBe(0o600);
      }
      expect(fs.readFileSync(path.join(root, 'run/vmm.log'), 'utf8')).toContain('incoming migration');
      // The migrated guest's disk I/O, counted in the jail.
      expect(fs.readFileSync(path.join(root, 'run/vmm.prom'), 'utf8')).toMatch(/^tsvmm_\w+\{[^}]*device="d0"[^}]*\} [1-9]/m);
      // Snapshot paths are resolved inside the jail: .. stops at its root, and only /run is the user's.
      const q = await QmpClient.connect(path.join(root, 'run/qmp.sock'));
      await q.run('qmp_capabilities');
      const escape = `../../../../../..${tmp}/escaped-${id}.snap`;
      await expect(q.run('x-snapshot-save', { file: escape })).rejects.toThrow(`${tmp} does not exist`);
      expect(fs.existsSync(path.join(tmp, `escaped-${id}.snap`))).toBe(false);
      await expect(q.run('x-snapshot-save', { file: '/vm.snap' })).rejects.toThrow('permission denied');
      expect(fs.existsSync(path.join(root, 'vm.snap'))).toBe(false);
      await q.run('quit');
      q.close();
      expect(await jail.exited).toBe(0);
      checkMigLoopImage(disk, 60);
      // The jailed VMM's config: the paths inside the jail, the iothread declared with its polling.
      expect(JSON.parse(fs.readFileSync(path.join(root, 'vm.json'), 'utf8'))).toMatchObject({
        incoming: 'unix:/run/in.sock',
        serial: 'file:/run/serial.log',
        'log-file': '/run/vmm.log',
        objects: ['iothread,id=io0,poll-max-ns=32768'],
      });
      // --keep: the output files stay at ROOT/run.
      expect(fs.readFileSync(serial, 'latin1')).toContain('mig-blk-loop done writes=60');
    } finally {
      jail.proc.kill('SIGTERM');
      await jail.exited;
      fs.rmSync(path.join(base, 'vmm', id), { recursive: true, force: true });
    }
  }, 120_000);

  it('refuses bad input with one line saying why, and leaves no jail behind', async () => {
    const run = async (jailArgs: string[], vm: string[], wrap?: string[]) => {
      const p = startNode([VMM_BIN, 'jail', ...jailArgs, '--', ...vm], { wrap });
      const code = await p.exited;
      return { code, err: p.err() };
    };
    const kernel = ['--kernel', GUEST_ELF];
    const who = ['--uid', String(NOBODY), '--gid', String(NOBODY), '--chroot-base-dir', base];
    const rootOnly = path.join(tmp, `root-only-${uniq()}.img`);
    fs.writeFileSync(rootOnly, Buffer.alloc(4096), { mode: 0o600 });
    const cases: [string[], string[], number, string][] = [
      [['--id', 'a/../b', ...who], kernel, 2, "vmm: jail: --id 'a/../b': use 1-64 letters, digits and '-' (it names a directory)"],
      [
        ['--id', 'nokernel', ...who],
        ['--kernel', path.join(tmp, 'missing.elf')],
        1,
        `vmm: jail: --kernel ${path.join(tmp, 'missing.elf')}: no such file`,
      ],
      [
        ['--id', 'rootonly', ...who],
        [...kernel, '--device', `virtio-blk,id=d0,file=${rootOnly}`],
        1,
        `vmm: jail: device d0 file= ${rootOnly}: uid 65534 may not read and write it (owner 0:0, mode 0600); give it to that user (chown) or to one of its groups`,
      ],
      [['--id', 'q', ...who], [...kernel, '--qmp', 'unix:/tmp/x.sock'], 2, 'vmm: jail: --qmp is not available under the jailer'],
      [
        ['--id', 'escape', ...who],
        [...kernel, '--serial', 'file:/run/../etc/passwd'],
        2,
        'vmm: jail: --serial file: /run/../etc/passwd: the path is inside the jail and must be /run/NAME',
      ],
      [
        ['--id', 'nouser', '--user', 'no-such-user-jail', '--chroot-base-dir', base],
        kernel,
        1,
        "vmm: jail: --user no-such-user-jail: no such user in the host's user database",
      ],
      [['--id', 'badcg', ...who, '--cgroup', 'pids.maximum=3'], kernel, 1, '--cgroup pids.maximum: cgroup v'],
      [
        ['--id', 'dev', ...who],
        [...kernel, '--device', 'virtio-blk,id=d0,file=/dev/null'],
        1,
        'vmm: jail: device d0 file= /dev/null: not a regular file or a unix socket',
      ],
    ];
    for (const [j, vm, code, msg] of cases) {
      const r = await run(j, vm);
      expect({ args: j, code: r.code, err: r.err }).toEqual({ args: j, code, err: expect.stringContaining(msg) });
    }
    // Not root: refused before anything is made.
    const user = await run(['--id', 'nonroot', ...who], kernel, [
      'setpriv',
      '--reuid',
      String(NOBODY),
      '--regid',
      String(NOBODY),
      '--clear-groups',
    ]);
    expect(user.code).toBe(1);
    expect(user.err).toContain('vmm: jail: must be run as root');
    // None of these left a jail directory (or a cgroup: the bad cgroup file's jail is removed with it).
    expect(fs.existsSync(path.join(base, 'vmm')) ? fs.readdirSync(path.join(base, 'vmm')) : []).toEqual([]);
  }, 120_000);
});

describeKvm('--sandbox on --run-with user=nobody', () => {
  const confined = ['--sandbox', 'on', '--run-with', 'user=nobody'];
  it('the guest kit on virtio-blk and virtio-net (TAP): every thread confined; a snapshot taken there restores in another such VMM', async () => {
    const disk = path.join(tmp, `rw-${uniq()}.img`);
    fs.writeFileSync(disk, Buffer.alloc(1 << 20), { mode: 0o600 }); // root's: opened before the drop
    const own = path.join(tmp, `nobody-${uniq()}`);
    fs.mkdirSync(own, { mode: 0o700 });
    fs.chownSync(own, NOBODY, NOBODY);
    const wrap = ['ip', 'netns', 'exec', NS];
    const dev = ['--device', `virtio-blk,id=d0,file=${disk}`, '--device', `virtio-net,id=n0,tap=${TAP}`, ...confined];
    const loop = 'test=mig-blk-loop iters=60 sectors=1 every=10 delay=4000 hold=1';
    const src = fleet.start([...dev, '--cmdline', loop], wrap);
    await waitUntil('progress', () => /progress i=10\b/.test(src.out()));
    expectConfined(src.proc.pid!);
    const c = await qmpConnect(src);
    const snap = path.join(own, 'vm.snap');
    await c.run('x-snapshot-save', { file: snap });
    expect(fs.statSync(snap)).toMatchObject({ uid: NOBODY });
    c.close();
    await fleet.killAll();
    const back = fleet.start([...dev, '--cmdline', loop, '--restore', snap], wrap);
    await waitGuestHolding(back, 'the restored guest');
    expect(back.out()).toContain('mig-blk-loop done writes=60');
    expect(back.out()).not.toContain('guest-kit: hello');
    expectConfined(back.proc.pid!);
    checkMigLoopImage(disk, 60);
    await fleet.killAll();
    // net-ping: the guest (10.0.2.15) is answered by the namespace's kernel at 10.0.2.2.
    const net = fleet.start(['--device', `virtio-net,id=n0,tap=${TAP}`, ...confined, '--cmdline', 'test=net-ping count=3'], wrap);
    expect(await net.exited).toBe(0);
    expect(net.out()).toContain('net-ping received=3');
    expect(net.err()).toContain('running as uid 65534');
  }, 150_000);
});
