import { crc32 } from 'zlib';
import {
  checkSectionKnown,
  encodeHeader,
  encodeSection,
  MAX_SECTION,
  MAX_JSON_DEPTH,
  MAX_STATE_SECTION,
  MigrationStreamError,
  parseJson,
  readHeader,
  readSection,
  SECTION_OPTIONAL,
  STREAM_VERSION,
} from './stream';
import { addRegionPages, applyRamSection, RamSectionBuilder } from './ram';

/** A ByteSource over a buffer. */
function source(b: Buffer) {
  let pos = 0;
  return {
    async read(n: number) {
      if (pos + n > b.length) throw new MigrationStreamError('stream truncated');
      const out = b.subarray(pos, pos + n);
      pos += n;
      return out;
    },
  };
}

describe('migration stream', () => {
  it("refuses a section's JSON nested deeper than MAX_JSON_DEPTH (a device state's extra, 200,000 levels deep) with a stream error, before anything copies it", () => {
    const section = (json: string) => ({ name: 'device/n0', version: 1, payload: Buffer.from(json) });
    const deep = `{"state":{"extra":{"activePairs":1,"junk":${'['.repeat(200_000)}${']'.repeat(200_000)}}}}`;
    expect(() => parseJson(section(deep))).toThrow(
      new MigrationStreamError(`section 'device/n0': JSON nested deeper than ${MAX_JSON_DEPTH} levels`),
    );
    const ok = `{"a":${'['.repeat(MAX_JSON_DEPTH - 1)}${']'.repeat(MAX_JSON_DEPTH - 1)}}`;
    expect(JSON.stringify(parseJson(section(ok)))).toBe(ok);
    expect(() => parseJson(section(`{"a":${'['.repeat(MAX_JSON_DEPTH)}${']'.repeat(MAX_JSON_DEPTH)}}`))).toThrow(/nested deeper/);
  });

  const stream = () =>
    Buffer.concat([encodeHeader(), ...encodeSection('serial', 1, Buffer.from('{"ier":0}')), ...encodeSection('end', 1, Buffer.alloc(0))]);

  it('round-trips header and sections', async () => {
    const src = source(stream());
    expect(await readHeader(src)).toBe(STREAM_VERSION);
    const s = await readSection(src, STREAM_VERSION);
    expect(s).toMatchObject({ name: 'serial', version: 1, flags: 0 });
    expect(s.payload.toString()).toBe('{"ier":0}');
    expect(checkSectionKnown(s)).toBe('serial');
    expect((await readSection(src, STREAM_VERSION)).name).toBe('end');
  });

  it('reads format 1 framing (no flags byte), as the first release wrote it', async () => {
    // Format 1 by hand, from docs/migration.md: 'S', name length, name, version, length, CRC.
    const v1Section = (name: string, payload: Buffer) => {
      const h = Buffer.alloc(2 + name.length + 12);
      h[0] = 0x53;
      h[1] = name.length;
      h.write(name, 2, 'latin1');
      h.writeUInt32LE(1, 2 + name.length);
      h.writeUInt32LE(payload.length, 6 + name.length);
      h.writeUInt32LE(crc32(payload) >>> 0, 10 + name.length);
      return Buffer.concat([h, payload]);
    };
    const header = encodeHeader(1);
    const src = source(Buffer.concat([header, v1Section('serial', Buffer.from('{"ier":1}')), v1Section('end', Buffer.alloc(0))]));
    expect(await readHeader(src)).toBe(1);
    const s = await readSection(src, 1);
    expect(s).toMatchObject({ name: 'serial', version: 1, flags: 0 });
    expect(s.payload.toString()).toBe('{"ier":1}');
    expect((await readSection(src, 1)).name).toBe('end');
  });

  it('skips an optional section it does not know (or knows only older versions of); refuses a mandatory one', async () => {
    const src = source(
      Buffer.concat([
        ...encodeSection('gpu/0', 3, Buffer.from('{}'), SECTION_OPTIONAL),
        ...encodeSection('serial', 9, Buffer.from('{}'), SECTION_OPTIONAL),
      ]),
    );
    const gpu = await readSection(src, STREAM_VERSION);
    expect(gpu.flags).toBe(SECTION_OPTIONAL);
    expect(checkSectionKnown(gpu)).toBeUndefined();
    expect(checkSectionKnown(await readSection(src, STREAM_VERSION))).toBeUndefined();
    expect(() => checkSectionKnown({ name: 'gpu/0', version: 3, payload: Buffer.alloc(0), flags: 0 })).toThrow(/unknown section 'gpu\/0'/);
    const badFlags = Buffer.concat(encodeSection('serial', 1, Buffer.from('{}'), 0x80));
    await expect(readSection(source(badFlags), STREAM_VERSION)).rejects.toThrow(/unknown section flags 0x80/);
  });

  it('rejects bad magic, a newer format version, a bad checksum, unknown sections and newer section versions', async () => {
    const bad = stream();
    bad[0] = 0;
    await expect(readHeader(source(bad))).rejects.toThrow(/bad magic/);
    const v = stream();
    v.writeUInt32LE(STREAM_VERSION + 1, 8);
    await expect(readHeader(source(v))).rejects.toThrow(`unsupported stream format version ${STREAM_VERSION + 1}`);
    const c = stream();
    c[c.indexOf('{"ier"')] ^= 1;
    const src = source(c);
    await readHeader(src);
    await expect(readSection(src, STREAM_VERSION)).rejects.toThrow(/section 'serial' fails its checksum/);
    expect(() => checkSectionKnown({ name: 'gpu/0', version: 1, payload: Buffer.alloc(0) })).toThrow(/unknown section 'gpu\/0'/);
    expect(() => checkSectionKnown({ name: 'cpu/0', version: 2, payload: Buffer.alloc(0) })).toThrow(/version 2; this VMM reads 1..1/);
    await expect(readHeader(source(encodeHeader(0)))).rejects.toThrow(/unsupported stream format version 0 \(this VMM reads 1..2\)/);
  });

  it('refuses a section that declares more than its limit from its header, before reading (or allocating) the payload', async () => {
    // Only the section header is there: reading (or allocating) the payload would fail the test differently.
    const header = (name: string, len: number) => {
      const [h] = encodeSection(name, 1, Buffer.alloc(0));
      h.writeUInt32LE(len, 3 + name.length + 4);
      let pos = 0;
      return {
        async read(n: number) {
          if (pos + n > h.length) throw new Error(`asked for ${n} bytes past the section header`);
          pos += n;
          return h.subarray(pos - n, pos);
        },
      };
    };
    await expect(readSection(header('ram', 0xffffffff), STREAM_VERSION)).rejects.toThrow(
      `corrupt stream: section 'ram' declares 4294967295 bytes (at most ${MAX_SECTION})`,
    );
    await expect(readSection(header('cpu/0', MAX_STATE_SECTION + 1), STREAM_VERSION)).rejects.toThrow(
      `section 'cpu/0' declares ${MAX_STATE_SECTION + 1} bytes (at most ${MAX_STATE_SECTION})`,
    );
    const bin = Buffer.concat(encodeSection('serial', 1, Buffer.from('{}')));
    bin[3] = 0x07; // a control character in the name
    await expect(readSection(source(bin), STREAM_VERSION)).rejects.toThrow(/section name "\\u0007erial" is not printable ASCII/);
  });

  it('a full pass leaves zero pages out (16 at a time where it can) and sends every data page', async () => {
    const size = 64 * 4096;
    const src = new Uint8Array(size);
    for (const p of [0, 17, 31, 32, 63]) src.fill(p + 1, p * 4096, p * 4096 + 4096);
    src[40 * 4096 + 4095] = 9; // a page whose only non-zero byte is its last
    const region = (bytes: Uint8Array) => ({
      slot: 0,
      guestPhysAddr: 0x100000n,
      size,
      fd: -1,
      hostAddress: 0n,
      pieces: [{ guestPhysAddr: 0x100000, bytes }],
      flags: 0,
    });
    const counters = { transferred: 0, normal: 0, duplicate: 0 };
    const b = new RamSectionBuilder(counters);
    await addRegionPages(region(src), undefined, true, b, async () => undefined);
    b.flush();
    expect(counters).toMatchObject({ normal: 6, duplicate: 58 });
    const dst = new Uint8Array(size); // the destination starts zeroed
    const parts = b.take(); // [section header, payload]...
    for (let i = 0; i < parts.length; i += 2) applyRamSection(parts[i + 1], [region(dst)]);
    expect(Buffer.compare(Buffer.from(dst), Buffer.from(src))).toBe(0);
  });

  it('ram runs: data and zero pages land where they belong; runs outside RAM are refused', () => {
    const counters = { transferred: 0, normal: 0, duplicate: 0 };
    const b = new RamSectionBuilder(counters);
    b.addRun(0x2000, new Uint8Array(4096).fill(7), 1);
    b.addRun(0x4000, undefined, 2);
    b.flush();
    const parts = b.take();
    const payload = parts[1];
    const bytes = new Uint8Array(0x10000).fill(1);
    const region = { slot: 0, guestPhysAddr: 0n, size: 0x10000, fd: -1, hostAddress: 0n, pieces: [{ guestPhysAddr: 0, bytes }], flags: 0 };
    applyRamSection(payload, [region]);
    expect(bytes[0x2000]).toBe(7);
    expect(bytes[0x4000]).toBe(0);
    expect(bytes[0x5fff]).toBe(0);
    expect(bytes[0x6000]).toBe(1);
    expect(counters).toMatchObject({ normal: 1, duplicate: 2 });
    const far = new RamSectionBuilder(counters);
    far.addRun(0x100000, undefined, 1);
    far.flush();
    expect(() => applyRamSection(far.take()[1], [region])).toThrow(/not guest RAM here/);
  });
});
