/**
 * Loads the N-API addon. The addon is raw: fds, ioctls, mappings, eventfds,
 * fd watchers and vCPU threads. Everything typed lives in the TS facade.
 */
import * as fs from 'fs';
import * as path from 'path';

export interface NativeMapping {
  /** Host virtual address of the mapping (for structs that carry a pointer). */
  address: bigint;
  /** buffers[0]. */
  buffer: ArrayBuffer;
  /** One external ArrayBuffer per piece, in order (one piece unless `pieces` was given). */
  buffers: ArrayBuffer[];
}

export interface NativeFdWatcher {
  start(): void;
  stop(): void;
  close(): void;
  /** false: watching no longer keeps the event loop alive (uv_unref); true undoes it. */
  setRef(on: boolean): void;
}

/** What nsSpawn takes (native/nsspawn.h; the typed facade is spawnInNamespaces in namespaces.ts). */
export interface NativeNsSpawnSpec {
  cloneFlags: number;
  netnsFd?: number;
  hostname?: string;
  root: string;
  mounts: { kind: 'bind' | 'proc'; source?: string; target: string; readOnly?: boolean }[];
  uid: number;
  gid: number;
  groups: number[];
  file: string;
  argv: string[];
  env: string[];
  keepFds?: number[];
  parentDeathSignal?: number;
  init?: boolean;
}

/** A raw io_uring (native/uring.h); the typed facade is IoUring in io-uring.ts. */
export interface NativeIoUring {
  /** 0, or -errno (-EBUSY: the submission ring is full; submit first). */
  prep(op: number, fd: number, offset: number, bufs: Uint8Array[] | null, len: number, mode: number, tag: number): number;
  /** Requests taken by the kernel, or -errno (EAGAIN / EBUSY / EINTR: try later). */
  submit(): number;
  /** Completions copied out (tag -1: the ring's own cancel request). */
  reap(tags: Float64Array, results: Int32Array): number;
  cancelAndWait(): void;
  registerFile(fd: number): number;
  unregisterFile(fd: number): void;
  close(): void;
  readonly sqEntries: number;
  readonly cqEntries: number;
  readonly inFlight: number;
}

export interface NativeVcpuThread {
  start(): void;
  /** `gen`: the request's generation, reported back with "paused" / "running". */
  pause(gen: number): void;
  resume(gen: number): void;
  stop(): void;
  /** The thread's kernel thread id (gettid), 0 before it runs. */
  tid(): number;
}

export interface NativeAddon {
  open(path: string, flags?: number): number;
  close(fd: number): void;
  ioctl(fd: number, request: number, arg?: number | bigint | ArrayBufferView): number;
  addressOf(view: ArrayBufferView): bigint;
  /**
   * `pieces`: the lengths (multiples of 4096, adding up to `size`) of the
   * ArrayBuffers the one mapping is handed out as (a V8 ArrayBuffer is at
   * most 4 GiB in Node 20). The mapping is unmapped once, after the last
   * piece is collected; on failure nothing leaks and nothing is freed twice.
   */
  memfdMap(name: string, size: number | bigint, pieces?: number[]): NativeMapping & { fd: number };
  mmapFd(fd: number, size: number, offset?: number, pieces?: number[]): NativeMapping;
  /** [start, end) pairs, flattened, of the parts of [offset, offset+len) of `fd` that hold data (SEEK_DATA/SEEK_HOLE). */
  dataExtents(fd: number, offset: number, len: number): number[];
  /** Atomic OR of u64 word `wordIndex` of an 8-byte-aligned bitmap (e.g. a MAP_SHARED mapping). */
  atomicOr64(bitmap: ArrayBufferView, wordIndex: number, mask: bigint): void;
  /** out[i] = atomic exchange(bitmap[i], 0) for every u64 word; returns how many were non-zero. */
  atomicFetchClear64(bitmap: ArrayBufferView, out: ArrayBufferView): number;
  eventfd(initval?: number, flags?: number): number;
  /** Reads and clears the counter; 0n when it was already zero. */
  eventfdRead(fd: number): bigint;
  eventfdWrite(fd: number, value?: number | bigint): void;
  /** The calling thread's kernel thread id. */
  gettid(): number;
  fallocate(fd: number, mode: number, offset: number, len: number): void;
  unixListen(path: string): number;
  unixConnect(path: string): number;
  /** The accepted fd, or -1 when no connection is waiting. */
  unixAccept(listenFd: number): number;
  sendFds(fd: number, data: Uint8Array, fds: number[]): number;
  recvFds(fd: number, buf: Uint8Array, maxFds: number): { bytes: number; fds: number[] };
  pollIn(fd: number, timeoutMs: number): boolean;
  dup(fd: number): number;
  /** See frame-io.ts. */
  writevFrames(fd: number, bases: Uint8Array[], iov: Float64Array, groups: Uint32Array, count: number, results: Int32Array): number;
  readvFrames(
    fd: number,
    bases: Uint8Array[],
    iov: Float64Array,
    groups: Uint32Array,
    count: number,
    results: Int32Array,
    spill?: Uint8Array | null,
  ): number;
  /**
   * Where an exception thrown by a JS callback that native code runs (fd
   * watchers, vCPU state calls) goes: it is never rethrown (that would abort
   * the process); without a reporter it is printed to stderr.
   */
  setCallbackErrorReporter(fn: ((where: string, error: unknown) => void) | undefined): void;
  /** chroot(dir) then chdir("/"). */
  chroot(dir: string): void;
  /** setgroups(2), setresgid(2), setresuid(2) through glibc: every thread of the process changes. */
  setGroups(gids: number[]): void;
  setResGid(rgid: number, egid: number, sgid: number): void;
  setResUid(ruid: number, euid: number, suid: number): void;
  /** PR_CAPBSET_DROP of every capability and PR_CAP_AMBIENT_CLEAR_ALL (the calling thread's sets). */
  dropCapabilityBounding(): void;
  /** capset(2): empty effective, permitted and inheritable sets of the calling thread. */
  clearCapabilities(): void;
  /** getpwnam_r + getgrouplist; null for an unknown user. */
  lookupUser(name: string): { uid: number; gid: number; groups: number[] } | null;
  /** clone(2) into new namespaces (native/nsspawn.h); the child waits for a byte on releaseFd, statusFd reads EOF once it executed. */
  nsSpawn(spec: NativeNsSpawnSpec): { pid: number; releaseFd: number; statusFd: number };
  /** mknod(path, S_IFCHR | mode, makedev(major, minor)). */
  mknodChar(path: string, mode: number, major: number, minor: number): void;
  pidfdOpen(pid: number): number;
  /** waitpid(pid, WNOHANG): null while it runs, else the exit status (or -signal). */
  waitPid(pid: number): number | null;
  FdWatcher: new (fd: number, onReadable: (err: Error | null) => void) => NativeFdWatcher;
  VcpuThread: new (
    vcpuFd: number,
    run: ArrayBuffer,
    onExit: (exitReason: number) => number,
    onState: (state: 'paused' | 'running' | 'stopped' | 'error', errno: number, error?: unknown) => void,
  ) => NativeVcpuThread;
  IoUring: new (entries: number, eventfd: number) => NativeIoUring;
  kvmRunSize: number;
  /**
   * SIGSYS handler for SECCOMP_RET_TRAP: writes `${prefix}${names[nr]} (${nr})${suffix}`
   * (or the number alone) to stderr, then (x86_64, when `argsPrefix` is given)
   * `${argsPrefix}0x<arg0> 0x<arg1>`, and ends the process with `seccompTrapExitStatus`.
   */
  seccompSetTrapReporter(prefix: string, suffix: string, names: string[], argsPrefix?: string): void;
  /** PR_SET_NO_NEW_PRIVS, then the classic-BPF `program` (8-byte sock_filter entries) on every thread (TSYNC). */
  seccompInstall(program: Uint8Array): void;
  /** 128 + SIGSYS. */
  seccompTrapExitStatus: number;
}

/** Where the addon may live: an explicit override, the package's build, or next to a bundle. */
export function addonCandidates(): string[] {
  const out: string[] = [];
  if (process.env.VMM_KVM_NATIVE) out.push(process.env.VMM_KVM_NATIVE);
  out.push(path.resolve(__dirname, '../build/Release/kvm_native.node'));
  out.push(path.resolve(__dirname, 'kvm_native.node'));
  return out;
}

let cached: NativeAddon | undefined;

export function loadNative(): NativeAddon {
  if (cached) return cached;
  const candidates = addonCandidates();
  const found = candidates.find((p) => fs.existsSync(p));
  if (!found) {
    throw new Error(
      `kvm-native addon not built (looked in ${candidates.join(', ')}); run \`npm run setup\` ` +
        'or `node libs/kvm-native/scripts/build-native.js`',
    );
  }
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  cached = require(found) as NativeAddon;
  return cached;
}
