import { E820_RAM, HIGH_RAM_START, LOW_RAM_LIMIT, PCI_MMIO64_BASE, ramLayout } from './layout';

const GiB = 2 ** 30;
const ramEntries = (m: number) => ramLayout(m).e820.filter((e) => e.type === E820_RAM);

describe('RAM layout', () => {
  it('up to 3 GiB: one region from 0, no RAM above 4 GiB', () => {
    const l = ramLayout(3 * GiB);
    expect(l.regions).toEqual([{ slot: 0, guestPhysAddr: 0, size: 3 * GiB }]);
    expect(l.lowRamEnd).toBe(LOW_RAM_LIMIT);
    expect(ramEntries(3 * GiB).every((e) => e.addr + e.size <= LOW_RAM_LIMIT)).toBe(true);
  });

  it.each([
    [8, 5],
    [64, 61],
  ])('--memory %iG: 3 GiB below the PCI hole, %i GiB from 4 GiB, in the slots and the e820 map', (g, high) => {
    const l = ramLayout(g * GiB);
    expect(l.regions).toEqual([
      { slot: 0, guestPhysAddr: 0, size: 3 * GiB },
      { slot: 1, guestPhysAddr: HIGH_RAM_START, size: high * GiB },
    ]);
    expect(ramEntries(g * GiB).at(-1)).toEqual({ addr: 4 * GiB, size: high * GiB, type: E820_RAM });
    // Every byte of RAM is in the e820 map once, except the reserved EBDA/BIOS area below 1 MiB.
    const mapped = ramEntries(g * GiB).reduce((n, e) => n + e.size, 0);
    expect(g * GiB - mapped).toBe(0x100000 - 0x9fc00);
    expect(HIGH_RAM_START + high * GiB).toBeLessThanOrEqual(PCI_MMIO64_BASE);
  });

  it('refuses RAM that would reach the 64-bit PCI window', () => {
    expect(() => ramLayout(600 * GiB)).toThrow(/64-bit PCI MMIO window/);
  });
});
