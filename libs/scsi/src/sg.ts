/**
 * Scatter-gather lists of guest memory views: lengths, zero-copy sub-ranges,
 * and the small copies the command formats need.
 */

export function totalLength(views: readonly Uint8Array[]): number {
  let n = 0;
  for (const v of views) n += v.byteLength;
  return n;
}

/**
 * Views over bytes [start, start + len) of the list, without copying; empty
 * views are left out. The list must hold that many bytes (callers checked).
 */
export function sliceViews(views: readonly Uint8Array[], start: number, len: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  let skip = start;
  let left = len;
  for (const v of views) {
    if (left === 0) break;
    if (skip >= v.byteLength) {
      skip -= v.byteLength;
      continue;
    }
    const n = Math.min(v.byteLength - skip, left);
    out.push(v.subarray(skip, skip + n));
    skip = 0;
    left -= n;
  }
  if (left !== 0) throw new RangeError(`scatter-gather list holds fewer than ${start + len} bytes`);
  return out;
}

/** Copies `src` into the views from their start; returns the bytes copied (at most their total length). */
export function copyToViews(views: readonly Uint8Array[], src: Uint8Array): number {
  let done = 0;
  for (const v of views) {
    if (done === src.length) break;
    const n = Math.min(v.byteLength, src.length - done);
    v.set(src.subarray(done, done + n));
    done += n;
  }
  return done;
}

/** The first `len` bytes of the views, copied into one buffer (parameter lists). */
export function gather(views: readonly Uint8Array[], len: number): Uint8Array {
  const out = new Uint8Array(len);
  let p = 0;
  for (const v of sliceViews(views, 0, len)) {
    out.set(v, p);
    p += v.byteLength;
  }
  return out;
}

/** Offset of the first byte where `a` differs from the views' bytes from `start`, or -1. */
export function firstDifference(a: Uint8Array, views: readonly Uint8Array[], start: number): number {
  let p = 0;
  for (const v of sliceViews(views, start, a.length)) {
    for (let i = 0; i < v.byteLength; i++) if (v[i] !== a[p + i]) return p + i;
    p += v.byteLength;
  }
  return -1;
}
