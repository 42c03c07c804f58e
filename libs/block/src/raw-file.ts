/**
 * A raw image file. Reads and writes go straight between the file and guest
 * memory views (fs.readv/writev on libuv's thread pool: asynchronous, zero-copy,
 * never on a vCPU thread). cache=none opens the file with O_DIRECT.
 */
import * as fs from 'fs';
import { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, fallocate } from '@tsvmm/kvm-native';

export interface BlockBackend {
  readonly size: number;
  readonly readonly: boolean;
  readv(bufs: Uint8Array[], offset: number): Promise<number>;
  writev(bufs: Uint8Array[], offset: number): Promise<number>;
  flush(): Promise<void>;
  /** Deallocates the range (reads back as zeros). */
  discard(offset: number, len: number): Promise<void>;
  /** Zeroes the range, deallocating it when `unmap` is set and the file system can. */
  writeZeroes(offset: number, len: number, unmap: boolean): Promise<void>;
  close(): void;
}

export class BackendOpenError extends Error {}

const O_DIRECT = fs.constants.O_DIRECT ?? 0o40000;
const DIRECT_ALIGN = 4096;

export class RawFileBackend implements BlockBackend {
  readonly size: number;
  private readonly fd: number;
  /** A buffered fd for O_DIRECT-incompatible (unaligned) requests under cache=none. */
  private bufferedFd: number | undefined;

  constructor(
    readonly path: string,
    readonly readonly: boolean,
    readonly direct: boolean,
  ) {
    const flags = (readonly ? fs.constants.O_RDONLY : fs.constants.O_RDWR) | (direct ? O_DIRECT : 0);
    try {
      this.fd = fs.openSync(path, flags);
    } catch (e) {
      const code = (e as { code?: string }).code;
      const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' || code === 'EROFS' ? 'permission denied (use readonly=on?)'
        : code === 'EINVAL' && direct ? 'the file system does not support O_DIRECT (use cache=writeback)' : (e as Error).message;
      throw new BackendOpenError(`${path}: ${why}`);
    }
    const st = fs.fstatSync(this.fd);
    if (st.isDirectory()) {
      fs.closeSync(this.fd);
      throw new BackendOpenError(`${path}: is a directory`);
    }
    this.size = st.isBlockDevice() ? Number(this.blockDeviceSize()) : st.size;
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
    const aligned = offset % DIRECT_ALIGN === 0 && bufs.every((b) => b.byteLength % 512 === 0 && (b.byteOffset % 512 === 0));
    if (aligned) return this.fd;
    this.bufferedFd ??= fs.openSync(this.path, this.readonly ? fs.constants.O_RDONLY : fs.constants.O_RDWR);
    return this.bufferedFd;
  }

  readv(bufs: Uint8Array[], offset: number): Promise<number> {
    return new Promise((resolve, reject) => {
      fs.readv(this.fdFor(bufs, offset), bufs, offset, (err, n) => (err ? reject(err) : resolve(n)));
    });
  }

  writev(bufs: Uint8Array[], offset: number): Promise<number> {
    return new Promise((resolve, reject) => {
      fs.writev(this.fdFor(bufs, offset), bufs, offset, (err, n) => (err ? reject(err) : resolve(n)));
    });
  }

  flush(): Promise<void> {
    return new Promise((resolve, reject) => {
      fs.fdatasync(this.fd, (err) => {
        if (err) return reject(err);
        if (this.bufferedFd === undefined) return resolve();
        fs.fdatasync(this.bufferedFd, (e2) => (e2 ? reject(e2) : resolve()));
      });
    });
  }

  async discard(offset: number, len: number): Promise<void> {
    fallocate(this.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, len);
  }

  async writeZeroes(offset: number, len: number, unmap: boolean): Promise<void> {
    try {
      fallocate(this.fd, (unmap ? FALLOC_FL_PUNCH_HOLE : FALLOC_FL_ZERO_RANGE) | FALLOC_FL_KEEP_SIZE, offset, len);
      return;
    } catch (e) {
      if ((e as { code?: string }).code !== 'EOPNOTSUPP') throw e;
    }
    // The file system cannot: write zeros.
    const chunk = Buffer.alloc(Math.min(len, 1 << 20));
    for (let done = 0; done < len; ) {
      const n = Math.min(chunk.length, len - done);
      await this.writev([chunk.subarray(0, n)], offset + done);
      done += n;
    }
  }

  close(): void {
    fs.closeSync(this.fd);
    if (this.bufferedFd !== undefined) fs.closeSync(this.bufferedFd);
  }
}
