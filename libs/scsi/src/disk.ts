/**
 * An emulated SCSI direct-access block device (SPC-4 / SBC-3) over a
 * BlockBackend. Transport-neutral: it sees a CDB and guest-memory views, and
 * answers a status, sense data and a residual.
 */
import { createHash } from 'crypto';
import type { BlockBackend } from '@tsvmm/block';
import { type Geometry, type ParsedCdb, type Request, parseCdb, parseUnmapList } from './cdb';
import { Asc, BOUNCE_BYTES, Op, SenseKeyCode, TYPE_DISK } from './defs';
import { type DiskIdentity, standardInquiry, vpdPage } from './inquiry';
import { reportLuns } from './luns';
import { DEFAULT_MODE_STATE, type ModeContext, type ModeState, modeSelect, modeSense } from './mode';
import {
  abortedResponse,
  checkConditionResponse,
  goodResponse,
  isOverrun,
  type Offered,
  offered,
  overrunResponse,
  putDataIn,
} from './respond';
import { CheckCondition, encodeSense, invalidFieldInCdb, readError, senseName, writeError, writeProtected } from './sense';
import { firstDifference, gather, sliceViews, totalLength } from './sg';
import type { ScsiCommand, ScsiLun, ScsiLunState, ScsiResetReason, ScsiResponse } from './types';

export interface ScsiDiskOptions {
  backend: BlockBackend;
  /** WP bit in MODE SENSE; writes, UNMAP and WRITE SAME end in DATA PROTECT 27/00. */
  readonly: boolean;
  /** VPD 0x80, and part of 0x83. Printable ASCII, at most 200 characters. */
  serial: string;
  /** INQUIRY T10 vendor id (8 chars, default 'TSVMM'). */
  vendor?: string;
  /** INQUIRY product id (16 chars, default 'VIRTUAL DISK'). */
  product?: string;
  /** 4 chars, default '0.1'. */
  revision?: string;
  /** 512 (default), 1024, 2048 or 4096. */
  logicalBlockSize?: number;
  /** An NAA-format 64-bit id for VPD 0x83 (default: derived from the serial, NAA 3 "locally assigned"). */
  wwn?: bigint;
}

/** Commands that neither report nor clear a pending unit attention (SPC-4 5.14). */
const UA_EXEMPT = new Set<number>([Op.INQUIRY, Op.REPORT_LUNS, Op.REQUEST_SENSE]);

const UA_FOR_RESET: Record<ScsiResetReason, Asc> = {
  'power-on': Asc.POWER_ON_RESET,
  'lun-reset': Asc.BUS_DEVICE_RESET,
  'nexus-reset': Asc.I_T_NEXUS_LOSS,
};

const PRINTABLE = /^[\x20-\x7e]*$/;

function checkAscii(what: string, s: string, max: number): string {
  if (!PRINTABLE.test(s)) throw new RangeError(`${what} ${JSON.stringify(s)} must be printable ASCII`);
  if (s.length > max) throw new RangeError(`${what} ${JSON.stringify(s)} is longer than ${max} characters`);
  return s;
}

/** NAA 3 (locally assigned): 60 bits of a hash of the identity. */
function derivedNaa(vendor: string, product: string, serial: string): bigint {
  const h = createHash('sha256').update(`${vendor}\0${product}\0${serial}`).digest();
  return (0x3n << 60n) | (h.readBigUInt64BE(0) & ((1n << 60n) - 1n));
}

/** Thrown inside a handler when the transport aborted the command. */
class TaskAborted {}

interface Done {
  dataIn?: number;
  dataOut?: number;
}

export class ScsiDisk implements ScsiLun {
  readonly kind = 'disk';
  readonly readonly: boolean;
  readonly blockSize: number;
  /** Capacity in logical blocks (a partial last block of the backend is not used). */
  readonly blocks: number;
  private readonly backend: BlockBackend;
  private readonly id: DiskIdentity;
  private mode: ModeState = { ...DEFAULT_MODE_STATE };
  private pendingUa: Asc | undefined;
  private closed = false;
  private readonly counters = {
    reads: 0,
    writes: 0,
    bytesRead: 0,
    bytesWritten: 0,
    verifies: 0,
    writeSames: 0,
    unmaps: 0,
    flushes: 0,
    checkConditions: 0,
    overruns: 0,
    aborted: 0,
  };
  private lastSense: string | null = null;
  private lastIoError: string | null = null;

  constructor(opts: ScsiDiskOptions) {
    const bs = opts.logicalBlockSize ?? 512;
    if (![512, 1024, 2048, 4096].includes(bs)) throw new RangeError(`logical block size ${bs} is not 512, 1024, 2048 or 4096`);
    const vendor = checkAscii('vendor', opts.vendor ?? 'TSVMM', 8);
    const product = checkAscii('product', opts.product ?? 'VIRTUAL DISK', 16);
    const revision = checkAscii('revision', opts.revision ?? '0.1', 4);
    const serial = checkAscii('serial', opts.serial, 200);
    if (opts.wwn !== undefined && (opts.wwn < 0n || opts.wwn >= 1n << 64n)) throw new RangeError(`wwn ${opts.wwn} is not a 64-bit value`);
    this.backend = opts.backend;
    this.readonly = opts.readonly || opts.backend.readonly;
    this.blockSize = bs;
    this.blocks = Math.floor(opts.backend.size / bs);
    if (this.blocks === 0) throw new RangeError(`the backend (${opts.backend.size} bytes) is smaller than one ${bs}-byte block`);
    this.id = { vendor, product, revision, serial, naa: opts.wwn ?? derivedNaa(vendor, product, serial) };
  }

  /** The control mode page's D_SENSE: sense data in descriptor format. */
  get descriptorSense(): boolean {
    return this.mode.dSense;
  }

  private get geometry(): Geometry {
    return { blockSize: this.blockSize, blocks: this.blocks };
  }

  /** Unmap and WRITE SAME with UNMAP are offered (logical block provisioning) when the disk is writable. */
  private get thin(): boolean {
    return !this.readonly;
  }

  /**
   * Runs a command. Not an async function: a READ or WRITE is the backend's
   * promise and one `then` (each async layer would add a promise and a
   * microtask per command, which is measurable at 4 KiB).
   */
  execute(cmd: ScsiCommand): Promise<ScsiResponse> {
    let o: Offered;
    let io: Promise<Done>;
    try {
      o = offered(cmd);
      const early = this.check(cmd, o);
      if (early) return Promise.resolve(early);
      const parsed = this.parse(cmd, o);
      if (!('req' in parsed)) return Promise.resolve(parsed);
      const req = parsed.req;
      io = req.op === 'read' ? this.read(req, cmd) : req.op === 'write' && !this.readonly ? this.write(req, cmd) : this.run(req, cmd);
    } catch (e) {
      return Promise.reject(e);
    }
    return io.then(
      (done) => goodResponse(o, done.dataIn ?? 0, done.dataOut ?? 0),
      (e: unknown) => {
        if (e instanceof CheckCondition) return this.fail(e, o);
        if (e instanceof TaskAborted) return this.aborted(o);
        throw e;
      },
    );
  }

  /** What ends a command before its CDB is looked at: an abort, a closed unit, a pending unit attention. */
  private check(cmd: ScsiCommand, o: Offered): ScsiResponse | undefined {
    if (cmd.signal?.aborted) return this.aborted(o);
    if (this.closed) return this.fail(new CheckCondition(SenseKeyCode.NOT_READY, Asc.LUN_NOT_READY), o);
    const opcode = cmd.cdb.length > 0 ? cmd.cdb[0] : -1;
    if (this.pendingUa !== undefined && !UA_EXEMPT.has(opcode)) {
      const ua = this.pendingUa;
      this.pendingUa = undefined;
      return this.fail(new CheckCondition(SenseKeyCode.UNIT_ATTENTION, ua), o);
    }
    return undefined;
  }

  /** The parsed CDB, or the response for a bad one (CHECK CONDITION) or for buffers that do not fit it (overrun). */
  private parse(cmd: ScsiCommand, o: Offered): ParsedCdb | ScsiResponse {
    let parsed: ParsedCdb;
    try {
      parsed = parseCdb(cmd.cdb, this.geometry);
    } catch (e) {
      if (e instanceof CheckCondition) return this.fail(e, o);
      throw e;
    }
    if (isOverrun(parsed, o)) {
      this.counters.overruns++;
      return overrunResponse(o);
    }
    return parsed;
  }

  private read(req: Extract<Request, { op: 'read' }>, cmd: ScsiCommand): Promise<Done> {
    const n = req.blocks * this.blockSize;
    const done = (): Done => {
      this.counters.reads++;
      this.counters.bytesRead += n;
      return { dataIn: n };
    };
    if (n === 0) return Promise.resolve(done());
    return this.readFully(sliceViews(cmd.dataIn, 0, n), req.lba * this.blockSize).then(done);
  }

  private write(req: Extract<Request, { op: 'write' }>, cmd: ScsiCommand): Promise<Done> {
    const n = req.blocks * this.blockSize;
    const done = (): Done => {
      this.counters.writes++;
      this.counters.bytesWritten += n;
      return { dataOut: n };
    };
    // FUA, or no write cache (WCE=0): this write is on stable storage before GOOD.
    if (n > 0) return this.writeFully(sliceViews(cmd.dataOut, 0, n), req.lba * this.blockSize, req.fua || !this.mode.wce).then(done);
    if (req.fua) return this.flush().then(done);
    return Promise.resolve(done());
  }

  reset(reason: ScsiResetReason): void {
    // A power-on unit attention outranks the others (SAM-5 5.14); otherwise the newest is kept.
    if (this.pendingUa !== Asc.POWER_ON_RESET) this.pendingUa = UA_FOR_RESET[reason];
    // Mode parameters go back to their defaults (nothing is saved); an I_T nexus loss leaves them.
    if (reason !== 'nexus-reset') this.mode = { ...DEFAULT_MODE_STATE };
    // A failed SYNCHRONIZE CACHE keeps failing until the adapter is reset (docs/block-data-safety.md).
    if (reason === 'power-on') this.backend.clearErrors?.();
  }

  /** Migration: the pending unit attention and the mode parameters (only what differs from power-on). */
  saveState(): ScsiLunState {
    const s: ScsiLunState = { kind: this.kind };
    if (this.pendingUa !== undefined) s.pendingUnitAttention = this.pendingUa;
    if (this.mode.dSense !== DEFAULT_MODE_STATE.dSense) s.dSense = this.mode.dSense;
    if (this.mode.wce !== DEFAULT_MODE_STATE.wce) s.wce = this.mode.wce;
    return s;
  }

  /** Migration: checks a saved state without applying it. */
  checkState(s: ScsiLunState): void {
    if (!s || typeof s !== 'object' || Array.isArray(s)) throw new Error('malformed logical unit state');
    if (s.kind !== undefined && s.kind !== this.kind)
      throw new Error(`logical unit state is of kind '${String(s.kind)}', this unit is a ${this.kind}`);
    const ua = s.pendingUnitAttention;
    if (ua !== undefined && !(Number.isInteger(ua) && ua > 0 && ua <= 0xffff))
      throw new Error(`pendingUnitAttention ${JSON.stringify(ua)} is not an ASC/ASCQ pair`);
    if (s.dSense !== undefined && typeof s.dSense !== 'boolean') throw new Error(`dSense ${JSON.stringify(s.dSense)} is not a boolean`);
    if (s.wce !== undefined && typeof s.wce !== 'boolean') throw new Error(`wce ${JSON.stringify(s.wce)} is not a boolean`);
  }

  /** Migration: absent fields mean the power-on value (no unit attention, default mode pages). */
  loadState(s: ScsiLunState): void {
    this.checkState(s);
    this.pendingUa = s.pendingUnitAttention as Asc | undefined;
    this.mode = {
      ...DEFAULT_MODE_STATE,
      ...(s.dSense !== undefined ? { dSense: s.dSense } : {}),
      ...(s.wce !== undefined ? { wce: s.wce } : {}),
    };
  }

  info(): Record<string, unknown> {
    const ua = this.pendingUa;
    return {
      kind: this.kind,
      readonly: this.readonly,
      blockSize: this.blockSize,
      blocks: this.blocks,
      serial: this.id.serial,
      dSense: this.mode.dSense,
      writeCache: this.mode.wce,
      aio: this.backend.aio ?? null,
      pendingUnitAttention: ua === undefined ? null : senseName({ key: SenseKeyCode.UNIT_ATTENTION, asc: ua >> 8, ascq: ua & 0xff }),
      ...this.counters,
      lastSense: this.lastSense,
      lastIoError: this.lastIoError,
    };
  }

  /** Closes the backend; later commands end in NOT READY 04/00. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.backend.close();
  }

  private fail(cc: CheckCondition, o: Offered): ScsiResponse {
    this.counters.checkConditions++;
    this.lastSense = senseName(cc.sense);
    return checkConditionResponse(cc, this.mode.dSense, o);
  }

  private aborted(o: Offered): ScsiResponse {
    this.counters.aborted++;
    return abortedResponse(o);
  }

  private get modeContext(): ModeContext {
    return { blockSize: this.blockSize, blocks: this.blocks, readonly: this.readonly, state: this.mode };
  }

  private async run(req: Request, cmd: ScsiCommand): Promise<Done> {
    const bs = this.blockSize;
    switch (req.op) {
      case 'test-unit-ready':
      case 'start-stop-unit':
        return {};
      case 'request-sense': {
        const ua = this.pendingUa;
        this.pendingUa = undefined;
        const cc =
          ua === undefined
            ? new CheckCondition(SenseKeyCode.NO_SENSE, Asc.NO_ADDITIONAL_SENSE)
            : new CheckCondition(SenseKeyCode.UNIT_ATTENTION, ua);
        return { dataIn: putDataIn(cmd, encodeSense(cc, req.desc), req.alloc) };
      }
      case 'inquiry': {
        let data: Uint8Array | undefined;
        if (req.evpd) data = vpdPage(req.page, { peripheral: TYPE_DISK, id: this.id, blockSize: bs, thin: this.thin });
        else data = standardInquiry(TYPE_DISK, this.id);
        if (!data) throw invalidFieldInCdb(2);
        return { dataIn: putDataIn(cmd, data, req.alloc) };
      }
      case 'report-luns':
        // A disk used without a ScsiTarget answers as LUN 0 of its own target.
        return { dataIn: putDataIn(cmd, reportLuns(req.select, [0]), req.alloc) };
      case 'read-capacity-10': {
        const b = new Uint8Array(8);
        const v = new DataView(b.buffer);
        v.setUint32(0, Math.min(this.blocks - 1, 0xffffffff)); // FFFFFFFFh: use READ CAPACITY(16)
        v.setUint32(4, bs);
        return { dataIn: putDataIn(cmd, b, 8) };
      }
      case 'read-capacity-16': {
        const b = new Uint8Array(32);
        const v = new DataView(b.buffer);
        v.setBigUint64(0, BigInt(this.blocks - 1));
        v.setUint32(8, bs);
        if (this.thin) b[14] = 0xc0; // LBPME, LBPRZ
        return { dataIn: putDataIn(cmd, b, req.alloc) };
      }
      case 'mode-sense':
        return { dataIn: putDataIn(cmd, modeSense(req, this.modeContext), req.alloc) };
      case 'mode-select':
        if (req.length === 0) return {};
        this.mode = modeSelect(gather(cmd.dataOut, req.length), req.ten, this.modeContext);
        return { dataOut: req.length };
      case 'read':
        return this.read(req, cmd);
      case 'write':
        if (this.readonly) throw writeProtected();
        return this.write(req, cmd);
      case 'verify':
        this.counters.verifies++;
        if (!req.bytchk) return {}; // the range was checked; the medium is always readable
        await this.compare(cmd, req.lba * bs, req.blocks * bs);
        return { dataOut: req.blocks * bs };
      case 'synchronize-cache':
        await this.flush();
        return {};
      case 'unmap': {
        if (this.readonly) throw writeProtected();
        if (req.length === 0) return {};
        const ranges = parseUnmapList(gather(cmd.dataOut, req.length), this.geometry);
        for (const r of ranges) await this.discard(r.lba * bs, r.blocks * bs);
        this.counters.unmaps++;
        return { dataOut: req.length };
      }
      case 'write-same': {
        if (this.readonly) throw writeProtected();
        const block = req.ndob ? new Uint8Array(bs) : gather(cmd.dataOut, bs);
        await this.writeSame(cmd, block, req.lba * bs, req.blocks * bs, req.unmap);
        this.counters.writeSames++;
        return { dataOut: req.ndob ? 0 : bs };
      }
    }
  }

  private ioFailed(e: unknown, what: string): void {
    this.lastIoError = `${what}: ${e instanceof Error ? e.message : String(e)}`;
  }

  /**
   * Reads until the views are full (libuv may split a long vector); failures are MEDIUM ERROR 11/00.
   * The usual case, the backend filling them at once, is one promise; a short count goes on in readRest.
   */
  private readFully(bufs: Uint8Array[], offset: number): Promise<void> {
    const total = totalLength(bufs);
    if (total === 0) return Promise.resolve();
    return this.backend.readv(bufs, offset).then(
      (n) => (n === total ? undefined : this.readRest(bufs, offset, total, n)),
      (e: unknown) => {
        this.ioFailed(e, `read at ${offset}`);
        throw readError();
      },
    );
  }

  /** readFully after a first read of `first` bytes that did not fill the views. */
  private async readRest(bufs: Uint8Array[], offset: number, total: number, first: number): Promise<void> {
    if (!(first > 0)) {
      this.ioFailed(new Error('unexpected end of file'), `read at ${offset}`);
      throw readError();
    }
    for (let done = first; done < total;) {
      let n: number;
      try {
        n = await this.backend.readv(sliceViews(bufs, done, total - done), offset + done);
      } catch (e) {
        this.ioFailed(e, `read at ${offset + done}`);
        throw readError();
      }
      if (!(n > 0)) {
        this.ioFailed(new Error('unexpected end of file'), `read at ${offset + done}`);
        throw readError();
      }
      done += n;
    }
  }

  /** Writes all of the views (`dsync`: and syncs them); failures are MEDIUM ERROR 0C/00. One promise when the backend takes them all at once. */
  private writeFully(bufs: Uint8Array[], offset: number, dsync = !this.mode.wce): Promise<void> {
    const total = totalLength(bufs);
    if (dsync) this.counters.flushes++;
    if (total === 0) return Promise.resolve();
    return this.backend.writev(bufs, offset, dsync).then(
      (n) => (n === total ? undefined : this.writeRest(bufs, offset, total, n, dsync)),
      (e: unknown) => {
        this.ioFailed(e, `write at ${offset}`);
        throw writeError();
      },
    );
  }

  /** writeFully after a first write of `first` bytes that did not take all of the views. */
  private async writeRest(bufs: Uint8Array[], offset: number, total: number, first: number, dsync: boolean): Promise<void> {
    if (!(first > 0)) {
      this.ioFailed(new Error('no progress'), `write at ${offset}`);
      throw writeError();
    }
    for (let done = first; done < total;) {
      let n: number;
      try {
        n = await this.backend.writev(sliceViews(bufs, done, total - done), offset + done, dsync);
      } catch (e) {
        this.ioFailed(e, `write at ${offset + done}`);
        throw writeError();
      }
      if (!(n > 0)) {
        this.ioFailed(new Error('no progress'), `write at ${offset + done}`);
        throw writeError();
      }
      done += n;
    }
  }

  private async flush(): Promise<void> {
    this.counters.flushes++;
    try {
      await this.backend.flush();
    } catch (e) {
      this.ioFailed(e, 'flush');
      throw writeError();
    }
  }

  /** Deallocates a range; a file system that cannot punch holes gets zeros written (LBPRZ stays true). */
  private async discard(offset: number, len: number): Promise<void> {
    try {
      await this.backend.discard(offset, len);
      return;
    } catch (e) {
      if ((e as { code?: string }).code !== 'EOPNOTSUPP') {
        this.ioFailed(e, `discard at ${offset}`);
        throw writeError();
      }
    }
    await this.writeZeroes(offset, len, true);
  }

  private async writeZeroes(offset: number, len: number, unmap: boolean): Promise<void> {
    try {
      await this.backend.writeZeroes(offset, len, unmap, !this.mode.wce);
    } catch (e) {
      this.ioFailed(e, `write zeroes at ${offset}`);
      throw writeError();
    }
  }

  /** WRITE SAME: zeros go to writeZeroes (deallocating with UNMAP); other data is replicated in bounded chunks. */
  private async writeSame(cmd: ScsiCommand, block: Uint8Array, offset: number, len: number, unmap: boolean): Promise<void> {
    if (block.every((x) => x === 0)) return this.writeZeroes(offset, len, unmap);
    const bs = block.length;
    const chunk = new Uint8Array(Math.max(1, Math.min(len / bs, Math.floor(BOUNCE_BYTES / bs))) * bs);
    for (let p = 0; p < chunk.length; p += bs) chunk.set(block, p);
    for (let done = 0; done < len;) {
      if (cmd.signal?.aborted) throw new TaskAborted();
      const n = Math.min(chunk.length, len - done);
      await this.writeFully([chunk.subarray(0, n)], offset + done);
      done += n;
    }
  }

  /** VERIFY with BYTCHK=1: reads the range in bounded chunks and compares it with the data-out buffer. */
  private async compare(cmd: ScsiCommand, offset: number, len: number): Promise<void> {
    const bounce = new Uint8Array(Math.min(len, BOUNCE_BYTES));
    for (let done = 0; done < len;) {
      if (cmd.signal?.aborted) throw new TaskAborted();
      const n = Math.min(bounce.length, len - done);
      const part = bounce.subarray(0, n);
      await this.readFully([part], offset + done);
      const d = firstDifference(part, cmd.dataOut, done);
      if (d >= 0) throw new CheckCondition(SenseKeyCode.MISCOMPARE, Asc.MISCOMPARE_DURING_VERIFY, undefined, done + d);
      done += n;
    }
  }
}
