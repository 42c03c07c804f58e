/**
 * The vhost dirty log (vhost-user specification, "Migration"): a bitmap with
 * one bit per VHOST_LOG_PAGE of guest-physical address space, starting at
 * address 0; page p is bit p % 8 of byte p / 8 — equivalently bit p % 64 of
 * little-endian u64 word p / 64, the unit both sides update atomically here.
 * The front-end creates it (a memfd, shared with SET_LOG_BASE); the back-end
 * sets bits for every guest page it writes while VHOST_F_LOG_ALL is on; the
 * front-end fetches and clears words atomically and resends those pages.
 */
import { atomicFetchClear64, atomicOr64 } from '@tsvmm/kvm-native';

export const VHOST_LOG_PAGE = 0x1000;
/** Guest pages per u64 log word. */
export const VHOST_LOG_BITS = 64;
/** Virtio feature bit: the back-end logs its writes (a vhost feature in the transport-feature range). */
export const VHOST_F_LOG_ALL = 26;
/** vhost_vring_addr.flags: log used-ring writes at log_guest_addr. */
export const VHOST_VRING_F_LOG = 0;

/** Bytes of log covering guest-physical addresses [0, end): whole u64 words. */
export function logSizeFor(end: number): number {
  const pages = Math.ceil(end / VHOST_LOG_PAGE);
  return Math.max(1, Math.ceil(pages / VHOST_LOG_BITS)) * 8;
}

/** Atomic operations on the bitmap (the native ones by default; tests may pass plain ones). */
export interface LogAtomics {
  or64(bitmap: Uint8Array, word: number, mask: bigint): void;
  fetchClear64(bitmap: Uint8Array, out: Uint8Array): number;
}

export const nativeLogAtomics: LogAtomics = { or64: atomicOr64, fetchClear64: atomicFetchClear64 };

/** The back-end's side: marks the pages of a guest-physical range written. */
export class DirtyLogWriter {
  /** Marks outside the log (a bad range from the guest or the front-end); counted, never thrown. */
  outOfRange = 0;

  constructor(
    readonly bitmap: Uint8Array,
    private readonly atomics: LogAtomics = nativeLogAtomics,
  ) {
    if (bitmap.byteLength % 8 !== 0 || bitmap.byteOffset % 8 !== 0) throw new RangeError('the dirty log must be whole, aligned u64 words');
  }

  /** Pages the log covers. */
  get pages(): number {
    return (this.bitmap.byteLength / 8) * VHOST_LOG_BITS;
  }

  /** Marks every page of [gpa, gpa + len) (len 0 marks nothing). */
  mark(gpa: number, len: number): void {
    if (len <= 0 || !Number.isSafeInteger(gpa) || gpa < 0) return;
    const first = Math.floor(gpa / VHOST_LOG_PAGE);
    const last = Math.floor((gpa + len - 1) / VHOST_LOG_PAGE);
    if (last >= this.pages) {
      this.outOfRange++;
      if (first >= this.pages) return;
    }
    const end = Math.min(last, this.pages - 1);
    for (let p = first; p <= end;) {
      const word = Math.floor(p / VHOST_LOG_BITS);
      const lo = p % VHOST_LOG_BITS;
      const hi = Math.min(VHOST_LOG_BITS - 1, lo + (end - p));
      const n = BigInt(hi - lo + 1);
      const mask = (n === 64n ? (1n << 64n) - 1n : (1n << n) - 1n) << BigInt(lo);
      this.atomics.or64(this.bitmap, word, mask);
      p += hi - lo + 1;
    }
  }
}

/** The front-end's side: takes (fetch-and-clear) the pages marked since the last take. */
export class DirtyLogReader {
  private readonly scratch: Uint8Array;

  constructor(
    readonly bitmap: Uint8Array,
    private readonly atomics: LogAtomics = nativeLogAtomics,
  ) {
    if (bitmap.byteLength % 8 !== 0 || bitmap.byteOffset % 8 !== 0) throw new RangeError('the dirty log must be whole, aligned u64 words');
    this.scratch = new Uint8Array(bitmap.byteLength);
  }

  /** Page numbers (guest-physical address / VHOST_LOG_PAGE) marked since the previous take, ascending; the log is cleared. */
  take(): number[] {
    const pages: number[] = [];
    if (this.atomics.fetchClear64(this.bitmap, this.scratch) === 0) return pages;
    const dv = new DataView(this.scratch.buffer, this.scratch.byteOffset, this.scratch.byteLength);
    for (let w = 0; w < this.scratch.byteLength / 8; w++) {
      let lo = dv.getUint32(w * 8, true);
      let hi = dv.getUint32(w * 8 + 4, true);
      while (lo) {
        const b = 31 - Math.clz32(lo & -lo);
        pages.push(w * VHOST_LOG_BITS + b);
        lo &= lo - 1;
      }
      while (hi) {
        const b = 31 - Math.clz32(hi & -hi);
        pages.push(w * VHOST_LOG_BITS + 32 + b);
        hi &= hi - 1;
      }
    }
    return pages;
  }
}
