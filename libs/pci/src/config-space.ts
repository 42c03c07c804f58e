/**
 * A PCI function's 256-byte configuration space (type 0 header), with
 * per-bit write masks so the guest can only change what hardware would let it.
 */
export const PCI_VENDOR_ID = 0x00;
export const PCI_DEVICE_ID = 0x02;
export const PCI_COMMAND = 0x04;
export const PCI_STATUS = 0x06;
export const PCI_REVISION_ID = 0x08;
export const PCI_CLASS_PROG = 0x09;
export const PCI_CLASS_DEVICE = 0x0a;
export const PCI_HEADER_TYPE = 0x0e;
export const PCI_BASE_ADDRESS_0 = 0x10;
export const PCI_SUBSYSTEM_VENDOR_ID = 0x2c;
export const PCI_SUBSYSTEM_ID = 0x2e;
export const PCI_CAPABILITY_LIST = 0x34;
export const PCI_INTERRUPT_LINE = 0x3c;
export const PCI_INTERRUPT_PIN = 0x3d;

export const PCI_COMMAND_IO = 0x1;
export const PCI_COMMAND_MEMORY = 0x2;
export const PCI_COMMAND_MASTER = 0x4;
export const PCI_COMMAND_INTX_DISABLE = 0x400;
export const PCI_STATUS_CAP_LIST = 0x10;

export const PCI_CONFIG_SPACE_SIZE = 256;

export interface PciIdentity {
  vendorId: number;
  deviceId: number;
  /** class code (24 bits: base class, subclass, programming interface) */
  classCode: number;
  revision?: number;
  subsystemVendorId?: number;
  subsystemId?: number;
  headerType?: number;
}

export class PciConfigSpace {
  readonly bytes = new Uint8Array(PCI_CONFIG_SPACE_SIZE);
  /** Bits the guest may write. */
  readonly writeMask = new Uint8Array(PCI_CONFIG_SPACE_SIZE);
  /** Bits that a guest write of 1 clears (status register error bits). */
  readonly w1cMask = new Uint8Array(PCI_CONFIG_SPACE_SIZE);
  private readonly dv = new DataView(this.bytes.buffer);

  constructor(id: PciIdentity) {
    this.setU16(PCI_VENDOR_ID, id.vendorId);
    this.setU16(PCI_DEVICE_ID, id.deviceId);
    this.bytes[PCI_REVISION_ID] = id.revision ?? 0;
    this.bytes[PCI_CLASS_PROG] = id.classCode & 0xff;
    this.setU16(PCI_CLASS_DEVICE, (id.classCode >> 8) & 0xffff);
    this.bytes[PCI_HEADER_TYPE] = id.headerType ?? 0;
    this.setU16(PCI_SUBSYSTEM_VENDOR_ID, id.subsystemVendorId ?? 0);
    this.setU16(PCI_SUBSYSTEM_ID, id.subsystemId ?? 0);
    // Command: I/O, memory, bus master, INTx disable are guest-writable.
    this.setMask16(PCI_COMMAND, PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE);
    // Status error bits are write-1-to-clear.
    this.w1cMask[PCI_STATUS + 1] = 0xf9;
    this.writeMask[PCI_INTERRUPT_LINE] = 0xff;
  }

  getU8(off: number): number {
    return this.bytes[off];
  }
  getU16(off: number): number {
    return this.dv.getUint16(off, true);
  }
  getU32(off: number): number {
    return this.dv.getUint32(off, true);
  }
  setU8(off: number, v: number): void {
    this.bytes[off] = v;
  }
  setU16(off: number, v: number): void {
    this.dv.setUint16(off, v, true);
  }
  setU32(off: number, v: number): void {
    this.dv.setUint32(off, v >>> 0, true);
  }
  setMask16(off: number, mask: number): void {
    this.writeMask[off] = mask & 0xff;
    this.writeMask[off + 1] = (mask >> 8) & 0xff;
  }
  setMask32(off: number, mask: number): void {
    for (let i = 0; i < 4; i++) this.writeMask[off + i] = (mask >>> (8 * i)) & 0xff;
  }

  get command(): number {
    return this.getU16(PCI_COMMAND);
  }

  /** Reads `size` bytes at `off` (the access must not cross a dword). */
  read(off: number, size: number): number {
    if (size === 1) return this.bytes[off];
    if (size === 2) return this.dv.getUint16(off, true);
    return this.dv.getUint32(off, true);
  }

  /** Applies a guest write through the write and write-1-to-clear masks. */
  write(off: number, size: number, value: number): void {
    for (let i = 0; i < size; i++) {
      const b = (value >>> (8 * i)) & 0xff;
      const o = off + i;
      const m = this.writeMask[o];
      this.bytes[o] = (this.bytes[o] & ~m) | (b & m);
      this.bytes[o] &= ~(b & this.w1cMask[o]);
    }
  }

  /**
   * Appends a capability (id, then the body) to the capability list and
   * returns its offset. `bodyWriteMask` marks guest-writable bytes of the body.
   */
  addCapability(id: number, body: Uint8Array, bodyWriteMask?: Uint8Array): number {
    let off = 0x40;
    let prevNext = PCI_CAPABILITY_LIST;
    let p = this.bytes[PCI_CAPABILITY_LIST];
    while (p) {
      const len = this.capLengths.get(p) ?? 0;
      off = Math.max(off, (p + len + 3) & ~3);
      prevNext = p + 1;
      p = this.bytes[p + 1];
    }
    const len = 2 + body.length;
    if (off + len > PCI_CONFIG_SPACE_SIZE) throw new RangeError('PCI capability list is full');
    this.bytes[off] = id;
    this.bytes[off + 1] = 0;
    this.bytes.set(body, off + 2);
    if (bodyWriteMask) this.writeMask.set(bodyWriteMask, off + 2);
    this.bytes[prevNext] = off;
    this.setU16(PCI_STATUS, this.getU16(PCI_STATUS) | PCI_STATUS_CAP_LIST);
    this.capLengths.set(off, len);
    return off;
  }

  private readonly capLengths = new Map<number, number>();
}
