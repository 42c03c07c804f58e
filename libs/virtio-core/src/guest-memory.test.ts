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

  it('touch observer: sees every range handed out or written, and noteWritten ranges (completed asynchronous writes); off when cleared', () => {
    const m = new GuestMemory([{ guestPhysAddr: 0, bytes: new Uint8Array(0x10000) }]);
    const seen: [number, number][] = [];
    m.noteWritten(0x100, 4); // nobody listening: nothing happens
    m.setTouchObserver((a, l) => seen.push([a, l]));
    m.slice(0x2000, 16);
    m.writeU32(0x3004, 7);
    m.noteWritten(0x5000, 0x2000);
    m.noteWritten(0x6000, 0); // empty: nothing
    m.startTracking();
    m.readU8(0x9000);
    expect(seen).toEqual([[0x2000, 16], [0x3004, 4], [0x5000, 0x2000], [0x9000, 1]]);
    expect([...m.stopTracking()]).toEqual([9]);
    m.setTouchObserver(undefined);
    m.slice(0x4000, 1);
    expect(seen).toHaveLength(4);
  });
});
