/**
 * An address space (port I/O or MMIO) dispatching guest accesses to devices
 * that own non-overlapping ranges. The VMM allocates the ranges; devices get
 * offsets relative to their base.
 */

export interface BusDevice {
  /** Reads `size` bytes at `offset` within the device's range (little-endian value). */
  read(offset: number, size: number): number | bigint;
  write(offset: number, size: number, value: number | bigint): void;
}

export interface BusRange {
  base: number;
  size: number;
  name: string;
  device: BusDevice;
}

export class BusConflictError extends Error {}

export class IoBus {
  private ranges: BusRange[] = [];
  private last: BusRange | undefined;

  constructor(readonly kind: 'pio' | 'mmio') {}

  register(base: number, size: number, name: string, device: BusDevice): void {
    if (!Number.isSafeInteger(base) || !Number.isSafeInteger(size) || base < 0 || size <= 0)
      throw new RangeError(`${this.kind} range for ${name} is invalid: base=${base} size=${size}`);
    const clash = this.ranges.find((r) => base < r.base + r.size && r.base < base + size);
    if (clash)
      throw new BusConflictError(
        `${this.kind} range [0x${base.toString(16)}, +0x${size.toString(16)}) of ${name} overlaps ${clash.name} ` +
          `at [0x${clash.base.toString(16)}, +0x${clash.size.toString(16)})`,
      );
    this.ranges.push({ base, size, name, device });
    this.ranges.sort((a, b) => a.base - b.base);
  }

  unregister(base: number, device?: BusDevice): void {
    this.ranges = this.ranges.filter((r) => !(r.base === base && (!device || r.device === device)));
    this.last = undefined;
  }

  find(addr: number): BusRange | undefined {
    const l = this.last;
    if (l && addr >= l.base && addr < l.base + l.size) return l;
    for (const r of this.ranges) {
      if (addr < r.base) break;
      if (addr < r.base + r.size) return (this.last = r);
    }
    return undefined;
  }

  /** Dispatches a read; an access nobody claims reads as all ones, like an empty bus. */
  read(addr: number, size: number): number | bigint {
    const r = this.find(addr);
    if (!r) return size === 8 ? 0xffffffffffffffffn : size === 4 ? 0xffffffff : (1 << (size * 8)) - 1;
    return r.device.read(addr - r.base, size);
  }

  /** Dispatches a write; returns false when nobody claims the address. */
  write(addr: number, size: number, value: number | bigint): boolean {
    const r = this.find(addr);
    if (!r) return false;
    r.device.write(addr - r.base, size, value);
    return true;
  }

  list(): readonly BusRange[] {
    return this.ranges;
  }
}
