// Seed inputs for bzimage.fuzz.ts (written by `node tools/fuzz/src/make-seeds.js apps/vmm bzimage`).

/** A minimal bzImage: boot sector signature, setup header (protocol 2.12, 64-bit entry, LOADED_HIGH), payload. */
export function bzImage(
  o: { setupSects?: number; version?: number; payload?: number; initSize?: number; cmdlineSize?: number; odd?: boolean } = {},
): Uint8Array {
  const setupSects = o.setupSects ?? 1;
  const b = Buffer.alloc((setupSects + 1) * 512 + (o.payload ?? 512) + (o.odd ? 1 : 0));
  b[0x1f1] = setupSects;
  b[0x1fe] = 0x55;
  b[0x1ff] = 0xaa;
  b[0x201] = 0x6a; // setup header length - 2... up to 0x26c
  b.write('HdrS', 0x202, 'latin1');
  b.writeUInt16LE(o.version ?? 0x20f, 0x206);
  b[0x211] = 0x01; // LOADED_HIGH
  b.writeUInt32LE(0x37ffffff, 0x22c); // initrd_addr_max
  b.writeUInt16LE(0x1 | 0x2, 0x236); // XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G
  b.writeUInt32LE(o.cmdlineSize ?? 2048, 0x238);
  b.writeUInt32LE(o.initSize ?? 0x10000, 0x260);
  b.fill(0x90, (setupSects + 1) * 512);
  if (o.odd) b[b.length - 1] = 1;
  return b;
}

export function seeds(): Record<string, Uint8Array> {
  return {
    minimal: bzImage(),
    'with-initrd': bzImage({ odd: true }),
    'setup-sects-0': bzImage({ setupSects: 0 }),
    'short-cmdline-size': bzImage({ cmdlineSize: 8, setupSects: 4 }),
    'old-protocol': bzImage({ version: 0x20a }),
  };
}
