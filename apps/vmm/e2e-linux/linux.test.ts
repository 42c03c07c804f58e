// A real Linux guest (tools/linux-guest) drives the VMM and its plugins.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { describeKvm } from '@tsvmm/kvm-native/testing';
import { expectGuestPass, runLinux } from './linux';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmm-linux-'));

/** The guest's /pattern (64 KiB): byte i = (i + (i >> 8) * 37 + 0x5a) & 0xff, as tools/linux-guest/build.sh writes it. */
function guestPattern(): Buffer {
  return Buffer.from(Array.from({ length: 65536 }, (_, i) => (i + (i >> 8) * 37 + 0x5a) & 0xff));
}

describeKvm('Linux guest', () => {
  it('boots to /init through the bzImage 64-bit boot protocol and ends the VMM with reboot -f', async () => {
    const r = await runLinux('boot');
    expectGuestPass(r, 'boot');
    expect(r.out).toContain('found SMP MP-table');
    expect(r.out).toMatch(/BIOS-e820: \[mem 0x0000000000100000-0x0000000007ffffff\] usable/);
    expect(r.err).toContain('guest requested a reset');
  });

  it.each(['on', 'off'])('virtio-blk (ioeventfd=%s): virtio_blk binds with MSI-X, O_DIRECT pattern round trip, discard, flush', async (ioeventfd) => {
    const img = path.join(tmp, `vda-${ioeventfd}.img`);
    fs.writeFileSync(img, Buffer.alloc(4 * 2 ** 20, 0xee));
    const r = await runLinux('virtio-blk', { args: ['--device', `virtio-blk,id=d0,file=${img},ioeventfd=${ioeventfd}`] });
    expectGuestPass(r, 'virtio-blk');
    expect(r.out).toMatch(/linux-guest: irq \d+: +[1-9]\d* +PCI-MSI .*virtio0-req\.0/);
    expect(r.out).toContain('blkdiscard ok');
    const data = fs.readFileSync(img);
    expect(data.subarray(0, 65536).equals(guestPattern())).toBe(true);
    expect(data.subarray(65536, 131072).every((b) => b === 0)).toBe(true); // discarded
    expect(data[131072]).toBe(0xee);
  });
});
