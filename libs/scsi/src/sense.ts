/**
 * Sense data (SPC-4 4.5): building it in fixed (70h) or descriptor (72h) format,
 * and decoding either.
 */
import { ASC_NAMES, Asc, SENSE_KEY_NAMES, SenseKeyCode } from './defs';

/** A sense key with its additional sense code and qualifier. */
export interface SenseKey {
  key: number;
  asc: number;
  ascq: number;
}

/** The SENSE KEY SPECIFIC field pointer: which byte (and bit) of the CDB or parameter list is wrong. */
export interface FieldPointer {
  inCdb: boolean;
  byte: number;
  bit?: number;
}

/**
 * A command that ends in CHECK CONDITION. Thrown by the parsers and handlers for
 * guest mistakes and I/O failures; execute() turns it into the response.
 */
export class CheckCondition extends Error {
  constructor(
    readonly key: SenseKeyCode,
    /** `asc << 8 | ascq` */
    readonly code: Asc,
    readonly field?: FieldPointer,
    /** The INFORMATION field (e.g. the miscompare offset). */
    readonly information?: number,
  ) {
    super(senseName({ key, asc: code >> 8, ascq: code & 0xff }));
  }

  get sense(): SenseKey {
    return { key: this.key, asc: this.code >> 8, ascq: this.code & 0xff };
  }
}

export const invalidOpcode = (): CheckCondition =>
  new CheckCondition(SenseKeyCode.ILLEGAL_REQUEST, Asc.INVALID_OPCODE, { inCdb: true, byte: 0 });
export const invalidFieldInCdb = (byte: number, bit?: number): CheckCondition =>
  new CheckCondition(SenseKeyCode.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_CDB, { inCdb: true, byte, bit });
export const invalidFieldInParameterList = (byte: number, bit?: number): CheckCondition =>
  new CheckCondition(SenseKeyCode.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_PARAMETER_LIST, { inCdb: false, byte, bit });
export const parameterListLengthError = (): CheckCondition =>
  new CheckCondition(SenseKeyCode.ILLEGAL_REQUEST, Asc.PARAMETER_LIST_LENGTH_ERROR);
export const lbaOutOfRange = (): CheckCondition => new CheckCondition(SenseKeyCode.ILLEGAL_REQUEST, Asc.LBA_OUT_OF_RANGE);
export const writeProtected = (): CheckCondition => new CheckCondition(SenseKeyCode.DATA_PROTECT, Asc.WRITE_PROTECTED);
export const readError = (): CheckCondition => new CheckCondition(SenseKeyCode.MEDIUM_ERROR, Asc.UNRECOVERED_READ_ERROR);
export const writeError = (): CheckCondition => new CheckCondition(SenseKeyCode.MEDIUM_ERROR, Asc.WRITE_ERROR);
export const lunNotSupported = (): CheckCondition => new CheckCondition(SenseKeyCode.ILLEGAL_REQUEST, Asc.LUN_NOT_SUPPORTED);

export const FIXED_SENSE_LENGTH = 18;

/** Encodes sense data; `descriptor` selects the 72h format (D_SENSE / REQUEST SENSE DESC). */
export function encodeSense(cc: CheckCondition, descriptor: boolean): Uint8Array {
  const { key, asc, ascq } = cc.sense;
  const info = cc.information;
  const f = cc.field;
  const sks = f
    ? [0x80 | (f.inCdb ? 0x40 : 0) | (f.bit !== undefined ? 0x08 | (f.bit & 7) : 0), (f.byte >> 8) & 0xff, f.byte & 0xff]
    : undefined;
  if (!descriptor) {
    const b = new Uint8Array(FIXED_SENSE_LENGTH);
    b[0] = 0x70;
    b[2] = key & 0x0f;
    if (info !== undefined && info <= 0xffffffff) {
      b[0] |= 0x80; // VALID: the INFORMATION field holds a value
      new DataView(b.buffer).setUint32(3, info);
    }
    b[7] = FIXED_SENSE_LENGTH - 8;
    b[12] = asc;
    b[13] = ascq;
    if (sks) b.set(sks, 15);
    return b;
  }
  const len = 8 + (info !== undefined ? 12 : 0) + (sks ? 8 : 0);
  const b = new Uint8Array(len);
  b[0] = 0x72;
  b[1] = key & 0x0f;
  b[2] = asc;
  b[3] = ascq;
  b[7] = len - 8;
  let p = 8;
  if (info !== undefined) {
    // Information descriptor: type 00h, additional length 0Ah, VALID, 8-byte INFORMATION.
    b[p] = 0x00;
    b[p + 1] = 0x0a;
    b[p + 2] = 0x80;
    new DataView(b.buffer).setBigUint64(p + 4, BigInt(info));
    p += 12;
  }
  if (sks) {
    // Sense key specific descriptor: type 02h, additional length 06h.
    b[p] = 0x02;
    b[p + 1] = 0x06;
    b.set(sks, p + 4);
  }
  return b;
}

/** Reads the sense key, ASC and ASCQ of fixed or descriptor sense data; undefined if it is neither. */
export function decodeSense(sense: Uint8Array): SenseKey | undefined {
  if (sense.length < 1) return undefined;
  const code = sense[0] & 0x7f;
  if ((code === 0x70 || code === 0x71) && sense.length >= 14) return { key: sense[2] & 0x0f, asc: sense[12], ascq: sense[13] };
  if ((code === 0x72 || code === 0x73) && sense.length >= 4) return { key: sense[1] & 0x0f, asc: sense[2], ascq: sense[3] };
  return undefined;
}

const hex2 = (n: number): string => n.toString(16).padStart(2, '0');

/** "05/24/00 ILLEGAL REQUEST: INVALID FIELD IN CDB" */
export function senseName(s: SenseKey): string {
  const key = SENSE_KEY_NAMES[s.key] ?? 'KEY ' + hex2(s.key);
  const asc = ASC_NAMES[(s.asc << 8) | s.ascq] ?? `ASC ${hex2(s.asc)}h ASCQ ${hex2(s.ascq)}h`;
  return `${hex2(s.key)}/${hex2(s.asc)}/${hex2(s.ascq)} ${key}: ${asc}`;
}
