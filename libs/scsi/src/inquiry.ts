/**
 * INQUIRY data (SPC-4 6.6) and the VPD pages (SPC-4 7.8, SBC-3 6.6): pure builders.
 */
import {
  INQUIRY_RESPONSE_FORMAT,
  INQUIRY_VERSION_SPC4,
  MAX_TRANSFER_BYTES,
  MAX_UNMAP_BYTES,
  MAX_UNMAP_DESCRIPTORS,
  MAX_WRITE_SAME_BYTES,
  OPTIMAL_TRANSFER_BYTES,
  PREFERRED_GRANULARITY_BYTES,
  VERSION_DESCRIPTOR_SAM5,
  VERSION_DESCRIPTOR_SBC3,
  VERSION_DESCRIPTOR_SPC4,
  VPD_BLOCK_DEVICE_CHARACTERISTICS,
  VPD_BLOCK_LIMITS,
  VPD_DEVICE_ID,
  VPD_LOGICAL_BLOCK_PROVISIONING,
  VPD_SUPPORTED_PAGES,
  VPD_UNIT_SERIAL,
} from './defs';

export interface DiskIdentity {
  vendor: string;
  product: string;
  revision: string;
  serial: string;
  /** NAA designator (64 bits, NAA in the top nibble). */
  naa: bigint;
}

export interface VpdContext {
  /** Byte 0 of every page: peripheral qualifier and device type. */
  peripheral: number;
  id: DiskIdentity;
  blockSize: number;
  /** Logical block provisioning (thin, UNMAP and WRITE SAME with UNMAP): the disk is writable. */
  thin: boolean;
}

export const STANDARD_INQUIRY_LENGTH = 96;

/** ASCII, left-aligned and padded with spaces to `len` bytes (SPC-4 4.4.1). */
export function asciiField(s: string, len: number): Uint8Array {
  const b = new Uint8Array(len).fill(0x20);
  for (let i = 0; i < Math.min(s.length, len); i++) b[i] = s.charCodeAt(i);
  return b;
}

/** Standard INQUIRY data; `peripheral` 7Fh for a LUN with no logical unit. */
export function standardInquiry(peripheral: number, id?: Omit<DiskIdentity, 'serial' | 'naa'>): Uint8Array {
  const b = new Uint8Array(STANDARD_INQUIRY_LENGTH);
  const v = new DataView(b.buffer);
  b[0] = peripheral;
  b[1] = 0x00; // RMB=0
  b[2] = INQUIRY_VERSION_SPC4;
  b[3] = INQUIRY_RESPONSE_FORMAT;
  b[4] = STANDARD_INQUIRY_LENGTH - 5; // ADDITIONAL LENGTH
  b[7] = 0x02; // CMDQUE: commands are queued and may complete in any order
  b.set(asciiField(id?.vendor ?? '', 8), 8);
  b.set(asciiField(id?.product ?? '', 16), 16);
  b.set(asciiField(id?.revision ?? '', 4), 32);
  v.setUint16(58, VERSION_DESCRIPTOR_SAM5);
  v.setUint16(60, VERSION_DESCRIPTOR_SPC4);
  if (peripheral === 0) v.setUint16(62, VERSION_DESCRIPTOR_SBC3);
  return b;
}

export const SUPPORTED_VPD_PAGES = [
  VPD_SUPPORTED_PAGES,
  VPD_UNIT_SERIAL,
  VPD_DEVICE_ID,
  VPD_BLOCK_LIMITS,
  VPD_BLOCK_DEVICE_CHARACTERISTICS,
  VPD_LOGICAL_BLOCK_PROVISIONING,
];

function page(ctx: VpdContext, code: number, body: Uint8Array | number[]): Uint8Array {
  const b = new Uint8Array(4 + body.length);
  b[0] = ctx.peripheral;
  b[1] = code;
  new DataView(b.buffer).setUint16(2, body.length);
  b.set(body, 4);
  return b;
}

const ascii = (s: string): Uint8Array => Uint8Array.from(s, (ch) => ch.charCodeAt(0));

/** A VPD page, or undefined when it is not supported. */
export function vpdPage(code: number, ctx: VpdContext): Uint8Array | undefined {
  const bs = ctx.blockSize;
  const blocks = (bytes: number): number => Math.max(1, Math.floor(bytes / bs));
  switch (code) {
    case VPD_SUPPORTED_PAGES:
      return page(ctx, code, SUPPORTED_VPD_PAGES);
    case VPD_UNIT_SERIAL:
      return page(ctx, code, ascii(ctx.id.serial));
    case VPD_DEVICE_ID: {
      // T10 vendor ID designator (ASCII, associated with the logical unit): vendor, then product and serial.
      const t10 = new Uint8Array([...asciiField(ctx.id.vendor, 8), ...asciiField(ctx.id.product, 16), ...ascii(ctx.id.serial)]);
      const naa = new Uint8Array(8);
      new DataView(naa.buffer).setBigUint64(0, ctx.id.naa);
      return page(ctx, code, [
        ...[0x02, 0x01, 0x00, t10.length], // code set ASCII; association LU, designator type 1 (T10 vendor ID)
        ...t10,
        ...[0x01, 0x03, 0x00, 8], // code set binary; association LU, designator type 3 (NAA)
        ...naa,
      ]);
    }
    case VPD_BLOCK_LIMITS: {
      const b = new Uint8Array(0x3c);
      const v = new DataView(b.buffer);
      const at = (offset: number): number => offset - 4;
      b[at(4)] = 0x01; // WSNZ: WRITE SAME needs a non-zero NUMBER OF LOGICAL BLOCKS
      v.setUint16(at(6), blocks(PREFERRED_GRANULARITY_BYTES)); // OPTIMAL TRANSFER LENGTH GRANULARITY
      v.setUint32(at(8), blocks(MAX_TRANSFER_BYTES)); // MAXIMUM TRANSFER LENGTH
      v.setUint32(at(12), blocks(OPTIMAL_TRANSFER_BYTES)); // OPTIMAL TRANSFER LENGTH
      if (ctx.thin) {
        v.setUint32(at(20), blocks(MAX_UNMAP_BYTES)); // MAXIMUM UNMAP LBA COUNT
        v.setUint32(at(24), MAX_UNMAP_DESCRIPTORS); // MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT
        v.setUint32(at(28), blocks(PREFERRED_GRANULARITY_BYTES)); // OPTIMAL UNMAP GRANULARITY
        v.setUint32(at(32), 0x8000_0000); // UGAVALID, UNMAP GRANULARITY ALIGNMENT 0
      }
      v.setBigUint64(at(36), BigInt(blocks(MAX_WRITE_SAME_BYTES))); // MAXIMUM WRITE SAME LENGTH
      return page(ctx, code, b);
    }
    case VPD_BLOCK_DEVICE_CHARACTERISTICS: {
      const b = new Uint8Array(0x3c);
      b[1] = 0x01; // MEDIUM ROTATION RATE 0001h: non-rotating medium
      return page(ctx, code, b);
    }
    case VPD_LOGICAL_BLOCK_PROVISIONING:
      // THRESHOLD EXPONENT 0; LBPU, LBPWS, LBPWS10, LBPRZ=001b; PROVISIONING TYPE 010b (thin).
      return page(ctx, code, ctx.thin ? [0x00, 0xe4, 0x02, 0x00] : [0x00, 0x00, 0x00, 0x00]);
  }
  return undefined;
}
