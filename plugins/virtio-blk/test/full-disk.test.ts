// A full host disk under a real guest: the image is a sparse file on a small tmpfs that runs out
// while the guest kit writes (test=blk-fill). The write that did not fit is IOERR, never OK;
// every write answered OK is in the image; the next FLUSH fails (docs/block-data-safety.md).
// On the main thread (aio=io_uring, the default, and aio=threads) and in an iothread, and
// write-through for a driver without FLUSH.
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { describeKvm } from '@tsvmm/kvm-native/testing';
import { expectGuestPass, requireBuilt, runGuestKit } from '@tsvmm/testing';

/** Byte i of sector s as the guest kit writes it. */
const patternByte = (s: number, i: number, seed: number) => (s * 31 + i * 7 + seed) & 0xff;

/** 28 KiB requests on a 512 KiB tmpfs: the request that crosses the end is cut short by the host. */
const CHUNK = 56;
const SEED = 3;

describeKvm('virtio-blk on a full host disk (guest kit, blk-fill)', () => {
  let mnt: string;
  beforeAll(() => {
    requireBuilt();
    mnt = fs.mkdtempSync(path.join(os.tmpdir(), 'blkdata-full-blk-'));
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=512k', 'blkdata-full-blk', mnt]);
  });
  afterAll(() => {
    execFileSync('umount', [mnt]);
    fs.rmdirSync(mnt);
  });

  it.each([
    ['main thread', '', ''],
    ['main thread, aio=threads', ',aio=threads', ''],
    ['iothread', ',iothread=io0', ''],
    ['iothread, driver without FLUSH (write-through)', ',iothread=io0', ' flush=0'],
  ])(
    '%s: the write that does not fit is IOERR, what was OK is in the image, the next FLUSH (if negotiated) fails',
    async (name, opt, guestOpt) => {
      const img = path.join(mnt, `disk-${name.replace(/[^a-z]/g, '')}.img`);
      fs.closeSync(fs.openSync(img, 'w'));
      fs.truncateSync(img, 16 << 20); // sparse: 16 MiB on 512 KiB
      try {
        const r = await runGuestKit(`test=blk-fill chunk=${CHUNK} seed=${SEED}${guestOpt}`, [`virtio-blk,id=d0,file=${img}${opt}`], {
          timeoutMs: 120_000,
        });
        expectGuestPass(r, 'blk-fill');
        const writes = [...r.out.matchAll(/blk-fill write lba=(\d+) sectors=(\d+) status=(\d+)/g)].map((m) => ({
          lba: +m[1],
          sectors: +m[2],
          status: +m[3],
        }));
        const ok = writes.filter((w) => w.status === 0);
        // Every write OK up to the one that did not fit, which is IOERR (1); nothing else.
        expect(writes.map((w) => w.status)).toEqual([...ok.map(() => 0), 1]);
        expect(ok.length).toBeGreaterThan(5);
        expect(ok.length * CHUNK * 512).toBeLessThanOrEqual(512 * 1024);
        const flushes = [...r.out.matchAll(/blk-fill flush status=(\d+)/g)].map((m) => +m[1]);
        // The failed write is reported by the next FLUSH, once; then FLUSH says the OK writes are in the file.
        expect(flushes).toEqual(guestOpt ? [] : [1, 0]);
        expect(r.err).toMatch(/d0: host I\/O error on write at sector \d+: .*ENOSPC|no space left/i);
        const data = fs.readFileSync(img);
        for (const w of ok)
          for (let s = w.lba; s < w.lba + w.sectors; s++)
            for (let i = 0; i < 512; i++)
              if (data[s * 512 + i] !== patternByte(s, i, SEED))
                throw new Error(`sector ${s} byte ${i}: ${data[s * 512 + i]}, the guest was told OK`);
      } finally {
        fs.rmSync(img, { force: true });
      }
    },
  );
});
