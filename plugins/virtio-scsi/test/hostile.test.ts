// The guest kit's hostile suite (tools/guest-kit/src/hostile.c) against virtio-scsi: zero-length
// response and data-in buffers at guest-physical 0 and outside RAM, with ioeventfd on and off.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { describeKvm } from '@tsvmm/kvm-native/testing';
import { expectGuestPass as expectPass, requireBuilt, runGuestKit } from '@tsvmm/testing';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'virtio-scsi-hostile-boundary-'));

describeKvm('virtio-scsi: hostile guest (hostile.c)', () => {
  beforeAll(() => requireBuilt());
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it.each([
    ['zero-resp', '0', 'on'],
    ['zero-resp', 'oob', 'off'],
    ['zero-data', '0', 'off'],
    ['zero-data', 'oob', 'on'],
    ['zero-data', 'oob', 'on', ',iothread=iotscsi0'],
  ])(
    '%s buffer at %s (ioeventfd=%s%s): the VMM stays up, the guest reads needs-reset, a reset brings the adapter back',
    async (kind, at, io, extra = '') => {
      const img = path.join(tmp, `${kind}-${at}-${io}${extra ? '-io' : ''}.img`);
      fs.writeFileSync(img, Buffer.alloc(1 << 20));
      const r = await runGuestKit(
        `test=hostile-scsi kind=${kind} at=${at}`,
        [`virtio-scsi,id=scsi0,ioeventfd=${io}${extra}`, `scsi-hd,bus=scsi0,lun=0,file=${img}`],
        { timeoutMs: 60_000 },
      );
      expectPass(r, 'hostile-scsi');
      expect(r.out).toContain(`hostile dev=scsi kind=${kind} at=${at} needs_reset=1 config_irq=1`);
      expect(r.out).toContain('hostile dev=scsi recovered=1');
      expect(r.err.match(/scsi0: guest error, device needs reset/g)).toHaveLength(1);
      expect(r.err).not.toMatch(/internal error|terminate called|Unhandled|kvm-native: exception/);
    },
  );
});
