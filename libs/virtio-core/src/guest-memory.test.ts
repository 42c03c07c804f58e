import { gather, scatter, views } from './chain-io';
import { MockDriverQueue } from './testing';
import { SplitVirtqueue } from './virtqueue';
import { GuestMemory, GuestMemoryError, GuestMemorySplitError } from './guest-memory';

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
    expect(seen).toEqual([
      [0x2000, 16],
      [0x3004, 4],
      [0x5000, 0x2000],
      [0x9000, 1],
    ]);
    expect([...m.stopTracking()]).toEqual([9]);
    m.setTouchObserver(undefined);
    m.slice(0x4000, 1);
    expect(seen).toHaveLength(4);
  });
});

describe('GuestMemory over several host buffers (RAM cut at 1 GiB steps, as kvm-native maps it)', () => {
  // RAM [0, 0x3000) as buffers of 0x1000 and 0x2000, and [0x10000, 0x12000) as two of 0x1000: the splits
  // at 0x1000 and 0x11000 are inside contiguous RAM, 0x3000-0x10000 is a hole.
  const b0 = new Uint8Array(0x1000);
  const b1 = new Uint8Array(0x2000);
  const h0 = new Uint8Array(0x1000);
  const h1 = new Uint8Array(0x1000);
  const mem = new GuestMemory([
    { guestPhysAddr: 0x11000, bytes: h1 },
    { guestPhysAddr: 0, bytes: b0 },
    { guestPhysAddr: 0x10000, bytes: h0 },
    { guestPhysAddr: 0x1000, bytes: b1 },
  ]);

  it('typed reads and writes land in the right buffer on both sides of a split and across it, little-endian', () => {
    mem.writeU32(0xffc, 0x11223344); // last word of b0
    mem.writeU32(0x1000, 0x55667788); // first word of b1
    expect([b0[0xffc], b1[0]]).toEqual([0x44, 0x88]);
    mem.writeU64(0xffd, 0x0102030405060708n); // 3 bytes in b0, 5 in b1
    expect([...b0.subarray(0xffd)]).toEqual([0x08, 0x07, 0x06]);
    expect([...b1.subarray(0, 5)]).toEqual([0x05, 0x04, 0x03, 0x02, 0x01]);
    expect(mem.readU64(0xffd)).toBe(0x0102030405060708n);
    mem.writeU32(0x10ffe, 0xdeadbeef);
    expect([h0[0xffe], h0[0xfff], h1[0], h1[1]]).toEqual([0xef, 0xbe, 0xad, 0xde]);
    expect(mem.readU32(0x10ffe)).toBe(0xdeadbeef);
    mem.writeU16(0xfff, 0xabcd);
    expect(mem.readU16(0xfff)).toBe(0xabcd);
    expect([b0[0xfff], b1[0]]).toEqual([0xcd, 0xab]);
    expect(mem.size).toBe(0x5000);
  });

  it('slice: a zero-copy view up to a split from either side; across it a GuestMemorySplitError naming the split', () => {
    const below = mem.slice(0x800, 0x800);
    below.fill(0x11);
    expect(b0[0xfff]).toBe(0x11);
    expect(below.buffer).toBe(b0.buffer);
    const above = mem.slice(0x1000, 0x10);
    expect(above.buffer).toBe(b1.buffer);
    let err: unknown;
    try {
      mem.slice(0xff0, 0x20);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(GuestMemorySplitError);
    expect(err).toBeInstanceOf(GuestMemoryError); // devices treat it as any bad guest address
    expect((err as GuestMemorySplitError).split).toBe(0x1000);
    expect((err as Error).message).toMatch(/is RAM but spans two host buffers \(split at 0x1000\)/);
    expect(mem.checkRange(0xff0, 0x20)).toBe(true); // the guest sees one contiguous range
  });

  it('slices: the views of a range, one per buffer it touches, in order, zero-copy', () => {
    const v = mem.slices(0xf00, 0x2100); // b0 tail, all of b1
    expect(v.map((x) => [x.buffer === b0.buffer ? 'b0' : x.buffer === b1.buffer ? 'b1' : '?', x.length])).toEqual([
      ['b0', 0x100],
      ['b1', 0x2000],
    ]);
    v[1][0x1fff] = 0x77;
    expect(b1[0x1fff]).toBe(0x77);
    expect(mem.slices(0x1800, 0x10)).toHaveLength(1);
    expect(mem.slices(0x10000, 0x2000).map((x) => x.length)).toEqual([0x1000, 0x1000]);
    expect(mem.slices(0x2000, 0)).toEqual([]);
  });

  it('read, write and fill copy across splits', () => {
    const data = Uint8Array.from({ length: 0x30 }, (_, i) => i + 1);
    mem.write(0x10ff0, data);
    expect(h0[0xff0]).toBe(1);
    expect(h1[0x1f]).toBe(0x30);
    expect([...mem.read(0x10ff0, 0x30)]).toEqual([...data]);
    mem.write(0xffe, [9, 8, 7, 6]); // a plain array too
    expect([b0[0xffe], b0[0xfff], b1[0], b1[1]]).toEqual([9, 8, 7, 6]);
    mem.fill(0xff8, 0x10, 0xee);
    expect([...b0.subarray(0xff8)].every((x) => x === 0xee)).toBe(true);
    expect([...b1.subarray(0, 8)].every((x) => x === 0xee)).toBe(true);
    expect(b1[8]).not.toBe(0xee);
  });

  it('a range that runs into a hole or past the end is not RAM, split or not', () => {
    for (const [addr, len] of [
      [0x2ff0, 0x20],
      [0x3000, 1],
      [0xfff0, 0x20],
      [0x11ff0, 0x20],
      [0x12000, 1],
      [0xffe, 0x3000],
    ] as const) {
      expect(mem.checkRange(addr, len)).toBe(false);
      expect(() => mem.slices(addr, len)).toThrow(GuestMemoryError);
      expect(() => mem.slices(addr, len)).not.toThrow(GuestMemorySplitError);
      expect(() => mem.read(addr, len)).toThrow(GuestMemoryError);
    }
    expect(() => mem.readU32(0x2ffe)).toThrow(GuestMemoryError);
    expect(() => mem.writeU64(0x11ffc, 1n)).toThrow(GuestMemoryError);
  });

  it('tracking and the touch observer see a range across a split once, whole', () => {
    const seen: [number, number][] = [];
    mem.setTouchObserver((a, l) => seen.push([a, l]));
    mem.startTracking();
    mem.slices(0xff0, 0x2000);
    mem.writeU32(0x10ffe, 1);
    mem.setTouchObserver(undefined);
    expect(seen).toEqual([
      [0xff0, 0x2000],
      [0x10ffe, 4],
    ]);
    expect([...mem.stopTracking()].sort((a, b) => a - b)).toEqual([0, 1, 2, 0x10, 0x11]);
  });

  it('refuses overlapping buffers', () => {
    expect(
      () =>
        new GuestMemory([
          { guestPhysAddr: 0, bytes: new Uint8Array(0x2000) },
          { guestPhysAddr: 0x1000, bytes: new Uint8Array(0x1000) },
        ]),
    ).toThrow(/overlap at 0x1000/);
  });
});

describe('chain I/O over a split', () => {
  const b0 = new Uint8Array(0x1000);
  const b1 = new Uint8Array(0x1000);
  const mem = new GuestMemory([
    { guestPhysAddr: 0x40000000 - 0x1000, bytes: b0 },
    { guestPhysAddr: 0x40000000, bytes: b1 },
  ]);
  const split = 0x40000000;

  it('views: a descriptor across the split becomes two iovec pieces; others stay one; empty ones none', () => {
    const v = views(mem, [
      { addr: split - 0x200, len: 0x400, writable: true },
      { addr: split + 0x800, len: 0x10, writable: true },
      { addr: split, len: 0, writable: true },
    ]);
    expect(v.map((x) => x.length)).toEqual([0x200, 0x200, 0x10]);
    expect(v[0].buffer).toBe(b0.buffer);
    expect(v[1].buffer).toBe(b1.buffer);
    expect(v[1].byteOffset).toBe(0);
    expect(() => views(mem, [{ addr: split + 0xff0, len: 0x20, writable: true }])).toThrow(GuestMemoryError);
  });

  it('gather and scatter copy through a descriptor that crosses the split', () => {
    const bufs = [{ addr: split - 4, len: 8, writable: true }];
    expect(scatter(mem, bufs, Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8))).toBe(8);
    expect([...b0.subarray(0xffc)]).toEqual([1, 2, 3, 4]);
    expect([...b1.subarray(0, 4)]).toEqual([5, 6, 7, 8]);
    expect([...gather(mem, bufs, 2, 4)]).toEqual([3, 4, 5, 6]);
  });
});

describe('virtqueues over RAM cut into host buffers', () => {
  // RAM [0, 0x40000) as four buffers of 0x10000: splits at 0x10000, 0x20000, 0x30000.
  const split = () =>
    new GuestMemory(Array.from({ length: 4 }, (_, i) => ({ guestPhysAddr: i * 0x10000, bytes: new Uint8Array(0x10000) })));

  it('a chain whose buffer crosses a split pops as one descriptor and its views are the two pieces', () => {
    const mem = split();
    const drv = new MockDriverQueue(mem, 8);
    const q = new SplitVirtqueue(0, 256);
    drv.program(q);
    expect(q.activate(mem, { eventIdx: false, indirect: true })).toBeUndefined();
    drv.addChain([{ addr: 0x1ff00, len: 0x200, write: true }]);
    const r = q.pop();
    if (!r || !('chain' in r)) throw new Error('no chain');
    expect(r.chain.writable).toEqual([{ addr: 0x1ff00, len: 0x200, writable: true }]);
    expect(views(mem, r.chain.writable).map((v) => v.length)).toEqual([0x100, 0x100]);
  });

  it('a descriptor table across a split is refused at DRIVER_OK, naming the split (the device goes needs-reset, nothing throws)', () => {
    const mem = split();
    const drv = new MockDriverQueue(mem, 8, 0x10000 - 0x40); // 128-byte table: half each side of 0x10000
    const q = new SplitVirtqueue(0, 256);
    drv.program(q);
    expect(q.activate(mem, { eventIdx: false, indirect: true })).toMatchObject({
      kind: 'bad-queue-layout',
      detail: expect.stringMatching(/queue 0: .*spans two host buffers \(split at 0x10000\)/),
    });
  });
});
