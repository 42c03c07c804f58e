/**
 * PCI bus 0 with configuration mechanism #1 (ports 0xCF8 address, 0xCFC-0xCFF data).
 */
import { BusDevice } from './io-bus';
import { PciConfigSpace, PciIdentity } from './config-space';

/** A PCI function as the bus sees it. */
export interface PciFunction {
  readonly name: string;
  readonly config: PciConfigSpace;
  /** Config-space read hook (defaults to the raw bytes). */
  configRead?(offset: number, size: number): number;
  /** Config-space write hook; called instead of config.write when present. */
  configWrite?(offset: number, size: number, value: number): void;
}

export const PCI_CONF1_ADDRESS_PORT = 0xcf8;
export const PCI_CONF1_DATA_PORT = 0xcfc;

export interface PciSlotInfo {
  bus: number;
  device: number;
  function: number;
  fn: PciFunction;
}

export class PciBus {
  private readonly slots = new Map<number, PciFunction>(); // key: devfn
  private conf1Address = 0;
  /**
   * Port 0xCF9 (a byte inside the conf1 address dword) is the chipset's reset
   * control register: a write with bit 2 set resets the machine.
   */
  onResetControl: (() => void) | undefined;

  /** Places `fn` at 00:device.function; throws when the slot is taken. */
  attach(fn: PciFunction, device?: number, func = 0): number {
    if (device === undefined) {
      device = 0;
      while (this.slots.has(device << 3) && device < 32) device++;
    }
    if (device < 0 || device > 31 || func < 0 || func > 7) throw new RangeError(`PCI slot ${device}.${func} is out of range`);
    const devfn = (device << 3) | func;
    if (this.slots.has(devfn)) throw new Error(`PCI slot 00:${hex2(device)}.${func} is already used by ${this.slots.get(devfn)!.name}`);
    if (device >= 32) throw new Error('PCI bus 0 is full');
    this.slots.set(devfn, fn);
    return device;
  }

  functions(): PciSlotInfo[] {
    return [...this.slots.entries()]
      .sort(([a], [b]) => a - b)
      .map(([devfn, fn]) => ({ bus: 0, device: devfn >> 3, function: devfn & 7, fn }));
  }

  configRead(devfn: number, offset: number, size: number): number {
    const fn = this.slots.get(devfn);
    if (!fn) return size === 4 ? 0xffffffff : (1 << (size * 8)) - 1;
    return fn.configRead ? fn.configRead(offset, size) : fn.config.read(offset, size);
  }

  configWrite(devfn: number, offset: number, size: number, value: number): void {
    const fn = this.slots.get(devfn);
    if (!fn) return;
    if (fn.configWrite) fn.configWrite(offset, size, value);
    else fn.config.write(offset, size, value);
  }

  /** The conf1 port device, to be registered at 0xCF8 with size 8. */
  readonly conf1: BusDevice = {
    read: (offset, size) => {
      if (offset < 4) {
        if (offset === 0 && size === 4) return this.conf1Address >>> 0;
        return 0xffffffff >>> (32 - size * 8);
      }
      return this.conf1Data(offset - 4, size, undefined) as number;
    },
    write: (offset, size, value) => {
      if (offset < 4) {
        // Only dword writes to 0xCF8 change the address (byte writes there are other chipset registers).
        if (offset === 0 && size === 4) this.conf1Address = Number(value) & 0x80fffffc;
        else if (offset === 1 && size === 1 && Number(value) & 0x04) this.onResetControl?.();
        return;
      }
      this.conf1Data(offset - 4, size, Number(value));
    },
  };

  private conf1Data(byteInDword: number, size: number, value: number | undefined): number | void {
    const a = this.conf1Address;
    const enabled = (a & 0x80000000) !== 0;
    const bus = (a >> 16) & 0xff;
    const devfn = (a >> 8) & 0xff;
    const reg = (a & 0xfc) + byteInDword;
    const ones = size === 4 ? 0xffffffff : (1 << (size * 8)) - 1;
    if (!enabled || bus !== 0 || reg + size > 256) return value === undefined ? ones : undefined;
    if (value === undefined) return this.configRead(devfn, reg, size);
    this.configWrite(devfn, reg, size, value & ones);
  }
}

/** The host bridge at 00:00.0. */
export class PciHostBridge implements PciFunction {
  readonly name = 'host-bridge';
  readonly config: PciConfigSpace;

  static readonly IDENTITY: PciIdentity = { vendorId: 0x8086, deviceId: 0x1237, classCode: 0x060000 };

  constructor() {
    this.config = new PciConfigSpace(PciHostBridge.IDENTITY);
  }
}

function hex2(n: number): string {
  return n.toString(16).padStart(2, '0');
}
