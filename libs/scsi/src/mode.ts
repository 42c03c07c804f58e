/**
 * Mode parameters (SPC-4 7.5, SBC-3 6.4): MODE SENSE data and MODE SELECT
 * parameter lists. Two pages: caching (08h, only WCE changeable) and control
 * (0Ah, only D_SENSE changeable). Pure: no I/O, no state of its own.
 */
import { MODE_PAGE_ALL, MODE_PAGE_CACHING, MODE_PAGE_CONTROL, PageControl } from './defs';
import { invalidFieldInParameterList, parameterListLengthError } from './sense';

/** The mode parameters a MODE SELECT may change. */
export interface ModeState {
  dSense: boolean;
  /** Caching page WCE: a write-back cache (the host page cache); off, every write is synced before it completes. */
  wce: boolean;
}

export const DEFAULT_MODE_STATE: Readonly<ModeState> = { dSense: false, wce: true };

export interface ModeContext {
  blockSize: number;
  blocks: number;
  readonly: boolean;
  state: ModeState;
}

export interface ModeSenseRequest {
  ten: boolean;
  dbd: boolean;
  llbaa: boolean;
  pc: PageControl;
  page: number;
}

const CACHING_LENGTH = 0x12;
const CONTROL_LENGTH = 0x0a;

/** Caching mode page (SBC-3 6.4.5). */
function cachingPage(pc: PageControl, state: ModeState): Uint8Array {
  const b = new Uint8Array(2 + CACHING_LENGTH);
  b[0] = MODE_PAGE_CACHING;
  b[1] = CACHING_LENGTH;
  // WCE: a volatile write cache (the host page cache), flushed by SYNCHRONIZE CACHE and FUA; changeable.
  const wce = pc === PageControl.CURRENT ? state.wce : true;
  if (wce) b[2] = 0x04;
  return b;
}

/** Control mode page (SPC-4 7.5.8). */
function controlPage(pc: PageControl, state: ModeState): Uint8Array {
  const b = new Uint8Array(2 + CONTROL_LENGTH);
  b[0] = MODE_PAGE_CONTROL;
  b[1] = CONTROL_LENGTH;
  if (pc === PageControl.CHANGEABLE) {
    b[2] = 0x04; // D_SENSE
    return b;
  }
  const dSense = pc === PageControl.CURRENT ? state.dSense : false;
  b[2] = dSense ? 0x04 : 0; // TST 000b (one task set), TMF_ONLY 0, DPICZ 0, D_SENSE, GLTSD 0, RLEC 0
  b[3] = 0x10; // QUEUE ALGORITHM MODIFIER 1 (unrestricted reordering), QERR 00b
  return b; // SWP, TAS, ATO 0; BUSY TIMEOUT PERIOD and EXTENDED SELF-TEST COMPLETION TIME 0
}

function pageFor(code: number, pc: PageControl, state: ModeState): Uint8Array {
  return code === MODE_PAGE_CACHING ? cachingPage(pc, state) : controlPage(pc, state);
}

/** MODE SENSE(6)/(10) data: header, block descriptor unless DBD, then the page(s). */
export function modeSense(req: ModeSenseRequest, ctx: ModeContext): Uint8Array {
  const pages = (req.page === MODE_PAGE_ALL ? [MODE_PAGE_CACHING, MODE_PAGE_CONTROL] : [req.page]).map((p) =>
    pageFor(p, req.pc, ctx.state),
  );
  const long = req.ten && req.llbaa;
  const bdLen = req.dbd ? 0 : long ? 16 : 8;
  const hdrLen = req.ten ? 8 : 4;
  const total = hdrLen + bdLen + pages.reduce((n, p) => n + p.length, 0);
  const b = new Uint8Array(total);
  const v = new DataView(b.buffer);
  // Device-specific parameter (SBC-3 6.4.1): WP when read-only; DPOFUA: FUA is honoured.
  const dsp = (ctx.readonly ? 0x80 : 0) | 0x10;
  if (req.ten) {
    v.setUint16(0, total - 2);
    b[3] = dsp;
    b[4] = long && bdLen ? 0x01 : 0; // LONGLBA
    v.setUint16(6, bdLen);
  } else {
    b[0] = total - 1;
    b[2] = dsp;
    b[3] = bdLen;
  }
  let p = hdrLen;
  if (bdLen === 8) {
    v.setUint32(p, Math.min(ctx.blocks, 0xffffffff)); // NUMBER OF LOGICAL BLOCKS, FFFFFFFFh when too many
    v.setUint32(p + 4, ctx.blockSize & 0xffffff); // DENSITY CODE 0, LOGICAL BLOCK LENGTH
  } else if (bdLen === 16) {
    v.setBigUint64(p, BigInt(ctx.blocks));
    v.setUint32(p + 12, ctx.blockSize);
  }
  p += bdLen;
  for (const pg of pages) {
    b.set(pg, p);
    p += pg.length;
  }
  return b;
}

/**
 * Validates a MODE SELECT parameter list against the current and changeable
 * values and returns the new state (nothing changes unless all of it is valid).
 */
export function modeSelect(list: Uint8Array, ten: boolean, ctx: ModeContext): ModeState {
  const hdrLen = ten ? 8 : 4;
  if (list.length < hdrLen) throw parameterListLengthError();
  const v = new DataView(list.buffer, list.byteOffset, list.byteLength);
  // MODE DATA LENGTH is reserved in MODE SELECT; the device-specific parameter's WP and DPOFUA are ignored.
  const mediumTypeAt = ten ? 2 : 1;
  if (list[mediumTypeAt] !== 0) throw invalidFieldInParameterList(mediumTypeAt);
  const bdLen = ten ? v.getUint16(6) : list[3];
  const long = ten && (list[4] & 0x01) !== 0;
  const bdSize = long ? 16 : 8;
  if (bdLen % bdSize !== 0) throw invalidFieldInParameterList(ten ? 6 : 3);
  if (hdrLen + bdLen > list.length) throw parameterListLengthError();
  for (let p = hdrLen; p < hdrLen + bdLen; p += bdSize) {
    // Block descriptors may only restate the geometry (NUMBER OF LOGICAL BLOCKS 0 means unchanged).
    const count = long ? Number(v.getBigUint64(p)) : v.getUint32(p);
    const current = long ? ctx.blocks : Math.min(ctx.blocks, 0xffffffff);
    if (count !== 0 && count !== current) throw invalidFieldInParameterList(p);
    const densityAt = long ? p + 8 : p + 4;
    if (list[densityAt] !== 0) throw invalidFieldInParameterList(densityAt);
    const blockLength = long ? v.getUint32(p + 12) : v.getUint32(p + 4) & 0xffffff;
    if (blockLength !== ctx.blockSize) throw invalidFieldInParameterList(long ? p + 12 : p + 5);
  }
  const next: ModeState = { ...ctx.state };
  for (let p = hdrLen + bdLen; p < list.length;) {
    if (list.length - p < 2) throw parameterListLengthError();
    if (list[p] & 0x40) throw invalidFieldInParameterList(p, 6); // SPF: no subpages
    const code = list[p] & 0x3f; // PS (bit 7) is reserved in MODE SELECT
    const len = list[p + 1];
    if (code !== MODE_PAGE_CACHING && code !== MODE_PAGE_CONTROL) throw invalidFieldInParameterList(p, 5);
    const current = pageFor(code, PageControl.CURRENT, ctx.state);
    const mask = pageFor(code, PageControl.CHANGEABLE, ctx.state);
    if (len !== current[1]) throw invalidFieldInParameterList(p + 1);
    if (p + 2 + len > list.length) throw parameterListLengthError();
    for (let i = 2; i < current.length; i++) {
      const bad = (list[p + i] ^ current[i]) & ~mask[i];
      if (bad) throw invalidFieldInParameterList(p + i, 31 - Math.clz32(bad));
    }
    if (code === MODE_PAGE_CONTROL) next.dSense = (list[p + 2] & 0x04) !== 0;
    else next.wce = (list[p + 2] & 0x04) !== 0;
    p += 2 + len;
  }
  return next;
}
