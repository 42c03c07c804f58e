// Migration RAM runs over a region held as several host buffers (guest RAM above 4 GiB), and
// the first pass skipping memfd holes without reading (allocating) them.
import * as fs from 'fs';
import { loadNative, MemoryRegion, ramPieceLengths } from '@tsvmm/kvm-native';
import { addRegionPages, applyRamSection, HoleMap, PAGE, RamSectionBuilder } from './ram';

const counters = () => ({ transferred: 0, normal: 0, duplicate: 0 });

/** A region at `gpa` of `pages` pages held as buffers of `per` pages each (no memfd). */
function region(gpa: number, pages: number, per: number): MemoryRegion {
  const pieces = [];
  for (let p = 0; p < pages; p += per)
    pieces.push({ guestPhysAddr: gpa + p * PAGE, bytes: new Uint8Array(Math.min(per, pages - p) * PAGE) });
  return { slot: 1, guestPhysAddr: BigInt(gpa), size: pages * PAGE, fd: -1, hostAddress: 0n, pieces, flags: 0 };
}

async function transfer(src: MemoryRegion, dst: MemoryRegion, bitmap?: Uint8Array) {
  const c = counters();
  const b = new RamSectionBuilder(c);
  await addRegionPages(src, bitmap, !bitmap, b, async () => undefined);
  b.flush();
  const parts = b.take();
  for (let i = 0; i < parts.length; i += 2) applyRamSection(parts[i + 1], [dst]);
  return c;
}

const bytesOf = (r: MemoryRegion) => Buffer.concat(r.pieces.map((p) => p.bytes));

describe('migration RAM over several host buffers', () => {
  it('a full pass and a dirty pass carry data runs that straddle a buffer boundary, page for page', async () => {
    const gpa = 0x1_0000_0000;
    const src = region(gpa, 96, 32); // buffers of 32 pages: boundaries after pages 31 and 63
    for (const p of [0, 30, 31, 32, 33, 63, 64, 95])
      src.pieces[Math.floor(p / 32)].bytes.fill(p + 1, (p % 32) * PAGE, ((p % 32) + 1) * PAGE);
    const dst = region(gpa, 96, 48); // the other side cuts elsewhere: runs are split by address, not by buffer
    const c = await transfer(src, dst);
    expect(c).toMatchObject({ normal: 8, duplicate: 88 });
    expect(bytesOf(dst).equals(bytesOf(src))).toBe(true);

    // Dirty pass: pages 31 and 32 (either side of a boundary) changed, 31 to zero.
    src.pieces[0].bytes.fill(0, 31 * PAGE, 32 * PAGE);
    src.pieces[1].bytes.fill(0x77, 0, PAGE);
    const bm = new Uint8Array(12);
    bm[31 >> 3] |= 1 << (31 & 7);
    bm[32 >> 3] |= 1 << (32 & 7);
    const c2 = await transfer(src, dst, bm);
    expect(c2).toMatchObject({ normal: 1, duplicate: 1 });
    expect(bytesOf(dst).equals(bytesOf(src))).toBe(true);
  });

  it('a run that arrives for pages across a buffer boundary lands in both buffers', () => {
    const b = new RamSectionBuilder(counters());
    const data = Buffer.alloc(2 * PAGE);
    data.fill(1, 0, PAGE);
    data.fill(2, PAGE);
    b.addRun(0x1_0000_0000 + 31 * PAGE, data, 2);
    b.flush();
    const dst = region(0x1_0000_0000, 64, 32);
    applyRamSection(b.take()[1], [dst]);
    expect(dst.pieces[0].bytes[32 * PAGE - 1]).toBe(1);
    expect(dst.pieces[1].bytes[0]).toBe(2);
    expect(dst.pieces[1].bytes[PAGE]).toBe(0);
  });

  it('HoleMap: ranges wholly inside holes, in order', () => {
    const h = new HoleMap([
      [0x2000, 0x3000],
      [0x8000, 0xa000],
    ]);
    expect([h.hole(0, 0x1000), h.hole(0x1000, 0x2000), h.hole(0x3000, 0x1000), h.hole(0x4000, 0x4000)]).toEqual([true, false, true, true]);
    expect([h.hole(0x9000, 0x1000), h.hole(0xa000, 0x10000)]).toEqual([false, true]);
  });

  it('a full pass over a memfd region leaves its holes unread: only written pages get allocated', async () => {
    const native = loadNative();
    const size = 64 * 2 ** 20;
    const m = native.memfdMap(`bigmem-ramtest-${process.pid}`, size, ramPieceLengths(0x1_0000_0000 - 32 * 2 ** 20, size));
    const pieces = m.buffers.map((buf, i) => ({
      guestPhysAddr: 0x1_0000_0000 - 32 * 2 ** 20 + i * 32 * 2 ** 20,
      bytes: new Uint8Array(buf),
    }));
    expect(pieces.map((p) => p.bytes.length)).toEqual([32 * 2 ** 20, 32 * 2 ** 20]);
    const src: MemoryRegion = {
      slot: 1,
      guestPhysAddr: BigInt(pieces[0].guestPhysAddr),
      size,
      fd: m.fd,
      hostAddress: m.address,
      pieces,
      flags: 0,
    };
    pieces[0].bytes[5 * PAGE] = 9;
    pieces[1].bytes[7 * PAGE + 1] = 8;
    const allocated = () => fs.fstatSync(m.fd).blocks * 512;
    const before = allocated();
    const dst = region(pieces[0].guestPhysAddr, size / PAGE, 8192);
    const c = await transfer(src, dst);
    expect(c).toMatchObject({ normal: 2, duplicate: size / PAGE - 2 });
    expect(dst.pieces[0].bytes[5 * PAGE]).toBe(9);
    expect(dst.pieces[1].bytes[7 * PAGE + 1]).toBe(8);
    expect(allocated()).toBe(before); // the pass read no hole
    expect(before).toBeLessThan(1024 * 1024);
    native.close(m.fd);
  });
});
