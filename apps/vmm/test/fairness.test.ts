// One device flooded, another doing I/O (guest kit test=hostile-flood, tools/guest-kit/src/hostile.c):
// the guest keeps virtio-blk's queue full of long requests (a queue-size indirect table each) without
// ever letting it run dry, while
// virtio-scsi writes and reads back 4 KiB blocks. The device models share the VMM's main thread,
// so without a per-kick chain budget (CHAIN_BUDGET, libs/virtio-core/src/device.ts) the flooded
// queue would be served for as long as the guest keeps it full, and the SCSI requests would wait.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { describeKvm } from '@tsvmm/kvm-native/testing';
import { CHAIN_BUDGET } from '@tsvmm/virtio-core';
import { expectGuestPass, requireBuilt, runGuestKit } from '@tsvmm/testing';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmm-hardening-fairness-'));

describeKvm('fairness between devices', () => {
  beforeAll(() => requireBuilt());

  it.each(['ioeventfd=on', 'ioeventfd=off'])(
    'a guest flooding virtio-blk (queue kept full, %s) does not hold up its virtio-scsi I/O',
    async (opt) => {
      const blk = path.join(tmp, `blk-${opt.replace(/\W/g, '_')}.img`);
      const lun = path.join(tmp, `lun-${opt.replace(/\W/g, '_')}.img`);
      fs.writeFileSync(blk, Buffer.alloc(1 << 20));
      fs.writeFileSync(lun, Buffer.alloc(1 << 20));
      const ios = 4;
      const r = await runGuestKit(
        `test=hostile-flood ios=${ios} qsize=256`,
        [`virtio-blk,id=d0,file=${blk},serial=FLOOD,${opt}`, 'virtio-scsi,id=s0', `scsi-hd,bus=s0,lun=0,file=${lun}`],
        { timeoutMs: 120_000 },
      );
      expectGuestPass(r, 'hostile-flood');
      const m =
        /hostile flood blk-chains=(\d+) during-io=(\d+) refills=(\d+) used=(\d+) scsi-ios=(\d+) blk-status=0x([0-9a-f]+) id0=0x([0-9a-f]+)/.exec(
          r.out,
        );
      expect(m).not.toBeNull();
      const [chains, during] = [Number(m![1]), Number(m![2])];
      // The flood went on through the SCSI I/O (at least a budget's worth of chains) ...
      expect(during).toBeGreaterThanOrEqual(CHAIN_BUDGET);
      // ... and each SCSI request waited for only a few budgets of the flooded queue: the device yields
      // after CHAIN_BUDGET chains, so the SCSI kick and its completion are served in the next turns of
      // the event loop. (Measured here: about 2 budgets per request; with no budget (CHAIN_BUDGET set to 1e9), about 140 budgets.
      expect(during / (2 * ios)).toBeLessThanOrEqual(16 * CHAIN_BUDGET);
      // Every chain the guest published was taken and answered (the serial's first byte), the device healthy.
      expect(Number(m![4])).toBe(chains % 65536);
      expect(m![5]).toBe(String(ios));
      expect(parseInt(m![6], 16) & 0x40).toBe(0);
      expect(m![7]).toBe('46'); // 'F'
      // The SCSI data landed: block i * 8 holds write i's pattern.
      const img = fs.readFileSync(lun);
      for (let i = 0; i < ios; i++) for (const k of [0, 4095]) expect(img[i * 4096 + k]).toBe((k * 13 + i * 5 + 1) & 0xff);
      expect(r.err).not.toMatch(/needs reset|internal error|terminate called|Unhandled/);
    },
    150_000,
  );
});
