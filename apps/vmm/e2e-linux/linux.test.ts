// A real Linux guest (tools/linux-guest) drives the VMM and its plugins.
import { describeKvm } from '@tsvmm/kvm-native/testing';
import { expectGuestPass, runLinux } from './linux';

describeKvm('Linux guest', () => {
  it('boots to /init through the bzImage 64-bit boot protocol and ends the VMM with reboot -f', async () => {
    const r = await runLinux('boot');
    expectGuestPass(r, 'boot');
    expect(r.out).toContain('found SMP MP-table');
    expect(r.out).toMatch(/BIOS-e820: \[mem 0x0000000000100000-0x0000000007ffffff\] usable/);
    expect(r.err).toContain('guest requested a reset');
  });
});
