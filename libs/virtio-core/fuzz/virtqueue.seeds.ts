// Seed inputs for virtqueue.fuzz.ts (written by `node tools/fuzz/src/make-seeds.js libs/virtio-core`).
import { virtioUapi as V } from '@tsvmm/virtio-core';
import { DATA, seedInput } from '@tsvmm/testing/fuzz';

export function seeds(): Record<string, Uint8Array> {
  return {
    'one-chain': seedInput(16, 0, (d) =>
      d.addChain([
        { addr: DATA, len: 16 },
        { addr: DATA + 0x100, len: 512, write: true },
        { addr: DATA + 0x400, len: 1, write: true },
      ]),
    ),
    'three-chains': seedInput(8, 2, (d) => {
      d.addChain([{ addr: DATA, len: 64 }]);
      d.addChain([
        { addr: DATA + 0x40, len: 8 },
        { addr: DATA + 0x80, len: 32, write: true },
      ]);
      d.addChain([{ addr: DATA + 0x100, len: 0x1000, write: true }]);
    }),
    indirect: seedInput(16, 1, (d) =>
      d.addIndirect(DATA + 0x800, [
        { addr: DATA, len: 16 },
        { addr: DATA + 0x100, len: 256, write: true },
        { addr: DATA + 0x200, len: 1, write: true },
      ]),
    ),
    'indirect-and-direct': seedInput(4, 3, (d) => {
      d.addIndirect(DATA + 0x800, [
        { addr: DATA, len: 48 },
        { addr: DATA + 0x40, len: 4, write: true },
      ]);
      d.addChain([{ addr: DATA + 0x200, len: 0, write: true }]);
    }),
    'wrapped-ring': seedInput(2, 0, (d, mem) => {
      d.setAvailIdx(0xffff);
      d.publish(0);
      d.writeDesc(0, DATA, 128, V.VRING_DESC_F_WRITE, 0);
      mem.writeU16(0x1000 + 2, 0xffff);
    }),
  };
}
