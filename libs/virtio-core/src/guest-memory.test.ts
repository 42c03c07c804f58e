import { GuestMemory, GuestMemoryError } from './guest-memory';

describe('GuestMemory', () => {
  const lo = new Uint8Array(0x1000);
  const hi = new Uint8Array(0x1000);
  const mem = new GuestMemory([
    { guestPhysAddr: 0x10000, bytes: hi },
    { guestPhysAddr: 0, bytes: lo },
  ]);

  it('reads and writes little-endian values in the right region', () => {
    mem.writeU32(0x10004, 0xdeadbeef);
    expect(hi[4]).toBe(0xef);
    expect(mem.readU32(0x10004)).toBe(0xdeadbeef);
    mem.writeU64(0x8, 0x0102030405060708n);
    expect(mem.readU64(0x8)).toBe(0x0102030405060708n);
    expect(mem.readU16(0x8)).toBe(0x0708);
    expect(mem.size).toBe(0x2000);
  });

  it('hands out zero-copy slices', () => {
    const s = mem.slice(0x100, 4);
    s[0] = 0x55;
    expect(lo[0x100]).toBe(0x55);
  });

  it.each([
    [0xffe, 4], // crosses the end of a region
    [0x1000, 1], // hole
    [0x10fff, 2],
    [-1, 1],
    [0.5, 1],
    [2 ** 60, 1],
  ])('rejects [0x%s, +%d)', (addr, len) => {
    expect(() => mem.slice(addr, len)).toThrow(GuestMemoryError);
    expect(mem.checkRange(addr, len)).toBe(false);
  });
});
