// A real Linux guest (tools/linux-guest) drives the VMM and its plugins.
import { execFileSync } from 'child_process';
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
    expect(r.out).toMatch(/linux-guest: irq .*PCI-MSI.*virtio0-requests/);
    expect(r.out).toContain('blkdiscard ok');
    const data = fs.readFileSync(img);
    expect(data.subarray(0, 65536).equals(guestPattern())).toBe(true);
    expect(data.subarray(65536, 131072).every((b) => b === 0)).toBe(true); // discarded
    expect(data[131072]).toBe(0xee);
  });

  const netns = `vmmlx${process.pid}`;
  const canNet = process.getuid?.() === 0;
  (canNet ? it : it.skip)('virtio-net: virtio_net binds; the guest pings the host side of a TAP in a namespace, and the host pings the guest', async () => {
    const ip = (...a: string[]) => execFileSync('ip', a);
    ip('netns', 'add', netns);
    try {
      ip('netns', 'exec', netns, 'ip', 'tuntap', 'add', 'tap0', 'mode', 'tap', 'vnet_hdr');
      ip('netns', 'exec', netns, 'ip', 'addr', 'add', '10.0.9.1/24', 'dev', 'tap0');
      ip('netns', 'exec', netns, 'ip', 'link', 'set', 'tap0', 'up');
      let hostPing = '';
      const r = await runLinux('net-ping', {
        args: ['--device', 'virtio-net,id=n0,tap=tap0,mac=52:54:00:00:09:02'],
        params: 'tsvmm.ip=10.0.9.2/24 tsvmm.peer=10.0.9.1 tsvmm.hold=8',
        wrap: ['ip', 'netns', 'exec', netns],
        onLine: (l) => {
          // While the guest holds the link up after its own pings, ping it from the host.
          if (l.includes('linux-guest: holding')) {
            try {
              hostPing = execFileSync('ip', ['netns', 'exec', netns, 'ping', '-c', '2', '-W', '3', '10.0.9.2']).toString();
            } catch (e) {
              hostPing = `failed: ${(e as Error).message}`;
            }
          }
        },
      });
      expectGuestPass(r, 'net-ping');
      expect(r.out).toMatch(/eth0 driver=virtio_net/);
      expect(hostPing).toMatch(/2 packets transmitted, 2 (packets )?received/);
    } finally {
      ip('netns', 'del', netns);
    }
  });
});
