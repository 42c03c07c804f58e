// Seed inputs for queues.fuzz.ts (written by `node tools/fuzz/src/make-seeds.js plugins/virtio-net`).
import { DATA, seedInput } from '@tsvmm/testing/fuzz';
import * as N from '../src/generated/virtio-net-uapi';
import { FRAMES } from './queues.fuzz';

const RX = 0;
const TX = 1;
const CTRL = 2;

export function seeds(): Record<string, Uint8Array> {
  return {
    'rx-two-frames': seedInput(
      16,
      0,
      (d, m) => {
        m.writeU16(FRAMES, 60);
        m.writeU16(FRAMES + 2, 1514);
        d.addChain([{ addr: DATA, len: 1526, write: true }]);
        d.addChain([{ addr: DATA + 0x800, len: 1000, write: true }]);
        d.addChain([{ addr: DATA + 0x1000, len: 1000, write: true }]);
      },
      RX,
    ),
    'rx-no-mrg': seedInput(
      8,
      2,
      (d, m) => {
        m.writeU16(FRAMES, 200);
        d.addChain([{ addr: DATA, len: 100, write: true }]);
        d.addChain([{ addr: DATA + 0x100, len: 300, write: true }]);
      },
      RX | 4,
    ),
    tx: seedInput(
      16,
      0,
      (d) => {
        d.addChain([
          { addr: DATA, len: 12 },
          { addr: DATA + 0x100, len: 60 },
        ]);
        d.addChain([{ addr: DATA + 0x200, len: 72 }]);
      },
      TX,
    ),
    'tx-indirect': seedInput(
      4,
      1,
      (d) =>
        d.addIndirect(DATA + 0x1000, [
          { addr: DATA, len: 12 },
          { addr: DATA + 0x40, len: 100 },
        ]),
      TX,
    ),
    ctrl: seedInput(
      8,
      0,
      (d, m) => {
        m.write(DATA, [N.VIRTIO_NET_CTRL_RX, N.VIRTIO_NET_CTRL_RX_PROMISC, 1]);
        d.addChain([
          { addr: DATA, len: 3 },
          { addr: DATA + 0x10, len: 1, write: true },
        ]);
        m.write(DATA + 0x20, [N.VIRTIO_NET_CTRL_MAC, N.VIRTIO_NET_CTRL_MAC_TABLE_SET, 1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 0, 0, 0, 0]);
        d.addChain([
          { addr: DATA + 0x20, len: 16 },
          { addr: DATA + 0x40, len: 1, write: true },
        ]);
        m.write(DATA + 0x60, [N.VIRTIO_NET_CTRL_MQ, N.VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, 1, 0]);
        d.addChain([
          { addr: DATA + 0x60, len: 4 },
          { addr: DATA + 0x70, len: 1, write: true },
        ]);
      },
      CTRL,
    ),
    'rx-tx-shared': seedInput(
      8,
      0,
      (d, m) => {
        m.writeU16(FRAMES, 100);
        d.addChain([{ addr: DATA, len: 200, write: true }]);
      },
      3 | 8,
    ),
  };
}
