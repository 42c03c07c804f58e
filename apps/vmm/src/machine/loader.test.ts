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
    kernel, kernelPath: 'k', cmdline: extra.cmdline ?? '', initrd: extra.initrd, memory, lowRamEnd: layout.lowRamEnd, e820: layout.e820,
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
    ['random bytes', () => new Uint8Array(4096).fill(0x90), /not a bzImage/],
  ];
  it.each(broken)('rejects %s with a clear error', (_what, image, msg) => {
    expect(() => load(image())).toThrow(KernelImageError);
    expect(() => load(image())).toThrow(msg);
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
