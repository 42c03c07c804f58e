// What the VMM creates on the host and the privileges it keeps (docs/security.md):
// socket and snapshot modes, symbolic links, leftovers at socket paths,
// --run-with, and a VMM run by an unprivileged user from the start.
import { execFileSync, spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { describeKvm } from '@tsvmm/kvm-native/testing';
import {
  checkMigLoopImage,
  GUEST_ELF,
  migLoopImage,
  migrateAndWait,
  qmpConnect,
  requireBuilt,
  uniq,
  VMM_BIN,
  VmmFleet,
  waitUntil,
} from '@tsvmm/testing';

const NOBODY = 65534;
const fleet = new VmmFleet('vmm-files-');
const tmp = fleet.tmp;

afterEach(() => fleet.killAll());
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const mode = (f: string) => fs.lstatSync(f).mode & 0o7777;
const LOOP = 'test=mig-blk-loop iters=60 sectors=1 every=10 delay=4000 hold=1';

/** Credentials of every thread of a process, from /proc/PID/task/TID/status. */
function threads(pid: number): { tid: string; uid: string; gid: string; capEff: string; capPrm: string; capBnd: string }[] {
  const dir = `/proc/${pid}/task`;
  return fs.readdirSync(dir).map((tid) => {
    const s = fs.readFileSync(`${dir}/${tid}/status`, 'utf8');
    const f = (k: string) => new RegExp(`^${k}:\\s*(.*)$`, 'm').exec(s)![1].trim().replace(/\s+/g, ' ');
    return { tid, uid: f('Uid'), gid: f('Gid'), capEff: f('CapEff'), capPrm: f('CapPrm'), capBnd: f('CapBnd') };
  });
}

describeKvm('files and sockets the VMM creates', () => {
  it('QMP socket and snapshot modes are 0600 under umask 000; x-snapshot-save onto a symlink does not write through it; --incoming at the path of a regular file refuses and leaves the file', async () => {
    const disk = migLoopImage(fleet);
    const wide = path.join(tmp, `wide-${uniq()}.sock`);
    const umask000 = ['sh', '-c', 'umask 000; exec "$@"', 'sh'];
    const vm = fleet.start(
      [
        '--device',
        `virtio-blk,id=d0,file=${disk}`,
        '--cmdline',
        'test=mig-blk-loop iters=5 sectors=1 hold=1',
        '--qmp',
        `unix:${wide},mode=0660`,
      ],
      umask000,
    );
    const c = await qmpConnect(vm);
    expect(mode(vm.qmp)).toBe(0o600);
    expect(mode(wide)).toBe(0o660);

    const snap = path.join(tmp, `s-${uniq()}.snap`);
    await c.run('x-snapshot-save', { file: snap });
    expect(fs.lstatSync(snap).isFile()).toBe(true);
    expect(mode(snap)).toBe(0o600);
    expect(fs.readFileSync(snap).length).toBeGreaterThan(4096);
    // Saving again replaces the regular file, still 0600.
    await c.run('x-snapshot-save', { file: snap });
    expect(mode(snap)).toBe(0o600);

    // A link to an existing file, and a dangling link: neither target is written or created.
    const victim = path.join(tmp, `victim-${uniq()}`);
    fs.writeFileSync(victim, 'keep me');
    const link = path.join(tmp, `link-${uniq()}.snap`);
    fs.symlinkSync(victim, link);
    await expect(c.run('x-snapshot-save', { file: link })).rejects.toThrow(/is a symbolic link; refusing to replace it/);
    expect(fs.readFileSync(victim, 'utf8')).toBe('keep me');
    expect(fs.lstatSync(link).isSymbolicLink()).toBe(true);
    const target = path.join(tmp, `created-through-${uniq()}`);
    const dangling = path.join(tmp, `dangling-${uniq()}.snap`);
    fs.symlinkSync(target, dangling);
    await expect(c.run('x-snapshot-save', { file: dangling })).rejects.toThrow(/is a symbolic link/);
    expect(fs.existsSync(target)).toBe(false);
    // No temporary is left behind by the refusals.
    expect(fs.readdirSync(tmp).filter((n) => n.includes('.tmp-'))).toEqual([]);

    // migrate sends guest RAM only to a socket named directly.
    await expect(c.run('migrate', { uri: `unix:${victim}` })).rejects.toThrow(/is a regular file, not a unix socket/);
    expect(fs.readFileSync(victim, 'utf8')).toBe('keep me');
    c.close();

    // --incoming (and --qmp) at the path of a regular file: refused, the file left as it was.
    const regular = path.join(tmp, `regular-${uniq()}`);
    fs.writeFileSync(regular, 'not a socket');
    const dst = fleet.start(['--device', `virtio-blk,id=d0,file=${disk}`, '--incoming', `unix:${regular}`]);
    expect(await dst.exited).toBe(1);
    expect(dst.err()).toContain(`--incoming unix:${regular}: ${regular} exists and is a regular file, not a socket; refusing to remove it`);
    expect(fs.readFileSync(regular, 'utf8')).toBe('not a socket');
    const q = fleet.start(['--qmp', `unix:${regular}`]);
    expect(await q.exited).toBe(1);
    expect(q.err()).toContain('is a regular file, not a socket; refusing to remove it');
    expect(fs.readFileSync(regular, 'utf8')).toBe('not a socket');
  }, 90_000);
});

describeKvm('--run-with user=nobody', () => {
  it('while it runs: /proc/PID/status shows the unprivileged uids and no effective capabilities; virtio-blk on an iothread, live migration and snapshot/restore work', async () => {
    if (process.getuid!() !== 0) throw new Error('this test drops from root to nobody: run it as root (as CI does)');
    // The VMMs' sockets are reachable by nobody (the directory is searchable); the disk image stays root's, 0600:
    // it is opened before the drop. Snapshots go to a directory of nobody's.
    fs.chmodSync(tmp, 0o711);
    const disk = migLoopImage(fleet);
    fs.chmodSync(disk, 0o600);
    const own = path.join(tmp, `nobody-${uniq()}`);
    fs.mkdirSync(own, { mode: 0o700 });
    fs.chownSync(own, NOBODY, NOBODY);
    // On an iothread: its worker takes the image's descriptors from the main thread (nobody could not open the path).
    const dev = [
      '--object',
      'iothread,id=io0',
      '--device',
      `virtio-blk,id=d0,file=${disk},iothread=io0`,
      '--cmdline',
      LOOP,
      '--run-with',
      'user=nobody',
    ];

    const src = fleet.start(dev);
    await waitUntil('source progress', () => /progress i=10\b/.test(src.out()));
    expect(src.err()).toMatch(/running as uid 65534, gid 65534, groups 65534, no capabilities/);
    const ts = threads(src.proc.pid!);
    expect(ts.length).toBeGreaterThan(1);
    for (const t of ts)
      expect(t).toMatchObject({
        uid: '65534 65534 65534 65534',
        gid: '65534 65534 65534 65534',
        capEff: '0000000000000000',
        capPrm: '0000000000000000',
      });
    // The main thread's bounding set is empty too (docs/security.md: the other threads' matter only at execve, which they never do).
    expect(ts.find((t) => t.tid === String(src.proc.pid))!.capBnd).toBe('0000000000000000');
    // Root still reaches the monitor; the socket is the VMM user's, 0600.
    const s = await qmpConnect(src);
    expect(fs.statSync(src.qmp)).toMatchObject({ uid: NOBODY });
    expect(mode(src.qmp)).toBe(0o600);

    // Live migration between two unprivileged VMMs.
    const incoming = path.join(tmp, `in-${uniq()}.sock`);
    const dst = fleet.start([...dev, '--incoming', `unix:${incoming}`]);
    // The socket is created as root, then handed to the VMM's user when it drops its privileges.
    await waitUntil('destination listening as nobody', () => fs.existsSync(incoming) && fs.statSync(incoming).uid === NOBODY);
    expect(mode(incoming)).toBe(0o600);
    const r = await migrateAndWait(s, `unix:${incoming}`);
    expect(r).toMatchObject({ status: 'completed' });
    await waitUntil('destination progress', () => /progress i=40\b/.test(dst.out()));
    for (const t of threads(dst.proc.pid!)) expect(t).toMatchObject({ uid: '65534 65534 65534 65534', capEff: '0000000000000000' });

    // Snapshot as nobody: into nobody's directory (0600, nobody's); a root-only path is refused, saying why.
    const d = await qmpConnect(dst);
    await expect(d.run('x-snapshot-save', { file: '/root/vmm-files-denied.snap' })).rejects.toThrow(
      /permission denied: the VMM runs as uid 65534/,
    );
    const snap = path.join(own, 'vm.snap');
    await d.run('x-snapshot-save', { file: snap });
    expect(fs.statSync(snap)).toMatchObject({ uid: NOBODY, gid: NOBODY });
    expect(mode(snap)).toBe(0o600);
    d.close();
    s.close();
    await fleet.killAll();

    // Restore in a third unprivileged VMM: the guest finishes its loop, every write once.
    const back = fleet.start([...dev, '--restore', snap]);
    await waitUntil('restored guest holding', () => back.out().includes('guest-kit: holding') || back.proc.exitCode !== null, 60_000);
    expect(back.out()).toContain('mig-blk-loop done writes=60');
    expect(back.out()).not.toContain('guest-kit: hello');
    for (const t of threads(back.proc.pid!)) expect(t).toMatchObject({ uid: '65534 65534 65534 65534', capEff: '0000000000000000' });
    checkMigLoopImage(disk, 60);
  }, 180_000);
});

describeKvm('--run-with user=nobody,chroot=DIR', () => {
  it('snapshots are written inside the chroot as nobody; a path outside it is refused saying so', async () => {
    if (process.getuid!() !== 0) throw new Error('this test drops from root to nobody: run it as root (as CI does)');
    fs.chmodSync(tmp, 0o711);
    const jail = path.join(tmp, `jail-${uniq()}`);
    fs.mkdirSync(path.join(jail, 'out'), { recursive: true });
    fs.chownSync(path.join(jail, 'out'), NOBODY, NOBODY);
    const disk = migLoopImage(fleet);
    const vm = fleet.start([
      '--device',
      `virtio-blk,id=d0,file=${disk}`,
      '--cmdline',
      'test=mig-blk-loop iters=5 sectors=1 hold=1',
      '--run-with',
      `user=nobody,chroot=${jail}`,
    ]);
    const c = await qmpConnect(vm);
    await waitUntil('the drop', () => vm.err().includes('running as uid'));
    expect(vm.err()).toContain(`running as uid 65534, gid 65534, groups 65534, chroot ${jail}, no capabilities`);
    await c.run('x-snapshot-save', { file: '/out/vm.snap' });
    expect(fs.statSync(path.join(jail, 'out/vm.snap'))).toMatchObject({ uid: NOBODY });
    expect(mode(path.join(jail, 'out/vm.snap'))).toBe(0o600);
    await expect(c.run('x-snapshot-save', { file: path.join(tmp, 'outside.snap') })).rejects.toThrow(
      `directory ${tmp} does not exist inside the VMM's chroot ${jail}`,
    );
    expect(fs.existsSync(path.join(tmp, 'outside.snap'))).toBe(false);
    c.close();
  }, 60_000);
});

describeKvm('--run-with refusals', () => {
  it('an unknown user or a missing chroot directory: exit 1 with one line saying which, before the guest runs', async () => {
    const user = fleet.start(['--cmdline', 'test=pci-scan', '--run-with', 'user=no-such-user-files']);
    expect(await user.exited).toBe(1);
    expect(user.err()).toContain(
      "vmm: --run-with user=no-such-user-files: no such user (give a user name from the host's user database, or UID:GID)",
    );
    expect(user.out()).not.toContain('guest-kit: hello');
    const missing = path.join(tmp, `no-jail-${uniq()}`);
    const dir = fleet.start(['--cmdline', 'test=pci-scan', '--run-with', `user=nobody,chroot=${missing}`]);
    expect(await dir.exited).toBe(1);
    expect(dir.err()).toContain(`vmm: --run-with chroot=${missing}: ENOENT`);
    expect(dir.out()).not.toContain('guest-kit: hello');
  }, 60_000);
});

describeKvm('a VMM started as an unprivileged user (no root, no --run-with)', () => {
  const NS = `vmmfiles${process.pid}`;
  const TAP = 'tapf0';
  // Stands in for the host's kvm group (docs/security.md#running-without-root): a /dev/kvm node
  // owned by it, bind-mounted over /dev/kvm in a private mount namespace, so the host's stays as it is.
  const KVM_GID = 64990;
  let kvmNode: string;
  beforeAll(() => {
    requireBuilt();
    fs.chmodSync(tmp, 0o711);
    kvmNode = path.join(tmp, 'kvm');
    execFileSync('mknod', ['-m', '0660', kvmNode, 'c', '10', '232']);
    fs.chownSync(kvmNode, 0, KVM_GID);
    execFileSync('ip', ['netns', 'add', NS]);
    const ns = (...a: string[]) => execFileSync('ip', ['netns', 'exec', NS, ...a]);
    ns('ip', 'link', 'set', 'lo', 'up');
    // The administrator's part of the recipe: a persistent TAP owned by the user.
    ns('ip', 'tuntap', 'add', TAP, 'mode', 'tap', 'vnet_hdr', 'user', String(NOBODY));
    ns('ip', 'addr', 'add', '10.0.2.2/24', 'dev', TAP);
    ns('ip', 'link', 'set', TAP, 'up');
  });
  afterAll(() => execFileSync('ip', ['netns', 'del', NS]));

  /**
   * The launcher of the recipe: as root it opens the TAP (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR) on fd 3,
   * then becomes nobody with the kvm group and execs the VMM, which gets the TAP as fd=3.
   */
  function runUnprivileged(args: string[], groups = [KVM_GID]): Promise<{ code: number | null; out: string; err: string }> {
    const launcher = `
import fcntl, os, struct, sys
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454ca, struct.pack("16sH", b"${TAP}", 0x0002 | 0x1000 | 0x4000))  # TUNSETIFF
os.dup2(fd, 3); os.set_inheritable(3, True)  # fd may already be 3 (then dup2 does nothing)
os.setgroups([${groups.join(', ')}]); os.setresgid(${NOBODY}, ${NOBODY}, ${NOBODY}); os.setresuid(${NOBODY}, ${NOBODY}, ${NOBODY})
print("launcher: uid=%d euid=%d groups=%s" % (os.getuid(), os.geteuid(), os.getgroups()), file=sys.stderr, flush=True)
os.execv(sys.argv[1], sys.argv[1:])
`;
    const script = 'mount --bind "$0" /dev/kvm && exec python3 -c "$1" "${@:2}"';
    const p = spawn(
      'ip',
      [
        'netns',
        'exec',
        NS,
        'unshare',
        '--mount',
        '--propagation',
        'private',
        'bash',
        '-c',
        script,
        kvmNode,
        launcher,
        process.execPath,
        VMM_BIN,
        'run',
        '--kernel',
        GUEST_ELF,
        '--memory',
        '64M',
        '--serial',
        'stdio',
        ...args,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let out = '';
    let err = '';
    p.stdout.on('data', (b) => (out += b));
    p.stderr.on('data', (b) => (err += b));
    const t = setTimeout(() => p.kill('SIGKILL'), 90_000);
    return new Promise((resolve) => p.on('close', (code) => (clearTimeout(t), resolve({ code, out, err }))));
  }

  it('runs the guest kit on virtio-net (a pre-created TAP passed as fd=, on an iothread) and virtio-blk (an image of its own) as nobody with the kvm group', async () => {
    const disk = path.join(tmp, `own-${uniq()}.img`);
    fs.writeFileSync(disk, Buffer.alloc(1 << 20));
    fs.chownSync(disk, NOBODY, NOBODY);
    fs.chmodSync(disk, 0o600);
    // The iothread's worker reads and writes duplicates of the launcher's TAP fd.
    const net = await runUnprivileged([
      '--cmdline',
      'test=net-ping count=3',
      '--device',
      'virtio-net,id=n0,fd=3,iothread=io0',
      '--device',
      `virtio-blk,id=d0,file=${disk}`,
    ]);
    expect(net.err).toContain(`launcher: uid=${NOBODY} euid=${NOBODY} groups=[${KVM_GID}]`);
    expect(net.out).toContain('net-ping received=3');
    expect(net.out).toContain('guest-kit: PASS test=net-ping');
    expect(net.err).toContain('iothread io0: worker thread started');
    expect(net.code).toBe(0);
    const blk = await runUnprivileged([
      '--cmdline',
      'test=blk-rw sectors=64',
      '--device',
      'virtio-net,id=n0,fd=3',
      '--device',
      `virtio-blk,id=d0,file=${disk}`,
    ]);
    expect(blk.out).toContain('blk-rw verify ok sectors=64');
    expect(blk.code).toBe(0);
    expect(
      fs
        .readFileSync(disk)
        .subarray(0, 64 * 512)
        .some((b) => b !== 0),
    ).toBe(true);
    // Without the kvm group the same user cannot open /dev/kvm: the VMM says so in one line.
    const denied = await runUnprivileged(['--cmdline', 'test=blk-rw', '--device', `virtio-blk,id=d0,file=${disk}`], []);
    expect(denied.code).toBe(1);
    expect(denied.err).toContain('vmm: no permission to open /dev/kvm: run as root or add this user to the group that owns it');
  }, 180_000);
});
