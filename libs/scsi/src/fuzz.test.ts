/**
 * Random CDBs and buffers never throw out of execute(): every answer is GOOD,
 * CHECK CONDITION with decodable sense, TASK ABORTED or an overrun, and the
 * byte counts stay within what was offered.
 */
import fc from 'fast-check';
import { Op } from './defs';
import { decodeSense } from './sense';
import { ScsiTarget } from './target';
import { memDisk } from './test-util';
import type { ScsiResponse } from './types';

const KNOWN = Object.values(Op).filter((v): v is number => typeof v === 'number');

/** Mostly small values so that some commands are valid and reach the backend. */
const byte = fc.oneof(
  { weight: 3, arbitrary: fc.constant(0) },
  { weight: 2, arbitrary: fc.integer({ min: 0, max: 8 }) },
  { weight: 2, arbitrary: fc.integer({ min: 0, max: 255 }) },
);
const cdbArb = fc
  .tuple(
    fc.oneof({ weight: 4, arbitrary: fc.constantFrom(...KNOWN) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 255 }) }),
    fc.array(byte, { minLength: 0, maxLength: 31 }),
  )
  .map(([op, rest]) => Uint8Array.from([op, ...rest]));
const sizes = fc.array(fc.oneof(fc.constant(512), fc.integer({ min: 0, max: 4096 })), { maxLength: 3 });
const bufsArb = fc.record({
  dataIn: sizes,
  dataOut: fc.array(fc.uint8Array({ maxLength: 2048 }), { maxLength: 3 }),
  lun: fc.integer({ min: 0, max: 3 }),
});

function checkShape(res: ScsiResponse, offeredIn: number, offeredOut: number): void {
  expect([0x00, 0x02, 0x40]).toContain(res.status);
  expect(res.dataInLength).toBeGreaterThanOrEqual(0);
  expect(res.dataInLength).toBeLessThanOrEqual(offeredIn);
  expect(res.residual).toBeGreaterThanOrEqual(0);
  expect(res.residual).toBeLessThanOrEqual(offeredIn + offeredOut);
  if (res.status === 0x02) {
    expect(decodeSense(res.sense)).toBeDefined();
    expect(res.dataInLength).toBe(0);
  } else {
    expect(res.sense.length).toBe(0);
  }
  if (res.overrun) expect([res.dataInLength, res.residual]).toEqual([0, offeredIn + offeredOut]);
}

describe('fuzzing', () => {
  it('random CDBs and buffers: a well-formed response, never an exception', async () => {
    const target = new ScsiTarget();
    target.attach(0, memDisk(64 * 1024).disk);
    target.attach(1, memDisk(64 * 1024, { readonly: true, logicalBlockSize: 4096 }).disk);
    target.attach(2, memDisk(64 * 1024, {}, { read: true, write: true, flush: true, discard: true, writeZeroes: true }).disk);
    await fc.assert(
      fc.asyncProperty(cdbArb, bufsArb, fc.boolean(), async (c, b, ua) => {
        if (ua) target.reset('nexus-reset');
        const dataIn = b.dataIn.map((n) => new Uint8Array(n));
        const res = await target.execute(b.lun, { cdb: c, dataIn, dataOut: b.dataOut });
        checkShape(
          res,
          dataIn.reduce((n, v) => n + v.length, 0),
          b.dataOut.reduce((n, v) => n + v.length, 0),
        );
      }),
      { numRuns: 1000 },
    );
  });

  it('mutated valid CDBs (one field flipped) still answer', async () => {
    const { disk } = memDisk(64 * 1024);
    const valid = [
      [0x28, 0, 0, 0, 0, 4, 0, 0, 2, 0],
      [0x2a, 0x08, 0, 0, 0, 4, 0, 0, 1, 0],
      [0x12, 1, 0xb0, 0, 64, 0],
      [0x1a, 0, 0x3f, 0, 255, 0],
      [0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
      [0x93, 0x08, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 4, 0, 0],
      [0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0],
      [0x55, 0x10, 0, 0, 0, 0, 0, 0, 20, 0],
    ];
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...valid),
        fc.nat(),
        fc.integer({ min: 0, max: 255 }),
        fc.uint8Array({ minLength: 0, maxLength: 1024 }),
        async (v, at, val, out) => {
          const c = Uint8Array.from(v);
          c[at % c.length] = val;
          const res = await disk.execute({ cdb: c, dataIn: [new Uint8Array(1024)], dataOut: [] });
          checkShape(res, 1024, 0);
          const res2 = await disk.execute({ cdb: c, dataIn: [], dataOut: [out] });
          checkShape(res2, 0, out.length);
        },
      ),
      { numRuns: 600 },
    );
  });
});
