/**
 * A raw image file. Reads and writes go straight between the file and guest
 * memory views (asynchronous, zero-copy, never on a vCPU thread), through one
 * of two engines (`aio=`): `io_uring` (kvm-native's IoUring: one ring per
 * image, requests of one JS turn submitted together, completions reaped in
 * batches), the default where the kernel allows it; or `threads` (fs.readv /
 * writev on libuv's thread pool). cache=none opens the file with O_DIRECT.
 *
 * Data safety (docs/block-data-safety.md):
 * - A short read or write is continued from where it stopped. A write that
 *   makes no progress (libuv hands back the bytes written before an ENOSPC,
 *   EDQUOT or EFBIG and drops the error) rejects: the caller never hears "done"
 *   for data that is not in the file. Bytes past the end of the file (it
 *   shrank under us) read as zeros, as a hole does.
 * - A failed fdatasync is sticky: the kernel reports a writeback error once
 *   and may already have dropped the dirty pages, so every later flush fails
 *   too, until clearErrors() (a device reset) or a new open.
 * - A failed write (or write-zeroes) is also reported by the next flush, once:
 *   a flush succeeds only if everything completed before it is in the file.
 * - writev(..., dsync) is a write-through write: fdatasync before it resolves.
 */
import * as fs from 'fs';
import {
  dupFd,
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FALLOC_FL_ZERO_RANGE,
  fallocate,
  IoUring,
  ioUringUnavailable,
  closeFd,
} from '@tsvmm/kvm-native';

export interface BlockBackend {
  readonly size: number;
  readonly readonly: boolean;
  /** The I/O engine (`aio=`), shown by the monitor. */
  readonly aio?: string;
  /** Fills the buffers (resolves with their total length) or rejects. */
  readv(bufs: Uint8Array[], offset: number): Promise<number>;
  /** Writes all of the buffers (resolves with their total length) or rejects; `dsync`: on stable storage first (write-through). */
  writev(bufs: Uint8Array[], offset: number, dsync?: boolean): Promise<number>;
  /** Everything completed before the call is on stable storage, or rejects. */
  flush(): Promise<void>;
  /** Deallocates the range (reads back as zeros). */
  discard(offset: number, len: number): Promise<void>;
  /** Zeroes the range, deallocating it when `unmap` is set and the file system can; `dsync` as for writev. */
  writeZeroes(offset: number, len: number, unmap: boolean, dsync?: boolean): Promise<void>;
  /** A device reset: forgets a failed flush and write errors not yet reported by a flush. */
  clearErrors?(): void;
  /** Runs the callbacks of what completed by now, without waiting (an iothread's poll); returns how many. */
  pollCompletions?(): number;
  close(): void;
}

/** The file operations a RawFileBackend uses (unit tests replace them to inject short transfers and failures). */
export interface FileIo {
  readv(fd: number, bufs: Uint8Array[], position: number, cb: (err: NodeJS.ErrnoException | null, n: number) => void): void;
  writev(fd: number, bufs: Uint8Array[], position: number, cb: (err: NodeJS.ErrnoException | null, n: number) => void): void;
  fdatasync(fd: number, cb: (err: NodeJS.ErrnoException | null) => void): void;
  /** fallocate(2) off the JS thread; without it the backend calls fallocate synchronously. */
  fallocate?(fd: number, mode: number, offset: number, len: number, cb: (err: NodeJS.ErrnoException | null) => void): void;
  /** A new fd the backend will use / an fd it is about to close (io_uring registers them as fixed files). */
  addFd?(fd: number): void;
  removeFd?(fd: number): void;
  /** Runs the callbacks of what completed by now, without waiting; returns how many (io_uring's completion ring). */
  poll?(): number;
  /** Waits for every request in flight (their callbacks run) and frees the engine. */
  close?(): void;
}

/** The I/O engine of a block backend (`aio=` on block devices). */
export type AioMode = 'io_uring' | 'threads';
export const AIO_MODES: readonly AioMode[] = ['io_uring', 'threads'];

let ioUringProbe: { why: string | undefined } | undefined;

/**
 * The engine for `aio=requested`: io_uring when asked for or by default, if the
 * kernel allows it. `fallback` says why the default fell back to threads (log
 * it); an explicit aio=io_uring that cannot work is a BackendOpenError.
 */
export function chooseAio(requested: AioMode | undefined): { mode: AioMode; fallback?: string } {
  if (requested === 'threads') return { mode: 'threads' };
  // TSVMM_NO_IO_URING=1: as if the kernel refused (tests of the fallback; a host that wants threads everywhere).
  const why = process.env.TSVMM_NO_IO_URING ? 'TSVMM_NO_IO_URING is set' : (ioUringProbe ??= { why: ioUringUnavailable() }).why;
  if (why === undefined) return { mode: 'io_uring' };
  if (requested === 'io_uring') throw new BackendOpenError(`aio=io_uring: io_uring is not available here (${why})`);
  return { mode: 'threads', fallback: `io_uring is not available (${why}); using aio=threads` };
}

/** Entries of a backend's ring: enough for every queue of a device at full depth. */
const URING_ENTRIES = 256;

/** FileIo over a private io_uring. */
export function ioUringFileIo(entries = URING_ENTRIES): FileIo {
  const ring = new IoUring(entries);
  return {
    readv: (fd, bufs, pos, cb) => ring.readv(fd, bufs, pos, cb),
    writev: (fd, bufs, pos, cb) => ring.writev(fd, bufs, pos, cb),
    fdatasync: (fd, cb) => ring.fdatasync(fd, (err) => cb(err)),
    fallocate: (fd, mode, off, len, cb) => ring.fallocate(fd, mode, off, len, (err) => cb(err)),
    addFd: (fd) => void ring.registerFile(fd),
    removeFd: (fd) => ring.unregisterFile(fd),
    poll: () => ring.reapNow(),
    close: () => ring.close(),
  };
}

const NODE_IO: FileIo = {
  readv: (fd, bufs, pos, cb) => fs.readv(fd, bufs, pos, cb),
  writev: (fd, bufs, pos, cb) => fs.writev(fd, bufs, pos, cb),
  fdatasync: (fd, cb) => fs.fdatasync(fd, cb),
};

/** The views after the first `skip` bytes. */
export function skipBytes(bufs: Uint8Array[], skip: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (const b of bufs) {
    if (skip >= b.length) {
      skip -= b.length;
      continue;
    }
    out.push(skip ? b.subarray(skip) : b);
    skip = 0;
  }
  return out;
}

function ioError(message: string, code: string, cause?: unknown): NodeJS.ErrnoException {
  return Object.assign(new Error(message), { code, cause });
}

export class BackendOpenError extends Error {}

const O_DIRECT = fs.constants.O_DIRECT ?? 0o40000;
const DIRECT_ALIGN = 4096;

/** An image's descriptors handed to a RawFileBackend (see its `opened` argument). */
export interface OpenedImage {
  fd: number;
  /** The buffered twin of an O_DIRECT fd. */
  bufferedFd?: number;
}

export class RawFileBackend implements BlockBackend {
  readonly size: number;
  /** The engine in use ('custom': a FileIo given by the caller). */
  readonly aio: AioMode | 'custom';
  /** Why the default engine fell back to threads (the caller logs it once). */
  readonly aioFallback: string | undefined;
  private readonly io: FileIo;
  private readonly fd: number;
  /** A buffered fd for O_DIRECT-incompatible (unaligned) requests under cache=none. */
  private bufferedFd: number | undefined;
  /** The fdatasync that failed: every later flush fails until clearErrors(). */
  private syncError: Error | undefined;
  /** A write that failed and no flush has reported yet: the next flush fails once. */
  private writeError: Error | undefined;
  /** The fdatasync running, and the one queued behind it (shared by all who asked meanwhile). */
  private syncRunning: Promise<void> | undefined;
  private syncQueued: Promise<void> | undefined;

  constructor(
    readonly path: string,
    readonly readonly: boolean,
    readonly direct: boolean,
    /** An engine (default: io_uring where the kernel allows it, else threads), or a FileIo of a test. */
    engine?: AioMode | FileIo,
    /**
     * Descriptors of the image already open (from dupFds() of another backend
     * on the same file): the backend owns and closes them, and opens nothing
     * by path. An iothread's copy takes these, so it works after --run-with
     * dropped the rights (or entered the chroot) that opening the path needed.
     */
    opened?: OpenedImage,
  ) {
    if (typeof engine === 'object') {
      this.io = engine;
      this.aio = 'custom';
    } else {
      const c = chooseAio(engine);
      this.aio = c.mode;
      this.aioFallback = c.fallback;
      this.io = NODE_IO;
    }
    const flags = (readonly ? fs.constants.O_RDONLY : fs.constants.O_RDWR) | (direct ? O_DIRECT : 0);
    if (opened) this.adopted = new Set([opened.fd, ...(opened.bufferedFd === undefined ? [] : [opened.bufferedFd])]);
    try {
      this.fd = opened ? opened.fd : fs.openSync(path, flags);
    } catch (e) {
      const code = (e as { code?: string }).code;
      const why =
        code === 'ENOENT'
          ? 'no such file'
          : code === 'EACCES' || code === 'EROFS'
            ? 'permission denied (use readonly=on?)'
            : code === 'EINVAL' && direct
              ? 'the file system does not support O_DIRECT (use cache=writeback)'
              : (e as Error).message;
      throw new BackendOpenError(`${path}: ${why}`);
    }
    const st = fs.fstatSync(this.fd);
    if (st.isDirectory()) {
      this.closeDescriptor(this.fd);
      throw new BackendOpenError(`${path}: is a directory`);
    }
    this.size = st.isBlockDevice() ? Number(this.blockDeviceSize()) : st.size;
    // The buffered twin of an O_DIRECT fd is opened now, with the first: later the VMM may have
    // dropped its privileges or entered a chroot (--run-with) and could no longer open the path.
    if (direct) this.bufferedFd = opened?.bufferedFd ?? fs.openSync(path, readonly ? fs.constants.O_RDONLY : fs.constants.O_RDWR);
    if (this.aio === 'io_uring') {
      try {
        this.io = ioUringFileIo();
      } catch (e) {
        this.closeDescriptor(this.fd);
        if (this.bufferedFd !== undefined) this.closeDescriptor(this.bufferedFd);
        throw new BackendOpenError(`${path}: aio=io_uring: ${(e as Error).message}`);
      }
    }
    this.io.addFd?.(this.fd);
    if (this.bufferedFd !== undefined) this.io.addFd?.(this.bufferedFd);
  }

  private readonly adopted: ReadonlySet<number> = new Set();

  /** Duplicates of the open descriptors (close-on-exec), for another backend on the same image (the `opened` argument). */
  dupFds(): OpenedImage {
    const fd = dupFd(this.fd);
    return this.bufferedFd === undefined ? { fd } : { fd, bufferedFd: dupFd(this.bufferedFd) };
  }

  private blockDeviceSize(): number {
    // Seeking to the end is the portable way to size a block device.
    const buf = Buffer.alloc(1);
    let lo = 0;
    let hi = 2 ** 50;
    while (lo < hi) {
      const mid = Math.floor((lo + hi + 1) / 2);
      try {
        if (fs.readSync(this.fd, buf, 0, 1, mid - 1) === 1) lo = mid;
        else hi = mid - 1;
      } catch {
        hi = mid - 1;
      }
    }
    return lo;
  }

  private fdFor(bufs: Uint8Array[], offset: number): number {
    if (!this.direct) return this.fd;
    const aligned = offset % DIRECT_ALIGN === 0 && bufs.every((b) => b.byteLength % 512 === 0 && b.byteOffset % 512 === 0);
    if (aligned) return this.fd;
    if (this.bufferedFd === undefined) {
      this.bufferedFd = fs.openSync(this.path, this.readonly ? fs.constants.O_RDONLY : fs.constants.O_RDWR);
      this.io.addFd?.(this.bufferedFd);
    }
    return this.bufferedFd;
  }

  private once(op: 'readv' | 'writev', bufs: Uint8Array[], offset: number): Promise<number> {
    return new Promise((resolve, reject) => {
      this.io[op](this.fdFor(bufs, offset), bufs, offset, (err, n) => (err ? reject(err) : resolve(n)));
    });
  }

  /**
   * Not async functions: the usual request, done in one transfer, costs one
   * promise; a short count goes on in readRest / writeRest.
   */
  readv(bufs: Uint8Array[], offset: number): Promise<number> {
    const total = byteLength(bufs);
    if (total === 0) return Promise.resolve(0);
    return this.once('readv', bufs, offset).then((n) => (n === total ? total : this.readRest(bufs, offset, total, n)));
  }

  /** readv after a first transfer of `first` bytes that did not fill the buffers. */
  private async readRest(bufs: Uint8Array[], offset: number, total: number, first: number): Promise<number> {
    for (let done = 0, n = first; ;) {
      if (n <= 0) {
        // End of file inside the disk (the file shrank): zeros, as a hole reads.
        for (const b of skipBytes(bufs, done)) b.fill(0);
        break;
      }
      done += n;
      if (done >= total) break;
      n = await this.once('readv', skipBytes(bufs, done), offset + done);
    }
    return total;
  }

  writev(bufs: Uint8Array[], offset: number, dsync = false): Promise<number> {
    const total = byteLength(bufs);
    if (total === 0) return dsync ? this.datasync().then(() => 0) : Promise.resolve(0);
    return this.once('writev', bufs, offset).then(
      (n) => (n !== total ? this.writeRest(bufs, offset, total, n, dsync) : dsync ? this.datasync().then(() => total) : total),
      (e: unknown) => {
        this.writeError ??= e as Error;
        throw e;
      },
    );
  }

  /** writev after a first transfer of `first` bytes that did not take all of the buffers. */
  private async writeRest(bufs: Uint8Array[], offset: number, total: number, first: number, dsync: boolean): Promise<number> {
    try {
      if (first <= 0) throw ioError(`short write at ${offset}: ${total} of ${total} bytes not written`, 'EIO');
      for (let done = first; done < total;) {
        // libuv returns the bytes written before an error (ENOSPC, EDQUOT, EFBIG) and drops
        // the error: go on with the rest, which then fails with the error itself.
        const n = await this.once('writev', done ? skipBytes(bufs, done) : bufs, offset + done);
        if (n <= 0) throw ioError(`short write at ${offset + done}: ${total - done} of ${total} bytes not written`, 'EIO');
        done += n;
      }
    } catch (e) {
      this.writeError ??= e as Error;
      throw e;
    }
    if (dsync) await this.datasync();
    return total;
  }

  async flush(): Promise<void> {
    // Taken now: a write failing after this point is the next flush's to report.
    const failedWrite = this.writeError;
    this.writeError = undefined;
    await this.datasync();
    if (failedWrite) throw ioError(`a write since the last flush failed (${failedWrite.message})`, 'EIO', failedWrite);
  }

  clearErrors(): void {
    this.syncError = undefined;
    this.writeError = undefined;
  }

  /**
   * fdatasync of every fd, one at a time: a caller waits for a sync that
   * started after its call (queued behind the running one and shared with
   * everyone else who asked meanwhile), so no writeback error reaches a
   * concurrent sync that then reports success.
   */
  private datasync(): Promise<void> {
    if (!this.syncRunning) {
      const p = this.syncAll();
      this.syncRunning = p;
      const clear = () => {
        if (this.syncRunning === p) this.syncRunning = undefined;
      };
      p.then(clear, clear);
      return p;
    }
    this.syncQueued ??= this.syncRunning.then(noop, noop).then(() => {
      this.syncQueued = undefined;
      return this.datasync();
    });
    return this.syncQueued;
  }

  private async syncAll(): Promise<void> {
    if (this.syncError)
      throw ioError(`an earlier flush failed (${this.syncError.message}); flushes fail until the device is reset`, 'EIO', this.syncError);
    const fds = this.bufferedFd === undefined ? [this.fd] : [this.fd, this.bufferedFd];
    try {
      for (const fd of fds) await new Promise<void>((resolve, reject) => this.io.fdatasync(fd, (err) => (err ? reject(err) : resolve())));
    } catch (e) {
      this.syncError ??= e as Error;
      throw e;
    }
  }

  private async fallocate(mode: number, offset: number, len: number): Promise<void> {
    const io = this.io;
    if (!io.fallocate) return fallocate(this.fd, mode, offset, len);
    await new Promise<void>((resolve, reject) => io.fallocate!(this.fd, mode, offset, len, (err) => (err ? reject(err) : resolve())));
  }

  async discard(offset: number, len: number): Promise<void> {
    await this.fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, len);
  }

  async writeZeroes(offset: number, len: number, unmap: boolean, dsync = false): Promise<void> {
    try {
      await this.fallocate((unmap ? FALLOC_FL_PUNCH_HOLE : FALLOC_FL_ZERO_RANGE) | FALLOC_FL_KEEP_SIZE, offset, len);
    } catch (e) {
      if ((e as { code?: string }).code !== 'EOPNOTSUPP') {
        this.writeError ??= e as Error;
        throw e;
      }
      // The file system cannot: write zeros (writev records its own failure).
      const chunk = Buffer.alloc(Math.min(len, 1 << 20));
      for (let done = 0; done < len;) {
        const n = Math.min(chunk.length, len - done);
        await this.writev([chunk.subarray(0, n)], offset + done);
        done += n;
      }
    }
    if (dsync) await this.datasync();
  }

  pollCompletions(): number {
    return this.io.poll?.() ?? 0;
  }

  /** Closes the file. io_uring: requests in flight are cancelled or waited for first (their callers see them fail or complete). */
  close(): void {
    // Out of io_uring's fixed-file table first: a ring's own teardown drops its file references
    // asynchronously, which would keep the file system busy (umount) for a moment after close.
    this.io.removeFd?.(this.fd);
    if (this.bufferedFd !== undefined) this.io.removeFd?.(this.bufferedFd);
    this.io.close?.();
    this.closeDescriptor(this.fd);
    if (this.bufferedFd !== undefined) this.closeDescriptor(this.bufferedFd);
  }

  /**
   * Descriptors handed over (`opened`) are closed with close(2) itself: in a
   * worker thread, fs.closeSync of a descriptor that worker's fs did not open
   * prints Node's "closed but not opened in unmanaged mode" warning.
   */
  private closeDescriptor(fd: number): void {
    if (this.adopted.has(fd)) closeFd(fd);
    else fs.closeSync(fd);
  }
}

function noop(): void {}

function byteLength(bufs: Uint8Array[]): number {
  let n = 0;
  for (const b of bufs) n += b.byteLength;
  return n;
}
