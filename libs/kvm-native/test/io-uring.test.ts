/** The io_uring engine on real files: reads, writes, errors, a full tmpfs, many in flight, close with requests in flight. */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { execFileSync } from 'child_process';
import { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, IoUring, ioUringUnavailable } from '../src';

type Done = { err: NodeJS.ErrnoException | null; n: number };
const call = (f: (cb: (err: NodeJS.ErrnoException | null, n: number) => void) => void) =>
  new Promise<Done>((resolve) => f((err, n) => resolve({ err, n })));

describe('IoUring on real files', () => {
  let dir: string;
  let file: string;
  let fd: number;
  let ring: IoUring;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uring-engine-'));
    file = path.join(dir, 'disk.img');
    const img = Buffer.alloc(1 << 20);
    for (let i = 0; i < img.length; i += 4096) img.fill(i >> 12, i, i + 4096);
    fs.writeFileSync(file, img);
    fd = fs.openSync(file, 'r+');
    ring = new IoUring(8);
  });
  afterEach(() => {
    ring.close();
    fs.closeSync(fd);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('is available on this host (the default aio engine)', () => {
    expect(ioUringUnavailable()).toBeUndefined();
  });

  it('reads into and writes from several buffers at an offset', async () => {
    const a = Buffer.alloc(1000);
    const b = Buffer.alloc(3096);
    expect(await call((cb) => ring.readv(fd, [a, b], 3 * 4096, cb))).toEqual({ err: null, n: 4096 });
    expect(a.every((v) => v === 3) && b.every((v) => v === 3)).toBe(true);
    const w1 = Buffer.alloc(512, 0xa1);
    const w2 = Buffer.alloc(7, 0xb2); // small arrays live on V8's heap until the engine pins them
    expect(await call((cb) => ring.writev(fd, [w1, w2], 5000, cb))).toEqual({ err: null, n: 519 });
    expect(await call((cb) => ring.fdatasync(fd, cb))).toEqual({ err: null, n: 0 });
    const img = fs.readFileSync(file);
    expect(img.subarray(5000, 5512).every((v) => v === 0xa1)).toBe(true);
    expect(img.subarray(5512, 5519).every((v) => v === 0xb2)).toBe(true);
    expect(img[5519]).toBe(1);
  });

  it('a read at the end of the file is short; a read past it reads nothing', async () => {
    const x = Buffer.alloc(8192);
    expect((await call((cb) => ring.readv(fd, [x], (1 << 20) - 4096, cb))).n).toBe(4096);
    expect((await call((cb) => ring.readv(fd, [x], 1 << 20, cb))).n).toBe(0);
  });

  it('fallocate punches a hole that reads back as zeros', async () => {
    expect((await call((cb) => ring.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 8192, 4096, cb))).err).toBeNull();
    const img = fs.readFileSync(file);
    expect(img.length).toBe(1 << 20);
    expect(img.subarray(8192, 12288).every((v) => v === 0)).toBe(true);
    expect(img[12288]).toBe(3);
  });

  it('host errors come back as errno codes, per request', async () => {
    const ro = fs.openSync(file, 'r');
    try {
      const [w, s] = await Promise.all([
        call((cb) => ring.writev(ro, [Buffer.alloc(512)], 0, cb)),
        // fdatasync of a pipe fails with EINVAL: the error path of a flush.
        (() => {
          const p = pipeFds();
          return call((cb) => ring.fdatasync(p[1], cb)).finally(() => p.forEach((f) => fs.closeSync(f)));
        })(),
      ]);
      expect(w.err).toMatchObject({ code: 'EBADF' });
      expect(s.err).toMatchObject({ code: 'EINVAL', syscall: 'fdatasync' });
      const ok = await call((cb) => ring.readv(fd, [Buffer.alloc(512)], 0, cb));
      expect(ok).toEqual({ err: null, n: 512 });
    } finally {
      fs.closeSync(ro);
    }
  });

  it('takes many more requests than the ring holds; each completes with its own data', async () => {
    expect(ring.registerFile(fd)).toBe(true);
    const bufs = Array.from({ length: 200 }, () => Buffer.alloc(4096));
    const done = await Promise.all(bufs.map((b, i) => call((cb) => ring.readv(fd, [b], (i % 256) * 4096, cb))));
    done.forEach((d, i) => {
      expect(d).toEqual({ err: null, n: 4096 });
      expect(bufs[i].every((v) => v === i % 256)).toBe(true);
    });
    expect(ring.pending).toBe(0);
    ring.unregisterFile(fd);
  });

  it('close with requests in flight: every callback runs once, nothing after close', async () => {
    const results: Done[] = [];
    const bufs = Array.from({ length: 64 }, () => Buffer.alloc(16384));
    bufs.forEach((b, i) => ring.readv(fd, [b], i * 16384, (err, n) => results.push({ err, n })));
    ring.fdatasync(fd, (err, n) => results.push({ err, n }));
    // A read of an empty pipe stays in the kernel until cancelled.
    const p = pipeFds();
    let pipeRead: Done | undefined;
    ring.readv(p[0], [Buffer.alloc(64)], 0, (err, n) => (pipeRead = { err, n }));
    await Promise.resolve(); // submitted (the flush runs in a microtask)
    expect(ring.pending).toBeGreaterThan(0);
    expect(pipeRead).toBeUndefined();
    ring.close();
    p.forEach((f) => fs.closeSync(f));
    expect(pipeRead?.err).toMatchObject({ code: 'ECANCELED' });
    expect(results.length).toBe(65);
    for (const r of results) expect(r.err === null || r.err.code === 'ECANCELED').toBe(true);
    expect(ring.pending).toBe(0);
    // After close the engine refuses new work with ECANCELED, asynchronously.
    const late = await call((cb) => ring.readv(fd, [Buffer.alloc(512)], 0, cb));
    expect(late.err).toMatchObject({ code: 'ECANCELED' });
    expect(results.length).toBe(65);
  });

  it('keeps a process alive while a request is pending, and not once it is idle (a ring left open never holds a process)', () => {
    // The child's only loop reference is the ring: the FIFO's writer is an unref'd child of its own.
    const fifo = path.join(dir, 'wait.fifo');
    execFileSync('mkfifo', [fifo]);
    const script = `
      const { IoUring } = require(${JSON.stringify(path.join(__dirname, '../src/index.ts'))});
      const fs = require('fs');
      const { spawn } = require('child_process');
      const idle = new IoUring(4); // never used, never closed
      const ring = new IoUring(4);
      const fd = fs.openSync(${JSON.stringify(fifo)}, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
      fs.openSync(${JSON.stringify(fifo)}, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK); // a writer: no EOF until data
      const buf = Buffer.alloc(16);
      ring.readv(fd, [buf], 0, (err, n) => console.log('read', err ? err.code : buf.subarray(0, n).toString().trim()));
      spawn('sh', ['-c', 'sleep 0.3; echo late > ${fifo}'], { detached: true, stdio: 'ignore' }).unref();
    `;
    // cwd: the package, so ts-node takes its tsconfig.json (from the workspace root it would fall back to its own defaults, which TS 5.6 refuses).
    const out = execFileSync(process.execPath, ['-r', 'ts-node/register/transpile-only', '-e', script], {
      timeout: 60_000,
      encoding: 'utf8',
      cwd: path.join(__dirname, '..'),
    });
    expect(out.trim()).toBe('read late');
  });

  it('reapNow takes a completion at once, without the event loop, and runs its callback exactly once', async () => {
    expect(ring.reapNow()).toBe(0); // nothing in flight
    const [rd, wr] = blockingPipeFds();
    try {
      const buf = Buffer.alloc(5);
      const got: Done[] = [];
      ring.readv(rd, [buf], 0, (err, n) => got.push({ err, n }));
      await Promise.resolve(); // the submission (a microtask)
      expect(ring.reapNow()).toBe(0); // the pipe is empty: the read waits in the kernel
      expect(got).toEqual([]);
      fs.writeSync(wr, 'hello');
      let taken = 0;
      for (let i = 0; i < 1_000_000 && got.length === 0; i++) taken += ring.reapNow();
      expect(taken).toBe(1);
      expect(got).toEqual([{ err: null, n: 5 }]);
      expect(buf.toString()).toBe('hello');
      for (let i = 0; i < 3; i++) await new Promise((r) => setImmediate(r));
      expect(got).toHaveLength(1); // the eventfd's watcher found nothing left to call
      expect(ring.pending).toBe(0);
    } finally {
      fs.closeSync(rd);
      fs.closeSync(wr);
    }
  });

  it('more buffers than IOV_MAX: the first 1024 are read, the count says where to go on', async () => {
    const bufs = Array.from({ length: 1500 }, () => Buffer.alloc(512));
    expect(await call((cb) => ring.readv(fd, bufs, 0, cb))).toEqual({ err: null, n: 1024 * 512 });
    expect(bufs[1023].every((v) => v === (1023 * 512) >> 12)).toBe(true);
    expect(bufs[1024].every((v) => v === 0)).toBe(true);
  });

  it('refuses bad arguments with a clear error', () => {
    expect(() => ring.readv(fd, [], 0, () => undefined)).toThrow(/bufs/);
    expect(() => ring.writev(fd, ['x' as unknown as Uint8Array], 0, () => undefined)).toThrow(/bufs/);
    expect(() => ring.readv(-1, [Buffer.alloc(1)], 0, () => undefined)).toThrow(/fd/);
    expect(() => ring.readv(fd, [Buffer.alloc(1)], -5, () => undefined)).toThrow(/offset/);
    expect(() => new IoUring(0)).toThrow(/entries/);
  });
});

describe('IoUring on a full file system (a small tmpfs)', () => {
  let mnt: string;
  beforeAll(() => {
    mnt = fs.mkdtempSync(path.join(os.tmpdir(), 'uring-tmpfs-'));
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=128k', 'uring-engine', mnt]);
  });
  afterAll(() => {
    execFileSync('umount', [mnt]);
    fs.rmdirSync(mnt);
  });

  it('a write that does not fit is short or ENOSPC, never "all done"', async () => {
    const file = path.join(mnt, 'sparse.img');
    fs.closeSync(fs.openSync(file, 'w'));
    fs.truncateSync(file, 4 << 20);
    const fd = fs.openSync(file, 'r+');
    const ring = new IoUring(4);
    try {
      const chunk = Buffer.alloc(48 * 1024, 0x77);
      let written = 0;
      let last: Done | undefined;
      for (let off = 0; off < 1 << 20; off += chunk.length) {
        last = await call((cb) => ring.writev(fd, [chunk], off, cb));
        if (last.err || last.n < chunk.length) break;
        written += last.n;
      }
      expect(written).toBeGreaterThan(0);
      expect(written).toBeLessThan(128 * 1024);
      // The request that hit the limit: short (and the rest then fails) or failed outright.
      expect(last!.err?.code === 'ENOSPC' || (last!.err === null && last!.n < chunk.length)).toBe(true);
      const more = await call((cb) => ring.writev(fd, [chunk], 2 << 20, cb));
      expect(more.err).toMatchObject({ code: 'ENOSPC' });
    } finally {
      ring.close();
      fs.closeSync(fd);
    }
  });
});

function pipeFds(): [number, number] {
  // Node has no pipe(2); a FIFO opened both ways gives the same kind of fd.
  const fifo = path.join(os.tmpdir(), `uring-engine-${process.pid}-${Math.random().toString(36).slice(2)}.fifo`);
  execFileSync('mkfifo', [fifo]);
  const r = fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  const w = fs.openSync(fifo, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
  fs.unlinkSync(fifo);
  return [r, w];
}

/** A pipe's two ends (read, write) whose reads block (the read end is not O_NONBLOCK, unlike pipeFds'). */
function blockingPipeFds(): [number, number] {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uring-iopoll-fifo-'));
  const fifo = path.join(dir, 'p');
  execFileSync('mkfifo', [fifo]);
  const rd = fs.openSync(fifo, fs.constants.O_RDWR); // Linux: opening a FIFO read-write does not wait for a writer; reads still block
  const wr = fs.openSync(fifo, fs.constants.O_WRONLY);
  fs.rmSync(dir, { recursive: true, force: true });
  return [rd, wr];
}
