/**
 * Asynchronous file I/O through io_uring (native/uring.h): vectored reads and
 * writes, fdatasync and fallocate on host fds, straight to and from the given
 * views (guest memory). Generic plumbing: no device logic.
 *
 * Requests queued in one JS turn go to the kernel in one io_uring_enter (a
 * microtask after the first). Page-cache hits complete inside that call and
 * are reaped right after it; every completion also signals an eventfd
 * (IORING_REGISTER_EVENTFD) that a libuv watcher turns into one reap of every
 * completion posted. Callbacks run on the JS thread, never inside the call
 * that queued the request.
 */
import * as os from 'os';
import * as util from 'util';
import { EventFd } from './eventfd';
import { loadNative, NativeFdWatcher, NativeIoUring } from './native';
import { checkFd, checkU64 } from './check';
import { KvmArgumentError } from './errors';

export type IoCallback = (err: NodeJS.ErrnoException | null, result: number) => void;

const OP_READV = 0;
const OP_WRITEV = 1;
const OP_FDATASYNC = 2;
const OP_FALLOCATE = 3;
const EBUSY = os.constants.errno.EBUSY;
const EAGAIN = os.constants.errno.EAGAIN;
const EINTR = os.constants.errno.EINTR;
const ECANCELED = os.constants.errno.ECANCELED;
const EINVAL = os.constants.errno.EINVAL;

// errno -> [name, message], as libuv knows them (keys are negative errnos).
const SYSTEM_ERRORS = util.getSystemErrorMap();

/** An error like Node's fs errors: `code` is the errno name (ENOSPC, ...). */
export function errnoException(errno: number, syscall: string): NodeJS.ErrnoException {
  const [code, text] = SYSTEM_ERRORS.get(-errno) ?? [`E${errno}`, `errno ${errno}`];
  return Object.assign(new Error(`${code}: ${text}, ${syscall} (io_uring)`), { code, errno: -errno, syscall });
}

interface Pending {
  op: number;
  fd: number;
  offset: number;
  bufs: Uint8Array[] | null; // held here until the completion: the kernel writes into them
  len: number;
  mode: number;
  cb: IoCallback;
}

const OP_NAMES = ['readv', 'writev', 'fdatasync', 'fallocate'];

/** The kernel's limit on buffers per vectored request (UIO_MAXIOV). */
export const IOV_MAX = 1024;

/** Why io_uring cannot be used here (the kernel forbids it, seccomp, an old kernel), or undefined when it can. */
export function ioUringUnavailable(): string | undefined {
  try {
    const ring = new IoUring(2);
    ring.close();
    return undefined;
  } catch (e) {
    return (e as Error).message;
  }
}

/**
 * Transfers from this size on go to io-wq (IOSQE_ASYNC): a page-cache hit is
 * otherwise copied inside io_uring_enter on the JS thread, which for 1 MiB
 * costs more than the hand-off (tools/bench/engine-bench.js).
 */
export const IO_URING_ASYNC_BYTES = 512 * 1024;

function asyncMode(bufs: Uint8Array[]): number {
  let n = 0;
  for (const b of bufs) n += b.byteLength;
  return n >= IO_URING_ASYNC_BYTES ? 1 : 0;
}

function checkBufs(bufs: Uint8Array[]): Uint8Array[] {
  if (!Array.isArray(bufs) || bufs.length === 0) throw new KvmArgumentError('bufs must be a non-empty array of Uint8Arrays');
  for (const b of bufs) if (!(b instanceof Uint8Array)) throw new KvmArgumentError('bufs must be a non-empty array of Uint8Arrays');
  return bufs.length > IOV_MAX ? bufs.slice(0, IOV_MAX) : bufs;
}

export class IoUring {
  private readonly ring: NativeIoUring;
  private readonly efd: EventFd;
  private readonly watcher: NativeFdWatcher;
  /** The watcher keeps the event loop alive only while requests are pending (an idle image must not hold a process open). */
  private referenced = false;
  private readonly slots: (Pending | undefined)[] = [];
  private readonly free: number[] = [];
  /** Requests waiting for room (more than the completion ring holds are never in flight). */
  private readonly backlog: number[] = [];
  private inKernel = 0;
  private queued = 0;
  private flushScheduled = false;
  private retryTimer: NodeJS.Immediate | undefined;
  private closed = false;
  private readonly tags: Float64Array;
  private readonly results: Int32Array;
  private readonly limit: number;
  private readonly native: ReturnType<typeof loadNative>;

  /** `entries`: submission ring size (a power of two; the kernel may clamp it). Throws when io_uring is unavailable. */
  constructor(entries = 128) {
    this.efd = EventFd.create();
    try {
      this.ring = new (loadNative().IoUring)(entries, this.efd.fd);
    } catch (e) {
      this.efd.close();
      throw e;
    }
    this.limit = this.ring.cqEntries;
    this.tags = new Float64Array(this.limit);
    this.results = new Int32Array(this.limit);
    const native = (this.native = loadNative());
    this.watcher = new native.FdWatcher(this.efd.fd, () => {
      if (this.closed) return;
      native.eventfdRead(this.efd.fd);
      this.reapAll();
    });
    this.watcher.start();
    this.watcher.setRef(false);
  }

  /** Uses a fixed-file slot for `fd` (saves the kernel a file lookup per request); false when the table is full. */
  registerFile(fd: number): boolean {
    checkFd('fd', fd);
    return !this.closed && this.ring.registerFile(fd) >= 0;
  }

  /** Before closing an fd that registerFile() took. */
  unregisterFile(fd: number): void {
    if (!this.closed) this.ring.unregisterFile(fd);
  }

  /**
   * Reads into `bufs` at `offset`; cb(null, bytes read) (short at the end of
   * the file), or cb(error). Only the first IOV_MAX buffers are used (as
   * preadv does): the count then says where to go on.
   */
  readv(fd: number, bufs: Uint8Array[], offset: number, cb: IoCallback): void {
    const b = checkBufs(bufs);
    this.queue(OP_READV, fd, offset, b, 0, asyncMode(b), cb);
  }

  /** Writes `bufs` at `offset`; cb(null, bytes written) (possibly short), or cb(error). The first IOV_MAX buffers, as readv. */
  writev(fd: number, bufs: Uint8Array[], offset: number, cb: IoCallback): void {
    const b = checkBufs(bufs);
    this.queue(OP_WRITEV, fd, offset, b, 0, asyncMode(b), cb);
  }

  fdatasync(fd: number, cb: IoCallback): void {
    this.queue(OP_FDATASYNC, fd, 0, null, 0, 0, cb);
  }

  /** fallocate(2) with `mode` (FALLOC_FL_*). */
  fallocate(fd: number, mode: number, offset: number, len: number, cb: IoCallback): void {
    checkU64('len', len);
    this.queue(OP_FALLOCATE, fd, offset, null, len, mode, cb);
  }

  /**
   * Takes the completions posted by now without waiting (a data plane's
   * poll loop) and runs their callbacks; returns how many. Reading the
   * completion ring is no system call; the eventfd is cleared only when
   * something was taken (then reaped again, for what came before the clear).
   */
  reapNow(): number {
    if (this.closed || this.inKernel === 0) return 0;
    const before = this.inKernel;
    this.reapAll();
    if (this.inKernel === before) return 0;
    this.native.eventfdRead(this.efd.fd);
    this.reapAll();
    return before - this.inKernel;
  }

  /** Requests handed to the kernel or waiting to be. */
  get pending(): number {
    return this.slots.length - this.free.length;
  }

  /**
   * Cancels what the kernel can cancel, waits for every request in flight to
   * complete (blocking: the kernel must not write into memory the caller may
   * free next) and calls their callbacks (ECANCELED for what never started).
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.retryTimer) clearImmediate(this.retryTimer);
    this.watcher.close();
    try {
      this.ring.cancelAndWait();
      this.reapAll(true);
    } finally {
      this.ring.close();
      this.efd.close();
    }
    const left: number[] = [];
    this.slots.forEach((p, tag) => {
      if (p) left.push(tag);
    });
    for (const tag of left) this.finish(tag, -ECANCELED);
  }

  private queue(op: number, fd: number, offset: number, bufs: Uint8Array[] | null, len: number, mode: number, cb: IoCallback): void {
    checkFd('fd', fd);
    checkU64('offset', offset);
    if (this.closed) {
      setImmediate(() => cb(errnoException(ECANCELED, OP_NAMES[op]), 0));
      return;
    }
    const p: Pending = { op, fd, offset, bufs, len, mode, cb };
    if (!this.referenced) {
      this.referenced = true;
      this.watcher.setRef(true);
    }
    const tag = this.free.pop() ?? this.slots.length;
    this.slots[tag] = p;
    this.backlog.push(tag);
    this.scheduleFlush();
  }

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    queueMicrotask(() => {
      this.flushScheduled = false;
      this.flush();
    });
  }

  /** Moves backlog into the ring (up to the completion ring's size in flight) and submits. */
  private flush(): void {
    if (this.closed) return;
    while (this.backlog.length && this.inKernel + this.queued < this.limit) {
      const tag = this.backlog[0];
      const p = this.slots[tag]!;
      let r = this.prep(p, tag);
      if (r === -EBUSY) {
        if (!this.submit()) break;
        r = this.prep(p, tag);
        if (r === -EBUSY) break;
      }
      this.backlog.shift();
      if (r < 0) {
        // Refused outright (cannot happen for the ops above): fail this request only.
        setImmediate(() => this.finish(tag, r));
        continue;
      }
      this.queued++;
    }
    this.submit();
    // Page-cache hits completed inside io_uring_enter: take them now, not one loop turn later.
    this.reapAll();
  }

  /** ring.prep; a request the addon refuses (it never should: queue() checked it) fails alone, with EINVAL. */
  private prep(p: Pending, tag: number): number {
    try {
      return this.ring.prep(p.op, p.fd, p.offset, p.bufs, p.len, p.mode, tag);
    } catch {
      return -EINVAL;
    }
  }

  /** false when the kernel took nothing (retried on the next turn). */
  private submit(): boolean {
    if (!this.queued) return true;
    const r = this.ring.submit();
    if (r < 0) {
      if (r !== -EAGAIN && r !== -EBUSY && r !== -EINTR) process.emitWarning(`io_uring_enter failed (errno ${-r}); retrying`);
      this.retryTimer ??= setImmediate(() => {
        this.retryTimer = undefined;
        this.flush();
      });
      return false;
    }
    this.queued -= r;
    this.inKernel += r;
    return true;
  }

  private reapAll(closing = false): void {
    for (;;) {
      const n = this.ring.reap(this.tags, this.results);
      for (let i = 0; i < n; i++) {
        const tag = this.tags[i];
        if (tag >= 0) {
          this.inKernel--;
          this.finish(tag, this.results[i]);
        }
      }
      if (n < this.tags.length) break;
    }
    if (!closing && this.backlog.length && !this.flushScheduled) this.scheduleFlush();
  }

  private finish(tag: number, res: number): void {
    const p = this.slots[tag];
    if (!p) return;
    this.slots[tag] = undefined;
    this.free.push(tag);
    if (this.referenced && this.free.length === this.slots.length) {
      this.referenced = false;
      if (!this.closed) this.watcher.setRef(false);
    }
    // A callback that throws must not lose the other completions of this batch.
    try {
      if (res < 0) p.cb(errnoException(-res, OP_NAMES[p.op]), 0);
      else p.cb(null, res);
    } catch (e) {
      process.emitWarning(`io_uring completion callback threw: ${(e as Error)?.stack ?? String(e)}`);
    }
  }
}
