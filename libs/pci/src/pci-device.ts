/**
 * A PCI function with memory BARs: BAR registers with sizing semantics, the
 * command register (memory decode maps/unmaps the BARs on the MMIO bus; bus
 * mastering is reported to the device), and config-space hooks for capabilities.
 */
import { BusDevice, IoBus } from './io-bus';
import { PCI_BASE_ADDRESS_0, PCI_COMMAND, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY, PciConfigSpace, PciIdentity } from './config-space';
import { PciFunction } from './pci-bus';

export interface BarSpec {
  index: number;
  size: number;
  /** mem64 takes two BAR registers (index and index+1). */
  kind: 'mem32' | 'mem64';
  prefetchable?: boolean;
  device: BusDevice;
}

interface Bar extends BarSpec {
  /** Address the guest (or the VMM at start) programmed. */
  address: number;
  /** Where it is mapped on the MMIO bus now, if anywhere. */
  mappedAt: number | undefined;
}

export abstract class PciBarFunction implements PciFunction {
  readonly config: PciConfigSpace;
  private readonly bars: (Bar | undefined)[] = [];

  constructor(
    readonly name: string,
    identity: PciIdentity,
    protected readonly mmio: IoBus,
  ) {
    this.config = new PciConfigSpace(identity);
  }

  /** Declares a BAR at a VMM-chosen address (mapped once the guest enables memory decoding). */
  addBar(spec: BarSpec, address: number): void {
    if (spec.size < 16 || (spec.size & (spec.size - 1)) !== 0) throw new RangeError(`BAR size ${spec.size} must be a power of two >= 16`);
    if (address % spec.size) throw new RangeError(`BAR ${spec.index} address 0x${address.toString(16)} is not aligned to its size`);
    this.bars[spec.index] = { ...spec, address, mappedAt: undefined };
    this.writeBarRegisters(spec.index);
  }

  barSize(index: number): number | undefined {
    return this.bars[index]?.size;
  }

  barAddress(index: number): number | undefined {
    return this.bars[index]?.mappedAt;
  }

  /** Called after a BAR moved or was (un)mapped; `at` is undefined when unmapped. */
  protected onBarMapped(_index: number, _at: number | undefined): void {}
  /** Called when the guest sets or clears PCI_COMMAND_MASTER. */
  protected onBusMaster(_enabled: boolean): void {}

  get busMaster(): boolean {
    return (this.config.command & PCI_COMMAND_MASTER) !== 0;
  }

  private writeBarRegisters(index: number): void {
    const b = this.bars[index]!;
    const flags = (b.kind === 'mem64' ? 0x4 : 0) | (b.prefetchable ? 0x8 : 0);
    const off = PCI_BASE_ADDRESS_0 + index * 4;
    this.config.setU32(off, ((b.address >>> 0) & ~(b.size - 1)) | flags);
    this.config.setMask32(off, ~(b.size - 1) & 0xfffffff0);
    if (b.kind === 'mem64') {
      this.config.setU32(off + 4, Math.floor(b.address / 2 ** 32));
      this.config.setMask32(off + 4, 0xffffffff);
    }
  }

  /** Which BAR (and high half?) a config offset belongs to. */
  private barAt(off: number): { bar: Bar; high: boolean } | undefined {
    const i = (off - PCI_BASE_ADDRESS_0) >> 2;
    if (i < 0 || i > 5) return undefined;
    if (this.bars[i]) return { bar: this.bars[i]!, high: false };
    if (i > 0 && this.bars[i - 1]?.kind === 'mem64') return { bar: this.bars[i - 1]!, high: true };
    return undefined;
  }

  configRead(offset: number, size: number): number {
    return this.config.read(offset, size);
  }

  configWrite(offset: number, size: number, value: number): void {
    const oldCommand = this.config.command;
    this.config.write(offset, size, value);
    if (offset >= PCI_BASE_ADDRESS_0 && offset < PCI_BASE_ADDRESS_0 + 24) {
      const hit = this.barAt(offset & ~3);
      if (hit) {
        const base = PCI_BASE_ADDRESS_0 + hit.bar.index * 4;
        const lo = (this.config.getU32(base) & 0xfffffff0) >>> 0; // unsigned: BARs live above 2 GiB
        const hi = hit.bar.kind === 'mem64' ? this.config.getU32(base + 4) : 0;
        hit.bar.address = hi * 2 ** 32 + lo;
        this.updateMappings();
      }
    }
    if (offset <= PCI_COMMAND + 1 && offset + size > PCI_COMMAND) {
      const cmd = this.config.command;
      if ((cmd ^ oldCommand) & PCI_COMMAND_MEMORY) this.updateMappings();
      if ((cmd ^ oldCommand) & PCI_COMMAND_MASTER) this.onBusMaster((cmd & PCI_COMMAND_MASTER) !== 0);
    }
  }

  /** Whether a BAR at `address` is decoded (memory decoding on, a real address): where updateMappings maps it. */
  private static decodes(b: Bar, address: number, decode: boolean): boolean {
    // A BAR being sized reads back as all ones in its address bits: not a real address.
    const sizing = b.kind === 'mem32' && (address & ~(b.size - 1)) >>> 0 === (0xfffffff0 & ~(b.size - 1)) >>> 0;
    return decode && address !== 0 && !sizing && address + b.size <= 2 ** 52;
  }

  /**
   * The BARs a config-space image of this function (a snapshot's, checked to
   * have this function's read-only bits) would map, as restoreConfig would:
   * for checking a stream's layout before anything is applied.
   */
  decodedBars(config: Uint8Array): { index: number; start: number; size: number }[] {
    const view = new DataView(config.buffer, config.byteOffset, config.byteLength);
    const decode = (view.getUint16(PCI_COMMAND, true) & PCI_COMMAND_MEMORY) !== 0;
    const out: { index: number; start: number; size: number }[] = [];
    for (const b of this.bars) {
      if (!b) continue;
      const base = PCI_BASE_ADDRESS_0 + b.index * 4;
      const lo = (view.getUint32(base, true) & 0xfffffff0) >>> 0;
      const hi = b.kind === 'mem64' ? view.getUint32(base + 4, true) : 0;
      const address = hi * 2 ** 32 + lo;
      if (PciBarFunction.decodes(b, address, decode)) out.push({ index: b.index, start: address, size: b.size });
    }
    return out;
  }

  /** Maps each BAR at its programmed address while memory decoding is on; unmaps otherwise. */
  protected updateMappings(): void {
    const decode = (this.config.command & PCI_COMMAND_MEMORY) !== 0;
    for (const b of this.bars) {
      if (!b) continue;
      const want = PciBarFunction.decodes(b, b.address, decode) ? b.address : undefined;
      if (want === b.mappedAt) continue;
      if (b.mappedAt !== undefined) this.mmio.unregister(b.mappedAt, b.device);
      b.mappedAt = undefined;
      if (want !== undefined) {
        try {
          this.mmio.register(want, b.size, `${this.name} BAR${b.index}`, b.device);
          b.mappedAt = want;
        } catch {
          // Overlaps another range: leave unmapped, as a real bus would decode nothing sensible.
        }
      }
      this.onBarMapped(b.index, b.mappedAt);
    }
  }

  /**
   * Migration: takes the source's 256-byte config space as is (BAR registers,
   * command, capabilities) and maps the BARs where they were. Bus mastering
   * is not reported: the device's own state carries `disabled`.
   */
  restoreConfig(bytes: Uint8Array): void {
    if (bytes.length !== this.config.bytes.length) throw new Error(`${this.name}: config space of ${bytes.length} bytes`);
    this.config.bytes.set(bytes);
    for (const b of this.bars) {
      if (!b) continue;
      const base = PCI_BASE_ADDRESS_0 + b.index * 4;
      const lo = (this.config.getU32(base) & 0xfffffff0) >>> 0;
      const hi = b.kind === 'mem64' ? this.config.getU32(base + 4) : 0;
      b.address = hi * 2 ** 32 + lo;
    }
    this.updateMappings();
  }

  /** Unmaps every BAR (device removal / VM teardown). */
  unmapAll(): void {
    for (const b of this.bars) {
      if (b?.mappedAt !== undefined) {
        this.mmio.unregister(b.mappedAt, b.device);
        b.mappedAt = undefined;
      }
    }
  }
}
