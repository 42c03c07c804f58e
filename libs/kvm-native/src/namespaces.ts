/**
 * Processes in new namespaces under a new root, device nodes, and waiting for
 * a child: the plumbing a jailer needs that Node lacks (unshare fails in a
 * threaded process, so the child is cloned natively; Node has no mknod, no
 * pivot_root, no setns). Generic: the jail's layout and policy are the caller's.
 */
import * as fs from 'fs';
import * as os from 'os';
import { loadNative, NativeFdWatcher } from './native';

/** The namespaces a child may get of its own (CLONE_NEW* from <linux/sched.h>). */
export const NAMESPACE_FLAGS = {
  mount: 0x00020000,
  uts: 0x04000000,
  ipc: 0x08000000,
  pid: 0x20000000,
  net: 0x40000000,
} as const;
export type Namespace = keyof typeof NAMESPACE_FLAGS;

/** The child's steps, in order (native/nsspawn.h NsStep), for its error messages. */
const STEPS = [
  'waiting for the parent',
  'setns (network namespace)',
  'sethostname',
  'making the mounts private',
  'bind-mounting the new root on itself',
  'mount',
  'remounting read-only',
  'pivot_root',
  'detaching the old root',
  'dropping the capability bounding set',
  'setgroups',
  'setresgid',
  'setresuid',
  'PR_SET_NO_NEW_PRIVS',
  'PR_SET_PDEATHSIG',
  'closing descriptors',
  'execve',
  'fork (init)',
];

export interface NsMountSpec {
  /** bind: `source` on `target` (recursive for a directory); proc: a new procfs of the child's PID namespace on `target`. */
  kind: 'bind' | 'proc';
  source?: string;
  /** A host path under `root` that exists (a file for a file's bind mount). */
  target: string;
  readOnly?: boolean;
}

export interface NsSpawnOptions {
  /** New namespaces; 'mount' is required. */
  namespaces: Namespace[];
  /** A network namespace to join: its path (e.g. /var/run/netns/NAME) or an open fd. */
  netns?: string | number;
  /** The host name inside a new UTS namespace. */
  hostname?: string;
  /** The directory that becomes "/". */
  root: string;
  mounts?: NsMountSpec[];
  uid: number;
  gid: number;
  groups: number[];
  /** The program, as a path inside `root`. */
  file: string;
  argv: string[];
  env?: Record<string, string>;
  /** Descriptors the program inherits besides 0, 1, 2. */
  keepFds?: number[];
  /** A signal the child gets when the calling thread ends (prctl PR_SET_PDEATHSIG). */
  parentDeathSignal?: number;
  /**
   * With a new PID namespace: the child stays a minimal init (PID 1) that runs
   * the program as its child (PID 2), passes SIGTERM and SIGHUP on (a terminal's
   * SIGINT reaches the program itself), and exits with its status (128 + N for signal N). A namespace's PID 1
   * ignores fatal signals it has no handler for: a program crashing as PID 1 would
   * fault forever instead of ending.
   */
  init?: boolean;
}

export class NsSpawnError extends Error {
  constructor(
    message: string,
    readonly step: string,
    readonly code?: string,
  ) {
    super(message);
  }
}

const ERRNO_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(os.constants.errno as Record<string, number>).map(([k, v]) => [v, k]),
);

/** A child created by spawnInNamespaces, stopped before its first step until start(). */
export class NsChild {
  private released = false;
  constructor(
    readonly pid: number,
    private readonly releaseFd: number,
    private readonly statusFd: number,
    private readonly mounts: NsMountSpec[],
  ) {}

  /**
   * Lets the child go on and waits (synchronously; the child only makes system
   * calls) until it executed the program, or throws NsSpawnError naming the step
   * that failed (the child has then exited with status 127: reap it with wait()).
   */
  start(): void {
    if (this.released) throw new Error('already started');
    this.released = true;
    try {
      fs.writeSync(this.releaseFd, Buffer.from([1]));
    } finally {
      fs.closeSync(this.releaseFd);
    }
    const buf = Buffer.alloc(12);
    let got = 0;
    try {
      for (;;) {
        const n = fs.readSync(this.statusFd, buf, got, buf.length - got, null);
        if (n === 0) break;
        got += n;
        if (got === buf.length) break;
      }
    } finally {
      fs.closeSync(this.statusFd);
    }
    if (got === 0) return;
    const step = buf.readInt32LE(0);
    const errno = buf.readInt32LE(4);
    const index = buf.readInt32LE(8);
    const name = STEPS[step] ?? `step ${step}`;
    const code = ERRNO_NAMES[errno] ?? `errno ${errno}`;
    const m = this.mounts[index];
    const detail = (step === 5 || step === 6) && m ? ` ${m.kind === 'proc' ? 'proc' : m.source} on ${m.target}` : '';
    throw new NsSpawnError(`${name}${detail}: ${code}`, name, code);
  }

  /** With `init`: the program's host pid (the init's child), once start() returned; undefined when it is gone. */
  programPid(): number | undefined {
    try {
      const kids = fs.readFileSync(`/proc/${this.pid}/task/${this.pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean);
      return kids.length ? Number(kids[0]) : undefined;
    } catch {
      return undefined;
    }
  }

  /** Aborts a child not started yet (it exits 127 without doing anything). */
  abort(): void {
    if (this.released) return;
    this.released = true;
    fs.closeSync(this.releaseFd);
    fs.closeSync(this.statusFd);
  }

  /** Resolves with the exit status (a signal's death: -SIGNAL) once the child ended, and reaps it. */
  wait(): Promise<number> {
    return new Promise((resolve, reject) => {
      const native = loadNative();
      const done = native.waitPid(this.pid);
      if (done !== null) return resolve(done);
      let pidfd: number;
      try {
        pidfd = native.pidfdOpen(this.pid);
      } catch (e) {
        return reject(e);
      }
      const w: NativeFdWatcher = new native.FdWatcher(pidfd, (err) => {
        let failure: Error | null = err;
        let r: number | null = null;
        try {
          if (!failure) r = native.waitPid(this.pid);
        } catch (e) {
          failure = e as Error; // reaped by someone else (ECHILD): the status is lost
        }
        if (r === null && !failure) return;
        w.close();
        fs.closeSync(pidfd);
        if (failure) reject(failure);
        else resolve(r!);
      });
      w.start();
    });
  }
}

/**
 * Clones a child into new namespaces (see native/nsspawn.h for its steps). It
 * waits until start() is called, so the caller can place it (e.g. into cgroups)
 * first; abort() ends it.
 */
export function spawnInNamespaces(o: NsSpawnOptions): NsChild {
  if (!o.namespaces.includes('mount')) throw new TypeError('spawnInNamespaces: the mount namespace is required');
  let cloneFlags = 0;
  for (const n of o.namespaces) {
    if (!Object.hasOwn(NAMESPACE_FLAGS, n)) throw new TypeError(`spawnInNamespaces: unknown namespace '${n}'`);
    cloneFlags |= NAMESPACE_FLAGS[n];
  }
  let netnsFd: number | undefined;
  let ownNetns = false;
  if (typeof o.netns === 'string') {
    netnsFd = fs.openSync(o.netns, fs.constants.O_RDONLY);
    ownNetns = true;
  } else netnsFd = o.netns;
  const mounts = o.mounts ?? [];
  try {
    const r = loadNative().nsSpawn({
      cloneFlags,
      netnsFd,
      hostname: o.hostname,
      root: o.root,
      mounts,
      uid: o.uid,
      gid: o.gid,
      groups: o.groups,
      file: o.file,
      argv: o.argv,
      env: Object.entries(o.env ?? {}).map(([k, v]) => `${k}=${v}`),
      keepFds: o.keepFds,
      parentDeathSignal: o.parentDeathSignal,
      init: o.init,
    });
    return new NsChild(r.pid, r.releaseFd, r.statusFd, mounts);
  } finally {
    if (ownNetns && netnsFd !== undefined) fs.closeSync(netnsFd);
  }
}

/** Creates a character device node (mknod); `mode`: permission bits. */
export function mknodChar(path: string, mode: number, major: number, minor: number): void {
  loadNative().mknodChar(path, mode, major, minor);
}

/** The major and minor numbers of a device's st_rdev (glibc's gnu_dev_major/minor encoding). */
export function deviceNumbers(rdev: number | bigint): { major: number; minor: number } {
  const r = BigInt(rdev);
  const major = Number(((r & 0xfff00n) >> 8n) | ((r & 0xfffff00000000000n) >> 32n));
  const minor = Number((r & 0xffn) | ((r & 0xffffff00000n) >> 12n));
  return { major, minor };
}
