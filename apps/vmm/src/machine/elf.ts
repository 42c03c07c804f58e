/**
 * A minimal ELF reader for PVH kernels: headers, PT_LOAD segments and notes.
 *
 * The file is untrusted: every offset and size is checked against the file
 * (as exact integers: 64-bit fields are read as BigInt, note sizes are
 * aligned without 32-bit wrap-around) before it is used, and anything wrong
 * is a KernelImageError "not a valid kernel: <field> ...", never a loop or
 * a RangeError.
 */

export class KernelImageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'KernelImageError';
  }
}

export interface ElfSegment {
  paddr: number;
  offset: number;
  filesz: number;
  memsz: number;
}

export interface ElfNote {
  name: string;
  type: number;
  desc: Uint8Array;
}

export interface ElfImage {
  is64: boolean;
  entry: number;
  segments: ElfSegment[];
  notes: ElfNote[];
}

export const PT_LOAD = 1;
export const PT_NOTE = 4;

/** Addresses and sizes past this are not a kernel for this VMM (and stay exact as JS numbers). */
const MAX_ADDR = 2n ** 52n;

export function isElf(b: Uint8Array): boolean {
  return b.length >= 4 && b[0] === 0x7f && b[1] === 0x45 && b[2] === 0x4c && b[3] === 0x46;
}

const hex = (n: number | bigint) => `0x${n.toString(16)}`;

export function parseElf(what: string, b: Uint8Array): ElfImage {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const bad = (field: string, why: string) => new KernelImageError(`${what}: not a valid kernel: ${field} ${why}`);
  /** [off, off+len) must be inside the file. */
  const need = (field: string, off: bigint | number, len: bigint | number) => {
    const o = BigInt(off);
    const l = BigInt(len);
    if (o < 0n || l < 0n || o + l > BigInt(b.length))
      throw bad(field, `(${hex(l)} bytes at offset ${hex(o)}) runs past the end of the file (${b.length} bytes): truncated ELF`);
  };
  need('ELF header', 0, 52);
  const cls = b[4];
  if (cls !== 1 && cls !== 2) throw bad('e_ident[EI_CLASS]', `${cls} is not ELFCLASS32 or ELFCLASS64`);
  if (b[5] !== 1) throw bad('e_ident[EI_DATA]', `${b[5]} is not little-endian (ELFDATA2LSB)`);
  const is64 = cls === 2;
  const machine = dv.getUint16(18, true);
  if (machine !== 62 && machine !== 3) throw bad('e_machine', `${machine} is not x86 (EM_X86_64 or EM_386)`);
  if (is64) need('ELF64 header', 0, 64);
  /** A 32- or 64-bit field as a BigInt. */
  const word = (off: number) => (is64 ? dv.getBigUint64(off, true) : BigInt(dv.getUint32(off, true)));
  const entry = word(24);
  const phoff = word(is64 ? 32 : 28);
  const phentsize = dv.getUint16(is64 ? 54 : 42, true);
  const phnum = dv.getUint16(is64 ? 56 : 44, true);
  if (phnum === 0) throw bad('e_phnum', 'is 0: the ELF has no program headers');
  if (phentsize < (is64 ? 56 : 32)) throw bad('e_phentsize', `${phentsize} is smaller than a program header (${is64 ? 56 : 32})`);
  need('program headers (e_phoff, e_phnum * e_phentsize)', phoff, phnum * phentsize);
  const segments: ElfSegment[] = [];
  const notes: ElfNote[] = [];
  for (let i = 0; i < phnum; i++) {
    const o = Number(phoff) + i * phentsize;
    const type = dv.getUint32(o, true);
    const offset = word(is64 ? o + 8 : o + 4);
    const paddr = word(is64 ? o + 24 : o + 12);
    const filesz = word(is64 ? o + 32 : o + 16);
    const memsz = word(is64 ? o + 40 : o + 20);
    const ph = `program header ${i}`;
    if (type === PT_LOAD) {
      need(`${ph} (PT_LOAD p_offset, p_filesz)`, offset, filesz);
      if (memsz < filesz) throw bad(`${ph} p_memsz`, `${hex(memsz)} is smaller than p_filesz ${hex(filesz)}`);
      if (paddr + memsz > MAX_ADDR) throw bad(`${ph} p_paddr`, `${hex(paddr)} + p_memsz ${hex(memsz)} is beyond any guest RAM`);
      segments.push({ paddr: Number(paddr), offset: Number(offset), filesz: Number(filesz), memsz: Number(memsz) });
    } else if (type === PT_NOTE) {
      need(`${ph} (PT_NOTE p_offset, p_filesz)`, offset, filesz);
      notes.push(...parseNotes(b, Number(offset), Number(filesz), (field, why) => bad(`${ph} ${field}`, why)));
    }
  }
  if (!segments.length) throw bad('program headers', 'have no PT_LOAD segment');
  if (entry > MAX_ADDR) throw bad('e_entry', `${hex(entry)} is beyond any guest RAM`);
  return { is64, entry: Number(entry), segments, notes };
}

/**
 * The notes of a PT_NOTE segment [start, start+size) (already inside the
 * file): each a 12-byte header (namesz, descsz, type), the name and the
 * descriptor, each padded to 4 bytes. A note that runs past the segment is
 * an error; fewer than 12 bytes left at the end are padding.
 */
function parseNotes(b: Uint8Array, start: number, size: number, bad: (field: string, why: string) => KernelImageError): ElfNote[] {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const end = start + size;
  const notes: ElfNote[] = [];
  // Math, not `(n + 3) & ~3`: that wraps a 32-bit namesz such as 0xfffffff1 to a negative step.
  const align4 = (n: number) => Math.ceil(n / 4) * 4;
  for (let p = start; end - p >= 12;) {
    const namesz = dv.getUint32(p, true);
    const descsz = dv.getUint32(p + 4, true);
    const type = dv.getUint32(p + 8, true);
    const at = `note at offset ${hex(p)}`;
    const nameOff = p + 12;
    if (nameOff + align4(namesz) > end) throw bad(`${at} n_namesz`, `${hex(namesz)} runs past the end of the segment`);
    const descOff = nameOff + align4(namesz);
    if (descOff + align4(descsz) > end) throw bad(`${at} n_descsz`, `${hex(descsz)} runs past the end of the segment`);
    const name = Buffer.from(b.subarray(nameOff, nameOff + namesz))
      .toString('latin1')
      .replace(/\0+$/, '');
    notes.push({ name, type, desc: b.subarray(descOff, descOff + descsz) });
    p = descOff + align4(descsz); // always > p: at least the 12-byte header
  }
  return notes;
}
