/**
 * The typed KVM facade: /dev/kvm, VMs, memory regions, interrupts, eventfd
 * plumbing and vCPUs. Each method is one ioctl (or a short sequence) with its
 * arguments checked first.
 */
import * as fs from 'fs';
import * as U from './generated/kvm-uapi';
import { checkFd, checkInt, checkPageAligned, checkU32, checkU64 } from './check';
import { KvmArgumentError, KvmUnavailableError, VcpuFault, VcpuFaultError } from './errors';
import { RamPiece, ramPieceLengths, toPieces } from './guest-ram';
import { loadNative, NativeAddon, NativeVcpuThread } from './native';
import { EXIT_NAMES, INTERNAL_ERROR_NAMES, KvmRun } from './run';
import {
  CpuidEntry,
  decodeCpuid2,
  decodeMsrs,
  decodeRegs,
  decodeSregs,
  encodeCpuid2,
  encodeGsiRouting,
  encodeMsrs,
  encodeRegs,
  encodeSregs,
  GsiRoute,
  MsrEntry,
  Regs,
  Sregs,
  view,
} from './structs';

export const KVM_API_VERSION = 12;

/** Largest memory slot KVM accepts: KVM_MEM_MAX_NR_PAGES (2^31 - 1) pages of 4 KiB. */
export const KVM_MEM_MAX_BYTES = (2 ** 31 - 1) * 4096;

/** Capabilities the VMM cannot work without. */
export const REQUIRED_CAPABILITIES: ReadonlyArray<[string, number]> = [
  ['KVM_CAP_USER_MEMORY', U.KVM_CAP_USER_MEMORY],
  ['KVM_CAP_IRQCHIP', U.KVM_CAP_IRQCHIP],
  ['KVM_CAP_PIT2', U.KVM_CAP_PIT2],
  ['KVM_CAP_IOEVENTFD', U.KVM_CAP_IOEVENTFD],
  ['KVM_CAP_IRQFD', U.KVM_CAP_IRQFD],
  ['KVM_CAP_IRQ_ROUTING', U.KVM_CAP_IRQ_ROUTING],
  ['KVM_CAP_SIGNAL_MSI', U.KVM_CAP_SIGNAL_MSI],
  ['KVM_CAP_IMMEDIATE_EXIT', U.KVM_CAP_IMMEDIATE_EXIT],
  ['KVM_CAP_EXT_CPUID', U.KVM_CAP_EXT_CPUID],
];

interface Errno {
  code?: string;
}

export class Kvm {
  private constructor(
    readonly fd: number,
    readonly path: string,
    private readonly native: NativeAddon,
  ) {}

  /**
   * Opens /dev/kvm (or `path`), checks the API version and the capabilities
   * the VMM needs. Every failure is a KvmUnavailableError saying what to do.
   */
  static open(path = '/dev/kvm'): Kvm {
    if (!fs.existsSync(path)) {
      throw new KvmUnavailableError(
        `${path} does not exist: this host has no KVM. Load kvm_intel or kvm_amd (or enable nested virtualization) and retry.`,
        'missing',
      );
    }
    const native = loadNative();
    let fd: number;
    try {
      fd = native.open(path);
    } catch (e) {
      const code = (e as Errno).code;
      if (code === 'EACCES' || code === 'EPERM')
        throw new KvmUnavailableError(
          `no permission to open ${path}: run as root or add this user to the group that owns it (usually "kvm")`,
          'permission',
        );
      throw new KvmUnavailableError(`cannot open ${path}: ${(e as Error).message}`, 'other');
    }
    const kvm = new Kvm(fd, path, native);
    const version = native.ioctl(fd, U.KVM_GET_API_VERSION);
    if (version !== KVM_API_VERSION) {
      native.close(fd);
      throw new KvmUnavailableError(`${path} speaks KVM API ${version}, this VMM needs ${KVM_API_VERSION}`, 'api-version');
    }
    const missing = REQUIRED_CAPABILITIES.filter(([, cap]) => kvm.checkExtension(cap) <= 0).map(([n]) => n);
    if (missing.length) {
      native.close(fd);
      throw new KvmUnavailableError(`${path} lacks required capabilities: ${missing.join(', ')}`, 'capability');
    }
    return kvm;
  }

  get apiVersion(): number {
    return this.native.ioctl(this.fd, U.KVM_GET_API_VERSION);
  }

  /** KVM_CHECK_EXTENSION: 0 when absent, otherwise a capability-specific positive value. */
  checkExtension(cap: number): number {
    checkU32('capability', cap);
    return this.native.ioctl(this.fd, U.KVM_CHECK_EXTENSION, cap);
  }

  get vcpuMmapSize(): number {
    return this.native.ioctl(this.fd, U.KVM_GET_VCPU_MMAP_SIZE);
  }

  /** KVM_GET_SUPPORTED_CPUID, growing the buffer until the kernel's list fits. */
  supportedCpuid(): CpuidEntry[] {
    for (let n = 64; n <= 4096; n *= 2) {
      const b = new Uint8Array(U.OFF_kvm_cpuid2_entries + n * U.SIZEOF_kvm_cpuid_entry2);
      view(b).setUint32(0, n, true);
      try {
        this.native.ioctl(this.fd, U.KVM_GET_SUPPORTED_CPUID, b);
        return decodeCpuid2(b);
      } catch (e) {
        if ((e as Errno).code !== 'E2BIG') throw e;
      }
    }
    throw new Error('KVM_GET_SUPPORTED_CPUID: more than 4096 entries');
  }

  /** KVM_GET_MSR_INDEX_LIST: the MSRs KVM can save and restore for a vCPU (migration). */
  msrIndexList(): number[] {
    for (let n = 256; n <= 16384; n *= 2) {
      const b = new Uint8Array(U.OFF_kvm_msr_list_indices + n * 4);
      const dv = view(b);
      dv.setUint32(U.OFF_kvm_msr_list_nmsrs, n, true);
      try {
        this.native.ioctl(this.fd, U.KVM_GET_MSR_INDEX_LIST, b);
      } catch (e) {
        if ((e as Errno).code === 'E2BIG') continue;
        throw e;
      }
      const count = dv.getUint32(U.OFF_kvm_msr_list_nmsrs, true);
      return Array.from({ length: count }, (_, i) => dv.getUint32(U.OFF_kvm_msr_list_indices + i * 4, true));
    }
    throw new Error('KVM_GET_MSR_INDEX_LIST: more than 16384 MSRs');
  }

  createVm(): Vm {
    const vmFd = this.native.ioctl(this.fd, U.KVM_CREATE_VM, 0);
    return new Vm(this, vmFd, this.native);
  }

  close(): void {
    this.native.close(this.fd);
  }
}

export interface MemoryRegion {
  slot: number;
  guestPhysAddr: bigint;
  size: number;
  /** memfd backing the region (shareable with a vhost backend or a migration peer). */
  fd: number;
  /** Host virtual address of the mapping. */
  hostAddress: bigint;
  /**
   * The region's bytes: external ArrayBuffers over the one mapping, cut at
   * guest-physical multiples of RAM_PIECE_SIZE (guest-ram.ts), in address order.
   */
  pieces: RamPiece[];
  flags: number;
}

export interface IoEventFdOptions {
  /** Port number (pio) or guest-physical address (mmio). */
  addr: number | bigint;
  /** Access length in bytes: 1, 2, 4 or 8 (8 for MMIO only); 0 matches any length (MMIO). */
  len: 0 | 1 | 2 | 4 | 8;
  fd: number;
  space: 'pio' | 'mmio';
  /** Only writes of exactly this value signal the eventfd; others exit to userspace. */
  datamatch?: number | bigint;
}

export interface MsiMessage {
  addressLo: number;
  addressHi: number;
  data: number;
}

export class Vm {
  private readonly regions = new Map<number, MemoryRegion>();
  private readonly vcpus: Vcpu[] = [];
  private closed = false;

  constructor(
    readonly kvm: Kvm,
    readonly fd: number,
    private readonly native: NativeAddon,
  ) {}

  checkExtension(cap: number): number {
    checkU32('capability', cap);
    return this.native.ioctl(this.fd, U.KVM_CHECK_EXTENSION, cap);
  }

  /**
   * Allocates guest RAM (memfd + shared mapping) and maps it at `guestPhysAddr`
   * with KVM_SET_USER_MEMORY_REGION.
   */
  addMemoryRegion(opts: { slot: number; guestPhysAddr: number | bigint; size: number; name?: string }): MemoryRegion {
    const slot = checkInt('slot', opts.slot, 0, 0x7fff);
    if (this.regions.has(slot)) throw new KvmArgumentError(`memory slot ${slot} is already in use`);
    const gpa = checkPageAligned('guestPhysAddr', checkU64('guestPhysAddr', opts.guestPhysAddr));
    const size = checkInt('size', opts.size, 4096, KVM_MEM_MAX_BYTES);
    checkPageAligned('size', BigInt(size));
    for (const r of this.regions.values()) {
      if (gpa < r.guestPhysAddr + BigInt(r.size) && r.guestPhysAddr < gpa + BigInt(size))
        throw new KvmArgumentError(`memory region at 0x${gpa.toString(16)} overlaps slot ${r.slot}`);
    }
    const lengths = ramPieceLengths(Number(gpa), size);
    const m = this.native.memfdMap(opts.name ?? `guest-ram-${slot}`, size, lengths);
    const region: MemoryRegion = {
      slot,
      guestPhysAddr: gpa,
      size,
      fd: m.fd,
      hostAddress: m.address,
      pieces: toPieces(Number(gpa), lengths, m.buffers),
      flags: 0,
    };
    try {
      this.setUserMemoryRegion(region, 0);
    } catch (e) {
      this.native.close(m.fd); // the mapping goes with its ArrayBuffers
      throw e;
    }
    this.regions.set(slot, region);
    return region;
  }

  private setUserMemoryRegion(r: MemoryRegion, flags: number): void {
    const b = new Uint8Array(U.SIZEOF_kvm_userspace_memory_region);
    const dv = view(b);
    dv.setUint32(U.OFF_kvm_userspace_memory_region_slot, r.slot, true);
    dv.setUint32(U.OFF_kvm_userspace_memory_region_flags, flags, true);
    dv.setBigUint64(U.OFF_kvm_userspace_memory_region_guest_phys_addr, r.guestPhysAddr, true);
    dv.setBigUint64(U.OFF_kvm_userspace_memory_region_memory_size, BigInt(r.size), true);
    dv.setBigUint64(U.OFF_kvm_userspace_memory_region_userspace_addr, r.hostAddress, true);
    this.native.ioctl(this.fd, U.KVM_SET_USER_MEMORY_REGION, b);
    r.flags = flags;
  }

  get memoryRegions(): MemoryRegion[] {
    return [...this.regions.values()].sort((a, b) => (a.guestPhysAddr < b.guestPhysAddr ? -1 : 1));
  }

  /** Turns KVM dirty-page logging on or off for a slot (for migration). */
  setDirtyLogging(slot: number, on: boolean): void {
    const r = this.regions.get(slot);
    if (!r) throw new KvmArgumentError(`no memory slot ${slot}`);
    this.setUserMemoryRegion(r, on ? U.KVM_MEM_LOG_DIRTY_PAGES : 0);
  }

  /** KVM_GET_DIRTY_LOG: one bit per 4 KiB page dirtied since the last call (the kernel clears it). */
  getDirtyLog(slot: number): Uint8Array {
    const r = this.regions.get(slot);
    if (!r) throw new KvmArgumentError(`no memory slot ${slot}`);
    if (!(r.flags & U.KVM_MEM_LOG_DIRTY_PAGES)) throw new KvmArgumentError(`dirty logging is off for slot ${slot}`);
    const pages = r.size / 4096;
    const bitmap = new Uint8Array(Math.ceil(pages / 64) * 8);
    const b = new Uint8Array(U.SIZEOF_kvm_dirty_log);
    const dv = view(b);
    dv.setUint32(U.OFF_kvm_dirty_log_slot, slot, true);
    // SAFETY: `bitmap` stays referenced until the synchronous ioctl returns.
    dv.setBigUint64(U.OFF_kvm_dirty_log_dirty_bitmap, this.native.addressOf(bitmap), true);
    this.native.ioctl(this.fd, U.KVM_GET_DIRTY_LOG, b);
    return bitmap;
  }

  /** Reads guest-physical memory for diagnostics; undefined when any byte is not RAM. */
  readPhysical(gpa: bigint, len: number): Uint8Array | undefined {
    for (const r of this.regions.values()) {
      const end = r.guestPhysAddr + BigInt(r.size);
      if (gpa >= r.guestPhysAddr && gpa + BigInt(len) <= end) {
        const out = new Uint8Array(len);
        const a = Number(gpa);
        for (const p of r.pieces) {
          const lo = Math.max(a, p.guestPhysAddr);
          const hi = Math.min(a + len, p.guestPhysAddr + p.bytes.length);
          if (lo < hi) out.set(p.bytes.subarray(lo - p.guestPhysAddr, hi - p.guestPhysAddr), lo - a);
        }
        return out;
      }
    }
    return undefined;
  }

  setTssAddr(addr: number): void {
    this.native.ioctl(this.fd, U.KVM_SET_TSS_ADDR, checkU32('tss address', addr));
  }

  setIdentityMapAddr(addr: number | bigint): void {
    const b = new Uint8Array(8);
    view(b).setBigUint64(0, checkU64('identity map address', addr), true);
    this.native.ioctl(this.fd, U.KVM_SET_IDENTITY_MAP_ADDR, b);
  }

  /** In-kernel PIC, IOAPIC and LAPICs (GSIs 0-23 routed to the IOAPIC/PIC by default). */
  createIrqchip(): void {
    this.native.ioctl(this.fd, U.KVM_CREATE_IRQCHIP);
  }

  /** In-kernel i8254 PIT. */
  createPit2(flags = 0): void {
    const b = new Uint8Array(U.SIZEOF_kvm_pit_config);
    view(b).setUint32(0, checkU32('pit flags', flags), true);
    this.native.ioctl(this.fd, U.KVM_CREATE_PIT2, b);
  }

  /**
   * KVM_GET_IRQCHIP: the raw kvm_irqchip of one in-kernel chip
   * (KVM_IRQCHIP_PIC_MASTER, _PIC_SLAVE or _IOAPIC), for save/restore.
   */
  getIrqchip(chipId: number): Uint8Array {
    const b = new Uint8Array(U.SIZEOF_kvm_irqchip);
    view(b).setUint32(U.OFF_kvm_irqchip_chip_id, checkInt('irqchip id', chipId, 0, 2), true);
    this.native.ioctl(this.fd, U.KVM_GET_IRQCHIP, b);
    return b;
  }

  /** KVM_SET_IRQCHIP with a buffer from getIrqchip (its chip_id says which chip). */
  setIrqchip(b: Uint8Array): void {
    if (b.byteLength !== U.SIZEOF_kvm_irqchip) throw new KvmArgumentError(`kvm_irqchip must be ${U.SIZEOF_kvm_irqchip} bytes`);
    checkInt('irqchip id', view(b).getUint32(U.OFF_kvm_irqchip_chip_id, true), 0, 2);
    this.native.ioctl(this.fd, U.KVM_SET_IRQCHIP, b);
  }

  /** KVM_GET_PIT2: the in-kernel PIT's channels and flags (raw kvm_pit_state2). */
  getPit2(): Uint8Array {
    const b = new Uint8Array(U.SIZEOF_kvm_pit_state2);
    this.native.ioctl(this.fd, U.KVM_GET_PIT2, b);
    return b;
  }

  setPit2(b: Uint8Array): void {
    if (b.byteLength !== U.SIZEOF_kvm_pit_state2) throw new KvmArgumentError(`kvm_pit_state2 must be ${U.SIZEOF_kvm_pit_state2} bytes`);
    this.native.ioctl(this.fd, U.KVM_SET_PIT2, b);
  }

  /** KVM_GET_CLOCK: the kvmclock value in ns and its flags (KVM_CLOCK_TSC_STABLE...). */
  getClock(): { clock: bigint; flags: number } {
    const b = new Uint8Array(U.SIZEOF_kvm_clock_data);
    this.native.ioctl(this.fd, U.KVM_GET_CLOCK, b);
    const dv = view(b);
    return { clock: dv.getBigUint64(U.OFF_kvm_clock_data_clock, true), flags: dv.getUint32(U.OFF_kvm_clock_data_flags, true) };
  }

  /** KVM_SET_CLOCK: sets the kvmclock value (flags 0: the value alone, no realtime adjustment). */
  setClock(clock: bigint): void {
    const b = new Uint8Array(U.SIZEOF_kvm_clock_data);
    view(b).setBigUint64(U.OFF_kvm_clock_data_clock, checkU64('clock', clock), true);
    this.native.ioctl(this.fd, U.KVM_SET_CLOCK, b);
  }

  /** KVM_IRQ_LINE: drive a GSI of the in-kernel irqchip high or low. */
  irqLine(gsi: number, level: boolean): void {
    const b = new Uint8Array(U.SIZEOF_kvm_irq_level);
    const dv = view(b);
    dv.setUint32(0, checkU32('gsi', gsi), true);
    dv.setUint32(4, level ? 1 : 0, true);
    this.native.ioctl(this.fd, U.KVM_IRQ_LINE, b);
  }

  /** KVM_SET_GSI_ROUTING: replaces the whole routing table. */
  setGsiRouting(routes: readonly GsiRoute[]): void {
    if (!Array.isArray(routes)) throw new KvmArgumentError('routes must be an array');
    const seen = new Set<string>();
    for (const r of routes) {
      checkU32('route gsi', r.gsi);
      if (r.type === 'msi') {
        checkU32('msi addressLo', r.addressLo);
        checkU32('msi addressHi', r.addressHi);
        checkU32('msi data', r.data);
        if (seen.has(`${r.gsi}`)) throw new KvmArgumentError(`gsi ${r.gsi} has more than one MSI route`);
        seen.add(`${r.gsi}`);
      } else if (r.type === 'irqchip') {
        checkInt('irqchip', r.irqchip, 0, 2);
        checkInt('irqchip pin', r.pin, 0, r.irqchip === U.KVM_IRQCHIP_IOAPIC ? 23 : 7);
      } else {
        throw new KvmArgumentError(`unknown route type ${(r as { type: string }).type}`);
      }
    }
    this.native.ioctl(this.fd, U.KVM_SET_GSI_ROUTING, encodeGsiRouting(routes));
  }

  /** KVM_IRQFD: a write to `fd` injects `gsi`. */
  irqfd(fd: number, gsi: number, opts: { deassign?: boolean; resampleFd?: number } = {}): void {
    const b = new Uint8Array(U.SIZEOF_kvm_irqfd);
    const dv = view(b);
    dv.setUint32(U.OFF_kvm_irqfd_fd, checkFd('irqfd fd', fd), true);
    dv.setUint32(U.OFF_kvm_irqfd_gsi, checkU32('gsi', gsi), true);
    let flags = opts.deassign ? U.KVM_IRQFD_FLAG_DEASSIGN : 0;
    if (opts.resampleFd !== undefined) {
      if (opts.deassign) throw new KvmArgumentError('resampleFd is only valid when assigning');
      flags |= U.KVM_IRQFD_FLAG_RESAMPLE;
      dv.setUint32(U.OFF_kvm_irqfd_resamplefd, checkFd('resample fd', opts.resampleFd), true);
    }
    dv.setUint32(U.OFF_kvm_irqfd_flags, flags, true);
    this.native.ioctl(this.fd, U.KVM_IRQFD, b);
  }

  /** KVM_IOEVENTFD: guest writes to addr signal `fd` in the kernel, with no exit to userspace. */
  ioeventfd(opts: IoEventFdOptions, deassign = false): void {
    this.native.ioctl(this.fd, U.KVM_IOEVENTFD, encodeIoeventfd(opts, deassign));
  }

  /** KVM_SIGNAL_MSI: inject one MSI. Returns >0 if delivered, 0 if the guest blocked it. */
  signalMsi(msg: MsiMessage): number {
    const b = new Uint8Array(U.SIZEOF_kvm_msi);
    const dv = view(b);
    dv.setUint32(U.OFF_kvm_msi_address_lo, checkU32('msi addressLo', msg.addressLo), true);
    dv.setUint32(U.OFF_kvm_msi_address_hi, checkU32('msi addressHi', msg.addressHi), true);
    dv.setUint32(U.OFF_kvm_msi_data, checkU32('msi data', msg.data), true);
    return this.native.ioctl(this.fd, U.KVM_SIGNAL_MSI, b);
  }

  createVcpu(id: number): Vcpu {
    checkInt('vcpu id', id, 0, 1023);
    if (this.vcpus.some((v) => v.id === id)) throw new KvmArgumentError(`vCPU ${id} already exists`);
    const fd = this.native.ioctl(this.fd, U.KVM_CREATE_VCPU, id);
    const run = this.native.mmapFd(fd, this.kvm.vcpuMmapSize, 0);
    const v = new Vcpu(this, id, fd, new KvmRun(run.buffer), this.native);
    this.vcpus.push(v);
    return v;
  }

  /** Closes the vCPU fds and the VM fd. Guest RAM stays mapped until its ArrayBuffers are collected. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const v of this.vcpus) v.close();
    for (const r of this.regions.values()) this.native.close(r.fd);
    this.native.close(this.fd);
  }
}

export function encodeIoeventfd(opts: IoEventFdOptions, deassign: boolean): Uint8Array {
  if (opts.space !== 'pio' && opts.space !== 'mmio') throw new KvmArgumentError(`ioeventfd space must be pio or mmio`);
  if (![0, 1, 2, 4, 8].includes(opts.len)) throw new KvmArgumentError(`ioeventfd len must be 0, 1, 2, 4 or 8, got ${opts.len}`);
  const addr = checkU64('ioeventfd addr', opts.addr);
  if (opts.space === 'pio') {
    if (addr > 0xffffn) throw new KvmArgumentError(`ioeventfd port must be <= 0xffff, got 0x${addr.toString(16)}`);
    if (opts.len === 8 || opts.len === 0) throw new KvmArgumentError('a port ioeventfd len must be 1, 2 or 4');
  }
  let flags = opts.space === 'pio' ? U.KVM_IOEVENTFD_FLAG_PIO : 0;
  let datamatch = 0n;
  if (opts.datamatch !== undefined) {
    if (opts.len === 0) throw new KvmArgumentError('datamatch needs a fixed len');
    datamatch = checkU64('ioeventfd datamatch', opts.datamatch);
    if (datamatch >> BigInt(opts.len * 8) !== 0n)
      throw new KvmArgumentError(`datamatch 0x${datamatch.toString(16)} does not fit in ${opts.len} bytes`);
    flags |= U.KVM_IOEVENTFD_FLAG_DATAMATCH;
  }
  if (deassign) flags |= U.KVM_IOEVENTFD_FLAG_DEASSIGN;
  const b = new Uint8Array(U.SIZEOF_kvm_ioeventfd);
  const dv = view(b);
  dv.setBigUint64(U.OFF_kvm_ioeventfd_datamatch, datamatch, true);
  dv.setBigUint64(U.OFF_kvm_ioeventfd_addr, addr, true);
  dv.setUint32(U.OFF_kvm_ioeventfd_len, opts.len, true);
  dv.setInt32(U.OFF_kvm_ioeventfd_fd, checkFd('ioeventfd fd', opts.fd), true);
  dv.setUint32(U.OFF_kvm_ioeventfd_flags, flags, true);
  return b;
}

/** What the vCPU thread does after an exit handler returns. */
export enum VcpuAction {
  Continue = 0,
  Stop = 1,
  Pause = 2,
}

export type VcpuState = 'created' | 'running' | 'paused' | 'stopped';

export class Vcpu {
  private thread: NativeVcpuThread | undefined;
  private _state: VcpuState = 'created';
  private waiters: Array<{ state: VcpuState; resolve: () => void }> = [];
  /**
   * Pause/resume requests are numbered: the thread reports which one a
   * "paused" answers, so a late acknowledgement of an earlier pause (one a
   * resume has since overtaken) never satisfies a newer pause.
   */
  private gen = 0;
  private wanted: 'run' | 'pause' = 'run';
  private pausedGen = -1;
  private pauseWaiters: Array<{ gen: number; resolve: () => void }> = [];
  private fault: VcpuFaultError | undefined;
  private closed = false;

  constructor(
    readonly vm: Vm,
    readonly id: number,
    readonly fd: number,
    /** The kvm_run page, valid to read while an exit is being handled or the vCPU is paused. */
    readonly run: KvmRun,
    private readonly native: NativeAddon,
  ) {}

  /** The vCPU thread's kernel thread id (/proc/self/task/TID), undefined until it runs. */
  get threadId(): number | undefined {
    return this.thread?.tid() || undefined;
  }

  get state(): VcpuState {
    return this._state;
  }

  getRegs(): Regs {
    const b = new Uint8Array(U.SIZEOF_kvm_regs);
    this.native.ioctl(this.fd, U.KVM_GET_REGS, b);
    return decodeRegs(b);
  }

  setRegs(r: Regs): void {
    this.native.ioctl(this.fd, U.KVM_SET_REGS, encodeRegs(r));
  }

  getSregs(): Sregs {
    const b = new Uint8Array(U.SIZEOF_kvm_sregs);
    this.native.ioctl(this.fd, U.KVM_GET_SREGS, b);
    return decodeSregs(b);
  }

  setSregs(s: Sregs): void {
    this.native.ioctl(this.fd, U.KVM_SET_SREGS, encodeSregs(s));
  }

  /** The raw kvm_fpu (x87/SSE state); opaque except for the documented offsets. */
  getFpu(): Uint8Array {
    const b = new Uint8Array(U.SIZEOF_kvm_fpu);
    this.native.ioctl(this.fd, U.KVM_GET_FPU, b);
    return b;
  }

  setFpu(b: Uint8Array): void {
    if (b.byteLength !== U.SIZEOF_kvm_fpu) throw new KvmArgumentError(`kvm_fpu must be ${U.SIZEOF_kvm_fpu} bytes`);
    this.native.ioctl(this.fd, U.KVM_SET_FPU, b);
  }

  /** Sets the architectural reset values of FCW (0x37f) and MXCSR (0x1f80). */
  initFpu(): void {
    const b = new Uint8Array(U.SIZEOF_kvm_fpu);
    const dv = view(b);
    dv.setUint16(U.OFF_kvm_fpu_fcw, 0x37f, true);
    dv.setUint32(U.OFF_kvm_fpu_mxcsr, 0x1f80, true);
    this.setFpu(b);
  }

  /** The LAPIC register page (1 KiB, as KVM_GET_LAPIC returns it). */
  getLapic(): Uint8Array {
    const b = new Uint8Array(U.SIZEOF_kvm_lapic_state);
    this.native.ioctl(this.fd, U.KVM_GET_LAPIC, b);
    return b;
  }

  setLapic(b: Uint8Array): void {
    if (b.byteLength !== U.SIZEOF_kvm_lapic_state) throw new KvmArgumentError(`kvm_lapic_state must be ${U.SIZEOF_kvm_lapic_state} bytes`);
    this.native.ioctl(this.fd, U.KVM_SET_LAPIC, b);
  }

  /** KVM_GET_XSAVE: the legacy 4 KiB XSAVE area (needs KVM_CAP_XSAVE). */
  getXsave(): Uint8Array {
    const b = new Uint8Array(U.SIZEOF_kvm_xsave);
    this.native.ioctl(this.fd, U.KVM_GET_XSAVE, b);
    return b;
  }

  setXsave(b: Uint8Array): void {
    if (b.byteLength !== U.SIZEOF_kvm_xsave) throw new KvmArgumentError(`kvm_xsave must be ${U.SIZEOF_kvm_xsave} bytes`);
    this.native.ioctl(this.fd, U.KVM_SET_XSAVE, b);
  }

  /** KVM_GET_XCRS: extended control registers (XCR0), raw kvm_xcrs (needs KVM_CAP_XCRS). */
  getXcrs(): Uint8Array {
    const b = new Uint8Array(U.SIZEOF_kvm_xcrs);
    this.native.ioctl(this.fd, U.KVM_GET_XCRS, b);
    return b;
  }

  setXcrs(b: Uint8Array): void {
    if (b.byteLength !== U.SIZEOF_kvm_xcrs) throw new KvmArgumentError(`kvm_xcrs must be ${U.SIZEOF_kvm_xcrs} bytes`);
    this.native.ioctl(this.fd, U.KVM_SET_XCRS, b);
  }

  /** KVM_GET_VCPU_EVENTS: pending exception, interrupt, NMI, SIPI vector, interrupt shadow (raw kvm_vcpu_events). */
  getVcpuEvents(): Uint8Array {
    const b = new Uint8Array(U.SIZEOF_kvm_vcpu_events);
    this.native.ioctl(this.fd, U.KVM_GET_VCPU_EVENTS, b);
    return b;
  }

  /** KVM_SET_VCPU_EVENTS; `flags` says which optional fields are valid (NMI pending, SIPI vector, shadow). */
  setVcpuEvents(b: Uint8Array, flags: number): void {
    if (b.byteLength !== U.SIZEOF_kvm_vcpu_events) throw new KvmArgumentError(`kvm_vcpu_events must be ${U.SIZEOF_kvm_vcpu_events} bytes`);
    const c = b.slice();
    view(c).setUint32(U.OFF_kvm_vcpu_events_flags, checkU32('events flags', flags), true);
    this.native.ioctl(this.fd, U.KVM_SET_VCPU_EVENTS, c);
  }

  /** KVM_GET_TSC_KHZ: the guest TSC frequency. */
  getTscKhz(): number {
    return this.native.ioctl(this.fd, U.KVM_GET_TSC_KHZ);
  }

  getMsrs(indices: readonly number[]): MsrEntry[] {
    indices.forEach((i) => checkU32('msr index', i));
    const b = encodeMsrs(indices.map((index) => ({ index, data: 0n })));
    const n = this.native.ioctl(this.fd, U.KVM_GET_MSRS, b);
    return decodeMsrs(b, n);
  }

  /** Sets MSRs; throws naming the first one KVM refused. */
  setMsrs(entries: readonly MsrEntry[]): void {
    entries.forEach((e) => {
      checkU32('msr index', e.index);
      checkU64('msr data', e.data);
    });
    const n = this.native.ioctl(this.fd, U.KVM_SET_MSRS, encodeMsrs(entries));
    if (n !== entries.length) throw new Error(`KVM refused MSR 0x${entries[n].index.toString(16)}`);
  }

  setCpuid(entries: readonly CpuidEntry[]): void {
    this.native.ioctl(this.fd, U.KVM_SET_CPUID2, encodeCpuid2(entries));
  }

  getMpState(): number {
    const b = new Uint8Array(4);
    this.native.ioctl(this.fd, U.KVM_GET_MP_STATE, b);
    return view(b).getUint32(0, true);
  }

  setMpState(state: number): void {
    const b = new Uint8Array(4);
    view(b).setUint32(0, checkU32('mp state', state), true);
    this.native.ioctl(this.fd, U.KVM_SET_MP_STATE, b);
  }

  /** KVM_TRANSLATE: guest-virtual to guest-physical with the vCPU's current page tables. */
  translate(linear: bigint): { physical: bigint; valid: boolean } {
    const b = new Uint8Array(U.SIZEOF_kvm_translation);
    const dv = view(b);
    dv.setBigUint64(U.OFF_kvm_translation_linear_address, checkU64('linear address', linear), true);
    this.native.ioctl(this.fd, U.KVM_TRANSLATE, b);
    return {
      physical: dv.getBigUint64(U.OFF_kvm_translation_physical_address, true),
      valid: dv.getUint8(U.OFF_kvm_translation_valid) !== 0,
    };
  }

  /**
   * Starts the vCPU thread. `onExit` runs on the JS thread for each IO/MMIO (or
   * other) exit while the vCPU thread waits; it returns what the thread does next.
   * Faults (internal error, triple fault, entry failure, unhandled exits) are
   * turned into a VcpuFaultError passed to `onFault`, and the vCPU stops.
   */
  start(handlers: { onExit: (run: KvmRun) => VcpuAction; onFault: (err: VcpuFaultError) => void }): void {
    if (this.thread) throw new Error(`vCPU ${this.id} already started`);
    const run = this.run;
    this.thread = new this.native.VcpuThread(
      this.fd,
      run.buffer,
      (reason) => {
        if (reason === U.KVM_EXIT_IO || reason === U.KVM_EXIT_MMIO) return handlers.onExit(run);
        const fault = this.faultFor(reason);
        if (fault) {
          this.fault = this.describeFault(fault);
          handlers.onFault(this.fault);
          return VcpuAction.Stop;
        }
        return handlers.onExit(run);
      },
      (state, errno, error) => {
        if (state === 'error') {
          if (error !== undefined) {
            this.fault = new VcpuFaultError(this.id, { kind: 'run-error', errno }, undefined, undefined);
            handlers.onFault(this.fault);
            return;
          }
          this.fault = this.describeFault({ kind: 'run-error', errno });
          handlers.onFault(this.fault);
          return;
        }
        if (state === 'paused') this.onPaused(errno >>> 0);
        this.setState(state);
      },
    );
    this._state = 'running';
    this.thread.start();
  }

  private faultFor(reason: number): VcpuFault | undefined {
    const run = this.run;
    switch (reason) {
      case U.KVM_EXIT_INTERNAL_ERROR:
        return {
          kind: 'internal-error',
          suberror: run.internalSuberror,
          suberrorName: INTERNAL_ERROR_NAMES[run.internalSuberror] ?? `suberror ${run.internalSuberror}`,
          data: run.internalData,
        };
      case U.KVM_EXIT_SHUTDOWN:
        return { kind: 'shutdown' };
      case U.KVM_EXIT_FAIL_ENTRY:
        return { kind: 'fail-entry', hardwareEntryFailureReason: run.failEntryReason, cpu: run.failEntryCpu };
      case U.KVM_EXIT_SYSTEM_EVENT:
      case U.KVM_EXIT_HLT:
        return undefined; // the machine decides (reset, power-off, halt)
      default:
        return { kind: 'unhandled-exit', exitReason: reason, exitName: EXIT_NAMES[reason] ?? 'unknown' };
    }
  }

  /** Adds RIP and the instruction bytes (from KVM's report, or read through the guest's page tables). */
  private describeFault(fault: VcpuFault): VcpuFaultError {
    let rip: bigint | undefined;
    let bytes: Uint8Array | undefined = fault.kind === 'internal-error' ? this.run.emulationFailureBytes : undefined;
    try {
      const regs = this.getRegs();
      const sregs = this.getSregs();
      rip = regs.rip;
      if (!bytes) {
        const linear = sregs.cs.base + regs.rip;
        const t = sregs.cr0 & 0x80000000n ? this.translate(linear) : { physical: linear, valid: true };
        if (t.valid) bytes = this.vm.readPhysical(t.physical, 15) ?? this.vm.readPhysical(t.physical, 1);
      }
    } catch {
      // registers unreadable: report what we have
    }
    return new VcpuFaultError(this.id, fault, rip, bytes);
  }

  get lastFault(): VcpuFaultError | undefined {
    return this.fault;
  }

  /**
   * Asks the thread to leave KVM_RUN and wait; resolves once it has
   * acknowledged this request (or a resume overtook it, or the thread stopped).
   */
  pause(): Promise<void> {
    if (!this.thread || this._state === 'stopped') return Promise.resolve();
    if (this.wanted === 'pause') {
      if (this.pausedGen === this.gen) return Promise.resolve();
      return this.waitForPause(this.gen);
    }
    this.wanted = 'pause';
    const gen = (this.gen = (this.gen + 1) >>> 0);
    const p = this.waitForPause(gen);
    this.thread.pause(gen);
    return p;
  }

  resume(): void {
    if (!this.thread || this._state === 'stopped' || this.wanted === 'run') return;
    this.wanted = 'run';
    this.gen = (this.gen + 1) >>> 0;
    this.thread.resume(this.gen);
    // Pauses still waiting were overtaken by this resume: they end now.
    const overtaken = this.pauseWaiters;
    this.pauseWaiters = [];
    overtaken.forEach((w) => w.resolve());
  }

  /** True while the latest request is a pause and the thread has acknowledged it. */
  get pauseAcknowledged(): boolean {
    return this.wanted === 'pause' && this.pausedGen === this.gen;
  }

  private waitForPause(gen: number): Promise<void> {
    return new Promise((resolve) => this.pauseWaiters.push({ gen, resolve }));
  }

  private onPaused(gen: number): void {
    this.pausedGen = gen;
    if (gen !== this.gen) return; // a late answer to an overtaken request
    if (this.wanted === 'run') this.wanted = 'pause'; // the exit handler paused it (VcpuAction.Pause)
    const done = this.pauseWaiters.filter((w) => w.gen === gen);
    this.pauseWaiters = this.pauseWaiters.filter((w) => w.gen !== gen);
    done.forEach((w) => w.resolve());
  }

  /** Stops the thread; resolves once it has left KVM_RUN for good. */
  stop(): Promise<void> {
    if (!this.thread || this._state === 'stopped') return Promise.resolve();
    const p = this.waitFor('stopped');
    this.thread.stop();
    return p;
  }

  /** Resolves when the thread has stopped (for any reason). */
  whenStopped(): Promise<void> {
    if (!this.thread || this._state === 'stopped') return Promise.resolve();
    return this.waitFor('stopped');
  }

  private waitFor(state: VcpuState): Promise<void> {
    return new Promise((resolve) => this.waiters.push({ state, resolve }));
  }

  private setState(state: VcpuState): void {
    this._state = state;
    if (state === 'stopped') {
      const all = this.pauseWaiters;
      this.pauseWaiters = [];
      all.forEach((w) => w.resolve());
    }
    const ready = this.waiters.filter((w) => w.state === state || state === 'stopped');
    this.waiters = this.waiters.filter((w) => !ready.includes(w));
    ready.forEach((w) => w.resolve());
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.thread?.stop();
    this.native.close(this.fd);
  }
}
