/**
 * Parsing virtio-scsi requests out of descriptor chains (virtio 1.2 section
 * 5.6.6). Pure: no I/O. A chain that breaks the request layout (header or
 * response cut short) is a guest error that breaks the device; everything the
 * header says is answered on the response instead.
 */
import { Descriptor, DescriptorChain, gather, GuestMemory, subrange } from '@tsvmm/virtio-core';
import * as S from './generated/virtio-scsi-uapi';

/** The request header before the CDB: lun[8], tag, task_attr, prio, crn. */
export const CMD_REQ_FIXED = S.OFF_virtio_scsi_cmd_req_cdb;
/** The response before the sense bytes: sense_len, resid, status_qualifier, status, response. */
export const CMD_RESP_FIXED = S.OFF_virtio_scsi_cmd_resp_sense;

/** A LUN field (SAM "single level" as virtio-scsi uses it): byte 0 is 1, byte 1 the target, bytes 2-3 the LUN. */
export interface LunAddress {
  target: number;
  lun: number;
  /** False when byte 0 is not 1 or the LUN bytes use an address method this device does not decode. */
  valid: boolean;
}

export function decodeLun(b: Uint8Array): LunAddress {
  const target = b[1];
  const method = b[2] >> 6;
  // Peripheral device addressing (method 0, bus 0) for LUN < 256, flat addressing (method 1) up to 16383.
  const lun = method === 1 ? ((b[2] & 0x3f) << 8) | b[3] : b[3];
  const valid = b[0] === 1 && (method === 1 || (method === 0 && b[2] === 0));
  return { target, lun, valid };
}

export interface ScsiCmdRequest {
  head: number;
  address: LunAddress;
  tag: bigint;
  taskAttr: number;
  cdb: Uint8Array;
  /** Device-readable payload after the header. */
  dataOut: Descriptor[];
  /** Device-writable buffers after the response. */
  dataIn: Descriptor[];
  /** The device-writable response (CMD_RESP_FIXED + sense size bytes). */
  response: Descriptor[];
  responseLength: number;
}

export type ScsiChainError =
  | { kind: 'short-request'; readable: number; need: number }
  | { kind: 'short-response'; writable: number; need: number }
  | { kind: 'short-control'; what: string; readable: number; writable: number }
  | { kind: 'unknown-control'; type: number };

export function describeScsiChainError(e: ScsiChainError): string {
  switch (e.kind) {
    case 'short-request':
      return `command request needs ${e.need} device-readable bytes, chain has ${e.readable}`;
    case 'short-response':
      return `command response needs ${e.need} device-writable bytes, chain has ${e.writable}`;
    case 'short-control':
      return `${e.what} request too short (${e.readable} device-readable, ${e.writable} device-writable bytes)`;
    case 'unknown-control':
      return `control queue request of unknown type ${e.type} with no room for a response`;
  }
}

/** Splits a request-queue chain into header, data-out, response and data-in. */
export function parseCmdRequest(
  mem: GuestMemory,
  chain: DescriptorChain,
  cdbSize: number,
  senseSize: number,
): { request: ScsiCmdRequest } | { error: ScsiChainError } {
  const reqLen = CMD_REQ_FIXED + cdbSize;
  const respLen = CMD_RESP_FIXED + senseSize;
  if (chain.readableLength < reqLen) return { error: { kind: 'short-request', readable: chain.readableLength, need: reqLen } };
  if (chain.writableLength < respLen) return { error: { kind: 'short-response', writable: chain.writableLength, need: respLen } };
  const hdr = gather(mem, chain.readable, 0, reqLen);
  const dv = new DataView(hdr.buffer);
  return {
    request: {
      head: chain.head,
      address: decodeLun(hdr.subarray(S.OFF_virtio_scsi_cmd_req_lun, S.OFF_virtio_scsi_cmd_req_lun + 8)),
      tag: dv.getBigUint64(S.OFF_virtio_scsi_cmd_req_tag, true),
      taskAttr: hdr[S.OFF_virtio_scsi_cmd_req_task_attr],
      cdb: hdr.subarray(CMD_REQ_FIXED, reqLen), // hdr is a private copy already
      dataOut: subrange(chain.readable, reqLen, chain.readableLength - reqLen),
      dataIn: subrange(chain.writable, respLen, chain.writableLength - respLen),
      response: subrange(chain.writable, 0, respLen),
      responseLength: respLen,
    },
  };
}

export type ScsiControlRequest =
  | { type: 'tmf'; head: number; subtype: number; address: LunAddress; tag: bigint; response: Descriptor[] }
  | { type: 'an'; head: number; query: boolean; address: LunAddress; eventRequested: number; response: Descriptor[] }
  | { type: 'unknown'; head: number; code: number; response: Descriptor[] };

/** Parses a control-queue chain: a task management function or an asynchronous notification request. */
export function parseControlRequest(mem: GuestMemory, chain: DescriptorChain): { request: ScsiControlRequest } | { error: ScsiChainError } {
  const { readableLength: r, writableLength: w } = chain;
  if (r < 4) return { error: { kind: 'short-control', what: 'control', readable: r, writable: w } };
  const type = new DataView(gather(mem, chain.readable, 0, 4).buffer).getUint32(0, true);
  if (type === S.VIRTIO_SCSI_T_TMF) {
    if (r < S.SIZEOF_virtio_scsi_ctrl_tmf_req || w < S.SIZEOF_virtio_scsi_ctrl_tmf_resp)
      return { error: { kind: 'short-control', what: 'task management', readable: r, writable: w } };
    const b = gather(mem, chain.readable, 0, S.SIZEOF_virtio_scsi_ctrl_tmf_req);
    const dv = new DataView(b.buffer);
    return {
      request: {
        type: 'tmf',
        head: chain.head,
        subtype: dv.getUint32(S.OFF_virtio_scsi_ctrl_tmf_req_subtype, true),
        address: decodeLun(b.subarray(S.OFF_virtio_scsi_ctrl_tmf_req_lun, S.OFF_virtio_scsi_ctrl_tmf_req_lun + 8)),
        tag: dv.getBigUint64(S.OFF_virtio_scsi_ctrl_tmf_req_tag, true),
        response: subrange(chain.writable, 0, S.SIZEOF_virtio_scsi_ctrl_tmf_resp),
      },
    };
  }
  if (type === S.VIRTIO_SCSI_T_AN_QUERY || type === S.VIRTIO_SCSI_T_AN_SUBSCRIBE) {
    if (r < S.SIZEOF_virtio_scsi_ctrl_an_req || w < S.SIZEOF_virtio_scsi_ctrl_an_resp)
      return { error: { kind: 'short-control', what: 'asynchronous notification', readable: r, writable: w } };
    const b = gather(mem, chain.readable, 0, S.SIZEOF_virtio_scsi_ctrl_an_req);
    return {
      request: {
        type: 'an',
        head: chain.head,
        query: type === S.VIRTIO_SCSI_T_AN_QUERY,
        address: decodeLun(b.subarray(S.OFF_virtio_scsi_ctrl_an_req_lun, S.OFF_virtio_scsi_ctrl_an_req_lun + 8)),
        eventRequested: new DataView(b.buffer).getUint32(S.OFF_virtio_scsi_ctrl_an_req_event_requested, true),
        response: subrange(chain.writable, 0, S.SIZEOF_virtio_scsi_ctrl_an_resp),
      },
    };
  }
  // An unknown type: answer with a response byte when there is room for one.
  if (w < 1) return { error: { kind: 'unknown-control', type } };
  return { request: { type: 'unknown', head: chain.head, code: type, response: subrange(chain.writable, 0, 1) } };
}
