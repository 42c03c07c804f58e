/**
 * Test helpers (not exported from the package): disks on temporary files, an
 * in-memory backend that can fail on demand, CDB builders, and sense checks.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { type BlockBackend, RawFileBackend } from '@tsvmm/block';
import { ScsiDisk, type ScsiDiskOptions } from './disk';
import { decodeSense } from './sense';
import type { ScsiAbortSignal, ScsiCommand, ScsiResponse } from './types';

export interface TempDisk {
  disk: ScsiDisk;
  backend: RawFileBackend;
  file: string;
  /** The image file's bytes now. */
  image(): Buffer;
  cleanup(): void;
}

/** The byte every fresh image holds at `offset` (a pattern, so reads of the wrong place show). */
export const patternByte = (offset: number): number => (offset * 7 + (offset >> 9)) & 0xff;

const images = new Map<number, Buffer>();

/** A fresh image's bytes (a copy; cached per size). */
export function patternImage(size: number): Buffer {
  let b = images.get(size);
  if (!b) {
    b = Buffer.alloc(size);
    for (let i = 0; i < size; i++) b[i] = patternByte(i);
    images.set(size, b);
  }
  return Buffer.from(b);
}

/** Byte-for-byte equality that stays fast on megabytes (Jest's toEqual walks every element). */
export function expectBytes(actual: Uint8Array, expected: Uint8Array): void {
  const a = Buffer.from(actual.buffer, actual.byteOffset, actual.byteLength);
  const e = Buffer.from(expected.buffer, expected.byteOffset, expected.byteLength);
  if (a.equals(e)) return;
  let i = 0;
  while (i < Math.min(a.length, e.length) && a[i] === e[i]) i++;
  expect({ length: a.length, firstDifference: i, byte: a[i] }).toEqual({ length: e.length, firstDifference: -1, byte: e[i] });
}

const dirs: string[] = [];

export function tempDisk(size = 1 << 20, opts: Partial<ScsiDiskOptions> = {}): TempDisk {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'scsi-'));
  dirs.push(dir);
  const file = path.join(dir, 'disk.img');
  fs.writeFileSync(file, patternImage(size));
  const backend = new RawFileBackend(file, opts.readonly ?? false, false);
  const disk = new ScsiDisk({ backend, readonly: false, serial: 'SN0001', ...opts });
  return {
    disk,
    backend,
    file,
    image: () => fs.readFileSync(file),
    cleanup: () => {
      disk.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

export function removeTempDirs(): void {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
}

export interface Failures {
  read?: boolean;
  write?: boolean;
  flush?: boolean;
  discard?: boolean | 'EOPNOTSUPP';
  writeZeroes?: boolean;
}

/** An in-memory backend that records calls and rejects the operations named in `fail`. */
export class MemBackend implements BlockBackend {
  readonly data: Uint8Array;
  readonly calls: string[] = [];
  closed = false;
  /** Largest number of bytes a single readv/writev moves (to exercise short transfers). */
  maxChunk = Infinity;

  constructor(
    readonly size: number,
    readonly readonly = false,
    public fail: Failures = {},
  ) {
    this.data = new Uint8Array(size);
  }

  private reject(what: string, code = 'EIO'): Promise<never> {
    return Promise.reject(Object.assign(new Error(`${what}: injected failure`), { code }));
  }

  async readv(bufs: Uint8Array[], offset: number): Promise<number> {
    this.calls.push(`readv ${offset}`);
    if (this.fail.read) return this.reject('readv');
    let p = offset;
    let moved = 0;
    for (const b of bufs) {
      const n = Math.min(b.length, this.size - p, this.maxChunk - moved);
      if (n <= 0) break;
      b.set(this.data.subarray(p, p + n));
      p += n;
      moved += n;
    }
    return moved;
  }

  async writev(bufs: Uint8Array[], offset: number, dsync = false): Promise<number> {
    this.calls.push(`writev ${offset}${dsync ? ' dsync' : ''}`);
    if (this.fail.write) return this.reject('writev');
    if (dsync && this.fail.flush) return this.reject('writev (sync)');
    let p = offset;
    let moved = 0;
    for (const b of bufs) {
      const n = Math.min(b.length, this.maxChunk - moved);
      if (n <= 0) break;
      this.data.set(b.subarray(0, n), p);
      p += n;
      moved += n;
    }
    return moved;
  }

  async flush(): Promise<void> {
    this.calls.push('flush');
    if (this.fail.flush) return this.reject('flush');
  }

  async discard(offset: number, len: number): Promise<void> {
    this.calls.push(`discard ${offset} ${len}`);
    if (this.fail.discard) return this.reject('discard', this.fail.discard === 'EOPNOTSUPP' ? 'EOPNOTSUPP' : 'EIO');
    this.data.fill(0, offset, offset + len);
  }

  async writeZeroes(offset: number, len: number, unmap: boolean, dsync = false): Promise<void> {
    this.calls.push(`writeZeroes ${offset} ${len} ${unmap}${dsync ? ' dsync' : ''}`);
    if (this.fail.writeZeroes) return this.reject('writeZeroes');
    this.data.fill(0, offset, offset + len);
  }

  close(): void {
    this.closed = true;
  }
}

/** A backend of any size that holds nothing (reads see zeros, writes vanish): for capacity edge cases. */
export function sizedBackend(size: number, readonly = false): BlockBackend {
  return {
    size,
    readonly,
    readv: async (bufs) => bufs.reduce((n, b) => (b.fill(0), n + b.length), 0),
    writev: async (bufs) => bufs.reduce((n, b) => n + b.length, 0),
    flush: async () => {},
    discard: async () => {},
    writeZeroes: async () => {},
    close: () => {},
  };
}

export function memDisk(size = 1 << 20, opts: Partial<ScsiDiskOptions> = {}, fail: Failures = {}): { disk: ScsiDisk; mem: MemBackend } {
  const mem = new MemBackend(size, false, fail);
  return { disk: new ScsiDisk({ backend: mem, readonly: false, serial: 'MEM0001', ...opts }), mem };
}

// ---- CDBs ----

/** A 32-byte CDB buffer (what virtio-scsi hands over) starting with `bytes`. */
export function cdb(...bytes: number[]): Uint8Array {
  const b = new Uint8Array(32);
  b.set(bytes);
  return b;
}

const be = (v: number | bigint, n: number): number[] => {
  let x = BigInt(v);
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    out.unshift(Number(x & 0xffn));
    x >>= 8n;
  }
  return out;
};

export const rw6 = (op: number, lba: number, blocks: number): Uint8Array =>
  cdb(op, (lba >> 16) & 0x1f, (lba >> 8) & 0xff, lba & 0xff, blocks & 0xff, 0);
export const rw10 = (op: number, lba: number, blocks: number, flags = 0): Uint8Array =>
  cdb(op, flags, ...be(lba, 4), 0, ...be(blocks, 2), 0);
export const rw12 = (op: number, lba: number, blocks: number, flags = 0): Uint8Array =>
  cdb(op, flags, ...be(lba, 4), ...be(blocks, 4), 0, 0);
export const rw16 = (op: number, lba: number | bigint, blocks: number, flags = 0): Uint8Array =>
  cdb(op, flags, ...be(lba, 8), ...be(blocks, 4), 0, 0);
export const alloc16 = (n: number): number[] => be(n, 2);
export const alloc32 = (n: number): number[] => be(n, 4);

// ---- running commands ----

export interface Buffers {
  /** Data-in capacity in bytes, or the sizes of several views. */
  in?: number | number[];
  /** Data-out payload (split into several views when `outSplit` is given). */
  out?: Uint8Array;
  outSplit?: number[];
  signal?: ScsiAbortSignal;
}

export interface Result extends ScsiResponse {
  /** The bytes written into the data-in views (dataInLength of them, gathered). */
  data: Uint8Array;
  /** The data-in views themselves. */
  views: Uint8Array[];
}

function split(buf: Uint8Array, sizes: number[]): Uint8Array[] {
  const out: Uint8Array[] = [];
  let p = 0;
  for (const s of sizes) {
    out.push(buf.subarray(p, p + s));
    p += s;
  }
  if (p < buf.length) out.push(buf.subarray(p));
  return out;
}

/** Views carved out of one backing buffer with gaps between them, like guest memory. */
export function inViews(spec: number | number[]): Uint8Array[] {
  const sizes = typeof spec === 'number' ? [spec] : spec;
  const backing = new Uint8Array(sizes.reduce((a, b) => a + b + 16, 0)).fill(0xee);
  const views: Uint8Array[] = [];
  let p = 8;
  for (const s of sizes) {
    views.push(backing.subarray(p, p + s));
    p += s + 16;
  }
  return views;
}

export async function run(target: { execute(cmd: ScsiCommand): Promise<ScsiResponse> }, c: Uint8Array, b: Buffers = {}): Promise<Result> {
  const views = b.in === undefined ? [] : inViews(b.in);
  const dataOut = b.out ? (b.outSplit ? split(b.out, b.outSplit) : [b.out]) : [];
  const res = await target.execute({ cdb: c, dataIn: views, dataOut, signal: b.signal });
  const data = new Uint8Array(res.dataInLength);
  let p = 0;
  for (const v of views) {
    const n = Math.min(v.length, data.length - p);
    data.set(v.subarray(0, n), p);
    p += n;
  }
  return { ...res, data, views };
}

export type SenseFormat = 'fixed' | 'descriptor';

/** Expects CHECK CONDITION with exactly this key/ASC/ASCQ in the given format. */
export function expectSense(res: ScsiResponse, key: number, asc: number, ascq: number, format: SenseFormat = 'fixed'): void {
  expect({ status: res.status, sense: decodeSense(res.sense), format: res.sense[0] & 0x7f }).toEqual({
    status: 0x02,
    sense: { key, asc, ascq },
    format: format === 'fixed' ? 0x70 : 0x72,
  });
  expect(res.dataInLength).toBe(0);
  if (format === 'fixed') expect(res.sense.length).toBe(18);
}

export function expectGood(res: ScsiResponse): void {
  expect({ status: res.status, sense: res.sense.length, overrun: res.overrun }).toEqual({ status: 0, sense: 0, overrun: undefined });
}

/** MODE SELECT(6) of the control page with D_SENSE on or off. */
export async function setDescriptorSense(disk: ScsiDisk, on: boolean): Promise<void> {
  const list = new Uint8Array([0, 0, 0, 0, 0x0a, 0x0a, on ? 0x04 : 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0]);
  const res = await run(disk, cdb(0x15, 0x10, 0, 0, list.length, 0), { out: list });
  expectGood(res);
  expect(disk.descriptorSense).toBe(on);
}
