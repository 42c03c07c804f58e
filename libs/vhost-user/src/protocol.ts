/**
 * vhost-user message layouts (the vhost-user protocol specification, QEMU's
 * docs/interop/vhost-user.rst). Every message is a 12-byte header (request,
 * flags, payload size; little-endian) followed by the payload; file
 * descriptors travel as SCM_RIGHTS ancillary data with the header.
 */

/** Front-end requests this project speaks. */
export enum VhostUserRequest {
  GET_FEATURES = 1,
  SET_FEATURES = 2,
  SET_OWNER = 3,
  RESET_OWNER = 4,
  SET_MEM_TABLE = 5,
  SET_LOG_BASE = 6,
  SET_LOG_FD = 7,
  SET_VRING_NUM = 8,
  SET_VRING_ADDR = 9,
  SET_VRING_BASE = 10,
  GET_VRING_BASE = 11,
  SET_VRING_KICK = 12,
  SET_VRING_CALL = 13,
  SET_VRING_ERR = 14,
  GET_PROTOCOL_FEATURES = 15,
  SET_PROTOCOL_FEATURES = 16,
  GET_QUEUE_NUM = 17,
  SET_VRING_ENABLE = 18,
}

export const REQUEST_NAMES: Record<number, string> = {
  1: 'GET_FEATURES',
  2: 'SET_FEATURES',
  3: 'SET_OWNER',
  4: 'RESET_OWNER',
  5: 'SET_MEM_TABLE',
  6: 'SET_LOG_BASE',
  7: 'SET_LOG_FD',
  8: 'SET_VRING_NUM',
  9: 'SET_VRING_ADDR',
  10: 'SET_VRING_BASE',
  11: 'GET_VRING_BASE',
  12: 'SET_VRING_KICK',
  13: 'SET_VRING_CALL',
  14: 'SET_VRING_ERR',
  15: 'GET_PROTOCOL_FEATURES',
  16: 'SET_PROTOCOL_FEATURES',
  17: 'GET_QUEUE_NUM',
  18: 'SET_VRING_ENABLE',
};

export function requestName(r: number): string {
  return REQUEST_NAMES[r] ?? `request ${r}`;
}

export const HEADER_SIZE = 12;
/** Protocol version 1 lives in flags bits 0-1. */
export const FLAG_VERSION = 0x1;
export const FLAG_REPLY = 0x4;
export const FLAG_NEED_REPLY = 0x8;
/** Largest payload this project accepts (a memory table of 8 regions is 8 + 8*32 bytes). */
export const MAX_PAYLOAD = 4096;
/** Memory regions per SET_MEM_TABLE (the specification's VHOST_MEMORY_BASELINE_NREGIONS). */
export const MAX_MEM_REGIONS = 8;

/** The virtio feature bit a back-end sets when it speaks GET/SET_PROTOCOL_FEATURES. */
export const VHOST_USER_F_PROTOCOL_FEATURES = 30;

export enum VhostUserProtocolFeature {
  MQ = 0,
  LOG_SHMFD = 1,
  RARP = 2,
  REPLY_ACK = 3,
}

/** SET_VRING_KICK/CALL/ERR payload: bits 0-7 the ring, bit 8 "no fd" (poll instead). */
export const VRING_IDX_MASK = 0xff;
export const VRING_NOFD_MASK = 0x100;

export interface MessageHeader {
  request: number;
  flags: number;
  size: number;
}

export function encodeHeader(h: MessageHeader): Uint8Array {
  const b = new Uint8Array(HEADER_SIZE);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, h.request, true);
  dv.setUint32(4, h.flags, true);
  dv.setUint32(8, h.size, true);
  return b;
}

export function decodeHeader(b: Uint8Array): MessageHeader {
  const dv = new DataView(b.buffer, b.byteOffset, HEADER_SIZE);
  return { request: dv.getUint32(0, true), flags: dv.getUint32(4, true), size: dv.getUint32(8, true) };
}

/** A whole message: header and payload in one buffer. */
export function encodeMessage(request: number, flags: number, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  const b = new Uint8Array(HEADER_SIZE + payload.length);
  b.set(encodeHeader({ request, flags: flags | FLAG_VERSION, size: payload.length }));
  b.set(payload, HEADER_SIZE);
  return b;
}

export function u64Payload(v: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt.asUintN(64, v), true);
  return b;
}

export function readU64(p: Uint8Array): bigint {
  if (p.length < 8) throw new VhostUserProtocolError(`payload of ${p.length} bytes where a u64 was expected`);
  return new DataView(p.buffer, p.byteOffset, 8).getBigUint64(0, true);
}

/** vhost_vring_state: ring index and a number (size, base, enable). */
export interface VringState {
  index: number;
  num: number;
}

export function encodeVringState(s: VringState): Uint8Array {
  const b = new Uint8Array(8);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, s.index, true);
  dv.setUint32(4, s.num, true);
  return b;
}

export function decodeVringState(p: Uint8Array): VringState {
  if (p.length < 8) throw new VhostUserProtocolError(`vring state payload of ${p.length} bytes (need 8)`);
  const dv = new DataView(p.buffer, p.byteOffset, 8);
  return { index: dv.getUint32(0, true), num: dv.getUint32(4, true) };
}

/** vhost_vring_addr: the rings as front-end virtual addresses (translated through the memory table). */
export interface VringAddr {
  index: number;
  flags: number;
  desc: bigint;
  used: bigint;
  avail: bigint;
  log: bigint;
}

export const VRING_ADDR_SIZE = 40;

export function encodeVringAddr(a: VringAddr): Uint8Array {
  const b = new Uint8Array(VRING_ADDR_SIZE);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, a.index, true);
  dv.setUint32(4, a.flags, true);
  dv.setBigUint64(8, a.desc, true);
  dv.setBigUint64(16, a.used, true);
  dv.setBigUint64(24, a.avail, true);
  dv.setBigUint64(32, a.log, true);
  return b;
}

export function decodeVringAddr(p: Uint8Array): VringAddr {
  if (p.length < VRING_ADDR_SIZE) throw new VhostUserProtocolError(`vring address payload of ${p.length} bytes (need ${VRING_ADDR_SIZE})`);
  const dv = new DataView(p.buffer, p.byteOffset, VRING_ADDR_SIZE);
  return {
    index: dv.getUint32(0, true),
    flags: dv.getUint32(4, true),
    desc: dv.getBigUint64(8, true),
    used: dv.getBigUint64(16, true),
    avail: dv.getBigUint64(24, true),
    log: dv.getBigUint64(32, true),
  };
}

/** One SET_MEM_TABLE region; its fd travels with the message, in region order. */
export interface MemRegion {
  guestPhysAddr: bigint;
  size: bigint;
  userAddr: bigint;
  mmapOffset: bigint;
}

export const MEM_REGION_SIZE = 32;

export function encodeMemTable(regions: readonly MemRegion[]): Uint8Array {
  if (regions.length > MAX_MEM_REGIONS) throw new VhostUserProtocolError(`${regions.length} memory regions (at most ${MAX_MEM_REGIONS})`);
  const b = new Uint8Array(8 + regions.length * MEM_REGION_SIZE);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, regions.length, true);
  regions.forEach((r, i) => {
    const o = 8 + i * MEM_REGION_SIZE;
    dv.setBigUint64(o, r.guestPhysAddr, true);
    dv.setBigUint64(o + 8, r.size, true);
    dv.setBigUint64(o + 16, r.userAddr, true);
    dv.setBigUint64(o + 24, r.mmapOffset, true);
  });
  return b;
}

export function decodeMemTable(p: Uint8Array): MemRegion[] {
  if (p.length < 8) throw new VhostUserProtocolError(`memory table payload of ${p.length} bytes`);
  const dv = new DataView(p.buffer, p.byteOffset, p.byteLength);
  const n = dv.getUint32(0, true);
  if (n > MAX_MEM_REGIONS || p.length < 8 + n * MEM_REGION_SIZE)
    throw new VhostUserProtocolError(`memory table with ${n} regions in ${p.length} bytes`);
  return Array.from({ length: n }, (_, i) => {
    const o = 8 + i * MEM_REGION_SIZE;
    return {
      guestPhysAddr: dv.getBigUint64(o, true),
      size: dv.getBigUint64(o + 8, true),
      userAddr: dv.getBigUint64(o + 16, true),
      mmapOffset: dv.getBigUint64(o + 24, true),
    };
  });
}

/** SET_LOG_BASE payload with LOG_SHMFD: the log's size and its offset in the fd sent with the message. */
export interface LogDescription {
  mmapSize: bigint;
  mmapOffset: bigint;
}

export const LOG_DESCRIPTION_SIZE = 16;

export function encodeLogDescription(l: LogDescription): Uint8Array {
  const b = new Uint8Array(LOG_DESCRIPTION_SIZE);
  const dv = new DataView(b.buffer);
  dv.setBigUint64(0, l.mmapSize, true);
  dv.setBigUint64(8, l.mmapOffset, true);
  return b;
}

export function decodeLogDescription(p: Uint8Array): LogDescription {
  if (p.length < LOG_DESCRIPTION_SIZE)
    throw new VhostUserProtocolError(`log description payload of ${p.length} bytes (need ${LOG_DESCRIPTION_SIZE})`);
  const dv = new DataView(p.buffer, p.byteOffset, LOG_DESCRIPTION_SIZE);
  return { mmapSize: dv.getBigUint64(0, true), mmapOffset: dv.getBigUint64(8, true) };
}

/** A peer broke the protocol (bad sizes, unexpected replies). */
export class VhostUserProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'VhostUserProtocolError';
  }
}
