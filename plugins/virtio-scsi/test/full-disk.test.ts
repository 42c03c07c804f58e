// scsi-hd on a full host disk under a real guest: the image is a sparse file on a small tmpfs
// that runs out while the guest kit writes (test=scsi-fill). The WRITE that did not fit ends in
// MEDIUM ERROR (03/0C), never GOOD; every GOOD write is in the image; the next SYNCHRONIZE CACHE
// fails (docs/block-data-safety.md). With the write cache on, and off (WCE=0: write-through).
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { describeKvm } from '@tsvmm/kvm-native/testing';
import { expectGuestPass, requireBuilt, runGuestKit } from '@tsvmm/testing';

/** Byte at image offset o as the guest kit writes it. */
const patternByte = (o: number, seed: number) => (Math.floor(o / 512) * 31 + (o % 512) * 7 + seed) & 0xff;

/** 28 KiB WRITEs on a 512 KiB tmpfs: the one that crosses the end is cut short by the host. */
const BLOCKS = 56;
const SEED = 4;

describeKvm('scsi-hd on a full host disk (guest kit, scsi-fill)', () => {
  let mnt: string;
  beforeAll(() => {
    requireBuilt();
    mnt = fs.mkdtempSync(path.join(os.tmpdir(), 'blkdata-full-scsi-'));
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=512k', 'blkdata-full-scsi', mnt]);
  });
  afterAll(() => {
    execFileSync('umount', [mnt]);
    fs.rmdirSync(mnt);
  });

  it.each([
    ['write cache on', 1, ''],
    ['write cache on, aio=threads', 1, ',aio=threads'],
    ['WCE=0 (write-through)', 0, ''],
  ])(
    '%s: the WRITE that does not fit is MEDIUM ERROR, GOOD data is in the image, the next SYNCHRONIZE CACHE fails',
    async (name, wce, aio) => {
      const img = path.join(mnt, `disk-wce${wce}${aio ? '-threads' : ''}.img`);
      fs.closeSync(fs.openSync(img, 'w'));
      fs.truncateSync(img, 16 << 20); // sparse: 16 MiB on 512 KiB
      try {
        const r = await runGuestKit(
          `test=scsi-fill blocks=${BLOCKS} seed=${SEED} wce=${wce}`,
          ['virtio-scsi,id=scsi0', `scsi-hd,bus=scsi0,lun=0,file=${img}${aio}`],
          { timeoutMs: 120_000 },
        );
        expectGuestPass(r, 'scsi-fill');
        if (!wce) expect(r.out).toContain('scsi-fill wce=0');
        const re = /scsi-fill write lba=(\d+) blocks=(\d+) response=(\d+) status=0x(\w+) key=0x(\w+) asc=0x(\w+)/g;
        const writes = [...r.out.matchAll(re)].map((m) => ({ lba: +m[1], blocks: +m[2], answer: `${m[3]} ${m[4]} ${m[5]}/${m[6]}` }));
        const good = writes.filter((w) => w.answer === '0 00 00/00');
        // GOOD up to the WRITE that did not fit: CHECK CONDITION, MEDIUM ERROR, WRITE ERROR.
        expect(writes.map((w) => w.answer)).toEqual([...good.map(() => '0 00 00/00'), '0 02 03/0c']);
        expect(good.length).toBeGreaterThan(5);
        const syncs = [...r.out.matchAll(/scsi-fill sync response=(\d+) status=0x(\w+) key=0x(\w+) asc=0x(\w+)/g)].map(
          (m) => `${m[1]} ${m[2]} ${m[3]}/${m[4]}`,
        );
        expect(syncs).toEqual(['0 02 03/0c', '0 00 00/00']);
        const data = fs.readFileSync(img);
        for (const w of good)
          for (let o = w.lba * 512; o < (w.lba + w.blocks) * 512; o++)
            if (data[o] !== patternByte(o, SEED)) throw new Error(`offset ${o}: ${data[o]}, the guest was told GOOD`);
      } finally {
        fs.rmSync(img, { force: true });
      }
    },
  );
});
