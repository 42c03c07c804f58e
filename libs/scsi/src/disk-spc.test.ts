/**
 * ScsiDisk: the SPC commands (INQUIRY, VPD, READ CAPACITY, MODE SENSE/SELECT,
 * REQUEST SENSE, unit attentions) on a real image file.
 */
import { ScsiDisk } from './disk';
import { decodeSense } from './sense';
import {
  type TempDisk,
  alloc16,
  alloc32,
  cdb,
  expectGood,
  expectSense,
  memDisk,
  removeTempDirs,
  run,
  setDescriptorSense,
  sizedBackend,
  tempDisk,
} from './test-util';

const ascii = (b: Uint8Array): string => Buffer.from(b).toString('latin1');
const u16 = (b: Uint8Array, o: number): number => (b[o] << 8) | b[o + 1];
const u32 = (b: Uint8Array, o: number): number => new DataView(b.buffer, b.byteOffset).getUint32(o);
const u64 = (b: Uint8Array, o: number): bigint => new DataView(b.buffer, b.byteOffset).getBigUint64(o);

const inquiry = (evpd: number, page: number, alloc: number): Uint8Array => cdb(0x12, evpd, page, ...alloc16(alloc), 0);

let t: TempDisk;
beforeEach(() => {
  t = tempDisk(1 << 20);
});
afterEach(() => t.cleanup());
afterAll(removeTempDirs);

describe('INQUIRY', () => {
  it('standard data: disk, SPC-4, format 2, CMDQUE, padded identity, version descriptors', async () => {
    const r = await run(t.disk, inquiry(0, 0, 96), { in: 96 });
    expectGood(r);
    expect(r.dataInLength).toBe(96);
    expect(r.residual).toBe(0);
    const d = r.data;
    expect([d[0], d[1], d[2], d[3] & 0x0f, d[4], d[7] & 0x02]).toEqual([0, 0, 6, 2, 91, 2]);
    expect(ascii(d.subarray(8, 16))).toBe('TSVMM   ');
    expect(ascii(d.subarray(16, 32))).toBe('VIRTUAL DISK    ');
    expect(ascii(d.subarray(32, 36))).toBe('0.1 ');
    expect([u16(d, 58), u16(d, 60), u16(d, 62)]).toEqual([0x00a0, 0x0460, 0x04c0]);
  });

  it('honours the ALLOCATION LENGTH: truncates, and reports the rest of the buffer as residual', async () => {
    const r = await run(t.disk, inquiry(0, 0, 36), { in: 64 });
    expectGood(r);
    expect(r.dataInLength).toBe(36);
    expect(r.residual).toBe(28);
    expect(r.views[0][36]).toBe(0xee); // untouched beyond the allocation length
    const z = await run(t.disk, inquiry(0, 0, 0), { in: 16 });
    expectGood(z);
    expect([z.dataInLength, z.residual]).toEqual([0, 16]);
    const five = await run(t.disk, inquiry(0, 0, 5), { in: [2, 3] });
    expect(Array.from(five.data)).toEqual([0, 0, 6, 2, 91]);
  });

  it('custom vendor, product and revision; bad ones are refused at construction', () => {
    const { disk } = memDisk(1 << 20, { vendor: 'ACME', product: 'P', revision: '2' });
    expect(disk.kind).toBe('disk');
    expect(() => memDisk(1 << 20, { vendor: 'TOOLONGVENDOR' })).toThrow(/longer than 8/);
    expect(() => memDisk(1 << 20, { serial: 'bad\n' })).toThrow(/printable ASCII/);
    expect(() => memDisk(1 << 20, { logicalBlockSize: 520 })).toThrow(/520/);
    expect(() => memDisk(100)).toThrow(/smaller than one/);
    expect(() => memDisk(1 << 20, { wwn: 1n << 64n })).toThrow(/64-bit/);
  });

  it('VPD 00h lists the supported pages; 80h is the serial', async () => {
    const p0 = await run(t.disk, inquiry(1, 0x00, 255), { in: 255 });
    expect(Array.from(p0.data)).toEqual([0, 0, 0, 6, 0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]);
    expect(p0.residual).toBe(245);
    const p80 = await run(t.disk, inquiry(1, 0x80, 255), { in: 255 });
    expect(Array.from(p80.data.subarray(0, 4))).toEqual([0, 0x80, 0, 6]);
    expect(ascii(p80.data.subarray(4))).toBe('SN0001');
  });

  it('VPD 83h: a T10 vendor ID designator and an NAA designator (derived, or the wwn given)', async () => {
    const p = (await run(t.disk, inquiry(1, 0x83, 255), { in: 255 })).data;
    expect([p[1], u16(p, 2)]).toEqual([0x83, p.length - 4]);
    // T10 vendor ID: ASCII, LU association, type 1
    expect([p[4], p[5], p[7]]).toEqual([0x02, 0x01, 30]);
    expect(ascii(p.subarray(8, 8 + 30))).toBe('TSVMM   VIRTUAL DISK    SN0001');
    const n = 8 + 30;
    expect([p[n], p[n + 1], p[n + 3]]).toEqual([0x01, 0x03, 8]);
    expect(p[n + 4] >> 4).toBe(3); // NAA 3: locally assigned
    const { disk } = memDisk(1 << 20, { wwn: 0x5000c50012345678n });
    const q = (await run(disk, inquiry(1, 0x83, 255), { in: 255 })).data;
    expect(u64(q, q.length - 8)).toBe(0x5000c50012345678n);
    // Another serial, another NAA.
    const other = memDisk(1 << 20, { serial: 'SN0002' }).disk;
    const o = (await run(other, inquiry(1, 0x83, 255), { in: 255 })).data;
    expect(u64(o, o.length - 8)).not.toBe(u64(p, p.length - 8));
  });

  it('VPD B0h block limits, B1h non-rotating, B2h thin provisioning', async () => {
    const b0 = (await run(t.disk, inquiry(1, 0xb0, 255), { in: 255 })).data;
    expect([b0[1], u16(b0, 2), b0.length]).toEqual([0xb0, 0x3c, 64]);
    expect(b0[4] & 1).toBe(1); // WSNZ
    expect(u16(b0, 6)).toBe(8); // optimal granularity 4 KiB
    expect(u32(b0, 8)).toBe(65536); // maximum transfer length: 32 MiB
    expect(u32(b0, 12)).toBe(2048); // optimal: 1 MiB
    expect(u32(b0, 20)).toBe(2 * 1024 * 1024); // max unmap LBA count: 1 GiB
    expect(u32(b0, 24)).toBe(256);
    expect(u32(b0, 28)).toBe(8);
    expect(u32(b0, 32)).toBe(0x80000000);
    expect(u64(b0, 36)).toBe(2n * 1024n * 1024n);
    const b1 = (await run(t.disk, inquiry(1, 0xb1, 255), { in: 255 })).data;
    expect([b1[1], u16(b1, 2), u16(b1, 4)]).toEqual([0xb1, 0x3c, 1]);
    const b2 = (await run(t.disk, inquiry(1, 0xb2, 255), { in: 255 })).data;
    expect(Array.from(b2)).toEqual([0, 0xb2, 0, 4, 0, 0x80 | 0x40 | 0x20 | 0x04, 0x02, 0]);
  });

  it('a read-only disk reports no provisioning and no unmap limits', async () => {
    const ro = tempDisk(1 << 20, { readonly: true });
    try {
      const b2 = (await run(ro.disk, inquiry(1, 0xb2, 255), { in: 255 })).data;
      expect(Array.from(b2.subarray(4))).toEqual([0, 0, 0, 0]);
      const b0 = (await run(ro.disk, inquiry(1, 0xb0, 255), { in: 255 })).data;
      expect([u32(b0, 20), u32(b0, 24)]).toEqual([0, 0]);
    } finally {
      ro.cleanup();
    }
  });

  it('4096-byte blocks scale the block limits', async () => {
    const { disk } = memDisk(1 << 20, { logicalBlockSize: 4096 });
    const b0 = (await run(disk, inquiry(1, 0xb0, 255), { in: 255 })).data;
    expect([u16(b0, 6), u32(b0, 8), u32(b0, 28)]).toEqual([1, 8192, 1]);
  });

  it('an unknown page, CMDDT, or a page code without EVPD: INVALID FIELD IN CDB', async () => {
    expectSense(await run(t.disk, inquiry(1, 0x81, 255), { in: 255 }), 5, 0x24, 0);
    expectSense(await run(t.disk, inquiry(2, 0, 255), { in: 255 }), 5, 0x24, 0);
    expectSense(await run(t.disk, inquiry(0, 0x80, 255), { in: 255 }), 5, 0x24, 0);
  });
});

describe('READ CAPACITY', () => {
  it('(10): last LBA and block length', async () => {
    const r = await run(t.disk, cdb(0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0), { in: 8 });
    expectGood(r);
    expect([u32(r.data, 0), u32(r.data, 4)]).toEqual([2047, 512]);
  });

  it('(10): FFFFFFFFh when the disk is too big for it; (16) has the real value', async () => {
    const size = 2 ** 32 * 512 + 4096;
    const disk = new ScsiDisk({ backend: sizedBackend(size), readonly: false, serial: 'BIG' });
    expect(u32((await run(disk, cdb(0x25), { in: 8 })).data, 0)).toBe(0xffffffff);
    const r16 = await run(disk, cdb(0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, ...alloc32(32), 0, 0), { in: 32 });
    expect(u64(r16.data, 0)).toBe(2n ** 32n + 7n);
  });

  it('(16): 32 bytes with LBPME and LBPRZ when writable, truncated to the allocation length', async () => {
    const r = await run(t.disk, cdb(0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, ...alloc32(32), 0, 0), { in: 32 });
    expectGood(r);
    expect(r.dataInLength).toBe(32);
    expect([u64(r.data, 0), u32(r.data, 8), r.data[13], r.data[14]]).toEqual([2047n, 512, 0, 0xc0]);
    const short = await run(t.disk, cdb(0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, ...alloc32(12), 0, 0), { in: 16 });
    expect([short.dataInLength, short.residual]).toEqual([12, 4]);
    const ro = tempDisk(1 << 20, { readonly: true });
    try {
      const q = await run(ro.disk, cdb(0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, ...alloc32(32), 0, 0), { in: 32 });
      expect(q.data[14]).toBe(0);
    } finally {
      ro.cleanup();
    }
  });

  it('PMI=0 with a non-zero LBA, or an unknown service action: INVALID FIELD IN CDB', async () => {
    expectSense(await run(t.disk, cdb(0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0), { in: 8 }), 5, 0x24, 0);
    expectGood(await run(t.disk, cdb(0x25, 0, 0, 0, 0, 1, 0, 0, 1, 0), { in: 8 }));
    expectSense(await run(t.disk, cdb(0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 1, ...alloc32(32), 0, 0), { in: 32 }), 5, 0x24, 0);
    expectSense(await run(t.disk, cdb(0x9e, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, ...alloc32(32), 0, 0), { in: 32 }), 5, 0x24, 0); // GET LBA STATUS
  });
});

describe('MODE SENSE', () => {
  const sense6 = (b1: number, b2: number, alloc = 255, sub = 0): Uint8Array => cdb(0x1a, b1, b2, sub, alloc, 0);
  const sense10 = (b1: number, b2: number, alloc = 1024, sub = 0): Uint8Array => cdb(0x5a, b1, b2, sub, 0, 0, 0, ...alloc16(alloc), 0);

  it('(6) all pages: header, short block descriptor, caching (WCE) and control pages', async () => {
    const r = await run(t.disk, sense6(0, 0x3f), { in: 255 });
    expectGood(r);
    const d = r.data;
    expect(d.length).toBe(4 + 8 + 20 + 12);
    expect([d[0], d[1], d[2], d[3]]).toEqual([d.length - 1, 0, 0x10, 8]); // DPOFUA, not WP
    expect([u32(d, 4), u32(d, 8)]).toEqual([2048, 512]);
    expect(Array.from(d.subarray(12, 15))).toEqual([0x08, 0x12, 0x04]);
    expect(Array.from(d.subarray(32, 44))).toEqual([0x0a, 0x0a, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0]);
    const all = await run(t.disk, sense6(0, 0x3f, 255, 0xff), { in: 255 });
    expect(all.data).toEqual(d);
  });

  it('(6) DBD leaves out the block descriptor; a single page', async () => {
    const r = await run(t.disk, sense6(0x08, 0x08), { in: 255 });
    expect(Array.from(r.data.subarray(0, 4))).toEqual([3 + 20, 0, 0x10, 0]);
    expect(r.data[4]).toBe(0x08);
    const c = await run(t.disk, sense6(0x08, 0x0a), { in: 255 });
    expect(c.data.length).toBe(16);
  });

  it('(10) with LLBAA: long LBA block descriptor, LONGLBA set', async () => {
    const r = await run(t.disk, sense10(0x10, 0x0a), { in: 1024 });
    const d = r.data;
    expect(d.length).toBe(8 + 16 + 12);
    expect([u16(d, 0), d[3], d[4], u16(d, 6)]).toEqual([d.length - 2, 0x10, 1, 16]);
    expect([u64(d, 8), u32(d, 20)]).toEqual([2048n, 512]);
    const short = await run(t.disk, sense10(0, 0x0a), { in: 1024 });
    expect([short.data[4], u16(short.data, 6), short.data.length]).toEqual([0, 8, 8 + 8 + 12]);
  });

  it('changeable values: only WCE and D_SENSE; default values: WCE on, D_SENSE off', async () => {
    const ch = await run(t.disk, sense6(0x08, 0x40 | 0x3f), { in: 255 });
    expect(Array.from(ch.data.subarray(4, 24))).toEqual([0x08, 0x12, 0x04, ...new Array(17).fill(0)]);
    expect(Array.from(ch.data.subarray(24))).toEqual([0x0a, 0x0a, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    await setDescriptorSense(t.disk, true);
    const cur = await run(t.disk, sense6(0x08, 0x0a), { in: 255 });
    expect(cur.data[6]).toBe(0x04);
    const def = await run(t.disk, sense6(0x08, 0x80 | 0x0a), { in: 255 });
    expect(def.data[6]).toBe(0);
  });

  it('WP in the device-specific parameter of a read-only disk', async () => {
    const ro = tempDisk(1 << 20, { readonly: true });
    try {
      expect((await run(ro.disk, sense6(0x08, 0x3f), { in: 255 })).data[2]).toBe(0x90);
      expect((await run(ro.disk, sense10(0x08, 0x3f), { in: 1024 })).data[3]).toBe(0x90);
      expect((await run(ro.disk, sense10(0x08, 0x3f), { in: 255 })).overrun).toBe(true);
    } finally {
      ro.cleanup();
    }
  });

  it('truncates to the allocation length (the header still tells the full length)', async () => {
    const r = await run(t.disk, sense6(0, 0x3f, 4), { in: 4 });
    expect(Array.from(r.data)).toEqual([43, 0, 0x10, 8]);
  });

  it('saved values: SAVING PARAMETERS NOT SUPPORTED; unknown page or subpage: INVALID FIELD IN CDB', async () => {
    expectSense(await run(t.disk, sense6(0, 0xc0 | 0x3f), { in: 255 }), 5, 0x39, 0);
    expectSense(await run(t.disk, sense10(0, 0xc0 | 0x08), { in: 255 }), 5, 0x39, 0);
    expectSense(await run(t.disk, sense6(0, 0x1c), { in: 255 }), 5, 0x24, 0);
    expectSense(await run(t.disk, sense6(0, 0x08, 255, 1), { in: 255 }), 5, 0x24, 0);
  });
});

describe('MODE SELECT', () => {
  const select6 = (list: Uint8Array, b1 = 0x10): Uint8Array => cdb(0x15, b1, 0, 0, list.length, 0);
  const select10 = (list: Uint8Array, b1 = 0x10): Uint8Array => cdb(0x55, b1, 0, 0, 0, 0, 0, ...alloc16(list.length), 0);
  const control = (b2: number, b3 = 0x10): number[] => [0x0a, 0x0a, b2, b3, 0, 0, 0, 0, 0, 0, 0, 0];
  const caching = (b2: number): number[] => [0x08, 0x12, b2, ...new Array(17).fill(0)];

  it('D_SENSE switches the sense format; the caching page with WCE unchanged is accepted', async () => {
    expectSense(await run(t.disk, cdb(0x02)), 5, 0x20, 0, 'fixed');
    const list = new Uint8Array([0, 0, 0, 0, ...caching(0x04), ...control(0x04)]);
    const r = await run(t.disk, select6(list), { out: list });
    expectGood(r);
    expect(r.residual).toBe(0);
    expectSense(await run(t.disk, cdb(0x02)), 5, 0x20, 0, 'descriptor');
    const off = new Uint8Array([0, 0, 0, 0, 0, 0, 0, 0, ...control(0)]);
    expectGood(await run(t.disk, select10(off), { out: off }));
    expectSense(await run(t.disk, cdb(0x02)), 5, 0x20, 0, 'fixed');
  });

  it('accepts a block descriptor that restates the geometry (short, and long in MODE SELECT(10))', async () => {
    const short = new Uint8Array([0, 0, 0, 8, 0, 0, 0x08, 0, 0, 0, 0x02, 0, ...control(0x04)]);
    expectGood(await run(t.disk, select6(short), { out: short }));
    const zero = new Uint8Array([0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x02, 0]);
    expectGood(await run(t.disk, select6(zero), { out: zero }));
    const long = new Uint8Array([0, 0, 0, 0, 1, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0x08, 0, 0, 0, 0, 0, 0, 0, 0x02, 0]);
    expectGood(await run(t.disk, select10(long), { out: long }));
  });

  it('rejects other changes with INVALID FIELD IN PARAMETER LIST, changing nothing', async () => {
    const bad: number[][] = [
      [0, 0, 0, 0, ...caching(0x05)], // RCD
      [0, 0, 0, 0, ...control(0x04, 0x00)], // QAM
      [0, 0, 0, 0, ...control(0x24)], // TST with D_SENSE
      [0, 0, 0, 0, 0x1c, 0x0a, ...new Array(10).fill(0)], // unsupported page
      [0, 0, 0, 0, 0x4a, 0x01, 0, 10, ...new Array(10).fill(0)], // subpage format
      [0, 0, 0, 0, 0x0a, 0x08, 0x04, 0x10, 0, 0, 0, 0, 0, 0], // wrong page length
      [0, 5, 0, 0], // medium type
      [0, 0, 0, 8, 0, 0, 0x10, 0, 0, 0, 0x02, 0], // number of blocks
      [0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x10, 0], // block length
      [0, 0, 0, 8, 0, 0, 0, 0, 1, 0, 0x02, 0], // density code
      [0, 0, 0, 4, 0, 0, 0, 0], // block descriptor length not a multiple of 8
    ];
    for (const b of bad) {
      const list = new Uint8Array(b);
      expectSense(await run(t.disk, select6(list), { out: list }), 5, 0x26, 0);
      expect(t.disk.descriptorSense).toBe(false);
    }
  });

  it('a truncated page or block descriptor: PARAMETER LIST LENGTH ERROR', async () => {
    for (const b of [
      [0, 0, 0],
      [0, 0, 0, 0, ...control(0x04).slice(0, 8)],
      [0, 0, 0, 8, 0, 0, 0, 0],
      [0, 0, 0, 0, 0x0a],
    ]) {
      const list = new Uint8Array(b);
      expectSense(await run(t.disk, select6(list), { out: list }), 5, 0x1a, 0);
    }
  });

  it('PF=0 with a parameter list, or SP=1: INVALID FIELD IN CDB; an empty list is a no-op', async () => {
    const list = new Uint8Array([0, 0, 0, 0, ...control(0x04)]);
    expectSense(await run(t.disk, select6(list, 0x00), { out: list }), 5, 0x24, 0);
    expectSense(await run(t.disk, select6(list, 0x11), { out: list }), 5, 0x24, 0);
    expectGood(await run(t.disk, cdb(0x15, 0, 0, 0, 0, 0)));
    expect(t.disk.descriptorSense).toBe(false);
  });
});

describe('REQUEST SENSE and unit attentions', () => {
  const requestSense = (desc: number, alloc = 252): Uint8Array => cdb(0x03, desc, 0, 0, alloc, 0);

  it('NO SENSE when nothing is pending, in the format DESC asks for', async () => {
    const f = await run(t.disk, requestSense(0), { in: 252 });
    expectGood(f);
    expect([f.data.length, f.data[0], decodeSense(f.data)]).toEqual([18, 0x70, { key: 0, asc: 0, ascq: 0 }]);
    const d = await run(t.disk, requestSense(1), { in: 252 });
    expect([d.data.length, d.data[0], decodeSense(d.data)]).toEqual([8, 0x72, { key: 0, asc: 0, ascq: 0 }]);
    const cut = await run(t.disk, requestSense(0, 8), { in: 8 });
    expect([cut.dataInLength, cut.data[0]]).toEqual([8, 0x70]);
  });

  it('no unit attention at construction', async () => {
    expectGood(await run(t.disk, cdb(0x00)));
  });

  it.each([
    ['power-on', 0x00],
    ['lun-reset', 0x03],
    ['nexus-reset', 0x07],
  ] as const)('%s: UNIT ATTENTION 29/%d once, on the next command other than INQUIRY/REPORT LUNS/REQUEST SENSE', async (reason, ascq) => {
    t.disk.reset(reason);
    expect(t.disk.info().pendingUnitAttention).toMatch(/^06\/29/);
    expectGood(await run(t.disk, inquiry(0, 0, 36), { in: 36 }));
    expectGood(await run(t.disk, cdb(0xa0, 0, 0, 0, 0, 0, ...alloc32(16), 0, 0), { in: 16 }));
    expectSense(await run(t.disk, cdb(0x00)), 6, 0x29, ascq);
    expectGood(await run(t.disk, cdb(0x00)));
  });

  it('REQUEST SENSE returns the pending unit attention and clears it', async () => {
    t.disk.reset('lun-reset');
    const r = await run(t.disk, requestSense(1), { in: 252 });
    expectGood(r);
    expect([r.data[0], decodeSense(r.data)]).toEqual([0x72, { key: 6, asc: 0x29, ascq: 3 }]);
    expectGood(await run(t.disk, cdb(0x00)));
  });

  it('the unit attention is reported even before a malformed or unknown command', async () => {
    t.disk.reset('nexus-reset');
    expectSense(await run(t.disk, cdb(0xff)), 6, 0x29, 7);
    expectSense(await run(t.disk, cdb(0xff)), 5, 0x20, 0);
  });

  it('power-on outranks a later reset; a LUN reset restores D_SENSE, an I_T nexus loss does not', async () => {
    t.disk.reset('power-on');
    t.disk.reset('lun-reset');
    expectSense(await run(t.disk, cdb(0x00)), 6, 0x29, 0);
    await setDescriptorSense(t.disk, true);
    t.disk.reset('nexus-reset');
    expectSense(await run(t.disk, cdb(0x00)), 6, 0x29, 7, 'descriptor');
    t.disk.reset('lun-reset');
    expect(t.disk.descriptorSense).toBe(false);
    expectSense(await run(t.disk, cdb(0x00)), 6, 0x29, 3, 'fixed');
  });
});

describe('other commands and state', () => {
  it('TEST UNIT READY and START STOP UNIT succeed', async () => {
    expectGood(await run(t.disk, cdb(0x00)));
    expectGood(await run(t.disk, cdb(0x1b, 0, 0, 0, 0x01, 0)));
    expectGood(await run(t.disk, cdb(0x1b, 1, 0, 0, 0x02, 0)));
  });

  it('REPORT LUNS on a disk without a target: LUN 0', async () => {
    const r = await run(t.disk, cdb(0xa0, 0, 0, 0, 0, 0, ...alloc32(64), 0, 0), { in: 64 });
    expect(Array.from(r.data)).toEqual([0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
  });

  it('after close: NOT READY 04/00, and the backend is closed', async () => {
    const { disk, mem } = memDisk();
    disk.close();
    disk.close();
    expect(mem.closed).toBe(true);
    expectSense(await run(disk, cdb(0x00)), 2, 0x04, 0);
  });

  it('an aborted command answers TASK ABORTED without touching the medium', async () => {
    const { disk, mem } = memDisk();
    const ac = new AbortController();
    ac.abort();
    const r = await run(disk, cdb(0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0), { in: 512, signal: ac.signal });
    expect([r.status, r.dataInLength, r.residual]).toEqual([0x40, 0, 512]);
    expect(mem.calls).toEqual([]);
    expect(disk.info().aborted).toBe(1);
  });

  it('info() carries the counters and the last sense', async () => {
    const list = new Uint8Array(512).fill(1);
    await run(t.disk, cdb(0x2a, 0x08, 0, 0, 0, 0, 0, 0, 1, 0), { out: list });
    await run(t.disk, cdb(0x28, 0, 0, 0, 0, 0, 0, 0, 2, 0), { in: 1024 });
    await run(t.disk, cdb(0x35));
    await run(t.disk, cdb(0x28, 0, 0, 0, 0x10, 0, 0, 0, 1, 0), { in: 512 });
    await run(t.disk, cdb(0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0), { in: 100 });
    expect(t.disk.info()).toMatchObject({
      kind: 'disk',
      readonly: false,
      blockSize: 512,
      blocks: 2048,
      serial: 'SN0001',
      dSense: false,
      pendingUnitAttention: null,
      reads: 1,
      writes: 1,
      bytesRead: 1024,
      bytesWritten: 512,
      flushes: 2,
      unmaps: 0,
      checkConditions: 1,
      overruns: 1,
      lastSense: '05/21/00 ILLEGAL REQUEST: LOGICAL BLOCK ADDRESS OUT OF RANGE',
      lastIoError: null,
    });
  });
});
