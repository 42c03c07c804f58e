/**
 * Guest-physical memory as the devices see it: a list of RAM regions, every
 * access bounds-checked. Plugins never see the regions' buffers, only checked
 * slices of them.
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
  ) {
    super(`guest address range [0x${addr.toString(16)}, +0x${len.toString(16)}) is not guest RAM`);
    this.name = 'GuestMemoryError';
  }
}

export class GuestMemory {
  private readonly regions: GuestRegion[];
  private readonly views: DataView[];

  constructor(regions: readonly GuestRegion[]) {
    this.regions = [...regions].sort((a, b) => a.guestPhysAddr - b.guestPhysAddr);
    this.views = this.regions.map((r) => new DataView(r.bytes.buffer, r.bytes.byteOffset, r.bytes.byteLength));
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

  get regionList(): readonly GuestRegion[] {
    return this.regions;
  }

  /** Index of the region holding [addr, addr+len), or -1. */
  private find(addr: number, len: number): number {
    if (!Number.isSafeInteger(addr) || !Number.isSafeInteger(len) || addr < 0 || len < 0) return -1;
    for (let i = 0; i < this.regions.length; i++) {
      const r = this.regions[i];
      if (addr >= r.guestPhysAddr && addr + len <= r.guestPhysAddr + r.bytes.byteLength) return i;
    }
    return -1;
  }

  checkRange(addr: number, len: number): boolean {
    return this.find(addr, len) >= 0;
  }

  /** A zero-copy view of [addr, addr+len); throws when it is not within one RAM region. */
  slice(addr: GuestAddress, len: number): Uint8Array {
    const i = this.find(addr, len);
    if (i < 0) throw new GuestMemoryError(addr, len);
    if (this.tracked || this.observer) this.mark(addr, len);
    const r = this.regions[i];
    const off = addr - r.guestPhysAddr;
    return r.bytes.subarray(off, off + len);
  }

  read(addr: GuestAddress, len: number): Uint8Array {
    return this.slice(addr, len).slice();
  }

  write(addr: GuestAddress, data: ArrayLike<number>): void {
    this.slice(addr, data.length).set(data);
  }

  fill(addr: GuestAddress, len: number, value = 0): void {
    this.slice(addr, len).fill(value);
  }

  private at(addr: number, len: number): [DataView, number] {
    const i = this.find(addr, len);
    if (i < 0) throw new GuestMemoryError(addr, len);
    if (this.tracked || this.observer) this.mark(addr, len);
    return [this.views[i], addr - this.regions[i].guestPhysAddr];
  }

  readU8(addr: GuestAddress): number {
    const [v, o] = this.at(addr, 1);
    return v.getUint8(o);
  }
  readU16(addr: GuestAddress): number {
    const [v, o] = this.at(addr, 2);
    return v.getUint16(o, true);
  }
  readU32(addr: GuestAddress): number {
    const [v, o] = this.at(addr, 4);
    return v.getUint32(o, true);
  }
  readU64(addr: GuestAddress): bigint {
    const [v, o] = this.at(addr, 8);
    return v.getBigUint64(o, true);
  }
  writeU8(addr: GuestAddress, x: number): void {
    const [v, o] = this.at(addr, 1);
    v.setUint8(o, x);
  }
  writeU16(addr: GuestAddress, x: number): void {
    const [v, o] = this.at(addr, 2);
    v.setUint16(o, x, true);
  }
  writeU32(addr: GuestAddress, x: number): void {
    const [v, o] = this.at(addr, 4);
    v.setUint32(o, x >>> 0, true);
  }
  writeU64(addr: GuestAddress, x: bigint): void {
    const [v, o] = this.at(addr, 8);
    v.setBigUint64(o, BigInt.asUintN(64, x), true);
  }
}

/** An aligned Uint16Array over guest RAM (for ring indices read and written with Atomics). */
export function u16View(mem: GuestMemory, addr: GuestAddress, count: number): Uint16Array {
  if (addr % 2) throw new GuestMemoryError(addr, count * 2);
  const s = mem.slice(addr, count * 2);
  return new Uint16Array(s.buffer, s.byteOffset, count);
}
