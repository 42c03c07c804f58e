/**
 * LUN encoding (SAM-5 4.7) and REPORT LUNS parameter data (SPC-4 6.33).
 */
import { MAX_LUN, REPORT_LUNS_ALL, REPORT_LUNS_ALL_ACCESSIBLE, REPORT_LUNS_WELL_KNOWN } from './defs';
import { invalidFieldInCdb } from './sense';

/**
 * A single-level LUN: peripheral device addressing (00b, bus 0) for 0..255,
 * flat space addressing (01b) for 256..16383.
 */
export function encodeLun(lun: number): Uint8Array {
  if (!Number.isInteger(lun) || lun < 0 || lun > MAX_LUN) throw new RangeError(`LUN ${lun} is not in 0..${MAX_LUN}`);
  const b = new Uint8Array(8);
  if (lun < 256) {
    b[1] = lun;
  } else {
    b[0] = 0x40 | (lun >> 8);
    b[1] = lun & 0xff;
  }
  return b;
}

/** The inverse of encodeLun for the two single-level methods; undefined for anything else. */
export function decodeLun(b: Uint8Array): number | undefined {
  if (b.length < 8 || b.subarray(2, 8).some((x) => x !== 0)) return undefined;
  const method = b[0] >> 6;
  if (method === 0 && b[0] === 0) return b[1];
  if (method === 1) return ((b[0] & 0x3f) << 8) | b[1];
  return undefined;
}

/** REPORT LUNS data: LUN LIST LENGTH, 4 reserved bytes, then 8 bytes per LUN in ascending order. */
export function reportLunsData(luns: readonly number[]): Uint8Array {
  const sorted = [...luns].sort((a, b) => a - b);
  const b = new Uint8Array(8 + 8 * sorted.length);
  new DataView(b.buffer).setUint32(0, 8 * sorted.length);
  sorted.forEach((lun, i) => b.set(encodeLun(lun), 8 + 8 * i));
  return b;
}

/** REPORT LUNS for a SELECT REPORT code: 00h and 02h list the logical units, 01h the (no) well-known ones. */
export function reportLuns(select: number, luns: readonly number[]): Uint8Array {
  switch (select) {
    case REPORT_LUNS_ALL:
    case REPORT_LUNS_ALL_ACCESSIBLE:
      return reportLunsData(luns);
    case REPORT_LUNS_WELL_KNOWN:
      return reportLunsData([]);
    default:
      throw invalidFieldInCdb(2);
  }
}
