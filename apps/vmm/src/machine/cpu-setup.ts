/** Puts a vCPU into the state a boot protocol promises the kernel. */
import { CpuidEntry, Segment, Vcpu } from '@tsvmm/kvm-native';
import { GuestMemory } from '@tsvmm/virtio-core';
import { BootEntry } from './loader';
import { BOOT_STACK_TOP, GDT_ADDR, PD_ADDR, PDPT_ADDR, PML4_ADDR } from './layout';

const CR0_PE = 1n;
const CR0_ET = 1n << 4n;
const CR0_PG = 1n << 31n;
const CR4_PAE = 1n << 5n;
const EFER_LME = 1n << 8n;
const EFER_LMA = 1n << 10n;

// GDT: 0 null, 1 null, 2 (0x10) code, 3 (0x18) data, as Linux's __BOOT_CS/__BOOT_DS expect.
const CODE_SEL = 0x10;
const DATA_SEL = 0x18;

function gdtEntry(flags: number, base: number, limit: number): bigint {
  return (
    ((BigInt(base) & 0xff000000n) << 32n) |
    (BigInt(flags & 0xf0ff) << 40n) |
    ((BigInt(limit) & 0xf0000n) << 32n) |
    ((BigInt(base) & 0xffffffn) << 16n) |
    (BigInt(limit) & 0xffffn)
  );
}

function segment(sel: number, flags: number): Segment {
  return {
    base: 0n,
    limit: 0xffffffff,
    selector: sel,
    type: flags & 0xf,
    present: (flags >> 7) & 1,
    dpl: (flags >> 5) & 3,
    db: (flags >> 14) & 1,
    s: (flags >> 4) & 1,
    l: (flags >> 13) & 1,
    g: (flags >> 15) & 1,
    avl: 0,
    unusable: 0,
  };
}

/** Identity map of the first 4 GiB with 2 MiB pages (what the 64-bit boot protocol requires). */
function writeIdentityPageTables(mem: GuestMemory): void {
  mem.fill(PML4_ADDR, 0x6000, 0);
  mem.writeU64(PML4_ADDR, BigInt(PDPT_ADDR) | 3n);
  for (let i = 0; i < 4; i++) mem.writeU64(PDPT_ADDR + i * 8, BigInt(PD_ADDR + i * 0x1000) | 3n);
  for (let i = 0; i < 2048; i++) mem.writeU64(PD_ADDR + i * 8, (BigInt(i) << 21n) | 0x83n); // present, rw, 2 MiB
}

export function setupBootVcpu(vcpu: Vcpu, mem: GuestMemory, entry: BootEntry): void {
  const long = entry.mode === 'linux64';
  const codeFlags = long ? 0xa09b : 0xc09b; // present, code r/x accessed; L=1 (64-bit) or D=1 (32-bit); G=1
  const dataFlags = 0xc093;
  mem.writeU64(GDT_ADDR, 0n);
  mem.writeU64(GDT_ADDR + 8, 0n);
  mem.writeU64(GDT_ADDR + CODE_SEL, gdtEntry(codeFlags, 0, 0xfffff));
  mem.writeU64(GDT_ADDR + DATA_SEL, gdtEntry(dataFlags, 0, 0xfffff));

  const s = vcpu.getSregs();
  s.gdt = { base: BigInt(GDT_ADDR), limit: 4 * 8 - 1 };
  s.idt = { base: 0n, limit: 0 };
  s.cs = segment(CODE_SEL, codeFlags);
  s.ds = s.es = s.fs = s.gs = s.ss = segment(DATA_SEL, dataFlags);
  s.tr = { ...segment(0, 0x008b), limit: 0xffff, g: 0 };
  s.ldt = { ...segment(0, 0x0082), limit: 0xffff, g: 0 };
  if (long) {
    writeIdentityPageTables(mem);
    s.cr3 = BigInt(PML4_ADDR);
    s.cr4 = CR4_PAE;
    s.cr0 = CR0_PE | CR0_ET | CR0_PG;
    s.efer = EFER_LME | EFER_LMA;
  } else {
    s.cr0 = CR0_PE | CR0_ET;
    s.cr4 = 0n;
    s.efer = 0n;
  }
  vcpu.setSregs(s);

  const r = vcpu.getRegs();
  for (const k of Object.keys(r) as (keyof typeof r)[]) r[k] = 0n;
  r.rflags = 2n;
  r.rip = BigInt(entry.rip);
  if (entry.mode === 'linux64') {
    r.rsi = BigInt(entry.bootParams);
    r.rsp = BigInt(BOOT_STACK_TOP);
  } else {
    r.rbx = BigInt(entry.startInfo);
  }
  vcpu.setRegs(r);
  vcpu.initFpu();
}

/** KVM's supported CPUID with this vCPU's APIC ID filled in. */
export function cpuidFor(supported: readonly CpuidEntry[], apicId: number, cpus: number): CpuidEntry[] {
  return supported.map((e) => {
    const c = { ...e };
    if (c.function === 1) {
      // EBX[31:24] initial APIC ID, EBX[23:16] logical processor count.
      c.ebx = ((c.ebx & 0x0000ffff) | ((cpus & 0xff) << 16) | ((apicId & 0xff) << 24)) >>> 0;
      c.ecx = (c.ecx | (1 << 31)) >>> 0; // running under a hypervisor
    }
    if (c.function === 0xb || c.function === 0x1f) c.edx = apicId >>> 0; // x2APIC ID
    return c;
  });
}
