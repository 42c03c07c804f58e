// Seed inputs for request.fuzz.ts (written by `node tools/fuzz/src/make-seeds.js plugins/virtio-blk`).
import { MockDriverQueue } from '@tsvmm/virtio-core/testing';
import type { GuestMemory } from '@tsvmm/virtio-core';
import { DATA, seedInput } from '@tsvmm/testing/fuzz';
import * as B from '../src/generated/virtio-blk-uapi';

function hdr(mem: GuestMemory, at: number, type: number, sector: number): void {
  mem.writeU32(at, type);
  mem.writeU64(at + 8, BigInt(sector));
}

function req(
  d: MockDriverQueue,
  mem: GuestMemory,
  at: number,
  type: number,
  sector: number,
  data: { len: number; write?: boolean }[],
): void {
  hdr(mem, at, type, sector);
  let p = at + 0x20;
  const bufs = [{ addr: at, len: 16 }, ...data.map((b) => ({ addr: (p += b.len + 0x10) - b.len - 0x10, len: b.len, write: b.write }))];
  bufs.push({ addr: p, len: 1, write: true });
  d.addChain(bufs);
}

export function seeds(): Record<string, Uint8Array> {
  return {
    read: seedInput(16, 0, (d, m) =>
      req(d, m, DATA, B.VIRTIO_BLK_T_IN, 2, [
        { len: 512, write: true },
        { len: 512, write: true },
      ]),
    ),
    write: seedInput(16, 0, (d, m) => req(d, m, DATA, B.VIRTIO_BLK_T_OUT, 120, [{ len: 1024 }])),
    'get-id-flush': seedInput(8, 2, (d, m) => {
      req(d, m, DATA, B.VIRTIO_BLK_T_GET_ID, 0, [{ len: 20, write: true }]);
      req(d, m, DATA + 0x100, B.VIRTIO_BLK_T_FLUSH, 0, []);
    }),
    'discard-write-zeroes': seedInput(8, 0, (d, m) => {
      m.writeU64(DATA + 0x20, 8n);
      m.writeU32(DATA + 0x28, 8);
      req(d, m, DATA, B.VIRTIO_BLK_T_DISCARD, 0, [{ len: 16 }]);
      m.writeU64(DATA + 0x120, 16n);
      m.writeU32(DATA + 0x128, 8);
      m.writeU32(DATA + 0x12c, B.VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
      req(d, m, DATA + 0x100, B.VIRTIO_BLK_T_WRITE_ZEROES, 0, [{ len: 16 }]);
    }),
    'indirect-read-reset': seedInput(
      4,
      1,
      (d, m) => {
        hdr(m, DATA, B.VIRTIO_BLK_T_IN, 0);
        d.addIndirect(DATA + 0x1000, [
          { addr: DATA, len: 16 },
          { addr: DATA + 0x200, len: 512, write: true },
          { addr: DATA + 0x400, len: 1, write: true },
        ]);
      },
      4,
    ),
    'readonly-write': seedInput(2, 0, (d, m) => req(d, m, DATA, B.VIRTIO_BLK_T_OUT, 0, [{ len: 512 }]), 1),
  };
}
