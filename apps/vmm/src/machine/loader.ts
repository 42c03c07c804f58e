/**
 * Kernel loaders: a Linux bzImage through the 64-bit boot protocol, and a PVH
 * ELF (Xen's hvm_start_info). Each writes the kernel, command line, initrd and
 * boot structures into guest RAM and says how to start the boot vCPU.
 */
import { GuestMemory } from '@tsvmm/virtio-core';
import { isElf, KernelImageError, parseElf } from './elf';
import {
  BIOS_END,
  CMDLINE_ADDR,
  CMDLINE_MAX,
  E820Entry,
  KERNEL_LOAD_ADDR,
  PVH_MEMMAP_ADDR,
  PVH_MODLIST_ADDR,
  PVH_START_INFO_ADDR,
  ZERO_PAGE_ADDR,
} from './layout';

export { KernelImageError };

/** How the boot vCPU starts. */
export type BootEntry = { mode: 'linux64'; rip: number; bootParams: number } | { mode: 'pvh'; rip: number; startInfo: number };

export interface LoadRequest {
  kernel: Uint8Array;
  kernelPath: string;
  initrd?: Uint8Array;
  cmdline: string;
  memory: GuestMemory;
  lowRamEnd: number;
  e820: E820Entry[];
}

export type KernelFormat = 'bzimage' | 'pvh-elf';

export function detectKernelFormat(path: string, b: Uint8Array): KernelFormat {
  if (isElf(b)) return 'pvh-elf';
  if (b.length >= 0x206 && b[0x1fe] === 0x55 && b[0x1ff] === 0xaa && Buffer.from(b.subarray(0x202, 0x206)).toString('latin1') === 'HdrS')
    return 'bzimage';
  throw new KernelImageError(`${path}: not a valid kernel: not a bzImage (no "HdrS" setup header) nor an ELF kernel`);
}

export function loadKernel(req: LoadRequest): BootEntry {
  return detectKernelFormat(req.kernelPath, req.kernel) === 'bzimage' ? loadBzImage(req) : loadPvh(req);
}

function writeCmdline(req: LoadRequest, max: number): number {
  const bytes = Buffer.from(req.cmdline + '\0', 'latin1');
  if (bytes.length > Math.min(max, CMDLINE_MAX))
    throw new KernelImageError(
      `--cmdline: ${bytes.length - 1} bytes is longer than the kernel accepts (${Math.min(max, CMDLINE_MAX) - 1})`,
    );
  req.memory.write(CMDLINE_ADDR, bytes);
  return CMDLINE_ADDR;
}

/** Puts the initrd at the top of low RAM (page aligned), below `maxAddr`. */
function placeInitrd(req: LoadRequest, kernelEnd: number, maxAddr: number): { addr: number; size: number } | undefined {
  if (!req.initrd) return undefined;
  const size = req.initrd.length;
  const top = Math.min(req.lowRamEnd, maxAddr + 1);
  const addr = Math.floor((top - size) / 4096) * 4096;
  if (addr < kernelEnd) throw new KernelImageError(`--initrd: ${size} bytes do not fit in guest RAM above the kernel (use more --memory)`);
  req.memory.write(addr, req.initrd);
  return { addr, size };
}

// Offsets in the setup header / boot_params (Documentation/arch/x86/boot.rst, zero-page.rst).
const HDR_SETUP_SECTS = 0x1f1;
const HDR_VERSION = 0x206;
const HDR_TYPE_OF_LOADER = 0x210;
const HDR_LOADFLAGS = 0x211;
const HDR_RAMDISK_IMAGE = 0x218;
const HDR_RAMDISK_SIZE = 0x21c;
const HDR_CMD_LINE_PTR = 0x228;
const HDR_INITRD_ADDR_MAX = 0x22c;
const HDR_XLOADFLAGS = 0x236;
const HDR_CMDLINE_SIZE = 0x238;
const HDR_INIT_SIZE = 0x260;
const BP_EXT_RAMDISK_IMAGE = 0x0c0;
const BP_EXT_RAMDISK_SIZE = 0x0c4;
const BP_EXT_CMD_LINE_PTR = 0x0c8;
const BP_E820_ENTRIES = 0x1e8;
const BP_E820_TABLE = 0x2d0;
const E820_MAX_ENTRIES_ZEROPAGE = 128;
const XLF_KERNEL_64 = 1 << 0;
const LOADED_HIGH = 1 << 0;
const KEEP_SEGMENTS = 1 << 6;

/** The setup header of boot protocol 2.12 ends here (after handover_offset); the file must hold it whole. */
const HDR_END_2_12 = 0x268;
/** The 64-bit entry point's offset into the protected-mode kernel. */
const ENTRY_64 = 0x200;

export function loadBzImage(req: LoadRequest): BootEntry {
  const b = req.kernel;
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const path = req.kernelPath;
  const bad = (field: string, why: string) => new KernelImageError(`${path}: not a valid kernel: ${field} ${why}`);
  if (b.length < HDR_VERSION + 2) throw bad('setup header', `is cut short: the file is ${b.length} bytes (truncated bzImage)`);
  const version = dv.getUint16(HDR_VERSION, true);
  if (version < 0x20c)
    throw new KernelImageError(`${path}: boot protocol ${version >> 8}.${version & 0xff} is too old (need 2.12+ for the 64-bit entry)`);
  if (b.length < HDR_END_2_12)
    throw bad(
      'setup header',
      `is cut short: boot protocol 2.12 needs 0x${HDR_END_2_12.toString(16)} bytes, the file is ${b.length} (truncated bzImage)`,
    );
  if (!(dv.getUint16(HDR_XLOADFLAGS, true) & XLF_KERNEL_64))
    throw new KernelImageError(`${path}: bzImage has no 64-bit entry point (XLF_KERNEL_64 is clear)`);
  if (!(b[HDR_LOADFLAGS] & LOADED_HIGH)) throw new KernelImageError(`${path}: bzImage is not loadable at 1 MiB (LOADED_HIGH is clear)`);
  const setupSects = b[HDR_SETUP_SECTS] || 4; // 0 means 4 (boot.rst)
  const payloadOff = (setupSects + 1) * 512;
  if (payloadOff + ENTRY_64 >= b.length)
    throw bad(
      'setup_sects',
      `${setupSects} puts the kernel at 0x${payloadOff.toString(16)}, but the file is ${b.length} bytes (truncated bzImage: no 64-bit entry)`,
    );
  const payload = b.subarray(payloadOff);
  const initSize = dv.getUint32(HDR_INIT_SIZE, true);
  const kernelEnd = KERNEL_LOAD_ADDR + Math.max(payload.length, initSize);
  if (kernelEnd > req.lowRamEnd)
    throw new KernelImageError(`${path}: the kernel needs ${kernelEnd - KERNEL_LOAD_ADDR} bytes from 1 MiB; give the guest more --memory`);
  req.memory.write(KERNEL_LOAD_ADDR, payload);

  // boot_params: zeroed, then the image's setup header copied to the same offsets.
  const zp = req.memory.slice(ZERO_PAGE_ADDR, 4096);
  zp.fill(0);
  // The header ends where its jump (at 0x200) lands; never past the setup code or the zero page.
  const hdrEnd = Math.max(HDR_END_2_12, Math.min(0x202 + b[0x201], payloadOff, 4096));
  zp.set(b.subarray(HDR_SETUP_SECTS, hdrEnd), HDR_SETUP_SECTS);
  const zdv = new DataView(zp.buffer, zp.byteOffset, 4096);
  zp[HDR_TYPE_OF_LOADER] = 0xff; // undefined boot loader
  zp[HDR_LOADFLAGS] = (zp[HDR_LOADFLAGS] | LOADED_HIGH) & ~KEEP_SEGMENTS;

  const cmdlineSize = dv.getUint32(HDR_CMDLINE_SIZE, true) + 1;
  const cmd = writeCmdline(req, cmdlineSize);
  zdv.setUint32(HDR_CMD_LINE_PTR, cmd, true);
  zdv.setUint32(BP_EXT_CMD_LINE_PTR, 0, true);

  const maxInitrd = dv.getUint32(HDR_INITRD_ADDR_MAX, true) || 0x37ffffff;
  const rd = placeInitrd(req, kernelEnd, maxInitrd);
  if (rd) {
    zdv.setUint32(HDR_RAMDISK_IMAGE, rd.addr >>> 0, true);
    zdv.setUint32(HDR_RAMDISK_SIZE, rd.size >>> 0, true);
    zdv.setUint32(BP_EXT_RAMDISK_IMAGE, Math.floor(rd.addr / 2 ** 32), true);
    zdv.setUint32(BP_EXT_RAMDISK_SIZE, Math.floor(rd.size / 2 ** 32), true);
  }

  const e820 = req.e820.slice(0, E820_MAX_ENTRIES_ZEROPAGE);
  zp[BP_E820_ENTRIES] = e820.length;
  e820.forEach((e, i) => {
    const o = BP_E820_TABLE + i * 20;
    zdv.setBigUint64(o, BigInt(e.addr), true);
    zdv.setBigUint64(o + 8, BigInt(e.size), true);
    zdv.setUint32(o + 16, e.type, true);
  });
  // The 64-bit entry point is 0x200 bytes into the protected-mode kernel.
  return { mode: 'linux64', rip: KERNEL_LOAD_ADDR + ENTRY_64, bootParams: ZERO_PAGE_ADDR };
}

const XEN_ELFNOTE_PHYS32_ENTRY = 18;
const HVM_START_MAGIC = 0x336ec578;

export function loadPvh(req: LoadRequest): BootEntry {
  const path = req.kernelPath;
  const elf = parseElf(path, req.kernel);
  const note = elf.notes.find((n) => n.name === 'Xen' && n.type === XEN_ELFNOTE_PHYS32_ENTRY);
  if (!note)
    throw new KernelImageError(`${path}: ELF has no PVH entry note (Xen note XEN_ELFNOTE_PHYS32_ENTRY); build the kernel with PVH support`);
  if (note.desc.length !== 4 && note.desc.length !== 8)
    throw new KernelImageError(`${path}: not a valid kernel: XEN_ELFNOTE_PHYS32_ENTRY n_descsz ${note.desc.length} is not 4 or 8`);
  const ndv = new DataView(note.desc.buffer, note.desc.byteOffset, note.desc.byteLength);
  const entry = note.desc.length === 8 ? Number(ndv.getBigUint64(0, true)) : ndv.getUint32(0, true);
  let kernelEnd = BIOS_END;
  for (const s of elf.segments) {
    if (s.paddr < BIOS_END)
      throw new KernelImageError(`${path}: segment at 0x${s.paddr.toString(16)} is below 1 MiB (the VMM's boot area)`);
    if (s.paddr + s.memsz > req.lowRamEnd)
      throw new KernelImageError(
        `${path}: segment at 0x${s.paddr.toString(16)} (+0x${s.memsz.toString(16)}) is beyond guest RAM; give the guest more --memory`,
      );
    req.memory.write(s.paddr, req.kernel.subarray(s.offset, s.offset + s.filesz));
    req.memory.fill(s.paddr + s.filesz, s.memsz - s.filesz, 0);
    kernelEnd = Math.max(kernelEnd, s.paddr + s.memsz);
  }
  if (entry < BIOS_END || entry >= kernelEnd)
    throw new KernelImageError(`${path}: PVH entry 0x${entry.toString(16)} is outside the loaded image`);

  const cmd = writeCmdline(req, CMDLINE_MAX);
  const rd = placeInitrd(req, kernelEnd, 0xffffffff);

  const si = req.memory.slice(PVH_START_INFO_ADDR, 56);
  si.fill(0);
  const sdv = new DataView(si.buffer, si.byteOffset, 56);
  sdv.setUint32(0, HVM_START_MAGIC, true);
  sdv.setUint32(4, 1, true); // version 1: has the memory map
  sdv.setUint32(12, rd ? 1 : 0, true);
  sdv.setBigUint64(16, BigInt(PVH_MODLIST_ADDR), true);
  sdv.setBigUint64(24, BigInt(cmd), true);
  sdv.setBigUint64(40, BigInt(PVH_MEMMAP_ADDR), true);
  sdv.setUint32(48, req.e820.length, true);
  req.e820.forEach((e, i) => {
    const o = PVH_MEMMAP_ADDR + i * 24;
    req.memory.writeU64(o, BigInt(e.addr));
    req.memory.writeU64(o + 8, BigInt(e.size));
    req.memory.writeU32(o + 16, e.type);
    req.memory.writeU32(o + 20, 0);
  });
  if (rd) {
    req.memory.writeU64(PVH_MODLIST_ADDR, BigInt(rd.addr));
    req.memory.writeU64(PVH_MODLIST_ADDR + 8, BigInt(rd.size));
    req.memory.writeU64(PVH_MODLIST_ADDR + 16, 0n);
    req.memory.writeU64(PVH_MODLIST_ADDR + 24, 0n);
  }
  return { mode: 'pvh', rip: entry, startInfo: PVH_START_INFO_ADDR };
}
