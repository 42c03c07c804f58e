/**
 * The guest-physical memory map and where the loaders put boot structures.
 *
 *   0x0000_0500  GDT
 *   0x0000_6000  PVH hvm_start_info, memory map, module list
 *   0x0000_7000  Linux boot_params ("zero page")
 *   0x0000_9000  identity page tables (PML4, PDPT, 4 PDs of 2 MiB pages: first 4 GiB)
 *   0x0002_0000  kernel command line
 *   0x0009_fc00  reserved (EBDA)            \ e820 reserved
 *   0x000f_0000  MP floating pointer + table / up to 1 MiB
 *   0x0010_0000  kernel
 *   ...          RAM up to min(memory, 3 GiB); initrd at the top of it
 *   0xc000_0000  32-bit PCI MMIO window (BARs)
 *   0xfe00_0000  project test MMIO (guest-kit echo/ioeventfd tests)
 *   0xfec0_0000  IOAPIC
 *   0xfee0_0000  LAPIC
 *   0xfeff_c000  KVM identity map + TSS pages (reserved)
 *   4 GiB        RAM above the hole, if memory > 3 GiB (to 68 GiB at --memory 64G)
 *   512 GiB      64-bit PCI MMIO window
 *
 * Each RAM region is one KVM memory slot backed by one memfd; JS sees it as
 * 1 GiB buffers (kvm-native guest-ram.ts), which GuestMemory joins again.
 */
export const GDT_ADDR = 0x500;
export const PVH_START_INFO_ADDR = 0x6000;
export const PVH_MEMMAP_ADDR = 0x6100;
export const PVH_MODLIST_ADDR = 0x6800;
export const ZERO_PAGE_ADDR = 0x7000;
export const BOOT_STACK_TOP = 0x8ff0;
export const PML4_ADDR = 0x9000;
export const PDPT_ADDR = 0xa000;
export const PD_ADDR = 0xb000; // four pages: 0xb000-0xefff
export const CMDLINE_ADDR = 0x20000;
export const CMDLINE_MAX = 0x10000;
export const EBDA_START = 0x9fc00;
export const MPTABLE_START = 0xf0000;
export const BIOS_END = 0x100000;
export const KERNEL_LOAD_ADDR = 0x100000;

export const LOW_RAM_LIMIT = 0xc000_0000;
export const PCI_MMIO32_BASE = 0xc000_0000;
export const PCI_MMIO32_SIZE = 0x3e00_0000; // up to 0xfe00_0000
export const TEST_MMIO_BASE = 0xfe00_0000;
export const IOAPIC_ADDR = 0xfec0_0000;
export const LAPIC_ADDR = 0xfee0_0000;
export const KVM_IDENTITY_MAP_ADDR = 0xfeff_c000;
export const KVM_TSS_ADDR = 0xfeff_d000;
export const HIGH_RAM_START = 0x1_0000_0000;
/** 64-bit PCI MMIO window (for 64-bit BARs): at 512 GiB, 64 GiB long. */
export const PCI_MMIO64_BASE = 0x80_0000_0000;
export const PCI_MMIO64_SIZE = 0x10_0000_0000;

export const E820_RAM = 1;
export const E820_RESERVED = 2;

export interface E820Entry {
  addr: number;
  size: number;
  type: number;
}

export interface RamLayout {
  /** RAM regions as KVM memory slots. */
  regions: { slot: number; guestPhysAddr: number; size: number }[];
  lowRamEnd: number;
  e820: E820Entry[];
}

export function ramLayout(memoryBytes: number): RamLayout {
  const low = Math.min(memoryBytes, LOW_RAM_LIMIT);
  const high = memoryBytes - low;
  if (HIGH_RAM_START + high > PCI_MMIO64_BASE)
    throw new RangeError(`${memoryBytes} bytes of RAM would run into the 64-bit PCI MMIO window at 0x${PCI_MMIO64_BASE.toString(16)}`);
  const regions = [{ slot: 0, guestPhysAddr: 0, size: low }];
  if (high > 0) regions.push({ slot: 1, guestPhysAddr: HIGH_RAM_START, size: high });
  const e820: E820Entry[] = [
    { addr: 0, size: EBDA_START, type: E820_RAM },
    { addr: EBDA_START, size: 0xa0000 - EBDA_START, type: E820_RESERVED },
    { addr: MPTABLE_START, size: BIOS_END - MPTABLE_START, type: E820_RESERVED },
    { addr: BIOS_END, size: low - BIOS_END, type: E820_RAM },
    // KVM's identity-map page and the 3-page TSS it needs for real mode on VMX
    { addr: KVM_IDENTITY_MAP_ADDR, size: 0x4000, type: E820_RESERVED },
  ];
  if (high > 0) e820.push({ addr: HIGH_RAM_START, size: high, type: E820_RAM });
  return { regions, lowRamEnd: low, e820 };
}
