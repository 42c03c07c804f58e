/**
 * An address space (port I/O or MMIO) dispatching guest accesses to devices
 * that own non-overlapping ranges. The VMM allocates the ranges; devices get
 * offsets relative to their base.
 */
import { LogRateLimiter } from '@tsvmm/virtio-core';

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

/** Counts of unclaimed accesses in one hole of an address space. */
export interface UnclaimedRegion {
  /** The hole: [start, end] inclusive, between the claimed ranges around it when first hit. */
  start: number;
  end: number;
  reads: number;
  writes: number;
  lastAddress: number;
}

export interface UnclaimedReport {
  reads: number;
  writes: number;
  regions: UnclaimedRegion[];
  /** Accesses in holes first hit after MAX_REGIONS holes were being counted. */
  other: { reads: number; writes: number };
}

/**
 * Accesses nobody claims, counted per hole (the gap between two claimed
 * ranges, as it was when first hit), never per address: at most
 * MAX_REGIONS holes are tracked, later ones add to `other`, so a guest that
 * walks every address keeps this bounded. The log goes through virtio-core's
 * LogRateLimiter (one kind, no refill): the first LOG_FIRST accesses one by
 * one, then a summary at most every SUMMARY_MS (written on the next
 * unclaimed access, or by flush()).
 */
export class UnclaimedAccounting {
  static readonly MAX_REGIONS = 64;
  static readonly LOG_FIRST = 8;
  static readonly SUMMARY_MS = 10_000;
  reads = 0;
  writes = 0;
  private readonly regions = new Map<number, UnclaimedRegion>();
  private readonly other = { reads: 0, writes: 0 };
  private readonly limiter: LogRateLimiter;
  /** The region hit last: a guest hammering one unclaimed address skips the hole search. */
  private lastRegion: UnclaimedRegion | undefined;
  /** Where the log lines go (the machine sets it); none by default. */
  log: ((m: string) => void) | undefined;

  constructor(private readonly kind: 'pio' | 'mmio') {
    const what = kind === 'pio' ? 'port' : 'MMIO';
    this.limiter = new LogRateLimiter((m) => this.log?.(m), {
      burst: UnclaimedAccounting.LOG_FIRST,
      refill: false,
      intervalMs: UnclaimedAccounting.SUMMARY_MS,
      lastOfBurst: () =>
        ` (further unclaimed ${what} accesses are counted and summarised every ${UnclaimedAccounting.SUMMARY_MS / 1000} s: HMP info unclaimed, QMP x-query-unclaimed-io)`,
      summary: (_kind, n) => this.summary(n),
    });
  }

  record(addr: number, size: number, isWrite: boolean, hole: () => [number, number], value?: number | bigint): void {
    if (isWrite) this.writes++;
    else this.reads++;
    let r: { reads: number; writes: number; lastAddress?: number } | undefined;
    const last = this.lastRegion;
    if (last && addr >= last.start && addr <= last.end) r = last;
    else {
      const [start, end] = hole();
      r = this.regions.get(start);
      if (!r && this.regions.size < UnclaimedAccounting.MAX_REGIONS) {
        const region: UnclaimedRegion = { start, end, reads: 0, writes: 0, lastAddress: addr };
        this.regions.set(start, region);
        r = region;
      }
      this.lastRegion = r && 'lastAddress' in r ? (r as UnclaimedRegion) : undefined;
    }
    r ??= this.other;
    if (isWrite) r.writes++;
    else r.reads++;
    if ('lastAddress' in r) r.lastAddress = addr;
    if (!this.log) return;
    this.limiter.log('unclaimed', () => {
      const v = isWrite && value !== undefined ? ` value 0x${value.toString(16)}` : '';
      return `unclaimed ${this.kind === 'pio' ? 'port' : 'MMIO'} ${isWrite ? 'write' : 'read'} at 0x${addr.toString(16)} size ${size}${v}`;
    });
  }

  /** The bus's ranges changed: the next access finds its hole again. */
  rangesChanged(): void {
    this.lastRegion = undefined;
  }

  /** Logs the summary of accesses not logged yet, if any. */
  flush(): void {
    this.limiter.flush();
  }

  private summary(sinceLast: number): string {
    const what = this.kind === 'pio' ? 'port' : 'MMIO';
    const busiest = [...this.regions.values()].sort((a, b) => b.reads + b.writes - (a.reads + a.writes))[0];
    return (
      `unclaimed ${what}: ${sinceLast} more access(es) since the last report; totals reads=${this.reads} writes=${this.writes} in ${this.regions.size} hole(s)` +
      (this.other.reads + this.other.writes ? ` + ${this.other.reads + this.other.writes} in further holes` : '') +
      (busiest ? `; busiest 0x${busiest.start.toString(16)}-0x${busiest.end.toString(16)} (${busiest.reads + busiest.writes})` : '')
    );
  }

  report(): UnclaimedReport {
    return { reads: this.reads, writes: this.writes, regions: [...this.regions.values()].map((r) => ({ ...r })), other: { ...this.other } };
  }
}

export class IoBus {
  private ranges: BusRange[] = [];
  private last: BusRange | undefined;
  readonly unclaimed: UnclaimedAccounting;

  constructor(readonly kind: 'pio' | 'mmio') {
    this.unclaimed = new UnclaimedAccounting(kind);
  }

  /** The hole around an unclaimed address: from the end of the range below it to the start of the one above. */
  private hole(addr: number): [number, number] {
    let start = 0;
    let end = this.kind === 'pio' ? 0xffff : Number.MAX_SAFE_INTEGER;
    for (const r of this.ranges) {
      if (r.base + r.size <= addr) start = r.base + r.size;
      else if (r.base > addr) {
        end = r.base - 1;
        break;
      }
    }
    return [start, end];
  }

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
    this.unclaimed.rangesChanged();
  }

  unregister(base: number, device?: BusDevice): void {
    this.ranges = this.ranges.filter((r) => !(r.base === base && (!device || r.device === device)));
    this.last = undefined;
    this.unclaimed.rangesChanged();
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
    if (!r) {
      this.unclaimed.record(addr, size, false, () => this.hole(addr));
      return size === 8 ? 0xffffffffffffffffn : size === 4 ? 0xffffffff : (1 << (size * 8)) - 1;
    }
    return r.device.read(addr - r.base, size);
  }

  /** Dispatches a write; returns false when nobody claims the address. */
  write(addr: number, size: number, value: number | bigint): boolean {
    const r = this.find(addr);
    if (!r) {
      this.unclaimed.record(addr, size, true, () => this.hole(addr), value);
      return false;
    }
    r.device.write(addr - r.base, size, value);
    return true;
  }

  list(): readonly BusRange[] {
    return this.ranges;
  }
}
