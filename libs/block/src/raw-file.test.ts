import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { execFileSync } from 'child_process';
import { AioMode, BackendOpenError, chooseAio, FileIo, ioUringFileIo, RawFileBackend } from './raw-file';

const ENGINES: AioMode[] = ['io_uring', 'threads'];

describe('RawFileBackend engine choice (aio=)', () => {
  const saved = process.env.TSVMM_NO_IO_URING;
  afterEach(() => {
    if (saved === undefined) delete process.env.TSVMM_NO_IO_URING;
    else process.env.TSVMM_NO_IO_URING = saved;
  });

  it('defaults to io_uring where the kernel allows it; threads on request', () => {
    delete process.env.TSVMM_NO_IO_URING;
    expect(chooseAio(undefined)).toEqual({ mode: 'io_uring' });
    expect(chooseAio('io_uring')).toEqual({ mode: 'io_uring' });
    expect(chooseAio('threads')).toEqual({ mode: 'threads' });
  });

  it('falls back to threads with a reason when io_uring is unavailable; an explicit aio=io_uring is an error', () => {
    process.env.TSVMM_NO_IO_URING = '1';
    expect(chooseAio(undefined)).toEqual({
      mode: 'threads',
      fallback: expect.stringMatching(/io_uring is not available \(TSVMM_NO_IO_URING is set\); using aio=threads/),
    });
    expect(() => chooseAio('io_uring')).toThrow(BackendOpenError);
    expect(() => chooseAio('io_uring')).toThrow(/aio=io_uring: io_uring is not available here/);
  });
});

describe.each(ENGINES)('RawFileBackend on a real file (aio=%s)', (aio) => {
  let dir: string;
  let file: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blk-'));
    file = path.join(dir, 'disk.img');
    fs.writeFileSync(file, Buffer.alloc(1 << 20, 0x5a));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('scatters and gathers across several buffers at an offset', async () => {
    const b = new RawFileBackend(file, false, false, aio);
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
    const b = new RawFileBackend(file, false, false, aio);
    await b.discard(8192, 4096);
    await b.writeZeroes(65536, 8192, false);
    await b.writeZeroes(131072, 4096, true);
    b.close();
    const img = fs.readFileSync(file);
    expect(img.length).toBe(1 << 20);
    for (const [o, n] of [
      [8192, 4096],
      [65536, 8192],
      [131072, 4096],
    ])
      expect(img.subarray(o, o + n).every((v) => v === 0)).toBe(true);
    expect(img[8191]).toBe(0x5a);
    expect(img[12288]).toBe(0x5a);
  });

  it('names the problem when the file cannot be opened', () => {
    expect(() => new RawFileBackend(path.join(dir, 'nope.img'), false, false)).toThrow(BackendOpenError);
    expect(() => new RawFileBackend(path.join(dir, 'nope.img'), false, false)).toThrow(/nope\.img: no such file/);
    expect(() => new RawFileBackend(dir, true, false)).toThrow(/is a directory/);
  });

  it('a read-only backend refuses writes from the host side', async () => {
    const b = new RawFileBackend(file, true, false, aio);
    await expect(b.writev([Buffer.alloc(512)], 0)).rejects.toThrow();
    b.close();
  });
});

describe('RawFileBackend aio=io_uring: close', () => {
  let dir: string;
  let file: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blk-uring-'));
    file = path.join(dir, 'disk.img');
    fs.writeFileSync(file, Buffer.alloc(1 << 20, 0x5a));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('close with requests in flight: each settles (done or cancelled), the file is closed', async () => {
    const b = new RawFileBackend(file, false, false, 'io_uring');
    const bufs = Array.from({ length: 32 }, () => Buffer.alloc(8192));
    const reads = bufs.map((x, i) => b.readv([x], i * 8192));
    const w = b.writev([Buffer.alloc(4096, 9)], 0);
    await Promise.resolve();
    b.close();
    const settled = await Promise.allSettled([...reads, w]);
    for (const r of settled) if (r.status === 'rejected') expect(r.reason).toMatchObject({ code: 'ECANCELED' });
    bufs.forEach((x, i) => {
      if (settled[i].status === 'fulfilled') expect(x.every((v) => v === 0x5a)).toBe(true);
    });
  });
});

describe.each(ENGINES)('RawFileBackend data safety (aio=%s)', (aio) => {
  let dir: string;
  let file: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blkdata-'));
    file = path.join(dir, 'disk.img');
    fs.writeFileSync(file, Buffer.alloc(1 << 16, 0x5a));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  /** The engine's real file operations, with each transfer cut to `max` bytes and the failures the test sets. */
  function io(max = Infinity) {
    const base: FileIo =
      aio === 'io_uring'
        ? ioUringFileIo(16)
        : {
            readv: (fd, bufs, pos, cb) => fs.readv(fd, bufs, pos, cb),
            writev: (fd, bufs, pos, cb) => fs.writev(fd, bufs, pos, cb),
            fdatasync: (fd, cb) => fs.fdatasync(fd, cb),
          };
    const t = {
      syncs: 0,
      failSync: undefined as string | undefined,
      /** After this many bytes written, writes fail with ENOSPC (a full disk). */
      spaceLeft: Infinity,
      io: {
        readv: (fd, bufs, pos, cb) => base.readv(fd, [bufs[0].subarray(0, Math.min(bufs[0].length, max))], pos, cb),
        writev: (fd, bufs, pos, cb) => {
          const n = Math.min(bufs[0].length, max, t.spaceLeft);
          if (n === 0) return cb(Object.assign(new Error('ENOSPC: no space left on device'), { code: 'ENOSPC' }), 0);
          t.spaceLeft -= n;
          base.writev(fd, [bufs[0].subarray(0, n)], pos, cb);
        },
        fdatasync: (fd, cb) => {
          t.syncs++;
          const f = t.failSync;
          t.failSync = undefined; // as the kernel does: the error is reported once
          if (f) return cb(Object.assign(new Error(`${f}: i/o error`), { code: f }));
          base.fdatasync(fd, cb);
        },
        fallocate: base.fallocate,
        close: base.close,
      } as FileIo,
    };
    return t;
  }

  it('continues short writes and reads until every buffer is done', async () => {
    const t = io(100);
    const b = new RawFileBackend(file, false, false, t.io);
    const a = Buffer.alloc(300, 1);
    const c = Buffer.alloc(212, 2);
    expect(await b.writev([a, c], 1024)).toBe(512);
    const x = Buffer.alloc(256);
    const y = Buffer.alloc(256);
    expect(await b.readv([x, y], 1024)).toBe(512);
    expect(Buffer.concat([x, y])).toEqual(Buffer.concat([a, c]));
    b.close();
    expect(fs.readFileSync(file).subarray(1024, 1536)).toEqual(Buffer.concat([a, c]));
  });

  it('a write cut short by a full disk rejects (never "done"), and the next flush fails once', async () => {
    const t = io();
    t.spaceLeft = 1000;
    const b = new RawFileBackend(file, false, false, t.io);
    await expect(b.writev([Buffer.alloc(512, 1), Buffer.alloc(1024, 2)], 0)).rejects.toMatchObject({ code: 'ENOSPC' });
    await expect(b.flush()).rejects.toThrow(/a write since the last flush failed \(ENOSPC/);
    await b.flush(); // reported; the data written before is in the file
    t.spaceLeft = Infinity;
    expect(await b.writev([Buffer.alloc(512, 3)], 4096)).toBe(512);
    await b.flush();
    b.close();
    expect(fs.readFileSync(file).subarray(0, 1000)).toEqual(Buffer.concat([Buffer.alloc(512, 1), Buffer.alloc(488, 2)]));
  });

  it('a failed fdatasync makes every later flush fail until clearErrors()', async () => {
    const t = io();
    const b = new RawFileBackend(file, false, false, t.io);
    await b.flush();
    t.failSync = 'EIO';
    await expect(b.flush()).rejects.toMatchObject({ code: 'EIO' });
    const syncs = t.syncs;
    await expect(b.flush()).rejects.toThrow(/an earlier flush failed \(EIO: i\/o error\); flushes fail until the device is reset/);
    await expect(b.flush()).rejects.toThrow(/an earlier flush failed/);
    // Write-through writes cannot be made durable either.
    await expect(b.writev([Buffer.alloc(512)], 0, true)).rejects.toThrow(/an earlier flush failed/);
    expect(t.syncs).toBe(syncs);
    b.clearErrors();
    await b.flush();
    expect(t.syncs).toBe(syncs + 1);
    b.close();
  });

  it('concurrent flushes: the one queued behind a failing fdatasync fails too', async () => {
    const t = io();
    const b = new RawFileBackend(file, false, false, t.io);
    t.failSync = 'EIO';
    const r = await Promise.allSettled([b.flush(), b.flush(), b.flush()]);
    expect(r.map((x) => x.status)).toEqual(['rejected', 'rejected', 'rejected']);
    expect(t.syncs).toBe(1); // the two queued behind it shared one turn, which the sticky error answered
    b.close();
  });

  it('write-through (dsync): the data is synced before the write resolves; a failed sync fails the write', async () => {
    const t = io();
    const b = new RawFileBackend(file, false, false, t.io);
    expect(await b.writev([Buffer.alloc(512, 7)], 0, true)).toBe(512);
    expect(t.syncs).toBe(1);
    expect(await b.writev([Buffer.alloc(512, 7)], 512)).toBe(512);
    expect(t.syncs).toBe(1);
    await b.writeZeroes(0, 4096, false, true);
    expect(t.syncs).toBe(2);
    t.failSync = 'EIO';
    await expect(b.writev([Buffer.alloc(512, 8)], 0, true)).rejects.toMatchObject({ code: 'EIO' });
    b.close();
  });

  it('a write refused at once (nothing written) fails the next flush too; a short write-through write syncs once, after all of it', async () => {
    const t = io(100);
    const b = new RawFileBackend(file, false, false, t.io);
    t.spaceLeft = 0;
    await expect(b.writev([Buffer.alloc(512, 1)], 0)).rejects.toMatchObject({ code: 'ENOSPC' });
    await expect(b.flush()).rejects.toThrow(/a write since the last flush failed \(ENOSPC/);
    t.spaceLeft = Infinity;
    const syncs = t.syncs;
    expect(await b.writev([Buffer.alloc(250, 4), Buffer.alloc(262, 5)], 2048, true)).toBe(512);
    expect(t.syncs).toBe(syncs + 1);
    b.close();
    expect(fs.readFileSync(file).subarray(2048, 2560)).toEqual(Buffer.concat([Buffer.alloc(250, 4), Buffer.alloc(262, 5)]));
  });

  it('reads past the end of the file (it shrank under the device) are zeros', async () => {
    const b = new RawFileBackend(file, false, false, io(300).io);
    fs.truncateSync(file, 1000);
    const x = Buffer.alloc(2048, 0xee);
    expect(await b.readv([x], 0)).toBe(2048);
    expect(x.subarray(0, 1000).every((v) => v === 0x5a)).toBe(true);
    expect(x.subarray(1000).every((v) => v === 0)).toBe(true);
    b.close();
  });
});

describe.each(ENGINES)('RawFileBackend on a full file system (a small tmpfs, aio=%s)', (aio) => {
  let mnt: string;
  beforeAll(() => {
    mnt = fs.mkdtempSync(path.join(os.tmpdir(), 'blkdata-tmpfs-'));
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'blkdata-unit', mnt]);
  });
  afterAll(() => {
    execFileSync('umount', [mnt]);
    fs.rmdirSync(mnt);
  });

  it('a write that does not fit rejects with ENOSPC; what fitted before is in the file', async () => {
    const file = path.join(mnt, 'sparse.img');
    fs.closeSync(fs.openSync(file, 'w'));
    fs.truncateSync(file, 8 << 20); // sparse: 8 MiB on a 256 KiB file system
    const b = new RawFileBackend(file, false, false, aio);
    const chunk = Buffer.alloc(64 * 1024);
    let ok = 0;
    let error: unknown;
    for (let off = 0; off < b.size; off += chunk.length) {
      chunk.fill(1 + (off >> 16));
      try {
        expect(await b.writev([chunk.subarray(0, 32 * 1024), chunk.subarray(32 * 1024)], off)).toBe(chunk.length);
        ok++;
      } catch (e) {
        error = e;
        break;
      }
    }
    expect(error).toMatchObject({ code: 'ENOSPC' });
    expect(ok).toBeGreaterThan(0);
    await expect(b.flush()).rejects.toThrow(/ENOSPC/);
    b.close();
    const img = fs.readFileSync(file);
    for (let i = 0; i < ok; i++) expect(img.subarray(i << 16, (i + 1) << 16).every((v) => v === 1 + i)).toBe(true);
  });
});
