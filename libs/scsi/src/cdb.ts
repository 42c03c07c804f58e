/**
 * CDB parsing: pure, no I/O. Decides the command, its fields, its data direction
 * and transfer length, and throws CheckCondition for anything the guest got
 * wrong (unknown opcode, bad field, LBA out of range).
 */
import {
  Asc,
  MAX_TRANSFER_BYTES,
  MAX_UNMAP_BYTES,
  MAX_UNMAP_DESCRIPTORS,
  MAX_WRITE_SAME_BYTES,
  MODE_PAGE_ALL,
  MODE_PAGE_CACHING,
  MODE_PAGE_CONTROL,
  MODE_SUBPAGE_ALL,
  Op,
  PageControl,
  SAI_READ_CAPACITY_16,
  SenseKeyCode,
} from './defs';
import {
  CheckCondition,
  invalidFieldInCdb,
  invalidFieldInParameterList,
  invalidOpcode,
  lbaOutOfRange,
  parameterListLengthError,
} from './sense';

/** The logical unit's shape, for range checks. */
export interface Geometry {
  blockSize: number;
  /** Number of logical blocks (capacity). */
  blocks: number;
}

export type Direction = 'none' | 'in' | 'out';

export type Request =
  | { op: 'test-unit-ready' }
  | { op: 'request-sense'; desc: boolean; alloc: number }
  | { op: 'inquiry'; evpd: boolean; page: number; alloc: number }
  | { op: 'report-luns'; select: number; alloc: number }
  | { op: 'read'; lba: number; blocks: number }
  | { op: 'write'; lba: number; blocks: number; fua: boolean }
  | { op: 'verify'; lba: number; blocks: number; bytchk: boolean }
  | { op: 'synchronize-cache'; lba: number; blocks: number }
  | { op: 'read-capacity-10' }
  | { op: 'read-capacity-16'; alloc: number }
  | { op: 'mode-sense'; ten: boolean; dbd: boolean; llbaa: boolean; pc: PageControl; page: number; subpage: number; alloc: number }
  | { op: 'mode-select'; ten: boolean; length: number }
  | { op: 'start-stop-unit' }
  | { op: 'unmap'; length: number }
  | { op: 'write-same'; lba: number; blocks: number; unmap: boolean; ndob: boolean };

export interface ParsedCdb {
  opcode: number;
  req: Request;
  /** Which buffers the command moves data through. */
  dir: Direction;
  /** Bytes the command transfers (data-in: the ALLOCATION LENGTH when `allocation`). */
  length: number;
  /** The length is an ALLOCATION LENGTH: the device may return less. */
  allocation: boolean;
}

/** The CDB length an opcode's group code gives (SPC-4 4.2.5.1); undefined for variable-length and vendor groups. */
export function cdbLength(opcode: number): number | undefined {
  switch (opcode >> 5) {
    case 0:
      return 6;
    case 1:
    case 2:
      return 10;
    case 4:
      return 16;
    case 5:
      return 12;
    default:
      return undefined; // 3: variable length (7Fh) and reserved; 6, 7: vendor specific
  }
}

const u16 = (b: Uint8Array, o: number): number => (b[o] << 8) | b[o + 1];
const u32 = (b: Uint8Array, o: number): number => ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0;
/** A 64-bit big-endian field as a Number, or Infinity when it is 2^53 or more (beyond any capacity). */
function u64(b: Uint8Array, o: number): number {
  const hi = u32(b, o);
  if (hi >= 0x200000) return Infinity;
  return hi * 0x1_0000_0000 + u32(b, o + 4);
}

function rangeCheck(g: Geometry, lba: number, blocks: number): void {
  if (lba + blocks > g.blocks) throw lbaOutOfRange();
}

function transferCheck(g: Geometry, blocks: number, lengthByte: number): void {
  if (blocks * g.blockSize > MAX_TRANSFER_BYTES) throw invalidFieldInCdb(lengthByte);
}

/** Rejects RDPROTECT/WRPROTECT/VRPROTECT (byte 1 bits 7:5): no protection information. */
function noProtection(c: Uint8Array): void {
  if (c[1] & 0xe0) throw invalidFieldInCdb(1, 7);
}

/** The medium-access commands: where their LBA and block count are, and which byte holds the count. */
const MEDIUM_ACCESS: Record<number, [lba: (c: Uint8Array) => number, blocks: (c: Uint8Array) => number, lengthByte: number]> = {
  [Op.READ_6]: [(c) => ((c[1] & 0x1f) << 16) | u16(c, 2), (c) => c[4] || 256, 4],
  [Op.READ_10]: [(c) => u32(c, 2), (c) => u16(c, 7), 7],
  [Op.READ_12]: [(c) => u32(c, 2), (c) => u32(c, 6), 6],
  [Op.READ_16]: [(c) => u64(c, 2), (c) => u32(c, 10), 10],
  [Op.WRITE_6]: [(c) => ((c[1] & 0x1f) << 16) | u16(c, 2), (c) => c[4] || 256, 4],
  [Op.WRITE_10]: [(c) => u32(c, 2), (c) => u16(c, 7), 7],
  [Op.WRITE_12]: [(c) => u32(c, 2), (c) => u32(c, 6), 6],
  [Op.WRITE_16]: [(c) => u64(c, 2), (c) => u32(c, 10), 10],
  [Op.WRITE_AND_VERIFY_10]: [(c) => u32(c, 2), (c) => u16(c, 7), 7],
  [Op.WRITE_AND_VERIFY_12]: [(c) => u32(c, 2), (c) => u32(c, 6), 6],
  [Op.WRITE_AND_VERIFY_16]: [(c) => u64(c, 2), (c) => u32(c, 10), 10],
  [Op.VERIFY_10]: [(c) => u32(c, 2), (c) => u16(c, 7), 7],
  [Op.VERIFY_12]: [(c) => u32(c, 2), (c) => u32(c, 6), 6],
  [Op.VERIFY_16]: [(c) => u64(c, 2), (c) => u32(c, 10), 10],
  [Op.SYNCHRONIZE_CACHE_10]: [(c) => u32(c, 2), (c) => u16(c, 7), 7],
  [Op.SYNCHRONIZE_CACHE_16]: [(c) => u64(c, 2), (c) => u32(c, 10), 10],
  [Op.WRITE_SAME_10]: [(c) => u32(c, 2), (c) => u16(c, 7), 7],
  [Op.WRITE_SAME_16]: [(c) => u64(c, 2), (c) => u32(c, 10), 10],
};

/**
 * Parses a CDB. `geometry` is needed for the medium-access commands (LBA range
 * checks); the target parses INQUIRY, REQUEST SENSE and REPORT LUNS without one.
 */
export function parseCdb(cdb: Uint8Array, geometry?: Geometry): ParsedCdb {
  if (cdb.length === 0) throw invalidOpcode();
  const opcode = cdb[0];
  const len = cdbLength(opcode);
  if (len === undefined) throw invalidOpcode();
  if (cdb.length < len) throw invalidFieldInCdb(cdb.length);
  const c = cdb.subarray(0, len);
  const req = parseFields(c, geometry);
  if (req === undefined) throw invalidOpcode();
  // CONTROL byte: NACA (bit 2) asks for ACA, which we do not support (SAM-5 5.8.2).
  if (c[len - 1] & 0x04) throw invalidFieldInCdb(len - 1, 2);
  return { opcode, req, ...transfer(req, geometry) };
}

function transfer(req: Request, g: Geometry | undefined): Pick<ParsedCdb, 'dir' | 'length' | 'allocation'> {
  const bs = g?.blockSize ?? 0;
  switch (req.op) {
    case 'test-unit-ready':
    case 'synchronize-cache':
    case 'start-stop-unit':
      return { dir: 'none', length: 0, allocation: false };
    case 'request-sense':
    case 'inquiry':
    case 'report-luns':
    case 'read-capacity-16':
    case 'mode-sense':
      return { dir: 'in', length: req.alloc, allocation: true };
    case 'read-capacity-10':
      return { dir: 'in', length: 8, allocation: false };
    case 'read':
      return { dir: 'in', length: req.blocks * bs, allocation: false };
    case 'write':
      return { dir: 'out', length: req.blocks * bs, allocation: false };
    case 'verify':
      return req.bytchk ? { dir: 'out', length: req.blocks * bs, allocation: false } : { dir: 'none', length: 0, allocation: false };
    case 'mode-select':
    case 'unmap':
      return { dir: 'out', length: req.length, allocation: false };
    case 'write-same':
      return req.ndob ? { dir: 'none', length: 0, allocation: false } : { dir: 'out', length: bs, allocation: false };
  }
}

function parseFields(c: Uint8Array, g: Geometry | undefined): Request | undefined {
  const op = c[0];
  switch (op) {
    case Op.TEST_UNIT_READY:
      return { op: 'test-unit-ready' };
    case Op.REQUEST_SENSE:
      return { op: 'request-sense', desc: (c[1] & 0x01) !== 0, alloc: c[4] };
    case Op.INQUIRY: {
      if (c[1] & 0x02) throw invalidFieldInCdb(1, 1); // CMDDT (obsolete)
      const evpd = (c[1] & 0x01) !== 0;
      if (!evpd && c[2] !== 0) throw invalidFieldInCdb(2);
      return { op: 'inquiry', evpd, page: c[2], alloc: u16(c, 3) };
    }
    case Op.REPORT_LUNS:
      return { op: 'report-luns', select: c[2], alloc: u32(c, 6) };
    case Op.START_STOP_UNIT:
      return { op: 'start-stop-unit' };
    case Op.READ_CAPACITY_10:
      if (!(c[8] & 0x01) && u32(c, 2) !== 0) throw invalidFieldInCdb(2); // PMI=0 needs LBA 0
      return { op: 'read-capacity-10' };
    case Op.SERVICE_ACTION_IN_16:
      if ((c[1] & 0x1f) !== SAI_READ_CAPACITY_16) throw invalidFieldInCdb(1, 4);
      if (!(c[14] & 0x01) && u64(c, 2) !== 0) throw invalidFieldInCdb(2);
      return { op: 'read-capacity-16', alloc: u32(c, 10) };
    case Op.MODE_SENSE_6:
    case Op.MODE_SENSE_10: {
      const ten = op === Op.MODE_SENSE_10;
      const pc = (c[2] >> 6) as PageControl;
      const page = c[2] & 0x3f;
      const subpage = c[3];
      if (pc === PageControl.SAVED)
        throw new CheckCondition(SenseKeyCode.ILLEGAL_REQUEST, Asc.SAVING_PARAMETERS_NOT_SUPPORTED, { inCdb: true, byte: 2, bit: 7 });
      if (page !== MODE_PAGE_CACHING && page !== MODE_PAGE_CONTROL && page !== MODE_PAGE_ALL) throw invalidFieldInCdb(2, 5);
      if (subpage !== 0 && subpage !== MODE_SUBPAGE_ALL) throw invalidFieldInCdb(3);
      return {
        op: 'mode-sense',
        ten,
        dbd: (c[1] & 0x08) !== 0,
        llbaa: ten && (c[1] & 0x10) !== 0,
        pc,
        page,
        subpage,
        alloc: ten ? u16(c, 7) : c[4],
      };
    }
    case Op.MODE_SELECT_6:
    case Op.MODE_SELECT_10: {
      const ten = op === Op.MODE_SELECT_10;
      const length = ten ? u16(c, 7) : c[4];
      if (c[1] & 0x01) throw invalidFieldInCdb(1, 0); // SP: no saved pages
      // PF=0 would make the pages vendor specific; only an empty list is acceptable then.
      if (!(c[1] & 0x10) && length !== 0) throw invalidFieldInCdb(1, 4);
      return { op: 'mode-select', ten, length };
    }
    case Op.UNMAP: {
      if (c[1] & 0x01) throw invalidFieldInCdb(1, 0); // ANCHOR, and ANC_SUP is 0
      const length = u16(c, 7);
      if (length > 0 && length < 8) throw parameterListLengthError();
      return { op: 'unmap', length };
    }
  }
  const rw = MEDIUM_ACCESS[op];
  if (!rw) return undefined;
  if (!g) throw new Error('a medium-access command needs the geometry');
  const [lbaOf, blocksOf, lengthByte] = rw;
  const lba = lbaOf(c);
  const blocks = blocksOf(c);
  switch (op) {
    case Op.READ_6:
    case Op.READ_10:
    case Op.READ_12:
    case Op.READ_16:
      if (op !== Op.READ_6) noProtection(c);
      rangeCheck(g, lba, blocks);
      transferCheck(g, blocks, lengthByte);
      return { op: 'read', lba, blocks };
    case Op.WRITE_6:
    case Op.WRITE_10:
    case Op.WRITE_12:
    case Op.WRITE_16:
      if (op !== Op.WRITE_6) noProtection(c);
      rangeCheck(g, lba, blocks);
      transferCheck(g, blocks, lengthByte);
      return { op: 'write', lba, blocks, fua: op !== Op.WRITE_6 && (c[1] & 0x08) !== 0 };
    case Op.WRITE_AND_VERIFY_10:
    case Op.WRITE_AND_VERIFY_12:
    case Op.WRITE_AND_VERIFY_16:
      noProtection(c);
      if (((c[1] >> 1) & 3) > 1) throw invalidFieldInCdb(1, 2); // BYTCHK 00b or 01b only
      rangeCheck(g, lba, blocks);
      transferCheck(g, blocks, lengthByte);
      // The data is verified when it is on the medium: a forced-unit-access write.
      return { op: 'write', lba, blocks, fua: true };
    case Op.VERIFY_10:
    case Op.VERIFY_12:
    case Op.VERIFY_16: {
      noProtection(c);
      const bytchk = (c[1] >> 1) & 3;
      if (bytchk > 1) throw invalidFieldInCdb(1, 2);
      rangeCheck(g, lba, blocks);
      if (bytchk) transferCheck(g, blocks, lengthByte);
      return { op: 'verify', lba, blocks, bytchk: bytchk === 1 };
    }
    case Op.SYNCHRONIZE_CACHE_10:
    case Op.SYNCHRONIZE_CACHE_16:
      rangeCheck(g, lba, blocks);
      return { op: 'synchronize-cache', lba, blocks };
    case Op.WRITE_SAME_10:
    case Op.WRITE_SAME_16: {
      noProtection(c);
      if (c[1] & 0x10) throw invalidFieldInCdb(1, 4); // ANCHOR
      if (c[1] & 0x06) throw invalidFieldInCdb(1, 2); // PBDATA/LBDATA (obsolete)
      const ndob = op === Op.WRITE_SAME_16 && (c[1] & 0x01) !== 0;
      if (blocks === 0) throw invalidFieldInCdb(lengthByte); // WSNZ=1
      rangeCheck(g, lba, blocks);
      if (blocks * g.blockSize > MAX_WRITE_SAME_BYTES) throw invalidFieldInCdb(lengthByte);
      return { op: 'write-same', lba, blocks, unmap: (c[1] & 0x08) !== 0, ndob };
    }
  }
  return undefined;
}

export interface BlockRange {
  lba: number;
  blocks: number;
}

/**
 * UNMAP parameter list (SBC-3 5.28.2): an 8-byte header, then 16-byte block
 * descriptors (LBA, NUMBER OF LOGICAL BLOCKS). A partial last descriptor is
 * ignored. Every descriptor is checked before anything is unmapped; empty
 * ranges are dropped.
 */
export function parseUnmapList(list: Uint8Array, g: Geometry): BlockRange[] {
  if (list.length < 8) throw parameterListLengthError();
  const descLen = Math.min(u16(list, 2), list.length - 8);
  const count = Math.floor(descLen / 16);
  if (count > MAX_UNMAP_DESCRIPTORS) throw invalidFieldInParameterList(2);
  const maxBlocks = Math.max(1, Math.floor(MAX_UNMAP_BYTES / g.blockSize));
  const out: BlockRange[] = [];
  let total = 0;
  for (let i = 0; i < count; i++) {
    const p = 8 + 16 * i;
    const lba = u64(list, p);
    const blocks = u32(list, p + 8);
    if (lba + blocks > g.blocks) throw lbaOutOfRange();
    total += blocks;
    if (total > maxBlocks) throw invalidFieldInParameterList(p + 8);
    if (blocks > 0) out.push({ lba, blocks });
  }
  return out;
}
