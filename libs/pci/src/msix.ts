/**
 * MSI-X (PCI 3.0 section 6.8.2): the capability, the vector table and the
 * pending-bit array, delivered through KVM. Each vector in use gets a GSI
 * route and an irqfd; injecting it is one eventfd write. A masked vector (or a
 * function-masked table) has its irqfd unassigned: an interrupt then sets the
 * PBA bit, and unmasking delivers it.
 */
import { EventFd, Vm } from '@tsvmm/kvm-native';
import { PciConfigSpace } from './config-space';
import { GsiRoutes } from './gsi-routes';
import { BusDevice } from './io-bus';

export const PCI_CAP_ID_MSIX = 0x11;
const MSIX_ENTRY_SIZE = 16;
const CTRL_ENABLE = 0x8000;
const CTRL_FUNCTION_MASK = 0x4000;
const VECTOR_CTRL_MASKED = 1;

interface VectorRoute {
  gsi: number;
  efd: EventFd;
  /** irqfd registered with KVM (vector live). */
  assigned: boolean;
  msg: string;
}

export interface MsixIrqChip {
  vm: Vm;
  gsiRoutes: GsiRoutes;
}

export interface MsixCounters {
  delivered: number;
  pended: number;
  /** Interrupts dropped because MSI-X was disabled. */
  dropped: number;
}

export class MsixController {
  readonly table: Uint8Array;
  readonly pba: Uint8Array;
  readonly capOffset: number;
  readonly counters: MsixCounters = { delivered: 0, pended: 0, dropped: 0 };
  private readonly tdv: DataView;
  private readonly routes = new Map<number, VectorRoute>();
  private readonly inUse = new Set<number>();
  private lastControl = 0;
  /** The owning device's fault boundary, for the irqfd watchers (set by VirtioPciDevice). */
  boundary: (entry: string, fn: () => void) => void = (_entry, fn) => fn();

  constructor(
    private readonly config: PciConfigSpace,
    readonly vectors: number,
    placement: { tableBar: number; tableOffset: number; pbaBar: number; pbaOffset: number },
    private readonly irq: MsixIrqChip,
  ) {
    if (vectors < 1 || vectors > 2048) throw new RangeError(`MSI-X vector count ${vectors} is out of range`);
    this.table = new Uint8Array(vectors * MSIX_ENTRY_SIZE);
    this.tdv = new DataView(this.table.buffer);
    this.pba = new Uint8Array(Math.ceil(vectors / 64) * 8);
    for (let v = 0; v < vectors; v++) this.tdv.setUint32(v * MSIX_ENTRY_SIZE + 12, VECTOR_CTRL_MASKED, true);
    const body = new Uint8Array(10);
    const bdv = new DataView(body.buffer);
    bdv.setUint16(0, vectors - 1, true);
    bdv.setUint32(2, placement.tableOffset | placement.tableBar, true);
    bdv.setUint32(6, placement.pbaOffset | placement.pbaBar, true);
    const mask = new Uint8Array(10);
    mask[1] = 0xc0; // enable and function mask
    this.capOffset = config.addCapability(PCI_CAP_ID_MSIX, body, mask);
  }

  get control(): number {
    return this.config.getU16(this.capOffset + 2);
  }
  get enabled(): boolean {
    return (this.control & CTRL_ENABLE) !== 0;
  }
  get functionMasked(): boolean {
    return (this.control & CTRL_FUNCTION_MASK) !== 0;
  }
  vectorMasked(v: number): boolean {
    return (this.tdv.getUint32(v * MSIX_ENTRY_SIZE + 12, true) & VECTOR_CTRL_MASKED) !== 0;
  }
  pending(v: number): boolean {
    return (this.pba[v >> 3] & (1 << (v & 7))) !== 0;
  }
  message(v: number): { addressLo: number; addressHi: number; data: number } {
    const o = v * MSIX_ENTRY_SIZE;
    return { addressLo: this.tdv.getUint32(o, true), addressHi: this.tdv.getUint32(o + 4, true), data: this.tdv.getUint32(o + 8, true) };
  }

  /** Whether an interrupt on `v` reaches the CPU now (else it pends). */
  private live(v: number): boolean {
    return this.enabled && !this.functionMasked && !this.vectorMasked(v);
  }

  /** The transport assigned `v` to a queue or to config changes: give it a route and irqfd. */
  useVector(v: number): void {
    if (v >= this.vectors) return;
    this.inUse.add(v);
    this.sync(v);
  }

  /** `v` is no longer assigned to anything. */
  releaseVector(v: number): void {
    if (!this.inUse.delete(v)) return;
    const r = this.routes.get(v);
    if (r) {
      this.setAssigned(v, r, false);
      r.efd.unwatch();
      r.efd.close();
      this.irq.gsiRoutes.release(r.gsi);
      this.routes.delete(v);
    }
  }

  releaseAll(): void {
    for (const v of [...this.inUse]) this.releaseVector(v);
  }

  /** Whether `v` is in use and has its irqfd registered with KVM (a live vector always should). */
  irqfdAssigned(v: number): boolean {
    return this.routes.get(v)?.assigned === true;
  }

  /** The eventfd that injects `v` (for a backend that signals the guest directly). */
  eventFd(v: number): EventFd | undefined {
    return this.routes.get(v)?.efd;
  }

  /** Raises vector `v`: delivered now, or its PBA bit set while masked. */
  notify(v: number): void {
    if (v >= this.vectors) return;
    if (!this.enabled) {
      this.counters.dropped++;
      return;
    }
    if (!this.live(v)) {
      this.setPending(v, true);
      this.counters.pended++;
      return;
    }
    this.counters.delivered++;
    const r = this.routes.get(v);
    if (r?.assigned) r.efd.write(1);
    else this.irq.vm.signalMsi(this.message(v));
  }

  private setPending(v: number, on: boolean): void {
    if (on) this.pba[v >> 3] |= 1 << (v & 7);
    else this.pba[v >> 3] &= ~(1 << (v & 7));
  }

  /** Brings a vector's KVM route and irqfd in line with the table and control bits; delivers pending bits on unmask. */
  private sync(v: number): void {
    const live = this.live(v);
    if (this.inUse.has(v)) {
      let r = this.routes.get(v);
      const msg = this.message(v);
      const key = `${msg.addressLo}:${msg.addressHi}:${msg.data}`;
      if (!r) {
        const gsi = this.irq.gsiRoutes.allocate();
        r = { gsi, efd: EventFd.create(), assigned: false, msg: '' };
        this.routes.set(v, r);
        r.efd.watch(() =>
          this.boundary(`masked MSI-X vector ${v}`, () => {
            // Only reached while the irqfd is unassigned: a backend signalled a masked vector.
            this.setPending(v, true);
            this.counters.pended++;
          }),
        );
      }
      if (live && r.msg !== key) {
        this.irq.gsiRoutes.setMsi(r.gsi, msg);
        r.msg = key;
      }
      this.setAssigned(v, r, live);
    }
    if (live && this.pending(v)) {
      this.setPending(v, false);
      this.notify(v);
    }
  }

  private setAssigned(v: number, r: VectorRoute, on: boolean): void {
    if (r.assigned === on) return;
    if (on) {
      r.efd.unwatch();
      // A signal that raced in while unassigned is pending, not lost.
      if (r.efd.read() > 0n) this.setPending(v, true);
      this.irq.vm.irqfd(r.efd.fd, r.gsi);
      r.assigned = true;
    } else {
      this.irq.vm.irqfd(r.efd.fd, r.gsi, { deassign: true });
      r.assigned = false;
      r.efd.watch(() =>
        this.boundary(`masked MSI-X vector ${v}`, () => {
          this.setPending(v, true);
          this.counters.pended++;
        }),
      );
    }
  }

  /**
   * Migration: takes the table and PBA of the source. The caller then
   * re-assigns the vectors in use (useVector), which creates their GSI
   * routes and irqfds here and delivers what is pending and unmasked.
   */
  restore(table: Uint8Array, pba: Uint8Array): void {
    if (table.length !== this.table.length || pba.length !== this.pba.length)
      throw new Error(`MSI-X: the stream has ${table.length / MSIX_ENTRY_SIZE} vectors, this function has ${this.vectors}`);
    this.releaseAll();
    this.table.set(table);
    this.pba.set(pba);
    this.lastControl = this.control;
  }

  /** Call after any config-space write: reacts to enable / function-mask changes. */
  configWritten(): void {
    const c = this.control;
    if (c === this.lastControl) return;
    this.lastControl = c;
    for (let v = 0; v < this.vectors; v++) this.sync(v);
  }

  /** The table as a BAR region (dword or qword accesses). */
  readonly tableDevice: BusDevice = {
    read: (offset, size) => {
      if (offset + size > this.table.length) return 0;
      if (size === 8) return this.tdv.getBigUint64(offset, true);
      return size === 4 ? this.tdv.getUint32(offset, true) : size === 2 ? this.tdv.getUint16(offset, true) : this.table[offset];
    },
    write: (offset, size, value) => {
      if (offset + size > this.table.length) return;
      if (size === 8) {
        this.tableDevice.write(offset, 4, Number(BigInt(value) & 0xffffffffn));
        this.tableDevice.write(offset + 4, 4, Number(BigInt(value) >> 32n));
        return;
      }
      if (size !== 4) return; // the spec allows only dword and qword accesses
      this.tdv.setUint32(offset, Number(value) >>> 0, true);
      this.sync(Math.floor(offset / MSIX_ENTRY_SIZE));
    },
  };

  /**
   * Collects signals that reached masked vectors' eventfds but whose watcher
   * has not run yet (another thread wrote them), so a PBA read is never stale.
   */
  private drainMaskedSignals(): void {
    for (const [v, r] of this.routes) {
      if (!r.assigned && r.efd.read() > 0n) {
        this.setPending(v, true);
        this.counters.pended++;
      }
    }
  }

  readonly pbaDevice: BusDevice = {
    read: (offset, size) => {
      this.drainMaskedSignals();
      let v = 0n;
      for (let i = size - 1; i >= 0; i--) v = (v << 8n) | BigInt(this.pba[offset + i] ?? 0);
      return size === 8 ? v : Number(v);
    },
    write: () => undefined,
  };
}
