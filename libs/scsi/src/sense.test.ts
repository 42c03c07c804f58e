import { Asc, SenseKeyCode } from './defs';
import { CheckCondition, decodeSense, encodeSense, invalidFieldInCdb, invalidFieldInParameterList, senseName } from './sense';

describe('sense data', () => {
  it('fixed format: 70h, key, ASC/ASCQ at 12/13, additional length 10, 18 bytes', () => {
    const s = encodeSense(new CheckCondition(SenseKeyCode.MEDIUM_ERROR, Asc.UNRECOVERED_READ_ERROR), false);
    expect(Array.from(s)).toEqual([0x70, 0, 0x03, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x11, 0x00, 0, 0, 0, 0]);
    expect(decodeSense(s)).toEqual({ key: 3, asc: 0x11, ascq: 0 });
  });

  it('descriptor format: 72h, key, ASC, ASCQ in the header', () => {
    const s = encodeSense(new CheckCondition(SenseKeyCode.UNIT_ATTENTION, Asc.I_T_NEXUS_LOSS), true);
    expect(Array.from(s)).toEqual([0x72, 0x06, 0x29, 0x07, 0, 0, 0, 0]);
    expect(decodeSense(s)).toEqual({ key: 6, asc: 0x29, ascq: 0x07 });
  });

  it('field pointers go in the sense-key specific bytes (fixed) or descriptor 02h', () => {
    const cc = invalidFieldInCdb(1, 4);
    const f = encodeSense(cc, false);
    expect(Array.from(f.subarray(15, 18))).toEqual([0x80 | 0x40 | 0x08 | 4, 0, 1]);
    const d = encodeSense(cc, true);
    expect(d[7]).toBe(8);
    expect(Array.from(d.subarray(8, 16))).toEqual([0x02, 0x06, 0, 0, 0xcc, 0, 1, 0]);
    const p = encodeSense(invalidFieldInParameterList(300), false);
    expect(Array.from(p.subarray(15, 18))).toEqual([0x80, 1, 44]);
  });

  it('the INFORMATION field sets VALID (fixed) or adds an information descriptor', () => {
    const cc = new CheckCondition(SenseKeyCode.MISCOMPARE, Asc.MISCOMPARE_DURING_VERIFY, undefined, 0x1234);
    const f = encodeSense(cc, false);
    expect(f[0]).toBe(0xf0);
    expect(Array.from(f.subarray(3, 7))).toEqual([0, 0, 0x12, 0x34]);
    const d = encodeSense(cc, true);
    expect(Array.from(d)).toEqual([0x72, 0x0e, 0x1d, 0, 0, 0, 0, 12, 0x00, 0x0a, 0x80, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34]);
    expect(decodeSense(d)).toEqual({ key: 0x0e, asc: 0x1d, ascq: 0 });
  });

  it('decodes deferred formats and rejects what is neither', () => {
    expect(decodeSense(new Uint8Array(0))).toBeUndefined();
    expect(decodeSense(new Uint8Array([0x70, 0, 5]))).toBeUndefined();
    expect(decodeSense(new Uint8Array(18).fill(0x7f))).toBeUndefined();
    const f = encodeSense(invalidFieldInCdb(0), false);
    f[0] = 0x71;
    expect(decodeSense(f)).toEqual({ key: 5, asc: 0x24, ascq: 0 });
    expect(decodeSense(new Uint8Array([0x73, 0x05, 0x21, 0x00]))).toEqual({ key: 5, asc: 0x21, ascq: 0 });
  });

  it('names sense for the monitor', () => {
    expect(senseName({ key: 5, asc: 0x24, ascq: 0 })).toBe('05/24/00 ILLEGAL REQUEST: INVALID FIELD IN CDB');
    expect(senseName({ key: 9, asc: 0x44, ascq: 1 })).toBe('09/44/01 KEY 09: ASC 44h ASCQ 01h');
  });
});
