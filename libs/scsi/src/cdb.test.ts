import { cdbLength, parseCdb, parseUnmapList } from './cdb';
import { CheckCondition } from './sense';
import { cdb, rw10, rw16 } from './test-util';

const g = { blockSize: 512, blocks: 2048 };

function senseOf(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    if (e instanceof CheckCondition) return `${e.key}/${(e.code >> 8).toString(16)}/${(e.code & 0xff).toString(16)}`;
    throw e;
  }
  return 'no error';
}

describe('CDB parsing', () => {
  it('takes the CDB length from the group code', () => {
    expect([0x00, 0x1f, 0x20, 0x5f, 0x80, 0x9f, 0xa0, 0xbf].map(cdbLength)).toEqual([6, 6, 10, 10, 16, 16, 12, 12]);
    expect([0x60, 0x7f, 0xc0, 0xff].map(cdbLength)).toEqual([undefined, undefined, undefined, undefined]);
  });

  it('rejects variable-length, vendor and unknown opcodes as INVALID COMMAND OPERATION CODE', () => {
    for (const op of [0x7f, 0x60, 0xc0, 0xff, 0x01, 0x04, 0xa3]) expect(senseOf(() => parseCdb(cdb(op), g))).toBe('5/20/0');
    expect(senseOf(() => parseCdb(new Uint8Array(0), g))).toBe('5/20/0');
  });

  it('rejects a CDB shorter than its group length and the NACA bit in the CONTROL byte', () => {
    expect(senseOf(() => parseCdb(new Uint8Array([0x28, 0, 0, 0]), g))).toBe('5/24/0');
    const c = rw10(0x28, 0, 1);
    c[9] = 0x04;
    expect(senseOf(() => parseCdb(c, g))).toBe('5/24/0');
    c[9] = 0x01; // LINK (obsolete) is ignored
    expect(senseOf(() => parseCdb(c, g))).toBe('no error');
    const c6 = cdb(0x00, 0, 0, 0, 0, 0x04);
    expect(senseOf(() => parseCdb(c6, g))).toBe('5/24/0');
  });

  it('uses only the group length of a 32-byte CDB (bytes beyond it are ignored)', () => {
    const c = rw10(0x28, 1, 2);
    c.fill(0xff, 10);
    expect(parseCdb(c, g)).toMatchObject({ req: { op: 'read', lba: 1, blocks: 2 }, dir: 'in', length: 1024 });
  });

  it('64-bit LBAs of 2^53 and beyond are out of range, as are LBA + length overflows', () => {
    expect(senseOf(() => parseCdb(rw16(0x88, 2n ** 53n, 1), g))).toBe('5/21/0');
    expect(senseOf(() => parseCdb(rw16(0x88, 2n ** 64n - 1n, 1), g))).toBe('5/21/0');
    expect(senseOf(() => parseCdb(rw16(0x88, 2047, 0xffffffff), g))).toBe('5/21/0');
    expect(parseCdb(rw16(0x88, 2047, 1), g).req).toEqual({ op: 'read', lba: 2047, blocks: 1 });
  });

  it('transfers beyond the maximum transfer length are INVALID FIELD IN CDB when in range', () => {
    const big = { blockSize: 512, blocks: 1 << 20 };
    expect(senseOf(() => parseCdb(rw16(0x88, 0, 65537), big))).toBe('5/24/0');
    expect(parseCdb(rw16(0x88, 0, 65536), big).length).toBe(32 << 20);
  });

  it('UNMAP lists: partial descriptors ignored, range and count limits', () => {
    const list = (descs: [number, number][], extra = 0): Uint8Array => {
      const b = new Uint8Array(8 + 16 * descs.length + extra);
      const v = new DataView(b.buffer);
      v.setUint16(0, b.length - 2);
      v.setUint16(2, 16 * descs.length + extra);
      descs.forEach(([lba, n], i) => {
        v.setBigUint64(8 + 16 * i, BigInt(lba));
        v.setUint32(16 + 16 * i, n);
      });
      return b;
    };
    expect(
      parseUnmapList(
        list(
          [
            [0, 8],
            [100, 0],
            [2040, 8],
          ],
          10,
        ),
        g,
      ),
    ).toEqual([
      { lba: 0, blocks: 8 },
      { lba: 2040, blocks: 8 },
    ]);
    expect(senseOf(() => parseUnmapList(list([[2041, 8]]), g))).toBe('5/21/0');
    expect(senseOf(() => parseUnmapList(list(Array.from({ length: 257 }, () => [0, 1] as [number, number])), g))).toBe('5/26/0');
    const huge = { blockSize: 512, blocks: 2 ** 40 };
    expect(
      senseOf(() =>
        parseUnmapList(
          list([
            [0, 1 << 21],
            [0, 1],
          ]),
          huge,
        ),
      ),
    ).toBe('5/26/0');
    // The descriptor data length is capped by what the parameter list holds.
    const short = list([
      [0, 8],
      [8, 8],
    ]);
    expect(parseUnmapList(short.subarray(0, 8 + 16 + 5), g)).toEqual([{ lba: 0, blocks: 8 }]);
  });
});
