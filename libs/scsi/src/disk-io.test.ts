/**
 * ScsiDisk: the medium-access commands on a real image file (RawFileBackend),
 * and an in-memory backend that fails on demand for the MEDIUM ERROR paths.
 */
import {
  type TempDisk,
  alloc16,
  cdb,
  expectBytes,
  expectGood,
  expectSense,
  memDisk,
  patternByte,
  patternImage,
  removeTempDirs,
  run,
  rw6,
  rw10,
  rw12,
  rw16,
  sizedBackend,
  tempDisk,
} from './test-util';
import { ScsiDisk } from './disk';

const MiB = 1 << 20;
const filled = (n: number, f: (i: number) => number): Uint8Array => Uint8Array.from({ length: n }, (_, i) => f(i) & 0xff);
const isZero = (b: Uint8Array): boolean => b.every((x) => x === 0);

let t: TempDisk;
beforeEach(() => {
  t = tempDisk(MiB);
});
afterEach(() => t.cleanup());
afterAll(removeTempDirs);

const READS: [string, (lba: number, n: number, flags?: number) => Uint8Array][] = [
  ['READ(6)', (lba, n) => rw6(0x08, lba, n)],
  ['READ(10)', (lba, n, f) => rw10(0x28, lba, n, f)],
  ['READ(12)', (lba, n, f) => rw12(0xa8, lba, n, f)],
  ['READ(16)', (lba, n, f) => rw16(0x88, lba, n, f)],
];
const WRITES: [string, (lba: number, n: number, flags?: number) => Uint8Array][] = [
  ['WRITE(6)', (lba, n) => rw6(0x0a, lba, n)],
  ['WRITE(10)', (lba, n, f) => rw10(0x2a, lba, n, f)],
  ['WRITE(12)', (lba, n, f) => rw12(0xaa, lba, n, f)],
  ['WRITE(16)', (lba, n, f) => rw16(0x8a, lba, n, f)],
  ['WRITE AND VERIFY(10)', (lba, n, f) => rw10(0x2e, lba, n, f)],
  ['WRITE AND VERIFY(12)', (lba, n, f) => rw12(0xae, lba, n, f)],
  ['WRITE AND VERIFY(16)', (lba, n, f) => rw16(0x8e, lba, n, f)],
];

describe('READ', () => {
  it.each(READS)('%s reads the image straight into the data-in views', async (_, make) => {
    const r = await run(t.disk, make(5, 3), { in: [100, 1000, 436] });
    expectGood(r);
    expect([r.dataInLength, r.residual]).toEqual([1536, 0]);
    expectBytes(r.data, patternImage(MiB).subarray(5 * 512, 8 * 512));
    expect(r.views[0].byteOffset).toBe(8); // the views given, not copies
  });

  it('READ(6) with transfer length 0 reads 256 blocks; READ(10) with 0 reads nothing', async () => {
    const r = await run(t.disk, rw6(0x08, 1, 0), { in: 256 * 512 });
    expect(r.dataInLength).toBe(256 * 512);
    expectBytes(r.data, patternImage(MiB).subarray(512, 257 * 512));
    const z = await run(t.disk, rw10(0x28, 2048, 0), { in: 512 });
    expectGood(z);
    expect([z.dataInLength, z.residual]).toEqual([0, 512]);
  });

  it('FUA and DPO on a read are accepted', async () => {
    expectGood(await run(t.disk, rw10(0x28, 0, 1, 0x18), { in: 512 }));
  });

  it('more views than IOV_MAX: the backend is called again for the rest', async () => {
    const r = await run(t.disk, rw10(0x28, 16, 128), { in: new Array(2048).fill(32) });
    expectBytes(r.data, patternImage(MiB).subarray(16 * 512, 144 * 512));
  });

  it('a backend that moves less per call is called until the transfer is complete', async () => {
    const { disk, mem } = memDisk();
    mem.data.set(
      filled(4096, (i) => i * 3),
      4096,
    );
    mem.maxChunk = 700;
    const r = await run(disk, rw10(0x28, 8, 8), { in: [1000, 3096] });
    expect(r.data).toEqual(filled(4096, (i) => i * 3));
    expect(mem.calls.length).toBe(6);
  });

  it('residual: data-in capacity beyond the transfer', async () => {
    const r = await run(t.disk, rw10(0x28, 0, 1), { in: [512, 512] });
    expect([r.dataInLength, r.residual]).toEqual([512, 512]);
    expect(r.views[1][0]).toBe(0xee);
  });
});

describe('WRITE', () => {
  it.each(WRITES)('%s writes the data-out views to the image', async (_, make) => {
    const data = filled(1536, (i) => i ^ 0x5a);
    const r = await run(t.disk, make(7, 3), { out: data, outSplit: [1, 511, 700] });
    expectGood(r);
    expect(r.residual).toBe(0);
    const img = t.image();
    expect(new Uint8Array(img.subarray(7 * 512, 10 * 512))).toEqual(data);
    expect(img[7 * 512 - 1]).toBe(patternByte(7 * 512 - 1));
    expect(img[10 * 512]).toBe(patternByte(10 * 512));
  });

  it('WRITE(6) with transfer length 0 writes 256 blocks', async () => {
    const data = filled(256 * 512, (i) => i >> 9);
    expectGood(await run(t.disk, rw6(0x0a, 0, 0), { out: data }));
    expectBytes(t.image().subarray(0, 256 * 512), data);
  });

  it('FUA makes the write write-through; WRITE AND VERIFY too; a plain write does not', async () => {
    const { disk, mem } = memDisk();
    await run(disk, rw10(0x2a, 1, 1, 0x08), { out: new Uint8Array(512).fill(1) });
    await run(disk, rw16(0x8a, 2, 1, 0x08), { out: new Uint8Array(512).fill(2) });
    await run(disk, rw12(0xaa, 3, 1), { out: new Uint8Array(512).fill(3) });
    await run(disk, rw10(0x2e, 4, 1), { out: new Uint8Array(512).fill(4) });
    expect(mem.calls).toEqual(['writev 512 dsync', 'writev 1024 dsync', 'writev 1536', 'writev 2048 dsync']);
    expect(t.disk.info().flushes).toBe(0);
  });

  it('residual: data-out bytes beyond the transfer are not written', async () => {
    const r = await run(t.disk, rw10(0x2a, 0, 1), { out: new Uint8Array(600).fill(9) });
    expectGood(r);
    expect(r.residual).toBe(88);
    const img = t.image();
    expect(img[511]).toBe(9);
    expect(img[512]).toBe(patternByte(512));
  });

  it('a write of zero blocks moves nothing', async () => {
    const r = await run(t.disk, rw10(0x2a, 2048, 0));
    expectGood(r);
    expectBytes(t.image(), patternImage(MiB));
  });
});

describe('range and field checks', () => {
  it.each([...READS, ...WRITES])('%s beyond the last block: LBA OUT OF RANGE, nothing transferred', async (name, make) => {
    const isRead = name.startsWith('READ');
    const buf = (n: number) => (isRead ? { in: n * 512 } : { out: new Uint8Array(n * 512) });
    expectSense(await run(t.disk, make(2048, 1), buf(1)), 5, 0x21, 0);
    expectSense(await run(t.disk, make(2047, 2), buf(2)), 5, 0x21, 0);
    expectGood(await run(t.disk, make(2047, 1), buf(1)));
    expect(
      isRead ||
        t
          .image()
          .subarray(0, 2047 * 512)
          .equals(patternImage(MiB).subarray(0, 2047 * 512)),
    ).toBe(true);
  });

  it('READ(6) addresses 21 bits', async () => {
    expectSense(await run(t.disk, rw6(0x08, 0x1fffff, 1), { in: 512 }), 5, 0x21, 0);
  });

  it('huge LBAs and transfer lengths: LBA OUT OF RANGE, no overflow', async () => {
    expectSense(await run(t.disk, rw16(0x88, 0xffffffffffffffffn, 1), { in: 512 }), 5, 0x21, 0);
    expectSense(await run(t.disk, rw16(0x88, 2n ** 53n - 1n, 1), { in: 512 }), 5, 0x21, 0);
    expectSense(await run(t.disk, rw16(0x88, 1, 0xffffffff), { in: 512 }), 5, 0x21, 0);
    expectSense(await run(t.disk, rw12(0xaa, 0xffffffff, 0xffffffff), { out: new Uint8Array(512) }), 5, 0x21, 0);
    expectSense(await run(t.disk, rw16(0x93, 0xfffffffffffffff0n, 0x20), { out: new Uint8Array(512) }), 5, 0x21, 0);
  });

  it('RDPROTECT / WRPROTECT / VRPROTECT: INVALID FIELD IN CDB', async () => {
    expectSense(await run(t.disk, rw10(0x28, 0, 1, 0x20), { in: 512 }), 5, 0x24, 0);
    expectSense(await run(t.disk, rw16(0x8a, 0, 1, 0x40), { out: new Uint8Array(512) }), 5, 0x24, 0);
    expectSense(await run(t.disk, rw10(0x2f, 0, 1, 0x80)), 5, 0x24, 0);
    expectSense(await run(t.disk, rw10(0x2e, 0, 1, 0x04), { out: new Uint8Array(512) }), 5, 0x24, 0); // BYTCHK 10b
  });
});

describe('buffers that do not fit: overrun, nothing transferred', () => {
  it('data-in command offered data-out buffers, or both kinds', async () => {
    const { disk, mem } = memDisk();
    for (const b of [{ out: new Uint8Array(512) }, { out: new Uint8Array(512), in: 512 }]) {
      const r = await run(disk, rw10(0x28, 0, 1), b);
      expect([r.overrun, r.status, r.dataInLength]).toEqual([true, 0, 0]);
    }
    expect((await run(disk, cdb(0x12, 0, 0, 0, 36, 0), { out: new Uint8Array(36) })).overrun).toBe(true);
    expect(mem.calls).toEqual([]);
  });

  it('data-out command offered data-in buffers, or too few data-out bytes', async () => {
    const r = await run(t.disk, rw10(0x2a, 0, 1), { in: 512 });
    expect(r.overrun).toBe(true);
    const s = await run(t.disk, rw10(0x2a, 0, 2), { out: new Uint8Array(1000) });
    expect([s.overrun, s.residual]).toEqual([true, 1000]);
    expect((await run(t.disk, rw16(0x93, 0, 4), { in: 512 })).overrun).toBe(true);
    expectBytes(t.image(), patternImage(MiB));
    expect(t.disk.info().overruns).toBe(3);
  });

  it('data-in capacity below the transfer length (or the ALLOCATION LENGTH)', async () => {
    const r = await run(t.disk, rw10(0x28, 0, 2), { in: 1023 });
    expect([r.overrun, r.dataInLength, r.residual]).toEqual([true, 0, 1023]);
    expect(r.views[0][0]).toBe(0xee);
    expect((await run(t.disk, cdb(0x12, 0, 0, 0, 96, 0), { in: 36 })).overrun).toBe(true);
    expect((await run(t.disk, cdb(0x25), { in: 4 })).overrun).toBe(true);
    expect((await run(t.disk, cdb(0x03, 0, 0, 0, 18, 0), { in: 17 })).overrun).toBe(true);
  });

  it('a no-data command with buffers is fine: the residual is what was offered', async () => {
    const r = await run(t.disk, cdb(0x00), { in: 64 });
    expectGood(r);
    expect(r.residual).toBe(64);
  });
});

describe('VERIFY', () => {
  const VERIFIES: [string, (lba: number, n: number, f?: number) => Uint8Array][] = [
    ['VERIFY(10)', (lba, n, f) => rw10(0x2f, lba, n, f)],
    ['VERIFY(12)', (lba, n, f) => rw12(0xaf, lba, n, f)],
    ['VERIFY(16)', (lba, n, f) => rw16(0x8f, lba, n, f)],
  ];

  it.each(VERIFIES)('%s BYTCHK=0 only checks the range', async (_, make) => {
    expectGood(await run(t.disk, make(0, 2048)));
    expectSense(await run(t.disk, make(1, 2048)), 5, 0x21, 0);
  });

  it.each(VERIFIES)('%s BYTCHK=1 compares with the data-out buffer', async (_, make) => {
    const img = patternImage(MiB);
    const same = new Uint8Array(img.subarray(512, 512 * 4));
    expectGood(await run(t.disk, make(1, 3, 0x02), { out: same, outSplit: [100, 900] }));
    same[1000] ^= 1;
    const r = await run(t.disk, make(1, 3, 0x02), { out: same, outSplit: [100, 900] });
    expectSense(r, 0x0e, 0x1d, 0);
    expect(r.sense[0] & 0x80).toBe(0x80); // VALID: INFORMATION is the offset of the first difference
    expect(new DataView(r.sense.buffer).getUint32(3)).toBe(1000);
  });

  it('compares beyond one bounce buffer', async () => {
    const img = patternImage(4 * MiB);
    const big = tempDisk(4 * MiB);
    try {
      const data = new Uint8Array(img.subarray(0, 3 * MiB));
      expectGood(await run(big.disk, rw16(0x8f, 0, 6144, 0x02), { out: data }));
      data[2 * MiB + 5] ^= 0xff;
      const r = await run(big.disk, rw16(0x8f, 0, 6144, 0x02), { out: data });
      expectSense(r, 0x0e, 0x1d, 0);
      expect(new DataView(r.sense.buffer).getUint32(3)).toBe(2 * MiB + 5);
    } finally {
      big.cleanup();
    }
  });
});

describe('SYNCHRONIZE CACHE', () => {
  it('(10) and (16) flush the backend; the range is checked', async () => {
    const { disk, mem } = memDisk();
    expectGood(await run(disk, rw10(0x35, 0, 0)));
    expectGood(await run(disk, rw16(0x91, 100, 10)));
    expectGood(await run(disk, cdb(0x35, 0x02)));
    expect(mem.calls).toEqual(['flush', 'flush', 'flush']);
    expectSense(await run(disk, rw10(0x35, 2040, 9)), 5, 0x21, 0);
    expectSense(await run(disk, rw16(0x91, 2049, 0)), 5, 0x21, 0);
    expectGood(await run(t.disk, rw10(0x35, 0, 0)));
    expect(t.disk.info().flushes).toBe(1);
  });
});

describe('WRITE SAME', () => {
  it('(10) with a non-zero block replicates it, in chunks beyond 1 MiB', async () => {
    const big = tempDisk(4 * MiB);
    try {
      const block = filled(512, (i) => i * 13 + 1);
      expectGood(await run(big.disk, rw10(0x41, 10, 3000), { out: block }));
      const img = big.image();
      const want = new Uint8Array(3000 * 512);
      for (let b = 0; b < 3000; b++) want.set(block, b * 512);
      expectBytes(img.subarray(10 * 512, 3010 * 512), want);
      expect(img[10 * 512 - 1]).toBe(patternByte(10 * 512 - 1));
      expect(img[3010 * 512]).toBe(patternByte(3010 * 512));
    } finally {
      big.cleanup();
    }
  });

  it('a zero block goes to writeZeroes, deallocating when UNMAP is set', async () => {
    const { disk, mem } = memDisk();
    mem.data.fill(0x77);
    expectGood(await run(disk, rw10(0x41, 4, 4, 0x08), { out: new Uint8Array(512) }));
    expectGood(await run(disk, rw16(0x93, 8, 2), { out: new Uint8Array(512) }));
    expect(mem.calls).toEqual(['writeZeroes 2048 2048 true', 'writeZeroes 4096 1024 false']);
    expect(isZero(mem.data.subarray(2048, 5120))).toBe(true);
    expect(mem.data[5120]).toBe(0x77);
  });

  it('UNMAP with a non-zero block writes the block', async () => {
    const { disk, mem } = memDisk();
    expectGood(await run(disk, rw16(0x93, 1, 2, 0x08), { out: new Uint8Array(512).fill(3) }));
    expect(mem.calls).toEqual(['writev 512']);
    expect(mem.data.subarray(512, 1536).every((x) => x === 3)).toBe(true);
  });

  it('(16) NDOB: no data-out, zeros (unmapped with UNMAP)', async () => {
    expectGood(await run(t.disk, rw16(0x93, 100, 50, 0x09)));
    expectGood(await run(t.disk, rw16(0x93, 200, 8, 0x01)));
    const img = t.image();
    expect(isZero(img.subarray(100 * 512, 150 * 512))).toBe(true);
    expect(isZero(img.subarray(200 * 512, 208 * 512))).toBe(true);
    expect(img[150 * 512]).toBe(patternByte(150 * 512));
    expect(img.length).toBe(MiB);
    // NDOB makes it a no-data command: a data-out buffer is not used, only reported as residual.
    const r = await run(t.disk, rw16(0x93, 0, 1, 0x01), { out: new Uint8Array(512).fill(1) });
    expectGood(r);
    expect(r.residual).toBe(512);
    expect(isZero(t.image().subarray(0, 512))).toBe(true);
  });

  it('on the real file: UNMAP with zeros reads back as zeros', async () => {
    expectGood(await run(t.disk, rw10(0x41, 16, 64, 0x08), { out: new Uint8Array(512) }));
    const img = t.image();
    expect(isZero(img.subarray(16 * 512, 80 * 512))).toBe(true);
    expect(img[80 * 512]).toBe(patternByte(80 * 512));
  });

  it('zero blocks (WSNZ), ANCHOR, PBDATA/LBDATA, or more than the maximum length: INVALID FIELD IN CDB', async () => {
    const block = { out: new Uint8Array(512) };
    expectSense(await run(t.disk, rw10(0x41, 0, 0), block), 5, 0x24, 0);
    expectSense(await run(t.disk, rw10(0x41, 0, 1, 0x10), block), 5, 0x24, 0);
    expectSense(await run(t.disk, rw10(0x41, 0, 1, 0x04), block), 5, 0x24, 0);
    expectSense(await run(t.disk, rw10(0x41, 0, 1, 0x02), block), 5, 0x24, 0);
    const disk = new ScsiDisk({ backend: sizedBackend(2 ** 31 + 512), readonly: false, serial: 'BIG' });
    expectSense(await run(disk, rw16(0x93, 0, 2 ** 21 + 1, 0x01)), 5, 0x24, 0);
    expectSense(await run(t.disk, rw16(0x93, 2000, 49), block), 5, 0x21, 0);
  });

  it('an abort stops the replication between chunks', async () => {
    const { disk, mem } = memDisk(8 * MiB);
    const ac = new AbortController();
    const writev = mem.writev.bind(mem);
    mem.writev = async (bufs, off) => {
      ac.abort();
      return writev(bufs, off);
    };
    const r = await run(disk, rw16(0x93, 0, 8192), { out: new Uint8Array(512).fill(1), signal: ac.signal });
    expect(r.status).toBe(0x40);
    expect(mem.calls).toEqual(['writev 0']);
  });
});

describe('UNMAP', () => {
  const unmapList = (descs: [number, number][]): Uint8Array => {
    const b = new Uint8Array(8 + 16 * descs.length);
    const v = new DataView(b.buffer);
    v.setUint16(0, b.length - 2);
    v.setUint16(2, 16 * descs.length);
    descs.forEach(([lba, n], i) => {
      v.setBigUint64(8 + 16 * i, BigInt(lba));
      v.setUint32(16 + 16 * i, n);
    });
    return b;
  };
  const unmap = (len: number, anchor = 0): Uint8Array => cdb(0x42, anchor, 0, 0, 0, 0, 0, ...alloc16(len), 0);

  it('deallocates every descriptor: the image reads back zeros there, and nothing else changes', async () => {
    const list = unmapList([
      [8, 8],
      [100, 0],
      [1000, 48],
    ]);
    const r = await run(t.disk, unmap(list.length), { out: list });
    expectGood(r);
    const img = t.image();
    const want = patternImage(MiB);
    want.fill(0, 8 * 512, 16 * 512);
    want.fill(0, 1000 * 512, 1048 * 512);
    expectBytes(img, want);
    expect(t.disk.info().unmaps).toBe(1);
  });

  it('calls discard per descriptor; falls back to writeZeroes(unmap) without hole punching', async () => {
    const { disk, mem } = memDisk(MiB, {}, { discard: 'EOPNOTSUPP' });
    const list = unmapList([[1, 2]]);
    expectGood(await run(disk, unmap(list.length), { out: list }));
    expect(mem.calls).toEqual(['discard 512 1024', 'writeZeroes 512 1024 true']);
  });

  it('an empty parameter list is a no-op; a header-only list unmaps nothing', async () => {
    expectGood(await run(t.disk, unmap(0)));
    const list = unmapList([]);
    expectGood(await run(t.disk, unmap(8), { out: list }));
    expectBytes(t.image(), patternImage(MiB));
  });

  it('checks every descriptor before unmapping any', async () => {
    const list = unmapList([
      [0, 8],
      [2047, 2],
    ]);
    expectSense(await run(t.disk, unmap(list.length), { out: list }), 5, 0x21, 0);
    expectBytes(t.image(), patternImage(MiB));
  });

  it('parameter list length 1..7: PARAMETER LIST LENGTH ERROR; ANCHOR: INVALID FIELD IN CDB', async () => {
    expectSense(await run(t.disk, unmap(7), { out: new Uint8Array(7) }), 5, 0x1a, 0);
    const list = unmapList([[0, 1]]);
    expectSense(await run(t.disk, unmap(list.length, 1), { out: list }), 5, 0x24, 0);
  });

  it('too many descriptors: INVALID FIELD IN PARAMETER LIST', async () => {
    const list = unmapList(Array.from({ length: 257 }, (_, i) => [i, 1] as [number, number]));
    expectSense(await run(t.disk, unmap(list.length), { out: list }), 5, 0x26, 0);
  });
});

describe('read-only disk: DATA PROTECT, WRITE PROTECTED', () => {
  it('for every write, WRITE SAME and UNMAP; reads still work', async () => {
    const ro = tempDisk(MiB, { readonly: true });
    try {
      for (const [, make] of WRITES) expectSense(await run(ro.disk, make(0, 1), { out: new Uint8Array(512) }), 7, 0x27, 0);
      expectSense(await run(ro.disk, rw10(0x41, 0, 1), { out: new Uint8Array(512) }), 7, 0x27, 0);
      expectSense(await run(ro.disk, rw16(0x93, 0, 1, 0x09)), 7, 0x27, 0);
      const list = new Uint8Array(24);
      expectSense(await run(ro.disk, cdb(0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0), { out: list }), 7, 0x27, 0);
      expectGood(await run(ro.disk, rw10(0x28, 0, 1), { in: 512 }));
      expectGood(await run(ro.disk, rw10(0x35, 0, 0)));
      expectBytes(ro.image(), patternImage(MiB));
    } finally {
      ro.cleanup();
    }
  });

  it('a read-only backend makes the disk read-only', async () => {
    const ro = tempDisk(MiB, { readonly: true });
    ro.disk.close();
    const d = new ScsiDisk({ backend: ro.backend, readonly: false, serial: 'X' });
    expect(d.readonly).toBe(true);
  });
});

describe('host I/O failures: MEDIUM ERROR', () => {
  it('a failed read: 03/11/00; a failed write, flush, discard or write-zeroes: 03/0C/00', async () => {
    const { disk, mem } = memDisk(MiB, {}, { read: true, write: true, flush: true, discard: true, writeZeroes: true });
    expectSense(await run(disk, rw10(0x28, 0, 1), { in: 512 }), 3, 0x11, 0);
    expectSense(await run(disk, rw16(0x8f, 0, 1, 0x02), { out: new Uint8Array(512) }), 3, 0x11, 0);
    expectSense(await run(disk, rw10(0x2a, 0, 1), { out: new Uint8Array(512) }), 3, 0x0c, 0);
    expectSense(await run(disk, rw10(0x35, 0, 0)), 3, 0x0c, 0);
    expectSense(await run(disk, rw10(0x41, 0, 1), { out: new Uint8Array(512) }), 3, 0x0c, 0);
    expectSense(await run(disk, rw10(0x41, 0, 1), { out: new Uint8Array(512).fill(1) }), 3, 0x0c, 0);
    const list = new Uint8Array([0, 22, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
    expectSense(await run(disk, cdb(0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0), { out: list }), 3, 0x0c, 0);
    expect(disk.info().lastIoError).toMatch(/discard at 0: discard: injected failure/);
    mem.fail = { flush: true };
    expectSense(await run(disk, rw10(0x2a, 0, 1, 0x08), { out: new Uint8Array(512) }), 3, 0x0c, 0); // FUA
  });

  it('a read that hits the end of the file: 03/11/00', async () => {
    const { disk, mem } = memDisk();
    mem.maxChunk = 0;
    expectSense(await run(disk, rw10(0x28, 0, 1), { in: 512 }), 3, 0x11, 0);
  });

  it('a transfer cut short and then failing: MEDIUM ERROR with the offset where it failed, never GOOD', async () => {
    const { disk, mem } = memDisk();
    mem.maxChunk = 700;
    let calls = 0;
    const readv = mem.readv.bind(mem);
    mem.readv = (bufs, off) => (++calls === 2 ? Promise.reject(new Error('EIO: second part')) : readv(bufs, off));
    expectSense(await run(disk, rw10(0x28, 0, 4), { in: 2048 }), 3, 0x11, 0);
    expect(disk.info().lastIoError).toBe('read at 700: EIO: second part');
    const writev = mem.writev.bind(mem);
    calls = 0;
    mem.writev = (bufs, off, dsync) => (++calls === 2 ? Promise.reject(new Error('ENOSPC: second part')) : writev(bufs, off, dsync));
    expectSense(await run(disk, rw10(0x2a, 0, 4), { out: new Uint8Array(2048).fill(7) }), 3, 0x0c, 0);
    expect(disk.info().lastIoError).toBe('write at 700: ENOSPC: second part');
    expect(disk.info()).toMatchObject({ reads: 0, writes: 0 });
  });
});

describe('abort signal', () => {
  it("a transport's plain abort flag (no AbortController) is honoured: TASK ABORTED, nothing read or written", async () => {
    const { disk, mem } = memDisk();
    const flag = { aborted: true };
    const r = await run(disk, rw10(0x28, 0, 1), { in: 512, signal: flag });
    expect([r.status, r.dataInLength, r.residual]).toEqual([0x40, 0, 512]);
    expect((await run(disk, rw10(0x2a, 0, 1), { out: new Uint8Array(512), signal: flag })).status).toBe(0x40);
    expect(mem.calls).toEqual([]);
    flag.aborted = false;
    expectGood(await run(disk, rw10(0x28, 0, 1), { in: 512, signal: flag }));
    expect(disk.info()).toMatchObject({ aborted: 2, reads: 1 });
  });
});
