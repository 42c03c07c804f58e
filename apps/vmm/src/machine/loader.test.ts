// Loader checks against broken kernels, derived from the guest kit's real images.
import * as fs from 'fs';
import * as path from 'path';
import { GuestMemory } from '@tsvmm/virtio-core';
import { ramLayout } from './layout';
import { KernelImageError, loadKernel } from './loader';

const BUILD = path.resolve(__dirname, '../../../../tools/guest-kit/build');

function load(kernel: Uint8Array, extra: { cmdline?: string; initrd?: Uint8Array; mem?: number } = {}) {
  const size = extra.mem ?? 32 * 2 ** 20;
  const layout = ramLayout(size);
  const memory = new GuestMemory([{ guestPhysAddr: 0, bytes: new Uint8Array(size) }]);
  const entry = loadKernel({
    kernel,
    kernelPath: 'k',
    cmdline: extra.cmdline ?? '',
    initrd: extra.initrd,
    memory,
    lowRamEnd: layout.lowRamEnd,
    e820: layout.e820,
  });
  return { entry, memory };
}

describe('kernel loaders', () => {
  // The guest kit is built by the test target's dependency (nx run guest-kit:build).
  const elf = fs.readFileSync(path.join(BUILD, 'guest.elf'));
  const bz = fs.readFileSync(path.join(BUILD, 'guest.bzImage'));

  it('loads the PVH ELF and writes hvm_start_info', () => {
    const { entry, memory } = load(elf, { cmdline: 'hello' });
    expect(entry.mode).toBe('pvh');
    if (entry.mode !== 'pvh') return;
    expect(memory.readU32(entry.startInfo)).toBe(0x336ec578);
    const cmd = Number(memory.readU64(entry.startInfo + 24));
    expect(Buffer.from(memory.read(cmd, 6)).toString('latin1')).toBe('hello\0');
  });

  it('loads the bzImage at 1 MiB with its 64-bit entry at +0x200', () => {
    const { entry, memory } = load(bz, { initrd: Uint8Array.of(1, 2, 3) });
    expect(entry).toEqual({ mode: 'linux64', rip: 0x100200, bootParams: 0x7000 });
    expect(memory.readU32(0x7000 + 0x202)).toBe(0x53726448); // "HdrS"
    expect(memory.readU32(0x7000 + 0x21c)).toBe(3); // ramdisk_size
  });

  const broken: [string, () => Uint8Array, RegExp][] = [
    ['a truncated ELF', () => elf.subarray(0, 40), /truncated ELF/],
    ['an ELF whose program headers run past the end', () => elf.subarray(0, 80), /truncated ELF/],
    ['an ELF for another machine', () => patch(elf, 18, [0x28, 0x00]), /not x86/],
    ['an ELF without a PVH note', () => stripNotes(elf), /no PVH entry note/],
    ['a bzImage older than boot protocol 2.12', () => patch(bz, 0x206, [0x0b, 0x02]), /too old/],
    ['a bzImage without the 64-bit entry', () => patch(bz, 0x236, [0, 0]), /XLF_KERNEL_64/],
    ['a bzImage cut inside its setup code', () => bz.subarray(0, 0x300), /truncated bzImage/],
    ['random bytes', () => new Uint8Array(4096).fill(0x90), /not a valid kernel: not a bzImage/],
  ];
  it.each(broken)('rejects %s with a clear error', (_what, image, msg) => {
    expect(() => load(image())).toThrow(KernelImageError);
    expect(() => load(image())).toThrow(msg);
  });

  // Crafted kernels: each is refused promptly (a loop would time the test out) with a
  // KernelImageError naming the field, never a RangeError.
  const crafted: [string, () => Uint8Array, RegExp][] = [
    [
      'a PVH note whose namesz wraps 32-bit alignment (0xFFFFFFF1)',
      () => noteField(elf, 0, 0xfffffff1),
      /not a valid kernel: program header \d+ note at offset 0x[0-9a-f]+ n_namesz 0xfffffff1 runs past the end of the segment/,
    ],
    [
      'a note whose descsz runs past its segment',
      () => noteField(elf, 4, 0x7ffffff0),
      /not a valid kernel: program header \d+ note at offset 0x[0-9a-f]+ n_descsz 0x7ffffff0 runs past the end of the segment/,
    ],
    [
      'a PT_NOTE segment past the end of the file',
      () => phField(elf, 4, 8, 0xffffffff00n),
      /not a valid kernel: program header \d+ \(PT_NOTE p_offset, p_filesz\) .* runs past the end of the file/,
    ],
    [
      'a PT_LOAD segment past the end of the file',
      () => phField(elf, 1, 32, BigInt(elf.length)),
      /not a valid kernel: program header \d+ \(PT_LOAD p_offset, p_filesz\) .* runs past the end of the file/,
    ],
    [
      'a PT_LOAD segment with a 64-bit offset',
      () => phField(elf, 1, 8, 0xfffffffffffff000n),
      /not a valid kernel: program header \d+ \(PT_LOAD p_offset, p_filesz\) \(0x[0-9a-f]+ bytes at offset 0xfffffffffffff000\) runs past the end/,
    ],
    [
      'a PT_LOAD segment with memsz < filesz',
      () => phField(elf, 1, 40, 0n),
      /not a valid kernel: program header \d+ p_memsz 0x0 is smaller than p_filesz/,
    ],
    [
      'a PT_LOAD segment at a 64-bit address',
      () => phField(elf, 1, 24, 0xfffffffffffff000n),
      /not a valid kernel: program header \d+ p_paddr 0xfffffffffffff000 \+ p_memsz .* is beyond any guest RAM/,
    ],
    [
      'an ELF cut inside its header',
      () => elf.subarray(0, 60),
      /not a valid kernel: ELF64 header .* runs past the end of the file \(60 bytes\): truncated ELF/,
    ],
    [
      'program headers at a 64-bit offset',
      () => patch64(elf, 32, 0xffffffffffffff00n),
      /not a valid kernel: program headers \(e_phoff, e_phnum \* e_phentsize\) .* runs past the end of the file/,
    ],
    [
      'a program header size smaller than a program header',
      () => patch(elf, 54, [8, 0]),
      /not a valid kernel: e_phentsize 8 is smaller than a program header \(56\)/,
    ],
    ['a PVH entry note of 2 bytes', () => pvhDescsz(elf, 2), /not a valid kernel: XEN_ELFNOTE_PHYS32_ENTRY n_descsz 2 is not 4 or 8/],
    [
      'a bzImage shorter than its setup header',
      () => bz.subarray(0, 0x240),
      /not a valid kernel: setup header is cut short: boot protocol 2.12 needs 0x268 bytes, the file is 576/,
    ],
    [
      'a bzImage cut before its version field',
      () => bz.subarray(0, 0x206),
      /not a valid kernel: (setup header is cut short|not a bzImage)/,
    ],
    [
      'a bzImage whose setup_sects points past the file',
      // Cut to 16 KiB: the guest kit's whole bzImage outgrew 0x20000 (255 setup sectors) as tests were added.
      () => patch(bz, 0x1f1, [0xff]).subarray(0, 0x4000),
      /not a valid kernel: setup_sects 255 puts the kernel at 0x20000, but the file is \d+ bytes/,
    ],
    [
      'a bzImage with no room for the 64-bit entry',
      () => bz.subarray(0, (bz[0x1f1] + 1) * 512 + 0x100),
      /not a valid kernel: setup_sects \d+ .*no 64-bit entry/,
    ],
  ];
  it.each(crafted)('refuses %s, naming the field', (_what, image, msg) => {
    let err: unknown;
    try {
      load(image());
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(KernelImageError);
    expect((err as Error).message).toMatch(msg);
  });

  it('rejects a command line longer than the kernel takes', () => {
    expect(() => load(bz, { cmdline: 'x'.repeat(70000) })).toThrow(/--cmdline: 70000 bytes is longer/);
  });

  it('rejects an initrd that does not fit', () => {
    expect(() => load(elf, { initrd: new Uint8Array(40 * 2 ** 20), mem: 32 * 2 ** 20 })).toThrow(/--initrd: .* do not fit/);
  });
});

function patch(b: Uint8Array, off: number, bytes: number[]): Uint8Array {
  const c = Uint8Array.from(b);
  c.set(bytes, off);
  return c;
}

/** Turns every PT_NOTE program header into PT_NULL. */
function stripNotes(elf: Uint8Array): Uint8Array {
  const c = Uint8Array.from(elf);
  const dv = new DataView(c.buffer);
  const phoff = Number(dv.getBigUint64(32, true));
  const phentsize = dv.getUint16(54, true);
  const phnum = dv.getUint16(56, true);
  for (let i = 0; i < phnum; i++) if (dv.getUint32(phoff + i * phentsize, true) === 4) dv.setUint32(phoff + i * phentsize, 0, true);
  return c;
}

function patch64(b: Uint8Array, off: number, v: bigint): Uint8Array {
  const c = Uint8Array.from(b);
  new DataView(c.buffer).setBigUint64(off, v, true);
  return c;
}

/** The (64-bit) program headers: [offset of the header, its type]. */
function programHeaders(elf: Uint8Array): [number, number][] {
  const dv = new DataView(elf.buffer, elf.byteOffset, elf.byteLength);
  const phoff = Number(dv.getBigUint64(32, true));
  const phentsize = dv.getUint16(54, true);
  const phnum = dv.getUint16(56, true);
  return Array.from({ length: phnum }, (_, i) => [phoff + i * phentsize, dv.getUint32(phoff + i * phentsize, true)]);
}

/** Sets a 64-bit field of the first program header of `type`. */
function phField(elf: Uint8Array, type: number, field: number, v: bigint): Uint8Array {
  const ph = programHeaders(elf).find(([, t]) => t === type);
  if (!ph) throw new Error(`test image has no program header of type ${type}`);
  return patch64(elf, ph[0] + field, v);
}

/** The PVH note's header offset in the file (Xen, type 18). */
function pvhNote(elf: Uint8Array): number {
  const dv = new DataView(elf.buffer, elf.byteOffset, elf.byteLength);
  for (const [o, t] of programHeaders(elf)) {
    if (t !== 4) continue;
    const off = Number(dv.getBigUint64(o + 8, true));
    const size = Number(dv.getBigUint64(o + 32, true));
    for (let p = off; p + 12 <= off + size;) {
      const namesz = dv.getUint32(p, true);
      const descsz = dv.getUint32(p + 4, true);
      if (dv.getUint32(p + 8, true) === 18) return p;
      p += 12 + Math.ceil(namesz / 4) * 4 + Math.ceil(descsz / 4) * 4;
    }
  }
  throw new Error('test image has no PVH note');
}

/** Overwrites namesz (field 0) or descsz (field 4) of the PVH note. */
function noteField(elf: Uint8Array, field: number, v: number): Uint8Array {
  const c = Uint8Array.from(elf);
  new DataView(c.buffer).setUint32(pvhNote(elf) + field, v, true);
  return c;
}

/** A PVH note with a shorter descriptor (the rest of its 4-byte slot becomes padding). */
function pvhDescsz(elf: Uint8Array, descsz: number): Uint8Array {
  return noteField(elf, 4, descsz);
}
