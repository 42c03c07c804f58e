/**
 * The migration stream (docs/migration.md): a header, then sections.
 *
 *   header  : magic "TSVMMIG\n" (8 bytes), u32 format version, u32 reserved
 *   section : u8 0x53 ('S'), u8 flags (format 2 on), u8 name length, name (ASCII),
 *             u32 section version, u32 payload length, u32 CRC-32 of the payload, payload
 *
 * All integers little-endian. The last section is named "end". A reader
 * rejects an unknown format version, an unknown section name or a section
 * version newer than it knows (unless the section is flagged optional: then
 * it is skipped), a bad checksum or a truncated stream with a
 * MigrationStreamError that says which; nothing of the stream is applied
 * to a running VM before the whole device state has been read and checked.
 *
 * Format 1 (the first release) had no flags byte; it is still read.
 */
import * as fs from 'fs';
import * as net from 'net';
import { crc32 } from 'zlib';

export const STREAM_MAGIC = Buffer.from('TSVMMIG\n', 'latin1');
/** Current format version written. */
export const STREAM_VERSION = 2;
/** Oldest format version this VMM reads. */
export const STREAM_MIN_VERSION = 1;
const SECTION_MARK = 0x53;
/**
 * Section flag (format 2): a reader that does not know the section's kind, or
 * knows only older versions of it, skips it instead of refusing the stream.
 * For information a destination can do without, so newer writers stay
 * loadable by older readers.
 */
export const SECTION_OPTIONAL = 0x01;
const HEADER_SIZE = 16;
/** A section's payload is at most this long (RAM travels in many sections). */
export const MAX_SECTION = 64 * 1024 * 1024;
/**
 * A section other than RAM is at most this long (vCPU, irqchip, device
 * state: a few KiB; held-back responses of a device a little more), and all
 * of them together at most MAX_STATE_TOTAL: the destination keeps them until
 * the end of the stream, so a stream cannot make it hold more than that.
 */
export const MAX_STATE_SECTION = 16 * 1024 * 1024;
export const MAX_STATE_TOTAL = 64 * 1024 * 1024;

/** The most a section named `name` may declare, checked before its payload is allocated. */
export function sectionLimit(name: string): number {
  return name === 'ram' || name.startsWith('ram/') ? MAX_SECTION : MAX_STATE_SECTION;
}

export class MigrationStreamError extends Error {}

export interface Section {
  name: string;
  version: number;
  payload: Buffer;
  /** SECTION_OPTIONAL etc.; always 0 in a format-1 stream. */
  flags?: number;
}

export function encodeHeader(version = STREAM_VERSION): Buffer {
  const b = Buffer.alloc(HEADER_SIZE);
  STREAM_MAGIC.copy(b, 0);
  b.writeUInt32LE(version, 8);
  return b;
}

/** One section in the current format's framing. */
export function encodeSection(name: string, version: number, payload: Buffer, flags = 0): Buffer[] {
  if (name.length === 0 || name.length > 255 || !/^[\x21-\x7e]+$/.test(name)) throw new Error(`bad section name '${name}'`);
  if (payload.length > MAX_SECTION) throw new Error(`section ${name} is ${payload.length} bytes (limit ${MAX_SECTION})`);
  const h = Buffer.alloc(3 + name.length + 12);
  h[0] = SECTION_MARK;
  h[1] = flags;
  h[2] = name.length;
  h.write(name, 3, 'latin1');
  const o = 3 + name.length;
  h.writeUInt32LE(version >>> 0, o);
  h.writeUInt32LE(payload.length, o + 4);
  h.writeUInt32LE(crc32(payload) >>> 0, o + 8);
  return [h, payload];
}

export const jsonPayload = (v: unknown): Buffer => Buffer.from(JSON.stringify(v), 'utf8');

/** Where a stream is read from: exact reads, resolving null at a clean end. */
export interface ByteSource {
  read(n: number): Promise<Buffer>;
}

/** A ByteSource over a file (restore). */
export class FileSource implements ByteSource {
  private pos = 0;
  constructor(private readonly fd: number) {}
  async read(n: number): Promise<Buffer> {
    const b = Buffer.alloc(n);
    let got = 0;
    while (got < n) {
      const r = fs.readSync(this.fd, b, got, n - got, this.pos);
      if (r === 0) throw new MigrationStreamError(`stream truncated (wanted ${n} bytes at offset ${this.pos})`);
      got += r;
      this.pos += r;
    }
    return b;
  }
}

/** Bytes a SocketSource holds before it stops reading the socket (back-pressure). */
export const SOCKET_SOURCE_HIGH_WATER = 64 * 1024 * 1024;

/**
 * A ByteSource over a socket (incoming migration). It holds at most about
 * SOCKET_SOURCE_HIGH_WATER bytes the consumer has not taken (plus one read's
 * chunk). With `idleTimeoutMs`, a read that waits that long without a byte
 * arriving fails: a source that hangs mid-stream must not keep the
 * destination waiting for ever. Only time spent waiting for the source
 * counts, not time the destination spends applying what it has.
 */
export class SocketSource implements ByteSource {
  private chunks: Buffer[] = [];
  private have = 0;
  private ended = false;
  private error: Error | undefined;
  private wake: (() => void) | undefined;
  private readonly idleTimeoutMs: number;
  /** Bytes read from the socket so far. */
  received = 0;

  constructor(
    readonly socket: net.Socket,
    opts: { idleTimeoutMs?: number } = {},
  ) {
    this.idleTimeoutMs = opts.idleTimeoutMs ?? 0;
    socket.on('data', (d: Buffer) => {
      this.chunks.push(d);
      this.have += d.length;
      this.received += d.length;
      // Back-pressure: stop reading while far ahead of the consumer.
      if (this.have > SOCKET_SOURCE_HIGH_WATER) socket.pause();
      this.wake?.();
    });
    socket.on('end', () => {
      this.ended = true;
      this.wake?.();
    });
    socket.on('error', (e) => {
      this.error = e;
      this.wake?.();
    });
  }

  /** Bytes read from the socket that the consumer has not taken yet. */
  get buffered(): number {
    return this.have;
  }

  async read(n: number): Promise<Buffer> {
    while (this.have < n) {
      if (this.error)
        throw this.error instanceof MigrationStreamError ? this.error : new MigrationStreamError(`migration socket: ${this.error.message}`);
      if (this.ended) throw new MigrationStreamError(`stream truncated (the source closed the connection)`);
      this.socket.resume();
      let timer: NodeJS.Timeout | undefined;
      await new Promise<void>((r) => {
        this.wake = r;
        if (this.idleTimeoutMs > 0)
          timer = setTimeout(() => {
            const s = this.idleTimeoutMs / 1000;
            this.error ??= new MigrationStreamError(
              `the source sent nothing for ${s} s (stream stalled after ${this.received} bytes; --incoming timeout=${s})`,
            );
            r();
          }, this.idleTimeoutMs);
      });
      clearTimeout(timer);
      this.wake = undefined;
    }
    // Take exactly n bytes off the front, copying only the chunks they span
    // (concatenating the whole backlog for a 3-byte header would copy tens
    // of MiB per section).
    let out: Buffer;
    const first = this.chunks[0];
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let got = 0;
      while (got < n) {
        const c = this.chunks[0];
        const take = Math.min(c.length, n - got);
        c.copy(out, got, 0, take);
        got += take;
        if (take === c.length) this.chunks.shift();
        else this.chunks[0] = c.subarray(take);
      }
    }
    this.have -= n;
    if (this.have < 16 * 1024 * 1024) this.socket.resume();
    return out;
  }
}

/** Reads and checks the header; returns the format version. */
export async function readHeader(src: ByteSource): Promise<number> {
  const h = await src.read(HEADER_SIZE);
  if (!h.subarray(0, 8).equals(STREAM_MAGIC)) throw new MigrationStreamError('not a tsvmm migration stream (bad magic)');
  const v = h.readUInt32LE(8);
  if (v < STREAM_MIN_VERSION || v > STREAM_VERSION)
    throw new MigrationStreamError(`unsupported stream format version ${v} (this VMM reads ${STREAM_MIN_VERSION}..${STREAM_VERSION})`);
  return v;
}

/** Reads one section of a stream in format `format` (readHeader's answer), checking its framing and checksum. */
export async function readSection(src: ByteSource, format: number): Promise<Section> {
  const m = await src.read(format >= 2 ? 3 : 2);
  if (m[0] !== SECTION_MARK) throw new MigrationStreamError(`corrupt stream: expected a section marker, got 0x${m[0].toString(16)}`);
  const flags = format >= 2 ? m[1] : 0;
  const nameLen = m[m.length - 1];
  if (flags & ~SECTION_OPTIONAL) throw new MigrationStreamError(`corrupt stream: unknown section flags 0x${flags.toString(16)}`);
  const nameAndHdr = await src.read(nameLen + 12);
  const name = nameAndHdr.subarray(0, nameLen).toString('latin1');
  const version = nameAndHdr.readUInt32LE(nameLen);
  const len = nameAndHdr.readUInt32LE(nameLen + 4);
  const sum = nameAndHdr.readUInt32LE(nameLen + 8);
  if (!/^[\x21-\x7e]+$/.test(name))
    throw new MigrationStreamError(`corrupt stream: section name ${JSON.stringify(name)} is not printable ASCII`);
  if (len > sectionLimit(name))
    throw new MigrationStreamError(`corrupt stream: section '${name}' declares ${len} bytes (at most ${sectionLimit(name)})`);
  const payload = len ? await src.read(len) : Buffer.alloc(0);
  if (crc32(payload) >>> 0 !== sum) throw new MigrationStreamError(`corrupt stream: section '${name}' fails its checksum`);
  return { name, version, payload, flags };
}

/** How deep a section's JSON may nest: far more than any state this VMM writes (a device's state is a few levels). */
export const MAX_JSON_DEPTH = 32;

/**
 * The section's JSON payload, not yet checked: parse it into a typed value
 * before use (state-check). Nesting deeper than MAX_JSON_DEPTH is refused
 * here, so no later copy (structuredClone, postMessage to an iothread)
 * recurses through a hostile stream's depth.
 */
export function parseJson(s: Section): unknown {
  let v: unknown;
  try {
    v = JSON.parse(s.payload.toString('utf8'));
  } catch (e) {
    throw new MigrationStreamError(`section '${s.name}': bad JSON (${(e as Error).message})`);
  }
  const stack: [unknown, number][] = [[v, 1]];
  while (stack.length) {
    const [x, depth] = stack.pop()!;
    if (x === null || typeof x !== 'object') continue;
    if (depth > MAX_JSON_DEPTH) throw new MigrationStreamError(`section '${s.name}': JSON nested deeper than ${MAX_JSON_DEPTH} levels`);
    for (const c of Object.values(x as object)) if (c !== null && typeof c === 'object') stack.push([c, depth + 1]);
  }
  return v;
}

/** The highest version of each section kind this VMM reads; the key is the name up to the first '/'. */
export const SECTION_VERSIONS: Record<string, number> = {
  machine: 1,
  ram: 1,
  cpu: 1,
  irqchip: 1,
  pit: 1,
  clock: 1,
  serial: 1,
  device: 1,
  source: 1,
  end: 1,
};

/**
 * The section's kind if this VMM reads it; undefined for an optional section
 * it does not know (or only in older versions), which the caller skips.
 * Anything else unknown is an error.
 */
export function checkSectionKnown(s: Section): string | undefined {
  const kind = s.name.split('/')[0];
  const max = SECTION_VERSIONS[kind];
  const optional = ((s.flags ?? 0) & SECTION_OPTIONAL) !== 0;
  if (max === undefined) {
    if (optional) return undefined;
    throw new MigrationStreamError(`unknown section '${s.name}' (version ${s.version})`);
  }
  if (s.version < 1 || s.version > max) {
    if (optional && s.version > max) return undefined;
    throw new MigrationStreamError(`section '${s.name}' has version ${s.version}; this VMM reads 1..${max}`);
  }
  return kind;
}

/** The optional `source` section: who wrote the stream, for the operator. */
export interface StreamSource {
  vmm: string;
  version: string;
  kind: 'snapshot' | 'migration';
  /** ISO 8601, when the writer started. */
  created: string;
}
