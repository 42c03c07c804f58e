/**
 * Unix stream sockets with descriptor passing (SCM_RIGHTS): what vhost-user
 * needs and Node's net module cannot do. Also mmap of a received fd and fd
 * duplication, so a backend process can map guest RAM it was handed.
 */
import { checkFd, checkU64 } from './check';
import { loadNative } from './native';

export class SocketClosedError extends Error {
  constructor(message = 'the peer closed the connection') {
    super(message);
    this.name = 'SocketClosedError';
  }
}

export class SocketTimeoutError extends Error {
  constructor(ms: number) {
    super(`no answer within ${ms} ms`);
    this.name = 'SocketTimeoutError';
  }
}

/** A connected, blocking unix stream socket. */
export class UnixSocket {
  private closed = false;

  constructor(readonly fd: number) {
    checkFd('fd', fd);
  }

  /** Connects to a listening socket at `path` (throws an errno error: ENOENT, ECONNREFUSED...). */
  static connect(path: string): UnixSocket {
    return new UnixSocket(loadNative().unixConnect(path));
  }

  /** Sends all of `data`, with `fds` attached to its first byte. */
  send(data: Uint8Array, fds: readonly number[] = []): void {
    this.assertOpen();
    for (const f of fds) checkFd('fd', f);
    loadNative().sendFds(this.fd, data, [...fds]);
  }

  /** Waits up to `ms` (-1: forever) for data or end of stream. */
  waitReadable(ms: number): boolean {
    this.assertOpen();
    return loadNative().pollIn(this.fd, ms);
  }

  /**
   * Reads exactly `len` bytes, waiting at most `timeoutMs` for each part.
   * Descriptors that came with them are returned (the caller owns them).
   * Throws SocketClosedError at end of stream, SocketTimeoutError on timeout.
   */
  recvExact(len: number, timeoutMs: number, maxFds = 0): { data: Uint8Array; fds: number[] } {
    this.assertOpen();
    const data = new Uint8Array(len);
    const fds: number[] = [];
    let got = 0;
    while (got < len) {
      if (timeoutMs >= 0 && !loadNative().pollIn(this.fd, timeoutMs)) {
        closeFds(fds);
        throw new SocketTimeoutError(timeoutMs);
      }
      const r = loadNative().recvFds(this.fd, data.subarray(got), Math.max(0, maxFds - fds.length));
      fds.push(...r.fds);
      if (r.bytes === 0) {
        closeFds(fds);
        throw new SocketClosedError();
      }
      got += r.bytes;
    }
    return { data, fds };
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    loadNative().close(this.fd);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  private assertOpen(): void {
    if (this.closed) throw new SocketClosedError('socket is closed');
  }
}

/** A non-blocking listening unix socket. */
export class UnixListener {
  private closed = false;

  private constructor(
    readonly fd: number,
    readonly path: string,
  ) {}

  static listen(path: string): UnixListener {
    return new UnixListener(loadNative().unixListen(path), path);
  }

  /** The next waiting connection, or undefined. */
  accept(): UnixSocket | undefined {
    const fd = loadNative().unixAccept(this.fd);
    return fd < 0 ? undefined : new UnixSocket(fd);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    loadNative().close(this.fd);
  }
}

/** mmap(MAP_SHARED, read/write) of `size` bytes of `fd` at `offset` (page-aligned); unmapped when the buffer is collected. */
export function mapSharedFd(fd: number, size: number, offset = 0): { buffer: ArrayBuffer; address: bigint } {
  checkFd('fd', fd);
  checkU64('size', size);
  checkU64('offset', offset);
  return loadNative().mmapFd(fd, size, offset);
}

/** dup(2) with close-on-exec. */
export function dupFd(fd: number): number {
  checkFd('fd', fd);
  return loadNative().dup(fd);
}

export function closeFd(fd: number): void {
  checkFd('fd', fd);
  loadNative().close(fd);
}

export function closeFds(fds: readonly number[]): void {
  for (const f of fds) {
    try {
      closeFd(f);
    } catch {
      // already closed
    }
  }
}

/** A new memfd of `size` bytes, mapped MAP_SHARED read/write (to share with another process by fd). */
export function createSharedMemory(name: string, size: number): { fd: number; buffer: ArrayBuffer; address: bigint } {
  checkU64('size', size);
  return loadNative().memfdMap(name, size);
}

/** Atomic OR of the u64 word `wordIndex` of an 8-byte-aligned bitmap (safe against another process sharing it). */
export function atomicOr64(bitmap: Uint8Array | BigUint64Array, wordIndex: number, mask: bigint): void {
  loadNative().atomicOr64(bitmap, wordIndex, mask);
}

/** Atomically takes every u64 word of `bitmap` into `out` and clears it; returns how many words were non-zero. */
export function atomicFetchClear64(bitmap: Uint8Array | BigUint64Array, out: Uint8Array | BigUint64Array): number {
  return loadNative().atomicFetchClear64(bitmap, out);
}
