/**
 * ScsiTarget: the LUN table, REPORT LUNS and the answers for a LUN with no
 * logical unit.
 */
import { decodeLun, encodeLun } from './luns';
import { decodeSense } from './sense';
import { ScsiTarget } from './target';
import {
  type TempDisk,
  alloc32,
  cdb,
  expectGood,
  expectSense,
  memDisk,
  removeTempDirs,
  run,
  setDescriptorSense,
  tempDisk,
} from './test-util';

const reportLuns = (select: number, alloc: number): Uint8Array => cdb(0xa0, 0, select, 0, 0, 0, ...alloc32(alloc), 0, 0);
const at = (target: ScsiTarget, lun: number) => ({ execute: (c: Parameters<ScsiTarget['execute']>[1]) => target.execute(lun, c) });

let t: TempDisk;
let target: ScsiTarget;
beforeEach(() => {
  t = tempDisk(1 << 20);
  target = new ScsiTarget();
});
afterEach(() => t.cleanup());
afterAll(removeTempDirs);

describe('LUN table', () => {
  it('attach, look up, list in order, detach', () => {
    const a = memDisk().disk;
    const b = memDisk().disk;
    target.attach(300, a);
    target.attach(0, t.disk);
    target.attach(5, b);
    expect(target.luns).toEqual([0, 5, 300]);
    expect(target.lun(5)).toBe(b);
    expect(target.lun(6)).toBeUndefined();
    expect(target.detach(5)).toBe(b);
    expect(target.detach(5)).toBeUndefined();
    expect(target.luns).toEqual([0, 300]);
  });

  it('throws when the LUN is taken or out of range', () => {
    target.attach(1, t.disk);
    expect(() => target.attach(1, memDisk().disk)).toThrow(/already attached/);
    for (const bad of [-1, 16384, 1.5, NaN]) expect(() => target.attach(bad, memDisk().disk)).toThrow(RangeError);
    target.attach(16383, memDisk().disk);
  });

  it('forwards commands to the addressed unit', async () => {
    target.attach(2, t.disk);
    const r = await run(at(target, 2), cdb(0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0), { in: 512 });
    expectGood(r);
    expect(t.disk.info().reads).toBe(1);
  });

  it('reset and close reach every unit', async () => {
    const m = memDisk();
    target.attach(0, t.disk);
    target.attach(1, m.disk);
    target.reset('power-on');
    expectSense(await run(at(target, 0), cdb(0x00)), 6, 0x29, 0);
    expectSense(await run(at(target, 1), cdb(0x00)), 6, 0x29, 0);
    target.reset('nexus-reset');
    expectSense(await run(at(target, 1), cdb(0x00)), 6, 0x29, 7);
    target.close();
    expect(m.mem.closed).toBe(true);
    expect(target.luns).toEqual([]);
  });
});

describe('LUN encoding (SAM-5 single level)', () => {
  it('peripheral device addressing below 256, flat space addressing above', () => {
    expect(Array.from(encodeLun(0))).toEqual([0, 0, 0, 0, 0, 0, 0, 0]);
    expect(Array.from(encodeLun(255))).toEqual([0, 255, 0, 0, 0, 0, 0, 0]);
    expect(Array.from(encodeLun(256))).toEqual([0x41, 0x00, 0, 0, 0, 0, 0, 0]);
    expect(Array.from(encodeLun(16383))).toEqual([0x7f, 0xff, 0, 0, 0, 0, 0, 0]);
    for (const l of [0, 1, 255, 256, 4000, 16383]) expect(decodeLun(encodeLun(l))).toBe(l);
    expect(decodeLun(new Uint8Array([0x01, 0, 0, 0, 0, 0, 0, 0]))).toBeUndefined();
    expect(decodeLun(new Uint8Array([0xc0, 0, 0, 0, 0, 0, 0, 0]))).toBeUndefined();
    expect(() => encodeLun(16384)).toThrow(RangeError);
  });
});

describe('REPORT LUNS', () => {
  beforeEach(() => {
    target.attach(0, t.disk);
    target.attach(1000, memDisk().disk);
    target.attach(7, memDisk().disk);
  });

  it.each([0x00, 0x02])('select report %i: every LUN, ascending', async (select) => {
    const r = await run(at(target, 0), reportLuns(select, 64), { in: 64 });
    expectGood(r);
    expect(Array.from(r.data)).toEqual([
      ...[0, 0, 0, 24, 0, 0, 0, 0],
      ...[0, 0, 0, 0, 0, 0, 0, 0],
      ...[0, 7, 0, 0, 0, 0, 0, 0],
      ...[0x43, 0xe8, 0, 0, 0, 0, 0, 0],
    ]);
    expect(r.residual).toBe(32);
  });

  it('select report 1 (well-known LUNs): an empty list', async () => {
    const r = await run(at(target, 0), reportLuns(1, 16), { in: 16 });
    expect(Array.from(r.data)).toEqual([0, 0, 0, 0, 0, 0, 0, 0]);
  });

  it('other select report codes: INVALID FIELD IN CDB', async () => {
    for (const s of [0x03, 0x10, 0xff]) expectSense(await run(at(target, 0), reportLuns(s, 16), { in: 16 }), 5, 0x24, 0);
  });

  it('truncates to the allocation length, keeping the full LUN LIST LENGTH', async () => {
    const r = await run(at(target, 0), reportLuns(0, 16), { in: 16 });
    expect(Array.from(r.data)).toEqual([0, 0, 0, 24, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    expect((await run(at(target, 0), reportLuns(0, 64), { in: 32 })).overrun).toBe(true);
  });

  it('works at a LUN with no unit, and does not consume a unit attention', async () => {
    const r = await run(at(target, 99), reportLuns(0, 64), { in: 64 });
    expect(r.data.length).toBe(32);
    target.reset('power-on');
    expectGood(await run(at(target, 0), reportLuns(0, 64), { in: 64 }));
    expectSense(await run(at(target, 0), cdb(0x00)), 6, 0x29, 0);
  });

  it("its CHECK CONDITION uses the addressed unit's sense format", async () => {
    await setDescriptorSense(t.disk, true);
    expectSense(await run(at(target, 0), reportLuns(9, 16), { in: 16 }), 5, 0x24, 0, 'descriptor');
    expectSense(await run(at(target, 7), reportLuns(9, 16), { in: 16 }), 5, 0x24, 0, 'fixed');
    expectSense(await run(at(target, 99), reportLuns(9, 16), { in: 16 }), 5, 0x24, 0, 'fixed');
  });
});

describe('a LUN with no logical unit', () => {
  it('INQUIRY: peripheral qualifier 011b, device type 1Fh', async () => {
    const r = await run(at(target, 3), cdb(0x12, 0, 0, 0, 36, 0), { in: 36 });
    expectGood(r);
    expect([r.data[0], r.data[2], r.data[3], r.dataInLength]).toEqual([0x7f, 6, 2, 36]);
    const vpd = await run(at(target, 3), cdb(0x12, 1, 0, 0, 255, 0), { in: 255 });
    expect(Array.from(vpd.data)).toEqual([0x7f, 0, 0, 1, 0]);
    expectSense(await run(at(target, 3), cdb(0x12, 1, 0x80, 0, 255, 0), { in: 255 }), 5, 0x24, 0);
    expectSense(await run(at(target, 3), cdb(0x12, 0, 0, 0, 36, 4), { in: 36 }), 5, 0x24, 0);
  });

  it('REQUEST SENSE: GOOD with LOGICAL UNIT NOT SUPPORTED, in the format DESC asks for', async () => {
    const f = await run(at(target, 3), cdb(0x03, 0, 0, 0, 252, 0), { in: 252 });
    expectGood(f);
    expect([f.data[0], decodeSense(f.data)]).toEqual([0x70, { key: 5, asc: 0x25, ascq: 0 }]);
    const d = await run(at(target, 3), cdb(0x03, 1, 0, 0, 252, 0), { in: 252 });
    expect([d.data[0], decodeSense(d.data)]).toEqual([0x72, { key: 5, asc: 0x25, ascq: 0 }]);
  });

  it('anything else: CHECK CONDITION, ILLEGAL REQUEST, 25/00', async () => {
    expectSense(await run(at(target, 3), cdb(0x00)), 5, 0x25, 0);
    expectSense(await run(at(target, 3), cdb(0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0), { in: 512 }), 5, 0x25, 0);
    expectSense(await run(at(target, 3), cdb(0xff)), 5, 0x25, 0);
    expectSense(await run(at(target, 70000), cdb(0x00)), 5, 0x25, 0);
    expectSense(await run(at(target, 3), new Uint8Array(0)), 5, 0x25, 0);
  });

  it('overrun and abort apply there too', async () => {
    expect((await run(at(target, 3), cdb(0x12, 0, 0, 0, 36, 0), { in: 20 })).overrun).toBe(true);
    const ac = new AbortController();
    ac.abort();
    expect((await run(at(target, 3), cdb(0x12, 0, 0, 0, 36, 0), { in: 36, signal: ac.signal })).status).toBe(0x40);
  });
});
