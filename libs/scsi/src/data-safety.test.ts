// scsi-hd data safety over a real image file (docs/block-data-safety.md): a write the disk has
// no room for is MEDIUM ERROR and so is the next SYNCHRONIZE CACHE; a failed sync keeps
// SYNCHRONIZE CACHE failing until a power-on reset; the caching page's WCE is changeable and
// WCE=0 makes every write write-through. The file operations are wrapped to run out of space
// or fail an fdatasync.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { type FileIo, RawFileBackend } from '@tsvmm/block';
import { ScsiDisk } from './disk';
import { cdb, expectGood, expectSense, run, rw10 } from './test-util';

function faultyIo() {
  const t = {
    syncs: 0,
    spaceLeft: Infinity,
    failSync: false,
    io: {
      readv: (fd, bufs, pos, cb) => fs.readv(fd, bufs, pos, cb),
      writev: (fd, bufs, pos, cb) => {
        if (t.spaceLeft === 0) return cb(Object.assign(new Error('ENOSPC: no space left on device'), { code: 'ENOSPC' }), 0);
        const data = Buffer.concat(bufs);
        const n = Math.min(data.length, t.spaceLeft);
        t.spaceLeft -= n;
        fs.write(fd, data, 0, n, pos, cb);
      },
      fdatasync: (fd, cb) => {
        t.syncs++;
        if (!t.failSync) return fs.fdatasync(fd, cb);
        t.failSync = false;
        cb(Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' }));
      },
    } as FileIo,
  };
  return t;
}

let dir: string;
let disk: ScsiDisk;
let file: string;
let t: ReturnType<typeof faultyIo>;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blkdata-scsi-'));
  file = path.join(dir, 'disk.img');
  fs.writeFileSync(file, Buffer.alloc(1 << 20));
  t = faultyIo();
  disk = new ScsiDisk({ backend: new RawFileBackend(file, false, false, t.io), readonly: false, serial: 'SAFE' });
});
afterEach(() => {
  disk.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

const write = (lba: number, blocks: number, fill: number, flags = 0) =>
  run(disk, rw10(0x2a, lba, blocks, flags), { out: new Uint8Array(blocks * 512).fill(fill) });
const syncCache = () => run(disk, rw10(0x35, 0, 0));
const caching = (b2: number) => new Uint8Array([0, 0, 0, 0, 0x08, 0x12, b2, ...new Array(17).fill(0)]);
const modeSelect = (list: Uint8Array) => run(disk, cdb(0x15, 0x10, 0, 0, list.length, 0), { out: list });

describe('scsi-hd data safety', () => {
  it('a write cut short by a full disk is MEDIUM ERROR (never GOOD); the next SYNCHRONIZE CACHE fails once; GOOD data is in the image', async () => {
    t.spaceLeft = 4 * 512 + 100;
    expectGood(await write(0, 4, 1));
    expectSense(await write(4, 4, 2), 3, 0x0c, 0);
    expect(disk.info().lastIoError).toMatch(/ENOSPC/);
    expectSense(await syncCache(), 3, 0x0c, 0);
    expectGood(await syncCache());
    expect(
      fs
        .readFileSync(file)
        .subarray(0, 2048)
        .every((b) => b === 1),
    ).toBe(true);
  });

  it('after a failed sync SYNCHRONIZE CACHE keeps failing until a power-on reset (not a LUN reset)', async () => {
    expectGood(await write(0, 1, 1));
    t.failSync = true;
    expectSense(await syncCache(), 3, 0x0c, 0);
    expectSense(await syncCache(), 3, 0x0c, 0);
    expectSense(await write(1, 1, 1, 0x08), 3, 0x0c, 0); // FUA cannot be honoured either
    disk.reset('lun-reset');
    expectSense(await run(disk, cdb(0x00)), 6, 0x29, 0x03);
    expectSense(await syncCache(), 3, 0x0c, 0);
    disk.reset('power-on');
    expectSense(await run(disk, cdb(0x00)), 6, 0x29, 0x00);
    expectGood(await syncCache());
  });

  it('WCE=0 (MODE SELECT of the caching page): every write is synced before GOOD; MODE SENSE shows it; a power-on reset restores WCE=1', async () => {
    expectGood(await write(0, 1, 1));
    expect(t.syncs).toBe(0);
    expectGood(await modeSelect(caching(0x00)));
    const ms = await run(disk, cdb(0x1a, 0x08, 0x08, 0, 255, 0), { in: 255 });
    expect(ms.data[4 + 2] & 0x04).toBe(0);
    expect(disk.info().writeCache).toBe(false);
    expect(disk.saveState()).toMatchObject({ wce: false });
    expectGood(await write(1, 2, 2));
    expect(t.syncs).toBe(1);
    expect(
      fs
        .readFileSync(file)
        .subarray(512, 1536)
        .every((b) => b === 2),
    ).toBe(true);
    t.failSync = true;
    expectSense(await write(3, 1, 3), 3, 0x0c, 0);
    disk.reset('power-on');
    expect(disk.info().writeCache).toBe(true);
    expect(disk.saveState().wce).toBeUndefined();
    await run(disk, cdb(0x00)); // the unit attention
    expectGood(await write(3, 1, 3));
    expect(t.syncs).toBe(2);
  });

  it('migrates WCE=0 and refuses a malformed value', () => {
    const other = new ScsiDisk({ backend: new RawFileBackend(file, false, false, t.io), readonly: false, serial: 'SAFE' });
    other.loadState({ kind: 'disk', wce: false });
    expect(other.info().writeCache).toBe(false);
    expect(() => other.loadState({ kind: 'disk', wce: 1 as unknown as boolean })).toThrow(/wce 1 is not a boolean/);
    other.close();
  });
});
