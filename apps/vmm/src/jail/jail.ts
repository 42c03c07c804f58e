/**
 * `vmm jail` (docs/security.md#the-jailer): builds BASE/vmm/ID/root, links the
 * VM's files into it, makes its device nodes and cgroups, and runs the VMM
 * there in new mount, PID, IPC and UTS namespaces (and optionally a network
 * namespace) as an unprivileged user with --sandbox on; then waits for it,
 * passes its exit status on, and removes the jail.
 *
 * The VMM itself (node, the shared libraries this process has mapped, the
 * bundle's directory) is bind-mounted read-only into the root: those mounts
 * live in the jail's mount namespace only, and vanish with it.
 */
import * as fs from 'fs';
import * as path from 'path';
import { deviceNumbers, lookupUser, mknodChar, NsMountSpec, NsSpawnError, spawnInNamespaces } from '@tsvmm/kvm-native';
import { DEFAULT_POLL_MAX_NS, type PollSettings } from '@tsvmm/virtio-core';
import { parseArgs } from '../cli';
import { ConfigError, VmConfig } from '../config';
import { DeviceRegistry } from '../container';
import { loadPluginCatalog } from '../plugins';
import { JailArgs } from './args';
import { CgroupError, createCgroups, CreatedCgroups, placeInCgroups, planCgroups, removeCgroups } from './cgroups';

/** A jail that cannot be made: one line, exit status 1. */
export class JailError extends Error {}

/** Where things are inside the jail (documented in docs/security.md). */
export const JAIL_QMP = '/run/qmp.sock';
export const JAIL_CONFIG = '/vm.json';
export const JAIL_BUNDLE = '/vmm';
/** The VMM user's directory in the jail: the QMP socket, and what the VMM creates (incoming socket, output files, snapshots). */
export const JAIL_RUN = '/run';

/** Names a VM file may not take at the jail's root. */
const RESERVED = new Set([
  'dev',
  'run',
  'proc',
  'sys',
  'usr',
  'lib',
  'lib32',
  'lib64',
  'libx32',
  'bin',
  'sbin',
  'etc',
  'tmp',
  'var',
  'vmm',
  'vm.json',
]);

interface JailFile {
  /** The host path, as configured (resolved against the working directory). */
  src: string;
  /** Its name at the jail's root. */
  name: string;
  write: boolean;
  what: string;
}

export interface JailPlan {
  uid: number;
  gid: number;
  groups: number[];
  jailDir: string;
  root: string;
  files: JailFile[];
  /** The config the jailed VMM reads (/vm.json). */
  json: Record<string, unknown>;
  /** Descriptors named by fd= properties, kept open for the VMM. */
  keepFds: number[];
}

const isOn = (v: unknown) => v === true || v === 1 || (typeof v === 'string' && ['on', 'yes', 'true', '1'].includes(v));

/** The VM's configuration, as `vmm run` would parse it; refuses what the jail cannot give the VMM. */
export function jailedVm(args: JailArgs): VmConfig {
  const cmd = parseArgs(['run', ...args.runArgs]);
  if (cmd.kind !== 'run') throw new ConfigError("jail: the VM's options asked for help or the version, not a VM (see vmm run --help)");
  const c = cmd.config;
  const refuse = (what: string, why: string) => {
    throw new ConfigError(`jail: ${what} is not available under the jailer: ${why}`);
  };
  if (c.qmp.length) refuse('--qmp', `the jailer serves QMP at BASE/vmm/ID/root${JAIL_QMP}`);
  if (c.runWith) refuse('--run-with', 'the jailer itself runs the VMM as --uid/--gid or --user, in its root');
  // What the VMM creates (the --incoming socket, output files) is named inside the jail, in its /run.
  const created = new Map<string, string>([[JAIL_QMP, 'the QMP socket']]);
  const inRun = (flag: string, p: string) => {
    jailRunPath(flag, p);
    const other = created.get(p);
    if (other) throw new ConfigError(`jail: ${flag} ${p}: that path is ${other}'s`);
    created.set(p, flag);
  };
  if (c.incoming) inRun('--incoming unix:', c.incoming.slice('unix:'.length));
  if (c.serial.kind === 'file') inRun('--serial file:', c.serial.path);
  if (c.log?.file) inRun('--log-file', c.log.file);
  if (c.metrics) inRun('--metrics file:', c.metrics.file);
  return c;
}

/**
 * Checks a path the jailed VMM creates (`--incoming unix:`, `--serial file:`,
 * `--log-file`, `--metrics file:`): it is a path inside the jail and must be
 * `/run/NAME`, the one directory there the VMM's user may write; it appears
 * on the host at `BASE/vmm/ID/root/run/NAME`. Anything else (a host path, a
 * relative one, `..`) is refused rather than silently moved.
 */
export function jailRunPath(flag: string, p: string): string {
  const name = p.startsWith(`${JAIL_RUN}/`) ? p.slice(JAIL_RUN.length + 1) : '';
  if (!/^[A-Za-z0-9_][A-Za-z0-9._-]{0,99}$/.test(name))
    throw new ConfigError(
      `jail: ${flag} ${p}: the path is inside the jail and must be ${JAIL_RUN}/NAME (NAME: letters, digits, . _ -), the VMM's only writable directory there; it appears on the host at BASE/vmm/ID/root${JAIL_RUN}/NAME`,
    );
  return p;
}

function describe(e: unknown): string {
  const x = e as NodeJS.ErrnoException;
  return x.code ?? x.message;
}

/** What the jailed VMM creates in the jail's /run besides QMP, with its path inside the jail (for the jailer's log line). */
export function createdInJail(c: VmConfig): [string, string][] {
  return [
    ...(c.incoming !== undefined ? [['incoming migration', c.incoming.slice('unix:'.length)] as [string, string]] : []),
    ...(c.serial.kind === 'file' ? [['serial', c.serial.path] as [string, string]] : []),
    ...(c.log?.file !== undefined ? [['log', c.log.file] as [string, string]] : []),
    ...(c.metrics ? [['metrics', c.metrics.file] as [string, string]] : []),
  ];
}

/** Whether `uid` (with `groups`) may read (and write) a file with this owner and mode (permission bits; root's overrides do not apply to it). */
export function mayAccess(st: { uid: number; gid: number; mode: number }, uid: number, groups: readonly number[], write: boolean): boolean {
  const want = write ? 6 : 4;
  const bits = st.uid === uid ? (st.mode >> 6) & 7 : groups.includes(st.gid) ? (st.mode >> 3) & 7 : st.mode & 7;
  return (bits & want) === want;
}

/** Decides every name and id of the jail, and checks the files, before anything is created. */
export function planJail(args: JailArgs, config: VmConfig, registry: DeviceRegistry): JailPlan {
  let uid: number, gid: number, groups: number[];
  if (args.user !== undefined) {
    const u = lookupUser(args.user);
    if (!u) throw new JailError(`jail: --user ${args.user}: no such user in the host's user database`);
    if (u.uid === 0 || u.gid === 0)
      throw new JailError(`jail: --user ${args.user}: has uid or gid 0; the VMM must not run as root in the jail`);
    ({ uid, gid, groups } = u);
  } else {
    uid = args.uid!;
    gid = args.gid!;
    groups = [gid];
  }
  const jailDir = path.join(args.chrootBaseDir, 'vmm', args.id);
  const root = path.join(jailDir, 'root');
  const files: JailFile[] = [];
  const names = new Set(RESERVED);
  const link = (given: string, write: boolean, what: string): string => {
    const src = path.resolve(given);
    const known = files.find((f) => f.src === src);
    if (known) {
      known.write ||= write;
      return `/${known.name}`;
    }
    let st: fs.Stats;
    try {
      st = fs.statSync(src);
    } catch (e) {
      throw new JailError(`jail: ${what} ${given}: ${describe(e) === 'ENOENT' ? 'no such file' : describe(e)}`);
    }
    if (!st.isFile() && !st.isSocket()) throw new JailError(`jail: ${what} ${given}: not a regular file or a unix socket`);
    if (!mayAccess(st, uid, groups, write))
      throw new JailError(
        `jail: ${what} ${given}: uid ${uid} may not ${write ? 'read and write' : 'read'} it (owner ${st.uid}:${st.gid}, mode ${(st.mode & 0o7777).toString(8).padStart(4, '0')}); give it to that user (chown) or to one of its groups`,
      );
    const base =
      path
        .basename(src)
        .replace(/[^A-Za-z0-9._-]/g, '_')
        .replace(/^\.+/, '_') || 'file';
    let name = base;
    for (let i = 1; names.has(name); i++) name = `${i}-${base}`;
    names.add(name);
    files.push({ src, name, write, what });
    return `/${name}`;
  };
  const json: Record<string, unknown> = {
    kernel: link(config.kernel, false, '--kernel'),
    ...(config.initrd !== undefined ? { initrd: link(config.initrd, false, '--initrd') } : {}),
    cmdline: config.cmdline,
    memory: `${config.memoryBytes / 2 ** 20}M`,
    cpus: config.cpus,
    serial: config.serial.kind === 'file' ? `file:${config.serial.path}` : config.serial.kind,
    ...(config.log?.file !== undefined ? { 'log-file': config.log.file } : {}),
    ...(config.metrics ? { metrics: `file:${config.metrics.file},interval=${config.metrics.interval}` } : {}),
    ...(config.incoming !== undefined
      ? { incoming: `${config.incoming}${config.incomingTimeoutS !== undefined ? `,timeout=${config.incomingTimeoutS}` : ''}` }
      : {}),
    ...(config.iothreads?.length ? { objects: config.iothreads.map((id) => iothreadObject(id, config.iothreadPoll?.[id])) } : {}),
    qmp: [`unix:${JAIL_QMP}`],
    ...(config.monitorStdio ? { monitor: 'stdio' } : {}),
    paused: config.startPaused,
    sandbox: 'on',
    'trace-boot': config.traceBoot,
    ...(config.stallMs !== undefined ? { 'stall-ms': config.stallMs } : {}),
    ...(config.log ? { 'log-level': config.log.level, 'log-format': config.log.format } : {}),
    ...(config.restore !== undefined ? { restore: link(config.restore, false, '--restore') } : {}),
  };
  const keepFds: number[] = [];
  registry.validate(config.devices);
  json.devices = config.devices.map((d) => {
    const props = registry.lookup(d.type).properties;
    const out: Record<string, unknown> = { type: d.type, id: d.id };
    for (const [k, v] of Object.entries(d.props)) {
      if (props[k]?.type === 'path' && typeof v === 'string') out[k] = link(v, !isOn(d.props.readonly), `device ${d.id} ${k}=`);
      else out[k] = v;
      // fd=N[:N...] (virtio-net): descriptors the jailer was given, passed on under the same numbers.
      if (k === 'fd' && d.type === 'virtio-net') for (const n of String(v).split(':')) if (/^\d+$/.test(n)) keepFds.push(Number(n));
    }
    return out;
  });
  return { uid, gid, groups, jailDir, root, files, json, keepFds };
}

/** The dynamic loader an ELF executable names (PT_INTERP), or undefined for a static one. */
export function elfInterpreter(file: string): string | undefined {
  const fd = fs.openSync(file, 'r');
  try {
    const h = Buffer.alloc(64);
    fs.readSync(fd, h, 0, 64, 0);
    if (h.readUInt32BE(0) !== 0x7f454c46 || h[4] !== 2) return undefined; // not a 64-bit ELF
    const phoff = Number(h.readBigUInt64LE(0x20));
    const phentsize = h.readUInt16LE(0x36);
    const phnum = h.readUInt16LE(0x38);
    const ph = Buffer.alloc(phentsize * phnum);
    fs.readSync(fd, ph, 0, ph.length, phoff);
    for (let i = 0; i < phnum; i++) {
      const e = ph.subarray(i * phentsize);
      if (e.readUInt32LE(0) !== 3 /* PT_INTERP */) continue;
      const off = Number(e.readBigUInt64LE(8));
      const size = Math.min(Number(e.readBigUInt64LE(32)), 4096);
      const s = Buffer.alloc(size);
      fs.readSync(fd, s, 0, size, off);
      return s.toString('latin1').replace(/\0.*$/s, '');
    }
    return undefined;
  } finally {
    fs.closeSync(fd);
  }
}

/** The shared objects this process has mapped (node's libraries and the addon's), from /proc/self/maps. */
export function mappedLibraries(maps = fs.readFileSync('/proc/self/maps', 'utf8')): string[] {
  const out = new Set<string>();
  for (const line of maps.split('\n')) {
    const p = line.slice(line.indexOf('/'));
    if (line.includes('/') && /\.so(\.[0-9.]+)?$/.test(p) && fs.existsSync(p)) out.add(p);
  }
  return [...out];
}

/** The directory of the VMM bundle (main.js, kvm_native.node, workers). */
export function bundleDir(): string {
  for (const d of [__dirname, path.resolve(__dirname, '../../dist')]) if (fs.existsSync(path.join(d, 'main.js'))) return d;
  throw new JailError(`jail: the VMM bundle (main.js) was not found next to ${__dirname}: build it first (npx nx run vmm:build)`);
}

function mkdirs(d: string, mode: number): void {
  fs.mkdirSync(d, { recursive: true, mode });
}

/** A read-only bind mount of host file or directory `src` at the same path (or `at`) inside the root. */
function runtimeMount(root: string, src: string, at = src): NsMountSpec {
  const target = path.join(root, at);
  const dir = fs.statSync(src).isDirectory();
  mkdirs(dir ? target : path.dirname(target), 0o755);
  if (!dir && !fs.existsSync(target)) fs.writeFileSync(target, '', { mode: 0o444 });
  return { kind: 'bind', source: src, target, readOnly: true };
}

/** Creates the jail's tree on the host (see the file comment); returns the mounts its namespace needs. */
export function buildJail(plan: JailPlan, log: (m: string) => void): NsMountSpec[] {
  mkdirs(path.dirname(plan.jailDir), 0o755);
  try {
    fs.mkdirSync(plan.jailDir, { mode: 0o711 });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST')
      throw new JailError(`jail: ${plan.jailDir} exists already (a VMM with this --id runs, or a --keep jail was left): remove it first`);
    throw new JailError(`jail: cannot create ${plan.jailDir}: ${describe(e)}`);
  }
  try {
    return fillJail(plan, log);
  } catch (e) {
    fs.rmSync(plan.jailDir, { recursive: true, force: true });
    throw e;
  }
}

function fillJail(plan: JailPlan, log: (m: string) => void): NsMountSpec[] {
  const { root, uid, gid } = plan;
  fs.chmodSync(plan.jailDir, 0o711);
  fs.mkdirSync(root, { mode: 0o755 });
  fs.chmodSync(root, 0o755);
  const mounts: NsMountSpec[] = [];
  for (const f of plan.files) {
    const dst = path.join(root, f.name);
    try {
      fs.linkSync(f.src, dst);
      log(`jail: ${f.what} ${f.src} hard-linked as ${f.name}`);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'EXDEV' && code !== 'EPERM') throw new JailError(`jail: linking ${f.src} into ${root}: ${describe(e)}`);
      // Another file system: bind-mounted inside the jail's mount namespace instead.
      fs.writeFileSync(dst, '', { mode: 0o600 });
      mounts.push({ kind: 'bind', source: f.src, target: dst, readOnly: !f.write });
      log(`jail: ${f.what} ${f.src} bind-mounted as ${f.name} (another file system)`);
    }
  }
  // Device nodes with the host's numbers; kvm and tun belong to the VMM's user.
  const dev = path.join(root, 'dev');
  mkdirs(path.join(dev, 'net'), 0o755);
  const node = (host: string, at: string, mode: number, owned: boolean) => {
    let st: fs.Stats;
    try {
      st = fs.statSync(host);
    } catch (e) {
      throw new JailError(`jail: ${host}: ${describe(e)} (the host has no such device)`);
    }
    if (!st.isCharacterDevice()) throw new JailError(`jail: ${host} is not a character device`);
    const { major, minor } = deviceNumbers(st.rdev);
    const p = path.join(dev, at);
    mknodChar(p, mode, major, minor);
    fs.chmodSync(p, mode); // mknod's mode passes through the umask
    if (owned) fs.chownSync(p, uid, gid);
  };
  node('/dev/kvm', 'kvm', 0o600, true);
  if (fs.existsSync('/dev/net/tun')) node('/dev/net/tun', 'net/tun', 0o600, true);
  node('/dev/null', 'null', 0o666, false);
  node('/dev/urandom', 'urandom', 0o444, false);
  const run = path.join(root, 'run');
  fs.mkdirSync(run, { mode: 0o700 });
  fs.chownSync(run, uid, gid);
  fs.writeFileSync(path.join(root, JAIL_CONFIG), JSON.stringify(plan.json, null, 2) + '\n', { mode: 0o644 });
  // The VMM: node, its shared libraries and loader, the bundle.
  const exe = fs.realpathSync(process.execPath);
  mounts.push(runtimeMount(root, exe, process.execPath));
  const interp = elfInterpreter(exe);
  if (interp) mounts.push(runtimeMount(root, fs.realpathSync(interp), interp));
  for (const lib of mappedLibraries()) {
    if (lib.endsWith('.node')) continue;
    mounts.push(runtimeMount(root, lib));
    // The loader looks for the soname (libstdc++.so.6), a link to the file mapped (libstdc++.so.6.0.30): the same links in the jail.
    for (let name = path.basename(lib); /\.so\..*\.\d+$|\.so\.\d+$/.test(name);) {
      name = name.replace(/\.\d+$/, '');
      const alias = path.join(path.dirname(lib), name);
      const inJail = path.join(root, alias);
      try {
        if (fs.lstatSync(alias).isSymbolicLink() && fs.realpathSync(alias) === lib && !fs.existsSync(inJail))
          fs.symlinkSync(path.basename(lib), inJail);
      } catch {
        // no such alias
      }
    }
  }
  mounts.push(runtimeMount(root, bundleDir(), JAIL_BUNDLE));
  return mounts;
}

/** Runs the whole jail (see the file comment); resolves with the exit status for `vmm jail`. */
export async function runJail(args: JailArgs, log: (m: string) => void = (m) => process.stderr.write(`vmm: ${m}\n`)): Promise<number> {
  if (process.getuid!() !== 0)
    throw new JailError(
      'jail: must be run as root (it creates device nodes, namespaces and cgroups, then gives the VMM up to --uid/--user)',
    );
  const config = jailedVm(args);
  const catalog = loadPluginCatalog();
  const registry = new DeviceRegistry(catalog.plugins.map((p) => p.plugin));
  const plan = planJail(args, config, registry);
  if (args.netns !== undefined) {
    try {
      if (!fs.statSync(args.netns).isFile()) throw new JailError(`jail: --netns ${args.netns}: not a network namespace file`);
    } catch (e) {
      if (e instanceof JailError) throw e;
      throw new JailError(`jail: --netns ${args.netns}: ${describe(e)}`);
    }
  }
  let cgroups: CreatedCgroups | undefined;
  const plans = (() => {
    try {
      return planCgroups(args.cgroups, {
        id: args.id,
        version: args.cgroupVersion,
        parent: args.parentCgroup,
        mountinfo: fs.readFileSync('/proc/self/mountinfo', 'utf8'),
        selfCgroup: fs.readFileSync('/proc/self/cgroup', 'utf8'),
      });
    } catch (e) {
      throw e instanceof CgroupError ? new JailError(`jail: ${e.message}`) : e;
    }
  })();
  let built = false;
  const cleanup = () => {
    const left = cgroups ? removeCgroups(cgroups) : [];
    for (const l of left) log(`jail: cgroup left behind: ${l}`);
    if (built && !args.keep) fs.rmSync(plan.jailDir, { recursive: true, force: true });
  };
  let child;
  try {
    const mounts = buildJail(plan, log);
    built = true;
    try {
      cgroups = createCgroups(plans);
    } catch (e) {
      throw e instanceof CgroupError ? new JailError(`jail: ${e.message}`) : e;
    }
    const libDirs = [
      ...new Set(mounts.filter((m) => /\.so(\.|$)/.test(m.source ?? '')).map((m) => path.dirname(m.target.slice(plan.root.length)))),
    ];
    child = spawnInNamespaces({
      namespaces: ['mount', 'pid', 'ipc', 'uts', ...(args.newNetns ? (['net'] as const) : [])],
      netns: args.netns,
      hostname: args.id,
      root: plan.root,
      mounts,
      uid: plan.uid,
      gid: plan.gid,
      groups: plan.groups,
      file: process.execPath,
      argv: ['node', `${JAIL_BUNDLE}/main.js`, 'run', '--config', JAIL_CONFIG],
      env: { LD_LIBRARY_PATH: libDirs.join(':'), ...(process.env.TERM ? { TERM: process.env.TERM } : {}) },
      keepFds: plan.keepFds,
      parentDeathSignal: 9,
      // The VMM as PID 2 under a minimal init: as PID 1 a crash (SIGSEGV, abort) would not end it.
      init: true,
    });
    try {
      if (cgroups) placeInCgroups(cgroups, child.pid);
    } catch (e) {
      child.abort();
      await child.wait();
      throw e instanceof CgroupError ? new JailError(`jail: ${e.message}`) : e;
    }
    try {
      child.start();
    } catch (e) {
      await child.wait();
      if (e instanceof NsSpawnError) throw new JailError(`jail: starting the VMM in the jail: ${e.message}`);
      throw e;
    }
  } catch (e) {
    cleanup();
    throw e;
  }
  const cg = cgroups?.plans.map((p) => `v${p.version} ${p.controllers.join(',')} ${p.dir}`).join('; ');
  const made = createdInJail(config)
    .map(([what, p]) => `; ${what} at ${path.join(plan.root, p)}`)
    .join('');
  log(
    `jail ${args.id}: VMM pid ${child.programPid() ?? '(ended)'} (init ${child.pid}) as uid ${plan.uid}, gid ${plan.gid} in ${plan.root}; QMP at ${path.join(plan.root, JAIL_QMP)}${made}${cg ? `; cgroup ${cg}` : ''}`,
  );
  const pid = child.pid;
  const forward = (sig: NodeJS.Signals) => () => {
    try {
      process.kill(pid, sig);
    } catch {
      // it has just ended
    }
  };
  // SIGINT (Ctrl-C) and SIGQUIT from a terminal reach the VMM directly (same process group): the jailer only
  // outlives them, to clean up; passing them on too would hand the VMM a second one.
  const handlers = [
    ...(['SIGTERM', 'SIGHUP'] as const).map((s) => [s, forward(s)] as const),
    ['SIGINT', () => undefined] as const,
    ['SIGQUIT', () => undefined] as const,
  ];
  for (const [s, h] of handlers) process.on(s, h);
  const status = await child.wait();
  for (const [s, h] of handlers) process.off(s, h);
  cleanup();
  if (args.keep) log(`jail ${args.id}: kept ${plan.jailDir}`);
  return status >= 0 ? status : 128 - status;
}

/** `--object iothread` as the jailed VMM gets it again: its poll settings where they are not the defaults. */
function iothreadObject(id: string, poll: PollSettings | undefined): string {
  const props = [`iothread,id=${id}`];
  if (poll && poll.maxNs !== DEFAULT_POLL_MAX_NS) props.push(`poll-max-ns=${poll.maxNs}`);
  if (poll?.grow) props.push(`poll-grow=${poll.grow}`);
  if (poll?.shrink) props.push(`poll-shrink=${poll.shrink}`);
  return props.join(',');
}
