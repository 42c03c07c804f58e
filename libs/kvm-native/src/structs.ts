/**
 * Encoders and decoders for the KVM structs the facade passes by pointer.
 * Offsets and sizes come from the generated UAPI file, never typed by hand.
 */
import * as U from './generated/kvm-uapi';

export interface Regs {
  rax: bigint;
  rbx: bigint;
  rcx: bigint;
  rdx: bigint;
  rsi: bigint;
  rdi: bigint;
  rsp: bigint;
  rbp: bigint;
  r8: bigint;
  r9: bigint;
  r10: bigint;
  r11: bigint;
  r12: bigint;
  r13: bigint;
  r14: bigint;
  r15: bigint;
  rip: bigint;
  rflags: bigint;
}

/** kvm_regs field order (18 u64s). */
export const REG_NAMES: readonly (keyof Regs)[] = [
  'rax',
  'rbx',
  'rcx',
  'rdx',
  'rsi',
  'rdi',
  'rsp',
  'rbp',
  'r8',
  'r9',
  'r10',
  'r11',
  'r12',
  'r13',
  'r14',
  'r15',
  'rip',
  'rflags',
];

export function decodeRegs(b: Uint8Array): Regs {
  const dv = view(b);
  const r = {} as Regs;
  REG_NAMES.forEach((n, i) => (r[n] = dv.getBigUint64(i * 8, true)));
  return r;
}

export function encodeRegs(r: Regs): Uint8Array {
  const b = new Uint8Array(U.SIZEOF_kvm_regs);
  const dv = view(b);
  REG_NAMES.forEach((n, i) => dv.setBigUint64(i * 8, BigInt.asUintN(64, r[n]), true));
  return b;
}

export interface Segment {
  base: bigint;
  limit: number;
  selector: number;
  type: number;
  present: number;
  dpl: number;
  db: number;
  s: number;
  l: number;
  g: number;
  avl: number;
  unusable: number;
}

export interface DescriptorTable {
  base: bigint;
  limit: number;
}

export interface Sregs {
  cs: Segment;
  ds: Segment;
  es: Segment;
  fs: Segment;
  gs: Segment;
  ss: Segment;
  tr: Segment;
  ldt: Segment;
  gdt: DescriptorTable;
  idt: DescriptorTable;
  cr0: bigint;
  cr2: bigint;
  cr3: bigint;
  cr4: bigint;
  cr8: bigint;
  efer: bigint;
  apicBase: bigint;
  interruptBitmap: bigint[];
}

const SEGMENTS = [
  ['cs', U.OFF_kvm_sregs_cs],
  ['ds', U.OFF_kvm_sregs_ds],
  ['es', U.OFF_kvm_sregs_es],
  ['fs', U.OFF_kvm_sregs_fs],
  ['gs', U.OFF_kvm_sregs_gs],
  ['ss', U.OFF_kvm_sregs_ss],
  ['tr', U.OFF_kvm_sregs_tr],
  ['ldt', U.OFF_kvm_sregs_ldt],
] as const;

const CONTROL = [
  ['cr0', U.OFF_kvm_sregs_cr0],
  ['cr2', U.OFF_kvm_sregs_cr2],
  ['cr3', U.OFF_kvm_sregs_cr3],
  ['cr4', U.OFF_kvm_sregs_cr4],
  ['cr8', U.OFF_kvm_sregs_cr8],
  ['efer', U.OFF_kvm_sregs_efer],
  ['apicBase', U.OFF_kvm_sregs_apic_base],
] as const;

function decodeSegment(dv: DataView, o: number): Segment {
  return {
    base: dv.getBigUint64(o + U.OFF_kvm_segment_base, true),
    limit: dv.getUint32(o + U.OFF_kvm_segment_limit, true),
    selector: dv.getUint16(o + U.OFF_kvm_segment_selector, true),
    type: dv.getUint8(o + U.OFF_kvm_segment_type),
    present: dv.getUint8(o + U.OFF_kvm_segment_present),
    dpl: dv.getUint8(o + U.OFF_kvm_segment_dpl),
    db: dv.getUint8(o + U.OFF_kvm_segment_db),
    s: dv.getUint8(o + U.OFF_kvm_segment_s),
    l: dv.getUint8(o + U.OFF_kvm_segment_l),
    g: dv.getUint8(o + U.OFF_kvm_segment_g),
    avl: dv.getUint8(o + U.OFF_kvm_segment_avl),
    unusable: dv.getUint8(o + U.OFF_kvm_segment_unusable),
  };
}

function encodeSegment(dv: DataView, o: number, s: Segment): void {
  dv.setBigUint64(o + U.OFF_kvm_segment_base, BigInt.asUintN(64, s.base), true);
  dv.setUint32(o + U.OFF_kvm_segment_limit, s.limit >>> 0, true);
  dv.setUint16(o + U.OFF_kvm_segment_selector, s.selector, true);
  dv.setUint8(o + U.OFF_kvm_segment_type, s.type);
  dv.setUint8(o + U.OFF_kvm_segment_present, s.present);
  dv.setUint8(o + U.OFF_kvm_segment_dpl, s.dpl);
  dv.setUint8(o + U.OFF_kvm_segment_db, s.db);
  dv.setUint8(o + U.OFF_kvm_segment_s, s.s);
  dv.setUint8(o + U.OFF_kvm_segment_l, s.l);
  dv.setUint8(o + U.OFF_kvm_segment_g, s.g);
  dv.setUint8(o + U.OFF_kvm_segment_avl, s.avl);
  dv.setUint8(o + U.OFF_kvm_segment_unusable, s.unusable);
}

export function decodeSregs(b: Uint8Array): Sregs {
  const dv = view(b);
  const r = {} as Sregs;
  for (const [n, o] of SEGMENTS) r[n] = decodeSegment(dv, o);
  r.gdt = { base: dv.getBigUint64(U.OFF_kvm_sregs_gdt, true), limit: dv.getUint16(U.OFF_kvm_sregs_gdt + 8, true) };
  r.idt = { base: dv.getBigUint64(U.OFF_kvm_sregs_idt, true), limit: dv.getUint16(U.OFF_kvm_sregs_idt + 8, true) };
  for (const [n, o] of CONTROL) r[n] = dv.getBigUint64(o, true);
  r.interruptBitmap = [0, 1, 2, 3].map((i) => dv.getBigUint64(U.OFF_kvm_sregs_interrupt_bitmap + i * 8, true));
  return r;
}

export function encodeSregs(s: Sregs): Uint8Array {
  const b = new Uint8Array(U.SIZEOF_kvm_sregs);
  const dv = view(b);
  for (const [n, o] of SEGMENTS) encodeSegment(dv, o, s[n]);
  dv.setBigUint64(U.OFF_kvm_sregs_gdt, s.gdt.base, true);
  dv.setUint16(U.OFF_kvm_sregs_gdt + 8, s.gdt.limit, true);
  dv.setBigUint64(U.OFF_kvm_sregs_idt, s.idt.base, true);
  dv.setUint16(U.OFF_kvm_sregs_idt + 8, s.idt.limit, true);
  for (const [n, o] of CONTROL) dv.setBigUint64(o, BigInt.asUintN(64, s[n]), true);
  s.interruptBitmap.forEach((v, i) => dv.setBigUint64(U.OFF_kvm_sregs_interrupt_bitmap + i * 8, v, true));
  return b;
}

export interface CpuidEntry {
  function: number;
  index: number;
  flags: number;
  eax: number;
  ebx: number;
  ecx: number;
  edx: number;
}

export function decodeCpuid2(b: Uint8Array): CpuidEntry[] {
  const dv = view(b);
  const n = dv.getUint32(0, true);
  const out: CpuidEntry[] = [];
  for (let i = 0; i < n; i++) {
    const o = U.OFF_kvm_cpuid2_entries + i * U.SIZEOF_kvm_cpuid_entry2;
    out.push({
      function: dv.getUint32(o + U.OFF_kvm_cpuid_entry2_function, true),
      index: dv.getUint32(o + U.OFF_kvm_cpuid_entry2_index, true),
      flags: dv.getUint32(o + U.OFF_kvm_cpuid_entry2_flags, true),
      eax: dv.getUint32(o + U.OFF_kvm_cpuid_entry2_eax, true),
      ebx: dv.getUint32(o + U.OFF_kvm_cpuid_entry2_ebx, true),
      ecx: dv.getUint32(o + U.OFF_kvm_cpuid_entry2_ecx, true),
      edx: dv.getUint32(o + U.OFF_kvm_cpuid_entry2_edx, true),
    });
  }
  return out;
}

export function encodeCpuid2(entries: readonly CpuidEntry[]): Uint8Array {
  const b = new Uint8Array(U.OFF_kvm_cpuid2_entries + entries.length * U.SIZEOF_kvm_cpuid_entry2);
  const dv = view(b);
  dv.setUint32(0, entries.length, true);
  entries.forEach((e, i) => {
    const o = U.OFF_kvm_cpuid2_entries + i * U.SIZEOF_kvm_cpuid_entry2;
    dv.setUint32(o + U.OFF_kvm_cpuid_entry2_function, e.function >>> 0, true);
    dv.setUint32(o + U.OFF_kvm_cpuid_entry2_index, e.index >>> 0, true);
    dv.setUint32(o + U.OFF_kvm_cpuid_entry2_flags, e.flags >>> 0, true);
    dv.setUint32(o + U.OFF_kvm_cpuid_entry2_eax, e.eax >>> 0, true);
    dv.setUint32(o + U.OFF_kvm_cpuid_entry2_ebx, e.ebx >>> 0, true);
    dv.setUint32(o + U.OFF_kvm_cpuid_entry2_ecx, e.ecx >>> 0, true);
    dv.setUint32(o + U.OFF_kvm_cpuid_entry2_edx, e.edx >>> 0, true);
  });
  return b;
}

export interface MsrEntry {
  index: number;
  data: bigint;
}

export function encodeMsrs(entries: readonly MsrEntry[]): Uint8Array {
  const b = new Uint8Array(U.OFF_kvm_msrs_entries + entries.length * U.SIZEOF_kvm_msr_entry);
  const dv = view(b);
  dv.setUint32(0, entries.length, true);
  entries.forEach((e, i) => {
    const o = U.OFF_kvm_msrs_entries + i * U.SIZEOF_kvm_msr_entry;
    dv.setUint32(o + U.OFF_kvm_msr_entry_index, e.index >>> 0, true);
    dv.setBigUint64(o + U.OFF_kvm_msr_entry_data, BigInt.asUintN(64, e.data), true);
  });
  return b;
}

export function decodeMsrs(b: Uint8Array, count: number): MsrEntry[] {
  const dv = view(b);
  const out: MsrEntry[] = [];
  for (let i = 0; i < count; i++) {
    const o = U.OFF_kvm_msrs_entries + i * U.SIZEOF_kvm_msr_entry;
    out.push({
      index: dv.getUint32(o + U.OFF_kvm_msr_entry_index, true),
      data: dv.getBigUint64(o + U.OFF_kvm_msr_entry_data, true),
    });
  }
  return out;
}

/** A GSI route: an MSI message or a pin of the in-kernel irqchip. */
export type GsiRoute =
  | { gsi: number; type: 'msi'; addressLo: number; addressHi: number; data: number }
  | { gsi: number; type: 'irqchip'; irqchip: number; pin: number };

export function encodeGsiRouting(routes: readonly GsiRoute[]): Uint8Array {
  const b = new Uint8Array(U.OFF_kvm_irq_routing_entries + routes.length * U.SIZEOF_kvm_irq_routing_entry);
  const dv = view(b);
  dv.setUint32(0, routes.length, true);
  routes.forEach((r, i) => {
    const o = U.OFF_kvm_irq_routing_entries + i * U.SIZEOF_kvm_irq_routing_entry;
    dv.setUint32(o + U.OFF_kvm_irq_routing_entry_gsi, r.gsi, true);
    if (r.type === 'msi') {
      dv.setUint32(o + U.OFF_kvm_irq_routing_entry_type, U.KVM_IRQ_ROUTING_MSI, true);
      dv.setUint32(o + U.OFF_kvm_irq_routing_entry_msi_address_lo, r.addressLo >>> 0, true);
      dv.setUint32(o + U.OFF_kvm_irq_routing_entry_msi_address_hi, r.addressHi >>> 0, true);
      dv.setUint32(o + U.OFF_kvm_irq_routing_entry_msi_data, r.data >>> 0, true);
    } else {
      dv.setUint32(o + U.OFF_kvm_irq_routing_entry_type, U.KVM_IRQ_ROUTING_IRQCHIP, true);
      dv.setUint32(o + U.OFF_kvm_irq_routing_entry_irqchip_irqchip, r.irqchip, true);
      dv.setUint32(o + U.OFF_kvm_irq_routing_entry_irqchip_pin, r.pin, true);
    }
  });
  return b;
}

export function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}
