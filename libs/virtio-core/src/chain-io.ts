/**
 * Copying between a chain's buffers and flat bytes (for headers, control
 * commands and bounce copies). Zero-length buffers are skipped: no address
 * is ever derived from one.
 */
import { GuestMemory } from './guest-memory';
import { Descriptor } from './virtqueue';

/** Copies `len` bytes that start `offset` bytes into a list of buffers. */
export function gather(mem: GuestMemory, bufs: readonly Descriptor[], offset: number, len: number): Uint8Array {
  const out = new Uint8Array(len);
  let pos = 0;
  for (const b of bufs) {
    if (pos >= len) break;
    if (b.len === 0) continue; // nothing to read, and no address is derived from it
    if (offset >= b.len) {
      offset -= b.len;
      continue;
    }
    const n = Math.min(b.len - offset, len - pos);
    out.set(mem.read(b.addr + offset, n), pos);
    pos += n;
    offset = 0;
  }
  return out;
}

/** Writes `data` across a list of buffers from their start; returns the bytes written. */
export function scatter(mem: GuestMemory, bufs: readonly Descriptor[], data: Uint8Array): number {
  let pos = 0;
  for (const b of bufs) {
    if (pos >= data.length) break;
    if (b.len === 0) continue;
    const n = Math.min(b.len, data.length - pos);
    mem.write(b.addr, data.subarray(pos, pos + n));
    pos += n;
  }
  return pos;
}

/**
 * Zero-copy views of a list of buffers, in order, for I/O (readv/writev,
 * sendmsg): a buffer that crosses a split between two of guest RAM's host
 * buffers (GuestMemory) becomes two views. Throws GuestMemoryError when a
 * buffer is not RAM. Zero-length buffers give no view.
 */
export function views(mem: GuestMemory, bufs: readonly Descriptor[]): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (const b of bufs) for (const v of mem.slices(b.addr, b.len)) out.push(v);
  return out;
}

/** The buffers covering `len` bytes after skipping `skip` bytes (no copy). */
/**
 * Where a one-byte in-chain field that ends the writable part lives (virtio-blk
 * status, virtio-net control ack): the last byte of the last device-writable
 * buffer. A zero-length last buffer has no such byte: undefined (a guest error).
 */
export function lastWritableByte(bufs: readonly Descriptor[]): number | undefined {
  const last = bufs[bufs.length - 1];
  if (!last || last.len === 0) return undefined;
  return last.addr + last.len - 1;
}

export function subrange(bufs: readonly Descriptor[], skip: number, len: number): Descriptor[] {
  const out: Descriptor[] = [];
  for (const b of bufs) {
    if (len <= 0) break;
    if (b.len === 0) continue;
    if (skip >= b.len) {
      skip -= b.len;
      continue;
    }
    const n = Math.min(b.len - skip, len);
    out.push({ addr: b.addr + skip, len: n, writable: b.writable });
    len -= n;
    skip = 0;
  }
  return out;
}
