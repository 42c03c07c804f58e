/** A typed window on a vCPU's kvm_run page, read and written in place (no copies per exit). */
import * as U from './generated/kvm-uapi';

export const EXIT_NAMES: Record<number, string> = {
  [U.KVM_EXIT_UNKNOWN]: 'KVM_EXIT_UNKNOWN',
  [U.KVM_EXIT_EXCEPTION]: 'KVM_EXIT_EXCEPTION',
  [U.KVM_EXIT_IO]: 'KVM_EXIT_IO',
  [U.KVM_EXIT_HYPERCALL]: 'KVM_EXIT_HYPERCALL',
  [U.KVM_EXIT_DEBUG]: 'KVM_EXIT_DEBUG',
  [U.KVM_EXIT_HLT]: 'KVM_EXIT_HLT',
  [U.KVM_EXIT_MMIO]: 'KVM_EXIT_MMIO',
  [U.KVM_EXIT_IRQ_WINDOW_OPEN]: 'KVM_EXIT_IRQ_WINDOW_OPEN',
  [U.KVM_EXIT_SHUTDOWN]: 'KVM_EXIT_SHUTDOWN',
  [U.KVM_EXIT_FAIL_ENTRY]: 'KVM_EXIT_FAIL_ENTRY',
  [U.KVM_EXIT_INTR]: 'KVM_EXIT_INTR',
  [U.KVM_EXIT_NMI]: 'KVM_EXIT_NMI',
  [U.KVM_EXIT_INTERNAL_ERROR]: 'KVM_EXIT_INTERNAL_ERROR',
  [U.KVM_EXIT_SYSTEM_EVENT]: 'KVM_EXIT_SYSTEM_EVENT',
};

export const INTERNAL_ERROR_NAMES: Record<number, string> = {
  [U.KVM_INTERNAL_ERROR_EMULATION]: 'emulation failure',
  [U.KVM_INTERNAL_ERROR_SIMUL_EX]: 'exception while delivering an exception',
  [U.KVM_INTERNAL_ERROR_DELIVERY_EV]: 'event delivery failure',
  [U.KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON]: 'unexpected exit reason',
};

export class KvmRun {
  readonly dv: DataView;
  readonly bytes: Uint8Array;

  constructor(readonly buffer: ArrayBuffer) {
    this.dv = new DataView(buffer);
    this.bytes = new Uint8Array(buffer);
  }

  get exitReason(): number {
    return this.dv.getUint32(U.OFF_kvm_run_exit_reason, true);
  }

  // KVM_EXIT_IO
  get ioIsOut(): boolean {
    return this.dv.getUint8(U.OFF_kvm_run_io_direction) === U.KVM_EXIT_IO_OUT;
  }
  get ioSize(): number {
    return this.dv.getUint8(U.OFF_kvm_run_io_size);
  }
  get ioPort(): number {
    return this.dv.getUint16(U.OFF_kvm_run_io_port, true);
  }
  get ioCount(): number {
    return this.dv.getUint32(U.OFF_kvm_run_io_count, true);
  }
  get ioDataOffset(): number {
    // A u64 read as two u32 halves: no BigInt per exit (the offset is a page or two into the mapping).
    return this.dv.getUint32(U.OFF_kvm_run_io_data_offset, true) + this.dv.getUint32(U.OFF_kvm_run_io_data_offset + 4, true) * 2 ** 32;
  }
  /** Reads element `i` of a port I/O's data (1, 2 or 4 bytes, little-endian). */
  ioRead(i = 0): number {
    const size = this.ioSize;
    const off = this.ioDataOffset + i * size;
    return size === 1 ? this.dv.getUint8(off) : size === 2 ? this.dv.getUint16(off, true) : this.dv.getUint32(off, true);
  }
  ioWrite(value: number, i = 0): void {
    const size = this.ioSize;
    const off = this.ioDataOffset + i * size;
    if (size === 1) this.dv.setUint8(off, value & 0xff);
    else if (size === 2) this.dv.setUint16(off, value & 0xffff, true);
    else this.dv.setUint32(off, value >>> 0, true);
  }

  // KVM_EXIT_MMIO
  get mmioAddress(): bigint {
    return this.dv.getBigUint64(U.OFF_kvm_run_mmio_phys_addr, true);
  }
  get mmioLength(): number {
    return this.dv.getUint32(U.OFF_kvm_run_mmio_len, true);
  }
  get mmioIsWrite(): boolean {
    return this.dv.getUint8(U.OFF_kvm_run_mmio_is_write) !== 0;
  }
  /** The MMIO data as a little-endian value of mmioLength bytes. */
  mmioRead(): bigint {
    const len = this.mmioLength;
    let v = 0n;
    for (let i = len - 1; i >= 0; i--) v = (v << 8n) | BigInt(this.bytes[U.OFF_kvm_run_mmio_data + i]);
    return v;
  }
  mmioWrite(value: bigint): void {
    const len = this.mmioLength;
    for (let i = 0; i < len; i++) this.bytes[U.OFF_kvm_run_mmio_data + i] = Number((value >> BigInt(8 * i)) & 0xffn);
  }

  // KVM_EXIT_INTERNAL_ERROR
  get internalSuberror(): number {
    return this.dv.getUint32(U.OFF_kvm_run_internal_suberror, true);
  }
  get internalData(): bigint[] {
    const n = Math.min(this.dv.getUint32(U.OFF_kvm_run_internal_ndata, true), 16);
    const out: bigint[] = [];
    for (let i = 0; i < n; i++) out.push(this.dv.getBigUint64(U.OFF_kvm_run_internal_data + i * 8, true));
    return out;
  }
  /** Instruction bytes KVM reported with an emulation failure, if it did. */
  get emulationFailureBytes(): Uint8Array | undefined {
    if (this.internalSuberror !== U.KVM_INTERNAL_ERROR_EMULATION) return undefined;
    const ndata = this.dv.getUint32(U.OFF_kvm_run_internal_ndata, true);
    const flags = this.dv.getBigUint64(U.OFF_kvm_run_emulation_failure_flags, true);
    if (ndata < 3 || (flags & BigInt(U.KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES)) === 0n) return undefined;
    const size = Math.min(this.dv.getUint8(U.OFF_kvm_run_emulation_failure_insn_size), 15);
    return this.bytes.slice(U.OFF_kvm_run_emulation_failure_insn_bytes, U.OFF_kvm_run_emulation_failure_insn_bytes + size);
  }

  // KVM_EXIT_FAIL_ENTRY
  get failEntryReason(): bigint {
    return this.dv.getBigUint64(U.OFF_kvm_run_fail_entry_reason, true);
  }
  get failEntryCpu(): number {
    return this.dv.getUint32(U.OFF_kvm_run_fail_entry_cpu, true);
  }

  // KVM_EXIT_SYSTEM_EVENT
  get systemEventType(): number {
    return this.dv.getUint32(U.OFF_kvm_run_system_event_type, true);
  }
}
