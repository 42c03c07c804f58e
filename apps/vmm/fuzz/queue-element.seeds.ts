// Seed inputs for queue-element.fuzz.ts (written by `node tools/fuzz/src/make-seeds.js apps/vmm queue-element`).
import { virtioUapi as V } from '@tsvmm/virtio-core';
import { DATA, seedInput } from '@tsvmm/testing/fuzz';

export function seeds(): Record<string, Uint8Array> {
  return {
    'one-chain': seedInput(16, 0, (d) =>
      d.addChain([
        { addr: DATA, len: 16 },
        { addr: DATA + 0x100, len: 20, write: true },
        { addr: DATA + 0x400, len: 1, write: true },
      ]),
    ),
    'index-1': seedInput(
      8,
      0,
      (d) => {
        d.addChain([{ addr: DATA, len: 64 }]);
        d.addChain([
          { addr: DATA + 0x40, len: 8 },
          { addr: DATA + 0x80, len: 32, write: true },
        ]);
      },
      2,
    ),
    indirect: seedInput(16, 1, (d) =>
      d.addIndirect(DATA + 0x800, [
        { addr: DATA, len: 16 },
        { addr: DATA + 0x100, len: 256, write: true },
        { addr: DATA + 0x200, len: 1, write: true },
      ]),
    ),
    loop: seedInput(4, 0, (d) => {
      d.writeDesc(0, DATA, 8, V.VRING_DESC_F_NEXT, 1);
      d.writeDesc(1, DATA, 8, V.VRING_DESC_F_NEXT, 0);
      d.publish(0);
    }),
    'index-out-of-range': seedInput(4, 0, (d) => d.addChain([{ addr: DATA, len: 8 }]), 9),
  };
}
