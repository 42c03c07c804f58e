/**
 * Parsing a virtio-blk request out of a descriptor chain (virtio 1.2 section
 * 5.2.6). Pure: no I/O. A chain that breaks the request layout is a guest
 * error that breaks the device; a well-formed request the device cannot do
 * (unknown type, beyond capacity) is answered with a status byte.
 */
import { Descriptor, DescriptorChain, gather, GuestMemory, lastWritableByte, subrange } from '@tsvmm/virtio-core';
import * as B from './generated/virtio-blk-uapi';

export const SECTOR_SIZE = 512;

export interface BlkRequest {
  head: number;
  type: number;
  sector: number;
  /** Data buffers: device-writable for IN/GET_ID, device-readable otherwise. */
  data: Descriptor[];
  dataLength: number;
  /** Guest address of the one-byte status. */
  statusAddr: number;
}

export type BlkChainError = { kind: 'short-header'; readable: number } | { kind: 'no-status-byte' } | { kind: 'zero-length-status' };

export function describeBlkChainError(e: BlkChainError): string {
  switch (e.kind) {
    case 'short-header':
      return `request header needs 16 device-readable bytes, chain has ${e.readable}`;
    case 'no-status-byte':
      return 'request has no device-writable status byte (a write into a device-readable buffer)';
    case 'zero-length-status':
      return 'the last device-writable buffer (the status byte) has length 0';
  }
}

export function parseRequest(mem: GuestMemory, chain: DescriptorChain): { request: BlkRequest } | { error: BlkChainError } {
  if (chain.readableLength < B.SIZEOF_virtio_blk_outhdr) return { error: { kind: 'short-header', readable: chain.readableLength } };
  if (chain.writableLength < 1) return { error: { kind: 'no-status-byte' } };
  const hdr = gather(mem, chain.readable, 0, B.SIZEOF_virtio_blk_outhdr);
  const dv = new DataView(hdr.buffer);
  const type = dv.getUint32(B.OFF_virtio_blk_outhdr_type, true);
  const sector = Number(dv.getBigUint64(B.OFF_virtio_blk_outhdr_sector, true));
  // The status is the last byte of the last device-writable buffer. A zero-length last buffer
  // is a guest error (needs-reset), as Linux never sends one: no address is derived from it.
  const statusAddr = lastWritableByte(chain.writable);
  if (statusAddr === undefined) return { error: { kind: 'zero-length-status' } };
  let data: Descriptor[];
  if (type === B.VIRTIO_BLK_T_IN || type === B.VIRTIO_BLK_T_GET_ID) {
    data = subrange(chain.writable, 0, chain.writableLength - 1);
  } else {
    data = subrange(chain.readable, B.SIZEOF_virtio_blk_outhdr, chain.readableLength - B.SIZEOF_virtio_blk_outhdr);
  }
  const dataLength = data.reduce((n, d) => n + d.len, 0);
  return { request: { head: chain.head, type, sector, data, dataLength, statusAddr } };
}

export interface DiscardSegment {
  sector: number;
  sectors: number;
  flags: number;
}

/** The DISCARD / WRITE_ZEROES payload: 16-byte segments. */
export function parseSegments(mem: GuestMemory, req: BlkRequest): DiscardSegment[] | undefined {
  const size = B.SIZEOF_virtio_blk_discard_write_zeroes;
  if (req.dataLength === 0 || req.dataLength % size) return undefined;
  const raw = gather(mem, req.data, 0, req.dataLength);
  const dv = new DataView(raw.buffer);
  const segs: DiscardSegment[] = [];
  for (let o = 0; o < raw.length; o += size) {
    segs.push({
      sector: Number(dv.getBigUint64(o + B.OFF_virtio_blk_discard_write_zeroes_sector, true)),
      sectors: dv.getUint32(o + B.OFF_virtio_blk_discard_write_zeroes_num_sectors, true),
      flags: dv.getUint32(o + B.OFF_virtio_blk_discard_write_zeroes_flags, true),
    });
  }
  return segs;
}
