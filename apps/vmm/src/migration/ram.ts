/**
 * Guest RAM in the migration stream: "ram" sections whose payload is a list of
 * runs, each `u64 gpa, u32 pages, u8 kind (0 zero, 1 data), 3 bytes padding`
 * followed, for data runs, by the pages. The destination starts from zeroed
 * RAM, so the first full pass leaves zero pages out; later passes send a
 * page that became zero as a zero run.
 */
import { dataExtents, MemoryRegion, RamPiece } from '@tsvmm/kvm-native';
import { encodeSection, MigrationStreamError } from './stream';

export const PAGE = 4096;
const RUN_HEADER = 16;
const SECTION_TARGET = 4 * 1024 * 1024;
const ZERO_PAGE = Buffer.alloc(PAGE);

export interface RamCounters {
  /** Bytes of RAM sections put on the wire. */
  transferred: number;
  /** Pages sent with their data. */
  normal: number;
  /** Pages sent (or skipped) as zero. */
  duplicate: number;
}

/** Collects runs of pages into ram sections of about 4 MiB, copying page data when added. */
export class RamSectionBuilder {
  private parts: Buffer[] = [];
  private size = 0;
  readonly sections: Buffer[] = [];

  constructor(private readonly counters: RamCounters) {}

  addRun(gpa: number, bytes: Uint8Array | undefined, pages: number): void {
    const h = Buffer.alloc(RUN_HEADER);
    h.writeBigUInt64LE(BigInt(gpa), 0);
    h.writeUInt32LE(pages, 8);
    h[12] = bytes ? 1 : 0;
    this.parts.push(h);
    this.size += RUN_HEADER;
    if (bytes) {
      // A copy: the guest may write the page again while the section waits in a socket buffer.
      this.parts.push(Buffer.from(bytes));
      this.size += bytes.length;
      this.counters.normal += pages;
    } else this.counters.duplicate += pages;
    if (this.size >= SECTION_TARGET) this.flush();
  }

  /** A zero page left out (the destination's RAM starts zeroed). */
  skipZero(): void {
    this.counters.duplicate++;
  }

  flush(): void {
    if (!this.parts.length) return;
    const payload = Buffer.concat(this.parts, this.size);
    const sec = encodeSection('ram', 1, payload);
    this.sections.push(...sec);
    this.counters.transferred += sec[0].length + payload.length;
    this.parts = [];
    this.size = 0;
  }

  /** Takes the finished sections (for writing) and leaves the builder empty. */
  take(): Buffer[] {
    return this.sections.splice(0);
  }
}

const ZERO_BLOCK = Buffer.alloc(16 * PAGE);

const isZero = (b: Uint8Array, off: number, len = PAGE) =>
  Buffer.compare(Buffer.from(b.buffer, b.byteOffset + off, len), len === PAGE ? ZERO_PAGE : ZERO_BLOCK) === 0;

/**
 * Adds the pages of `region` selected by `bitmap` (one bit per page; all pages
 * when undefined) to `out`; with `skipZero`, zero pages are left out entirely.
 * `each` is called after each run of up to 1024 pages so the caller can write out.
 * The region's RAM comes as several host buffers (MemoryRegion.pieces): a run
 * never spans two.
 */
export async function addRegionPages(
  region: MemoryRegion,
  bitmap: Uint8Array | undefined,
  skipZero: boolean,
  out: RamSectionBuilder,
  each: () => Promise<void>,
): Promise<void> {
  const holes = !bitmap && skipZero ? HoleMap.of(region) : undefined;
  let first = 0;
  for (const piece of region.pieces) {
    await addPiecePages(piece, first, bitmap, skipZero, out, each, holes);
    first += piece.bytes.length / PAGE;
  }
}

/**
 * Which parts of a region's memfd are holes (never written: zero). A full
 * pass reads every page it does not know to be a hole, and reading a hole
 * through the shared mapping allocates it: without this, the first pass of a
 * 64 GiB guest that used 1 GiB would make the VMM 64 GiB big.
 */
export class HoleMap {
  private c = 0;

  constructor(private readonly data: readonly [number, number][]) {}

  /** From the memfd (SEEK_DATA/SEEK_HOLE); undefined when that cannot be known. */
  static of(region: MemoryRegion): HoleMap | undefined {
    if (region.fd < 0) return undefined;
    try {
      return new HoleMap(dataExtents(region.fd, 0, region.size));
    } catch {
      return undefined;
    }
  }

  /** True when [off, off+len) (region offsets) holds no data. Offsets must not decrease between calls. */
  hole(off: number, len: number): boolean {
    const d = this.data;
    while (this.c < d.length && d[this.c][1] <= off) this.c++;
    return this.c >= d.length || d[this.c][0] >= off + len;
  }
}

/** addRegionPages for one host buffer whose first page is page `first` of the region (bit `first` of `bitmap`). */
async function addPiecePages(
  piece: RamPiece,
  first: number,
  bitmap: Uint8Array | undefined,
  skipZero: boolean,
  out: RamSectionBuilder,
  each: () => Promise<void>,
  holes?: HoleMap,
): Promise<void> {
  const bytes = piece.bytes;
  // With a hole map, a block that is not all hole is tested page by page, so its hole pages stay unread.
  const zeroAt = (p: number, len: number) =>
    holes ? holes.hole((first + p) * PAGE, len) || (len === PAGE && isZero(bytes, p * PAGE)) : isZero(bytes, p * PAGE, len);
  const pages = bytes.length / PAGE;
  const base = piece.guestPhysAddr;
  let runStart = -1;
  let runKind = 0;
  const end = (p: number) => {
    if (runStart < 0) return;
    const n = p - runStart;
    out.addRun(base + runStart * PAGE, runKind ? bytes.subarray(runStart * PAGE, p * PAGE) : undefined, n);
    runStart = -1;
  };
  for (let p = 0; p < pages; p++) {
    const bit = first + p;
    if (bitmap && !(bitmap[bit >> 3] & (1 << (bit & 7)))) {
      end(p);
      if ((p & 1023) === 1023) await each();
      continue;
    }
    // A whole pass: most of RAM is either all zero or all data, so test 16
    // pages at once first (one compare instead of 16).
    if (!bitmap && skipZero && (p & 15) === 0 && p + 16 <= pages && zeroAt(p, 16 * PAGE)) {
      for (let i = 0; i < 16; i++) out.skipZero();
      end(p);
      p += 15;
      if ((p & 1023) === 1023) await each();
      continue;
    }
    const zero = zeroAt(p, PAGE);
    if (zero && skipZero) {
      out.skipZero();
      end(p);
      continue;
    }
    const kind = zero ? 0 : 1;
    if (runStart >= 0 && (kind !== runKind || p - runStart >= 1024)) end(p);
    if (runStart < 0) {
      runStart = p;
      runKind = kind;
    }
    if ((p & 1023) === 1023) {
      end(p + 1);
      await each();
    }
  }
  end(pages);
  await each();
}

/** Pages set in a dirty bitmap. */
export function countBits(bitmap: Uint8Array): number {
  let n = 0;
  for (let i = 0; i < bitmap.length; i++) {
    let b = bitmap[i];
    while (b) {
      b &= b - 1;
      n++;
    }
  }
  return n;
}

/** Applies one ram section to guest RAM. */
export function applyRamSection(payload: Buffer, regions: readonly MemoryRegion[]): void {
  let o = 0;
  while (o < payload.length) {
    if (o + RUN_HEADER > payload.length) throw new MigrationStreamError('corrupt ram section: truncated run header');
    const gpa = Number(payload.readBigUInt64LE(o));
    const pages = payload.readUInt32LE(o + 8);
    const kind = payload[o + 12];
    o += RUN_HEADER;
    if (pages === 0) continue;
    const len = pages * PAGE;
    const r = regions.find((x) => gpa >= Number(x.guestPhysAddr) && gpa + len <= Number(x.guestPhysAddr) + x.size);
    if (!r || gpa % PAGE)
      throw new MigrationStreamError(`corrupt ram section: pages at 0x${gpa.toString(16)} (+${pages}) are not guest RAM here`);
    if (kind === 0) forPieces(r, gpa, len, (b, off, n) => b.fill(0, off, off + n));
    else if (kind === 1) {
      if (o + len > payload.length) throw new MigrationStreamError('corrupt ram section: truncated page data');
      const src = o;
      forPieces(r, gpa, len, (b, off, n, done) => b.set(payload.subarray(src + done, src + done + n), off));
      o += len;
    } else throw new MigrationStreamError(`corrupt ram section: unknown run kind ${kind}`);
  }
}

/** Calls `fn(bytes, offset, n, done)` for each host buffer of `r` that [gpa, gpa+len) covers, in order. */
function forPieces(r: MemoryRegion, gpa: number, len: number, fn: (bytes: Uint8Array, off: number, n: number, done: number) => void): void {
  for (const p of r.pieces) {
    const lo = Math.max(gpa, p.guestPhysAddr);
    const hi = Math.min(gpa + len, p.guestPhysAddr + p.bytes.length);
    if (lo < hi) fn(p.bytes, lo - p.guestPhysAddr, hi - lo, lo - gpa);
  }
}
