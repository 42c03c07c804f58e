import { checkSectionKnown, encodeHeader, encodeSection, MigrationStreamError, readHeader, readSection, STREAM_VERSION } from './stream';
import { applyRamSection, RamSectionBuilder } from './ram';

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
  const stream = () => Buffer.concat([encodeHeader(), ...encodeSection('serial', 1, Buffer.from('{"ier":0}')), ...encodeSection('end', 1, Buffer.alloc(0))]);

  it('round-trips header and sections', async () => {
    const src = source(stream());
    expect(await readHeader(src)).toBe(STREAM_VERSION);
    const s = await readSection(src);
    expect(s).toMatchObject({ name: 'serial', version: 1 });
    expect(s.payload.toString()).toBe('{"ier":0}');
    expect(checkSectionKnown(s)).toBe('serial');
    expect((await readSection(src)).name).toBe('end');
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
    await expect(readSection(src)).rejects.toThrow(/section 'serial' fails its checksum/);
    expect(() => checkSectionKnown({ name: 'gpu/0', version: 1, payload: Buffer.alloc(0) })).toThrow(/unknown section 'gpu\/0'/);
    expect(() => checkSectionKnown({ name: 'cpu/0', version: 2, payload: Buffer.alloc(0) })).toThrow(/version 2; this VMM reads 1..1/);
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
    const region = { slot: 0, guestPhysAddr: 0n, size: 0x10000, fd: -1, hostAddress: 0n, bytes, flags: 0 };
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
