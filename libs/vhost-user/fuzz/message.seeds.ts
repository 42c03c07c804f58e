// Seed inputs for message.fuzz.ts (written by `node tools/fuzz/src/make-seeds.js libs/vhost-user`).
import {
  encodeLogDescription,
  encodeMemTable,
  encodeMessage,
  encodeVringAddr,
  encodeVringState,
  FLAG_REPLY,
  u64Payload,
  VhostUserRequest as R,
} from '@tsvmm/vhost-user';

const cat = (...m: Uint8Array[]) => Buffer.concat(m.map((x) => Buffer.from(x)));
const FEATURES = (1n << 32n) | (1n << 28n) | (1n << 29n) | (1n << 30n);
const PROTO = 1n | (1n << 3n) | (1n << 4n);

export function seeds(): Record<string, Uint8Array> {
  return {
    'frontend-session': cat(
      encodeMessage(R.SET_FEATURES, 0, u64Payload(FEATURES)),
      encodeMessage(R.SET_MEM_TABLE, 0, encodeMemTable([{ guestPhysAddr: 0n, size: 0x10000n, userAddr: 0x7f0000000000n, mmapOffset: 0n }])),
      encodeMessage(R.SET_VRING_NUM, 0, encodeVringState({ index: 2, num: 16 })),
      encodeMessage(
        R.SET_VRING_ADDR,
        0,
        encodeVringAddr({ index: 2, flags: 1, desc: 0x7f0000000000n, used: 0x7f0000001000n, avail: 0x7f0000000800n, log: 0x1000n }),
      ),
      encodeMessage(R.SET_VRING_KICK, 0, u64Payload(2n | 0x100n)),
      encodeMessage(R.SET_LOG_BASE, 0, encodeLogDescription({ mmapSize: 4096n, mmapOffset: 0n })),
    ),
    // What a well-behaved back-end answers to negotiate(), GET_VRING_BASE and SET_LOG_BASE.
    'backend-replies': cat(
      encodeMessage(R.GET_FEATURES, FLAG_REPLY, u64Payload(FEATURES)),
      encodeMessage(R.GET_PROTOCOL_FEATURES, FLAG_REPLY, u64Payload(PROTO)),
      encodeMessage(R.SET_PROTOCOL_FEATURES, FLAG_REPLY, u64Payload(0n)),
      encodeMessage(R.GET_QUEUE_NUM, FLAG_REPLY, u64Payload(3n)),
      encodeMessage(R.SET_OWNER, FLAG_REPLY, u64Payload(0n)),
      encodeMessage(R.GET_VRING_BASE, FLAG_REPLY, encodeVringState({ index: 0, num: 7 })),
      encodeMessage(R.SET_LOG_BASE, FLAG_REPLY, u64Payload(0n)),
    ),
    'backend-no-protocol-features': cat(
      encodeMessage(R.GET_FEATURES, FLAG_REPLY, u64Payload(1n << 32n)),
      encodeMessage(R.GET_VRING_BASE, FLAG_REPLY, encodeVringState({ index: 0, num: 0 })),
    ),
  };
}
