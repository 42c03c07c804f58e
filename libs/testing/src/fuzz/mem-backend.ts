/**
 * An in-memory disk for the device fuzz targets: never fails, but throws
 * when asked for bytes beyond its end or to write while read-only, which a
 * device must never ask (the target reports it as a crash).
 */
import type { BlockBackend } from '@tsvmm/block';

export class MemBackend implements BlockBackend {
  private readonly bytes: Uint8Array;
  constructor(
    readonly size: number,
    readonly readonly: boolean,
  ) {
    this.bytes = new Uint8Array(size);
  }
  private check(offset: number, len: number): void {
    if (!Number.isSafeInteger(offset) || offset < 0 || len < 0 || offset + len > this.size)
      throw new Error(`backend asked for [${offset}, +${len}) of a ${this.size}-byte disk`);
  }
  async readv(bufs: Uint8Array[], offset: number): Promise<number> {
    let n = 0;
    for (const b of bufs) {
      this.check(offset + n, b.length);
      b.set(this.bytes.subarray(offset + n, offset + n + b.length));
      n += b.length;
    }
    return n;
  }
  async writev(bufs: Uint8Array[], offset: number): Promise<number> {
    if (this.readonly) throw new Error('write to a read-only backend');
    let n = 0;
    for (const b of bufs) {
      this.check(offset + n, b.length);
      this.bytes.set(b, offset + n);
      n += b.length;
    }
    return n;
  }
  async flush(): Promise<void> {}
  async discard(offset: number, len: number): Promise<void> {
    this.check(offset, len);
    this.bytes.fill(0, offset, offset + len);
  }
  async writeZeroes(offset: number, len: number): Promise<void> {
    this.check(offset, len);
    this.bytes.fill(0, offset, offset + len);
  }
  close(): void {}
}
