import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { BackendOpenError, RawFileBackend } from './raw-file';

describe('RawFileBackend on a real file', () => {
  let dir: string;
  let file: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blk-'));
    file = path.join(dir, 'disk.img');
    fs.writeFileSync(file, Buffer.alloc(1 << 20, 0x5a));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('scatters and gathers across several buffers at an offset', async () => {
    const b = new RawFileBackend(file, false, false);
    expect(b.size).toBe(1 << 20);
    const a = Buffer.alloc(100, 1);
    const c = Buffer.alloc(412, 2);
    expect(await b.writev([a, c], 4096)).toBe(512);
    const x = Buffer.alloc(256);
    const y = Buffer.alloc(256);
    expect(await b.readv([x, y], 4096)).toBe(512);
    expect(Buffer.concat([x, y])).toEqual(Buffer.concat([a, c]));
    await b.flush();
    b.close();
    expect(fs.readFileSync(file).subarray(4096, 4196)).toEqual(a);
  });

  it('discard and write-zeroes read back as zeros and keep the size', async () => {
    const b = new RawFileBackend(file, false, false);
    await b.discard(8192, 4096);
    await b.writeZeroes(65536, 8192, false);
    await b.writeZeroes(131072, 4096, true);
    b.close();
    const img = fs.readFileSync(file);
    expect(img.length).toBe(1 << 20);
    for (const [o, n] of [[8192, 4096], [65536, 8192], [131072, 4096]]) expect(img.subarray(o, o + n).every((v) => v === 0)).toBe(true);
    expect(img[8191]).toBe(0x5a);
    expect(img[12288]).toBe(0x5a);
  });

  it('names the problem when the file cannot be opened', () => {
    expect(() => new RawFileBackend(path.join(dir, 'nope.img'), false, false)).toThrow(BackendOpenError);
    expect(() => new RawFileBackend(path.join(dir, 'nope.img'), false, false)).toThrow(/nope\.img: no such file/);
    expect(() => new RawFileBackend(dir, true, false)).toThrow(/is a directory/);
  });

  it('a read-only backend refuses writes from the host side', async () => {
    const b = new RawFileBackend(file, true, false);
    await expect(b.writev([Buffer.alloc(512)], 0)).rejects.toThrow();
    b.close();
  });
});
