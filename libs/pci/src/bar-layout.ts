/**
 * A restored PCI BAR layout, checked before anything is applied: a snapshot
 * or migration stream carries each function's config space as the guest
 * programmed it, and a crafted one could place a BAR over RAM, the
 * LAPIC/IOAPIC, across the edge of the PCI hole or over another BAR. On a
 * running VM such a BAR would shadow guest RAM or a fixed device, or be left
 * silently unmapped (PciBarFunction.updateMappings); from a stream it is
 * refused, naming the device, the field and what it overlaps.
 */
import { StateError } from '@tsvmm/virtio-core';
import { PciBarFunction } from './pci-device';

/** A fixed guest-physical region of the machine (RAM, an interrupt controller, a VMM MMIO page). */
export interface FixedRegion {
  name: string;
  start: number;
  size: number;
}

/** One function whose config space comes from the stream. */
export interface RestoredFunction {
  /** Names the function in errors, e.g. `device 'd0'`. */
  name: string;
  /** The state path of its config space, e.g. `device/d0.state.transport.config`. */
  path: string;
  fn: PciBarFunction;
  /** The config space from the stream (already checked against the function's read-only bits). */
  config: Uint8Array;
}

const hex = (n: number) => `0x${n.toString(16)}`;
const span = (start: number, size: number) => `${hex(start)}-${hex(start + size - 1)}`;

/**
 * Throws a StateError (path: the function's config, message: the BAR, its
 * range and what it overlaps or crosses) unless every decoded BAR of every
 * function is clear of the fixed regions, crosses none of the `edges`
 * (addresses a BAR may not straddle: where the PCI hole begins and ends)
 * and overlaps no other BAR.
 */
export function checkRestoredBars(functions: RestoredFunction[], fixed: FixedRegion[], edges: { name: string; at: number }[]): void {
  const placed: { owner: string; start: number; size: number }[] = [];
  for (const f of functions) {
    for (const bar of f.fn.decodedBars(f.config)) {
      const what = `BAR${bar.index} ${span(bar.start, bar.size)}`;
      const end = bar.start + bar.size;
      for (const r of fixed)
        if (bar.start < r.start + r.size && r.start < end)
          throw new StateError(f.path, `${what} overlaps ${r.name} (${span(r.start, r.size)})`);
      for (const e of edges) if (bar.start < e.at && e.at < end) throw new StateError(f.path, `${what} crosses ${e.name} at ${hex(e.at)}`);
      for (const o of placed)
        if (bar.start < o.start + o.size && o.start < end)
          throw new StateError(f.path, `${what} overlaps ${o.owner} (${span(o.start, o.size)})`);
      placed.push({ owner: `${f.name} BAR${bar.index}`, start: bar.start, size: bar.size });
    }
  }
}
