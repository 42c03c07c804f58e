import { StateError } from '@tsvmm/virtio-core';
import { checkRestoredBars, FixedRegion, RestoredFunction } from './bar-layout';
import { PCI_BASE_ADDRESS_0, PCI_COMMAND, PCI_COMMAND_MEMORY } from './config-space';
import { IoBus } from './io-bus';
import { PciBarFunction } from './pci-device';

class Fn extends PciBarFunction {}
const sink = { read: () => 0, write: () => undefined };

/** A function with a 4 KiB mem32 BAR0 and a 16 KiB mem64 BAR4, as virtio-pci has. */
function fn(name: string): Fn {
  const f = new Fn(name, { vendorId: 0x1af4, deviceId: 0x1042, classCode: 0x018000 }, new IoBus('mmio'));
  f.addBar({ index: 0, size: 0x1000, kind: 'mem32', device: sink }, 0xc0000000);
  f.addBar({ index: 4, size: 0x4000, kind: 'mem64', device: sink }, 0xc0004000);
  return f;
}

/** The function's config space with memory decoding `decode` and the BARs at these addresses. */
function image(f: Fn, bars: { 0?: number; 4?: number }, decode = true): Uint8Array {
  const c = new Uint8Array(f.config.bytes);
  const v = new DataView(c.buffer);
  v.setUint16(PCI_COMMAND, decode ? PCI_COMMAND_MEMORY : 0, true);
  if (bars[0] !== undefined) v.setUint32(PCI_BASE_ADDRESS_0, bars[0], true);
  if (bars[4] !== undefined) {
    v.setUint32(PCI_BASE_ADDRESS_0 + 16, (bars[4] % 2 ** 32) | 0x4, true);
    v.setUint32(PCI_BASE_ADDRESS_0 + 20, Math.floor(bars[4] / 2 ** 32), true);
  }
  return c;
}

const fixed: FixedRegion[] = [
  { name: 'RAM below 4 GiB', start: 0, size: 0x4000_0000 },
  { name: 'the IOAPIC', start: 0xfec00000, size: 0x1000 },
  { name: 'the LAPIC', start: 0xfee00000, size: 0x1000 },
  { name: 'RAM above 4 GiB', start: 2 ** 32, size: 2 ** 30 },
];
const edges = [
  { name: 'the end of the 32-bit PCI window', at: 0xfe000000 },
  { name: '4 GiB', at: 2 ** 32 },
];

const refusal = (fns: RestoredFunction[]) => {
  try {
    checkRestoredBars(fns, fixed, edges);
  } catch (e) {
    expect(e).toBeInstanceOf(StateError);
    return (e as Error).message;
  }
  return 'accepted';
};
const restored = (f: Fn, config: Uint8Array): RestoredFunction => ({
  name: `device '${f.name}'`,
  path: `device/${f.name}.state.transport.config`,
  fn: f,
  config,
});

describe('checkRestoredBars', () => {
  const a = fn('a');
  const b = fn('b');

  it('accepts what a VMM lays out: BARs apart in the 32-bit window, 64-bit BARs high', () => {
    expect(
      refusal([restored(a, image(a, { 0: 0xc0000000, 4: 0xc0004000 })), restored(b, image(b, { 0: 0xc0001000, 4: 0x80_0000_0000 }))]),
    ).toBe('accepted');
  });

  it('ignores BARs that are not decoded: memory decoding off, address 0, or being sized', () => {
    expect(refusal([restored(a, image(a, { 0: 0xfee00000, 4: 0xfee00000 }, false))])).toBe('accepted');
    expect(refusal([restored(a, image(a, { 0: 0, 4: 0 }))])).toBe('accepted');
    expect(refusal([restored(a, image(a, { 0: 0xfffff000, 4: 0xc0004000 }))])).toBe('accepted');
  });

  it.each([
    [{ 0: 0xfee00000 }, 'device/a.state.transport.config: BAR0 0xfee00000-0xfee00fff overlaps the LAPIC (0xfee00000-0xfee00fff)'],
    [{ 0: 0xfec00000 }, 'device/a.state.transport.config: BAR0 0xfec00000-0xfec00fff overlaps the IOAPIC (0xfec00000-0xfec00fff)'],
    [{ 4: 0x1000_0000 }, 'device/a.state.transport.config: BAR4 0x10000000-0x10003fff overlaps RAM below 4 GiB (0x0-0x3fffffff)'],
    [
      { 4: 2 ** 32 + 0x4000 },
      'device/a.state.transport.config: BAR4 0x100004000-0x100007fff overlaps RAM above 4 GiB (0x100000000-0x13fffffff)',
    ],
  ])('refuses %j, naming the device, the field and the region', (bars, msg) => {
    expect(refusal([restored(a, image(a, { 0: 0xc0000000, 4: 0xc0004000, ...bars }))])).toBe(msg);
  });

  it('refuses a BAR that straddles an edge of the PCI hole', () => {
    const c = fn('c');
    const big = new Fn('big', { vendorId: 1, deviceId: 2, classCode: 0 }, new IoBus('mmio'));
    // 64-bit: a 32-bit BAR this large there would read as being sized (all ones), and not be decoded.
    big.addBar({ index: 2, size: 0x0400_0000, kind: 'mem64', device: sink }, 0xc0000000);
    const cfg = new Uint8Array(big.config.bytes);
    const v = new DataView(cfg.buffer);
    v.setUint16(PCI_COMMAND, PCI_COMMAND_MEMORY, true);
    v.setUint32(PCI_BASE_ADDRESS_0 + 8, 0xfc000004, true);
    expect(refusal([restored(c, image(c, {})), restored(big, cfg)])).toBe(
      'device/big.state.transport.config: BAR2 0xfc000000-0xffffffff overlaps the IOAPIC (0xfec00000-0xfec00fff)',
    );
    const noFixed = () => {
      try {
        checkRestoredBars([restored(big, cfg)], [], edges);
      } catch (e) {
        return (e as Error).message;
      }
      return 'accepted';
    };
    expect(noFixed()).toBe(
      'device/big.state.transport.config: BAR2 0xfc000000-0xffffffff crosses the end of the 32-bit PCI window at 0xfe000000',
    );
  });

  it("refuses a BAR over another device's BAR, or over the same device's other BAR", () => {
    expect(
      refusal([restored(a, image(a, { 0: 0xc0000000, 4: 0xc0004000 })), restored(b, image(b, { 0: 0xc0005000, 4: 0xc0008000 }))]),
    ).toBe("device/b.state.transport.config: BAR0 0xc0005000-0xc0005fff overlaps device 'a' BAR4 (0xc0004000-0xc0007fff)");
    expect(refusal([restored(a, image(a, { 0: 0xc0004000, 4: 0xc0004000 }))])).toBe(
      "device/a.state.transport.config: BAR4 0xc0004000-0xc0007fff overlaps device 'a' BAR0 (0xc0004000-0xc0004fff)",
    );
  });
});
