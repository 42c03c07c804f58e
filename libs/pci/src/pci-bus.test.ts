import { PCI_COMMAND, PCI_COMMAND_MASTER, PciConfigSpace } from './config-space';
import { IoBus } from './io-bus';
import { PCI_CONF1_ADDRESS_PORT, PciBus, PciHostBridge } from './pci-bus';

function conf1(bus: PciBus) {
  const io = new IoBus('pio');
  io.register(PCI_CONF1_ADDRESS_PORT, 8, 'pci-conf1', bus.conf1);
  const addr = (dev: number, fn: number, reg: number) => (0x80000000 | (dev << 11) | (fn << 8) | (reg & 0xfc)) >>> 0;
  return {
    read(dev: number, fn: number, reg: number, size = 4): number {
      io.write(0xcf8, 4, addr(dev, fn, reg));
      return Number(io.read(0xcfc + (reg & 3), size));
    },
    write(dev: number, fn: number, reg: number, size: number, value: number): void {
      io.write(0xcf8, 4, addr(dev, fn, reg));
      io.write(0xcfc + (reg & 3), size, value);
    },
    io,
  };
}

describe('PciBus conf1', () => {
  const bus = new PciBus();
  bus.attach(new PciHostBridge(), 0);
  const c = conf1(bus);

  it('finds the host bridge at 00:00.0 and nothing at 00:01.0', () => {
    expect(c.read(0, 0, 0)).toBe(0x12378086);
    expect(c.read(0, 0, 8) >>> 8).toBe(0x060000);
    expect(c.read(1, 0, 0)).toBe(0xffffffff);
    expect(c.read(0, 0, 2, 2)).toBe(0x1237);
  });

  it('reads back the address register and ignores accesses with the enable bit clear', () => {
    c.io.write(0xcf8, 4, 0x00000000);
    expect(c.io.read(0xcf8, 4)).toBe(0);
    expect(c.io.read(0xcfc, 4)).toBe(0xffffffff);
  });

  it('applies write masks: vendor ID is read-only, bus master is writable', () => {
    c.write(0, 0, 0, 2, 0xabcd);
    expect(c.read(0, 0, 0, 2)).toBe(0x8086);
    c.write(0, 0, PCI_COMMAND, 2, PCI_COMMAND_MASTER | 0x8000);
    expect(c.read(0, 0, PCI_COMMAND, 2)).toBe(PCI_COMMAND_MASTER);
  });

  it('refuses a taken slot and overlapping bus ranges', () => {
    expect(() => bus.attach(new PciHostBridge(), 0)).toThrow(/already used by host-bridge/);
    expect(() => c.io.register(0xcfc, 4, 'other', { read: () => 0, write: () => undefined })).toThrow(/overlaps pci-conf1/);
  });

  it('chains capabilities', () => {
    const cs = new PciConfigSpace({ vendorId: 1, deviceId: 2, classCode: 0 });
    const a = cs.addCapability(0x09, new Uint8Array(14));
    const b = cs.addCapability(0x11, new Uint8Array(10));
    expect(cs.getU8(0x34)).toBe(a);
    expect(cs.getU8(a + 1)).toBe(b);
    expect(b).toBeGreaterThanOrEqual(a + 16);
    expect(cs.getU16(0x06) & 0x10).toBe(0x10);
  });
});

describe('BAR sizing and reprogramming', () => {
  it('maps a 64-bit BAR above 2 GiB again after the guest sizes and restores it', () => {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { PciBarFunction } = require('./pci-device') as typeof import('./pci-device');
    class Fn extends PciBarFunction {}
    const mmio = new IoBus('mmio');
    const fn = new Fn('t', { vendorId: 1, deviceId: 2, classCode: 0 }, mmio);
    fn.addBar({ index: 4, size: 0x4000, kind: 'mem64', device: { read: () => 0x11, write: () => undefined } }, 0xc0004000);
    fn.configWrite(0x04, 2, 0x0002); // memory decode on
    expect(fn.barAddress(4)).toBe(0xc0004000);
    // Linux's sizing: decode off, all ones to both halves, read back, restore, decode on.
    fn.configWrite(0x04, 2, 0);
    fn.configWrite(0x20, 4, 0xffffffff);
    fn.configWrite(0x24, 4, 0xffffffff);
    expect(fn.configRead(0x20, 4) >>> 0).toBe(0xffffc004);
    fn.configWrite(0x20, 4, 0xc0004004);
    fn.configWrite(0x24, 4, 0);
    fn.configWrite(0x04, 2, 0x0002);
    expect(fn.barAddress(4)).toBe(0xc0004000);
    expect(mmio.read(0xc0004014, 4)).toBe(0x11);
  });
});
