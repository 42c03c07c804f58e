/**
 * Guest-physical memory as the devices see it: a list of RAM buffers, every
 * access bounds-checked. Plugins never see the buffers themselves, only
 * checked slices of them.
 *
 * One RAM region (a KVM memory slot) arrives as several buffers: a V8
 * ArrayBuffer is at most 4 GiB in Node 20 and guest RAM goes up to 64 GiB, so
 * kvm-native cuts RAM at every guest-physical GiB (RAM_PIECE_SIZE). Buffers
 * that touch are one contiguous range of RAM to the guest:
 * - checkRange, read, write, fill and the typed accessors work across a split;
 * - `slice` is one zero-copy view and a view cannot span two ArrayBuffers: a
 *   range across a split throws GuestMemorySplitError (a GuestMemoryError);
 * - `slices` returns the zero-copy views of any RAM range, one per buffer it
 *   touches: what I/O on guest buffers uses (an iovec), see `views` in chain-io.
 * Guest structures that must be one view (virtqueue rings, indirect tables)
 * never cross a GiB boundary when the driver allocates them naturally aligned,
 * as Linux does; one that does is refused like any bad address.
 */

/** A guest-physical address (a plain number: exact up to 2^53, far beyond any guest). */
export type GuestAddress = number & { readonly __brand?: 'GuestAddress' };

export interface GuestRegion {
  guestPhysAddr: number;
  bytes: Uint8Array;
}

/** A guest supplied an address or length that is not RAM. */
export class GuestMemoryError extends Error {
  constructor(
    readonly addr: number,
    readonly len: number,
    message = `guest address range [0x${addr.toString(16)}, +0x${len.toString(16)}) is not guest RAM`,
  ) {
    super(message);
    this.name = 'GuestMemoryError';
  }
}

/** A range that is RAM but spans two host buffers, asked for as one zero-copy view (`slice`). */
export class GuestMemorySplitError extends GuestMemoryError {
  constructor(
    addr: number,
    len: number,
    readonly split: number,
  ) {
    super(
      addr,
      len,
      `guest address range [0x${addr.toString(16)}, +0x${len.toString(16)}) is RAM but spans two host buffers ` +
        `(split at 0x${split.toString(16)}); one zero-copy view cannot cover it`,
    );
    this.name = 'GuestMemorySplitError';
  }
}

export class GuestMemory {
  private readonly regions: GuestRegion[];
  private readonly views: DataView[];
  private readonly starts: number[];
  private readonly ends: number[];
  /** The buffer the last access hit (accesses cluster). */
  private last = 0;

  constructor(regions: readonly GuestRegion[]) {
    this.regions = [...regions].sort((a, b) => a.guestPhysAddr - b.guestPhysAddr);
    this.views = this.regions.map((r) => new DataView(r.bytes.buffer, r.bytes.byteOffset, r.bytes.byteLength));
    this.starts = this.regions.map((r) => r.guestPhysAddr);
    this.ends = this.regions.map((r) => r.guestPhysAddr + r.bytes.byteLength);
    for (let i = 1; i < this.regions.length; i++) {
      if (this.starts[i] < this.ends[i - 1]) throw new Error(`guest RAM buffers overlap at 0x${this.starts[i].toString(16)}`);
    }
  }

  /**
   * Pages (guest-physical address / 4096) the VMM touched through this object
   * while tracking is on (migration: KVM's dirty log sees only the guest's own
   * writes, not a device model's). Every slice counts, read or write: a view
   * may be written later (asynchronous I/O), so the caller treats the set as
   * "may have changed until the device is drained".
   */
  private tracked: Set<number> | undefined;

  startTracking(): void {
    this.tracked = new Set();
  }

  /** Stops tracking and returns the pages touched since startTracking. */
  stopTracking(): Set<number> {
    const t = this.tracked ?? new Set<number>();
    this.tracked = undefined;
    return t;
  }

  /**
   * Called with every range handed out or written while set, like the
   * tracking set (a vhost-user back-end's dirty log: VHOST_F_LOG_ALL). Set
   * and cleared by its owner; only one.
   */
  private observer: ((addr: number, len: number) => void) | undefined;

  setTouchObserver(fn: ((addr: number, len: number) => void) | undefined): void {
    this.observer = fn;
  }

  /**
   * Records that [addr, addr+len) was written through a view handed out
   * earlier (asynchronous I/O that completed): the tracking set and the
   * observer see the range again, after the data landed.
   */
  noteWritten(addr: number, len: number): void {
    if ((this.tracked || this.observer) && len > 0) this.mark(addr, len);
  }

  private mark(addr: number, len: number): void {
    this.observer?.(addr, len);
    const t = this.tracked;
    if (!t) return;
    for (let p = Math.floor(addr / 4096), end = Math.floor((addr + Math.max(len, 1) - 1) / 4096); p <= end; p++) t.add(p);
  }

  /** Total RAM bytes. */
  get size(): number {
    return this.regions.reduce((n, r) => n + r.bytes.byteLength, 0);
  }

  /** The host buffers in address order (buffers that touch are contiguous RAM). */
  get regionList(): readonly GuestRegion[] {
    return this.regions;
  }

  /** Index of the buffer holding byte `addr`, or -1 (for len 0: the buffer [addr, addr) touches). */
  private indexOf(addr: number, len: number): number {
    const { starts, ends } = this;
    const hit = (i: number) => addr >= starts[i] && (addr < ends[i] || (len === 0 && addr === ends[i]));
    if (this.last < starts.length && hit(this.last)) return this.last;
    let lo = 0;
    let hi = starts.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (addr < starts[mid]) hi = mid - 1;
      else if (addr >= ends[mid] && !(len === 0 && addr === ends[mid])) lo = mid + 1;
      else return (this.last = mid);
    }
    return -1;
  }

  private valid(addr: number, len: number): boolean {
    return Number.isSafeInteger(addr) && Number.isSafeInteger(len) && addr >= 0 && len >= 0 && Number.isSafeInteger(addr + len);
  }

  /**
   * First and last buffer index of [addr, addr+len) when every byte is RAM
   * (buffers that touch count as one range), or undefined.
   */
  private span(addr: number, len: number): [number, number] | undefined {
    if (!this.valid(addr, len)) return undefined;
    const i = this.indexOf(addr, len);
    if (i < 0) return undefined;
    let j = i;
    const end = addr + len;
    while (end > this.ends[j]) {
      if (j + 1 >= this.starts.length || this.starts[j + 1] !== this.ends[j]) return undefined;
      j++;
    }
    return [i, j];
  }

  checkRange(addr: number, len: number): boolean {
    return this.span(addr, len) !== undefined;
  }

  /**
   * A zero-copy view of [addr, addr+len). Throws GuestMemoryError when it is
   * not RAM, GuestMemorySplitError when it is RAM across two host buffers
   * (use `slices`).
   */
  slice(addr: GuestAddress, len: number): Uint8Array {
    const sp = this.span(addr, len);
    if (!sp) throw new GuestMemoryError(addr, len);
    const [i, j] = sp;
    if (i !== j) throw new GuestMemorySplitError(addr, len, this.ends[i]);
    if (this.tracked || this.observer) this.mark(addr, len);
    const off = addr - this.starts[i];
    return this.regions[i].bytes.subarray(off, off + len);
  }

  /**
   * Zero-copy views covering [addr, addr+len) in order, one per host buffer
   * it touches (one unless it crosses a split; none for len 0). Throws
   * GuestMemoryError when any byte is not RAM.
   */
  slices(addr: GuestAddress, len: number): Uint8Array[] {
    const sp = this.span(addr, len);
    if (!sp) throw new GuestMemoryError(addr, len);
    if (this.tracked || this.observer) this.mark(addr, len);
    const out: Uint8Array[] = [];
    for (let i = sp[0], a = addr, end = addr + len; i <= sp[1] && a < end; i++) {
      const n = Math.min(end, this.ends[i]) - a;
      const off = a - this.starts[i];
      out.push(this.regions[i].bytes.subarray(off, off + n));
      a += n;
    }
    return out;
  }

  read(addr: GuestAddress, len: number): Uint8Array {
    const parts = this.slices(addr, len);
    if (parts.length === 1) return parts[0].slice();
    const out = new Uint8Array(len);
    let o = 0;
    for (const p of parts) {
      out.set(p, o);
      o += p.length;
    }
    return out;
  }

  write(addr: GuestAddress, data: ArrayLike<number>): void {
    const parts = this.slices(addr, data.length);
    if (parts.length === 1) {
      parts[0].set(data);
      return;
    }
    const src = data instanceof Uint8Array ? data : Uint8Array.from(data);
    let o = 0;
    for (const p of parts) {
      p.set(src.subarray(o, o + p.length));
      o += p.length;
    }
  }

  fill(addr: GuestAddress, len: number, value = 0): void {
    for (const p of this.slices(addr, len)) p.fill(value);
  }

  /** The DataView and offset for a typed access, or undefined when it crosses a split (done bytewise). */
  private at(addr: number, len: number): [DataView, number] | undefined {
    const sp = this.span(addr, len);
    if (!sp) throw new GuestMemoryError(addr, len);
    if (sp[0] !== sp[1]) return undefined;
    if (this.tracked || this.observer) this.mark(addr, len);
    return [this.views[sp[0]], addr - this.starts[sp[0]]];
  }

  /** A little-endian value of `len` bytes that crosses a split. */
  private readSplit(addr: number, len: number): bigint {
    const b = this.read(addr, len);
    let v = 0n;
    for (let k = len - 1; k >= 0; k--) v = (v << 8n) | BigInt(b[k]);
    return v;
  }

  private writeSplit(addr: number, len: number, x: bigint): void {
    const b = new Uint8Array(len);
    for (let k = 0; k < len; k++) b[k] = Number((x >> BigInt(8 * k)) & 0xffn);
    this.write(addr, b);
  }

  readU8(addr: GuestAddress): number {
    const [v, o] = this.at(addr, 1)!; // one byte never crosses
    return v.getUint8(o);
  }
  readU16(addr: GuestAddress): number {
    const h = this.at(addr, 2);
    return h ? h[0].getUint16(h[1], true) : Number(this.readSplit(addr, 2));
  }
  readU32(addr: GuestAddress): number {
    const h = this.at(addr, 4);
    return h ? h[0].getUint32(h[1], true) : Number(this.readSplit(addr, 4));
  }
  readU64(addr: GuestAddress): bigint {
    const h = this.at(addr, 8);
    return h ? h[0].getBigUint64(h[1], true) : this.readSplit(addr, 8);
  }
  writeU8(addr: GuestAddress, x: number): void {
    const [v, o] = this.at(addr, 1)!;
    v.setUint8(o, x);
  }
  writeU16(addr: GuestAddress, x: number): void {
    const h = this.at(addr, 2);
    if (h) h[0].setUint16(h[1], x, true);
    else this.writeSplit(addr, 2, BigInt(x & 0xffff));
  }
  writeU32(addr: GuestAddress, x: number): void {
    const h = this.at(addr, 4);
    if (h) h[0].setUint32(h[1], x >>> 0, true);
    else this.writeSplit(addr, 4, BigInt(x >>> 0));
  }
  writeU64(addr: GuestAddress, x: bigint): void {
    const h = this.at(addr, 8);
    if (h) h[0].setBigUint64(h[1], BigInt.asUintN(64, x), true);
    else this.writeSplit(addr, 8, BigInt.asUintN(64, x));
  }
}

/** An aligned Uint16Array over guest RAM (for ring indices read and written with Atomics). */
export function u16View(mem: GuestMemory, addr: GuestAddress, count: number): Uint16Array {
  if (addr % 2) throw new GuestMemoryError(addr, count * 2);
  const s = mem.slice(addr, count * 2);
  return new Uint16Array(s.buffer, s.byteOffset, count);
}
