// Seed inputs for request.fuzz.ts (written by `node tools/fuzz/src/make-seeds.js libs/virtio-scsi-core`).
import type { GuestMemory } from '@tsvmm/virtio-core';
import { DATA, seedInput } from '@tsvmm/testing/fuzz';
import * as S from '../src/generated/virtio-scsi-uapi';
import { CONFIG } from './request.fuzz';

const CTRL = 0;
const EVENT = 1;
const REQ = 2;
const REQ_LEN = S.SIZEOF_virtio_scsi_cmd_req;
const RESP_LEN = S.SIZEOF_virtio_scsi_cmd_resp;

function cmd(mem: GuestMemory, at: number, cdb: number[], lun = 0, tag = 1): void {
  mem.write(at, [1, 0, 0x40 | (lun >> 8), lun & 0xff]);
  mem.writeU64(at + S.OFF_virtio_scsi_cmd_req_tag, BigInt(tag));
  mem.write(at + S.OFF_virtio_scsi_cmd_req_cdb, cdb);
}

export function seeds(): Record<string, Uint8Array> {
  return {
    inquiry: seedInput(
      16,
      0,
      (d, m) => {
        cmd(m, DATA, [0x12, 0, 0, 0, 96, 0]);
        d.addChain([
          { addr: DATA, len: REQ_LEN },
          { addr: DATA + 0x100, len: RESP_LEN, write: true },
          { addr: DATA + 0x200, len: 96, write: true },
        ]);
      },
      REQ,
    ),
    'read10-write10': seedInput(
      16,
      2,
      (d, m) => {
        cmd(m, DATA, [0x28, 0, 0, 0, 0, 2, 0, 0, 2, 0]);
        d.addChain([
          { addr: DATA, len: REQ_LEN },
          { addr: DATA + 0x100, len: RESP_LEN, write: true },
          { addr: DATA + 0x200, len: 1024, write: true },
        ]);
        cmd(m, DATA + 0x800, [0x2a, 0, 0, 0, 0, 8, 0, 0, 1, 0], 0, 2);
        d.addChain([
          { addr: DATA + 0x800, len: REQ_LEN },
          { addr: DATA + 0x900, len: 512 },
          { addr: DATA + 0xc00, len: RESP_LEN, write: true },
        ]);
      },
      REQ,
    ),
    'lun1-readonly-write-indirect': seedInput(
      8,
      1,
      (d, m) => {
        cmd(m, DATA, [0x2a, 0, 0, 0, 0, 1, 0, 0, 1, 0], 1);
        d.addIndirect(DATA + 0x1000, [
          { addr: DATA, len: REQ_LEN },
          { addr: DATA + 0x100, len: 4096 },
          { addr: DATA + 0x800, len: RESP_LEN, write: true },
        ]);
      },
      REQ,
    ),
    'report-luns-bad-lun': seedInput(
      4,
      0,
      (d, m) => {
        cmd(m, DATA, [0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
        d.addChain([
          { addr: DATA, len: REQ_LEN },
          { addr: DATA + 0x100, len: RESP_LEN, write: true },
          { addr: DATA + 0x200, len: 256, write: true },
        ]);
        cmd(m, DATA + 0x400, [0x00, 0, 0, 0, 0, 0], 77);
        d.addChain([
          { addr: DATA + 0x400, len: REQ_LEN },
          { addr: DATA + 0x500, len: RESP_LEN, write: true },
        ]);
      },
      REQ,
    ),
    'cdb-size-32': seedInput(
      4,
      0,
      (d, m) => {
        m.writeU32(CONFIG, 32);
        m.writeU32(CONFIG + 4, 96);
        cmd(m, DATA, [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        d.addChain([
          { addr: DATA, len: REQ_LEN + 16 },
          { addr: DATA + 0x100, len: RESP_LEN + 0x40, write: true },
          { addr: DATA + 0x200, len: 8, write: true },
        ]);
      },
      REQ | 4,
    ),
    'tmf-and-an': seedInput(
      8,
      0,
      (d, m) => {
        m.writeU32(DATA + S.OFF_virtio_scsi_ctrl_tmf_req_type, S.VIRTIO_SCSI_T_TMF);
        m.writeU32(DATA + S.OFF_virtio_scsi_ctrl_tmf_req_subtype, S.VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET);
        m.write(DATA + S.OFF_virtio_scsi_ctrl_tmf_req_lun, [1, 0, 0x40, 0]);
        d.addChain([
          { addr: DATA, len: S.SIZEOF_virtio_scsi_ctrl_tmf_req },
          { addr: DATA + 0x100, len: S.SIZEOF_virtio_scsi_ctrl_tmf_resp, write: true },
        ]);
        m.writeU32(DATA + 0x200, S.VIRTIO_SCSI_T_AN_QUERY);
        m.write(DATA + 0x204, [1, 0, 0x40, 0]);
        d.addChain([
          { addr: DATA + 0x200, len: S.SIZEOF_virtio_scsi_ctrl_an_req },
          { addr: DATA + 0x300, len: S.SIZEOF_virtio_scsi_ctrl_an_resp, write: true },
        ]);
      },
      CTRL,
    ),
    event: seedInput(4, 0, (d) => d.addChain([{ addr: DATA, len: S.SIZEOF_virtio_scsi_event, write: true }]), EVENT),
    'reset-in-flight': seedInput(
      4,
      0,
      (d, m) => {
        cmd(m, DATA, [0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0]);
        d.addChain([
          { addr: DATA, len: REQ_LEN },
          { addr: DATA + 0x100, len: RESP_LEN, write: true },
          { addr: DATA + 0x200, len: 4096, write: true },
        ]);
      },
      REQ | 8,
    ),
  };
}
