/** A minimal ELF reader for PVH kernels: headers, PT_LOAD segments and notes. */

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

export function isElf(b: Uint8Array): boolean {
  return b.length >= 4 && b[0] === 0x7f && b[1] === 0x45 && b[2] === 0x4c && b[3] === 0x46;
}

export function parseElf(what: string, b: Uint8Array): ElfImage {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const need = (off: number, len: number, field: string) => {
    if (off < 0 || len < 0 || off + len > b.length) throw new KernelImageError(`${what}: truncated ELF (${field} at 0x${off.toString(16)} is past the end of the file)`);
  };
  need(0, 52, 'ELF header');
  const cls = b[4];
  if (cls !== 1 && cls !== 2) throw new KernelImageError(`${what}: unknown ELF class ${cls}`);
  if (b[5] !== 1) throw new KernelImageError(`${what}: not a little-endian ELF`);
  const is64 = cls === 2;
  const machine = dv.getUint16(18, true);
  if (machine !== 62 && machine !== 3) throw new KernelImageError(`${what}: ELF machine ${machine} is not x86`);
  if (is64) need(0, 64, 'ELF64 header');
  const u = (off: number) => (is64 ? Number(dv.getBigUint64(off, true)) : dv.getUint32(off, true));
  const entry = is64 ? Number(dv.getBigUint64(24, true)) : dv.getUint32(24, true);
  const phoff = is64 ? Number(dv.getBigUint64(32, true)) : dv.getUint32(28, true);
  const phentsize = dv.getUint16(is64 ? 54 : 42, true);
  const phnum = dv.getUint16(is64 ? 56 : 44, true);
  if (phnum === 0) throw new KernelImageError(`${what}: ELF has no program headers`);
  if (phentsize < (is64 ? 56 : 32)) throw new KernelImageError(`${what}: bad ELF program header size ${phentsize}`);
  need(phoff, phnum * phentsize, 'program headers');
  const segments: ElfSegment[] = [];
  const notes: ElfNote[] = [];
  for (let i = 0; i < phnum; i++) {
    const o = phoff + i * phentsize;
    const type = dv.getUint32(o, true);
    const offset = is64 ? u(o + 8) : u(o + 4);
    const paddr = is64 ? u(o + 24) : u(o + 12);
    const filesz = is64 ? u(o + 32) : u(o + 16);
    const memsz = is64 ? u(o + 40) : u(o + 20);
    if (type === PT_LOAD) {
      need(offset, filesz, `segment ${i}`);
      if (memsz < filesz) throw new KernelImageError(`${what}: segment ${i} has memsz < filesz`);
      segments.push({ paddr, offset, filesz, memsz });
    } else if (type === PT_NOTE) {
      need(offset, filesz, `note segment ${i}`);
      let p = offset;
      while (p + 12 <= offset + filesz) {
        const namesz = dv.getUint32(p, true);
        const descsz = dv.getUint32(p + 4, true);
        const ntype = dv.getUint32(p + 8, true);
        const nameOff = p + 12;
        const descOff = nameOff + ((namesz + 3) & ~3);
        const next = descOff + ((descsz + 3) & ~3);
        if (next > offset + filesz) break;
        const name = Buffer.from(b.subarray(nameOff, nameOff + namesz)).toString('latin1').replace(/\0+$/, '');
        notes.push({ name, type: ntype, desc: b.subarray(descOff, descOff + descsz) });
        p = next;
      }
    }
  }
  if (!segments.length) throw new KernelImageError(`${what}: ELF has no loadable segments`);
  return { is64, entry, segments, notes };
}
