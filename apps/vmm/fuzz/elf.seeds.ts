// Seed inputs for elf.fuzz.ts (written by `node tools/fuzz/src/make-seeds.js apps/vmm elf`).

/** An ELF64 (or ELF32) x86 PVH kernel: one PT_LOAD at 1 MiB, one PT_NOTE with the Xen PHYS32_ENTRY note. */
export function pvhElf(
  o: { is64?: boolean; code?: number; notes?: { name: string; type: number; desc: number[] }[]; odd?: boolean } = {},
): Uint8Array {
  const is64 = o.is64 ?? true;
  const ehsize = is64 ? 64 : 52;
  const phsize = is64 ? 56 : 32;
  const notes = o.notes ?? [{ name: 'Xen', type: 18, desc: [0x00, 0x00, 0x10, 0x00] }];
  const noteBytes: number[] = [];
  for (const n of notes) {
    const name = [...Buffer.from(n.name + '\0', 'latin1')];
    const pad = (a: number[]) => [...a, ...new Array((4 - (a.length % 4)) % 4).fill(0)];
    const le32 = (v: number) => [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, v >>> 24];
    noteBytes.push(...le32(name.length), ...le32(n.desc.length), ...le32(n.type), ...pad(name), ...pad(n.desc));
  }
  const code = o.code ?? 64;
  const phoff = ehsize;
  const noteOff = phoff + 2 * phsize;
  const codeOff = noteOff + noteBytes.length;
  const b = Buffer.alloc(codeOff + code + (o.odd ? 1 : 0));
  b.set([0x7f, 0x45, 0x4c, 0x46, is64 ? 2 : 1, 1, 1]);
  b.writeUInt16LE(2, 16); // ET_EXEC
  b.writeUInt16LE(is64 ? 62 : 3, 18);
  b.writeUInt32LE(1, 20);
  if (is64) {
    b.writeBigUInt64LE(0x100000n, 24);
    b.writeBigUInt64LE(BigInt(phoff), 32);
    b.writeUInt16LE(ehsize, 52);
    b.writeUInt16LE(phsize, 54);
    b.writeUInt16LE(2, 56);
  } else {
    b.writeUInt32LE(0x100000, 24);
    b.writeUInt32LE(phoff, 28);
    b.writeUInt16LE(ehsize, 40);
    b.writeUInt16LE(phsize, 42);
    b.writeUInt16LE(2, 44);
  }
  const ph = (i: number, type: number, off: number, paddr: number, filesz: number, memsz: number) => {
    const p = phoff + i * phsize;
    b.writeUInt32LE(type, p);
    if (is64) {
      b.writeUInt32LE(7, p + 4);
      b.writeBigUInt64LE(BigInt(off), p + 8);
      b.writeBigUInt64LE(BigInt(paddr), p + 16);
      b.writeBigUInt64LE(BigInt(paddr), p + 24);
      b.writeBigUInt64LE(BigInt(filesz), p + 32);
      b.writeBigUInt64LE(BigInt(memsz), p + 40);
    } else {
      b.writeUInt32LE(off, p + 4);
      b.writeUInt32LE(paddr, p + 8);
      b.writeUInt32LE(paddr, p + 12);
      b.writeUInt32LE(filesz, p + 16);
      b.writeUInt32LE(memsz, p + 20);
    }
  };
  ph(0, 1, codeOff, 0x100000, code, code + 0x1000);
  ph(1, 4, noteOff, 0, noteBytes.length, noteBytes.length);
  b.set(noteBytes, noteOff);
  b.fill(0x90, codeOff, codeOff + code);
  if (o.odd) b[b.length - 1] = 1; // with an initrd
  return b;
}

export function seeds(): Record<string, Uint8Array> {
  return {
    'pvh-elf64': pvhElf(),
    'pvh-elf64-initrd': pvhElf({ odd: true }),
    'pvh-elf32': pvhElf({ is64: false }),
    'pvh-two-notes-64bit-entry': pvhElf({
      notes: [
        { name: 'GNU', type: 3, desc: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10] },
        { name: 'Xen', type: 18, desc: [0x10, 0, 0x10, 0, 0, 0, 0, 0] },
      ],
    }),
    'no-pvh-note': pvhElf({ notes: [{ name: 'Linux', type: 1, desc: [] }] }),
  };
}
