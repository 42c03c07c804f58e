// Seed inputs for backend.fuzz.ts (written by `node tools/fuzz/src/make-seeds.js apps/vhost-user-scsi`).
import {
  encodeLogDescription,
  encodeMemTable,
  encodeMessage,
  encodeVringAddr,
  encodeVringState,
  FLAG_NEED_REPLY,
  u64Payload,
  VhostUserRequest as R,
} from '@tsvmm/vhost-user';
import { AVAIL, DATA, DESC, HEADER, seedInput, USED } from '@tsvmm/testing/fuzz';
import { MEM_SIZE } from './backend.fuzz';

const UA = 0x7f0000000000n;
const F = (1n << 32n) | (1n << 28n) | (1n << 29n) | (1n << 30n);
const PF = 1n | (1n << 3n);

/** One INQUIRY on request queue 0 (ring 2), laid out as virtio-input's fixed layout. */
function memImage(): Buffer {
  const s = seedInput(16, 0, (d, m) => {
    m.write(DATA, [1, 0, 0x40, 0]);
    m.writeU64(DATA + 8, 1n);
    m.write(DATA + 19, [0x12, 0, 0, 0, 96, 0]);
    d.addChain([
      { addr: DATA, len: 51 },
      { addr: DATA + 0x100, len: 108, write: true },
      { addr: DATA + 0x200, len: 96, write: true },
    ]);
  });
  const img = Buffer.from(s.subarray(HEADER));
  const out = Buffer.alloc(2 + img.length);
  out.writeUInt16LE(img.length, 0);
  img.copy(out, 2);
  return out;
}

function session(o: { protocol?: boolean; log?: boolean; ring?: number; extra?: Uint8Array[] } = {}): Buffer {
  const ring = o.ring ?? 2;
  const msgs = [
    encodeMessage(R.GET_FEATURES, 0),
    encodeMessage(R.SET_FEATURES, 0, u64Payload(o.protocol === false ? 1n << 32n : F)),
    ...(o.protocol === false
      ? []
      : [encodeMessage(R.GET_PROTOCOL_FEATURES, 0), encodeMessage(R.SET_PROTOCOL_FEATURES, 0, u64Payload(PF | (o.log ? 1n << 4n : 0n)))]),
    encodeMessage(R.SET_OWNER, FLAG_NEED_REPLY),
    encodeMessage(R.GET_QUEUE_NUM, 0),
    encodeMessage(
      R.SET_MEM_TABLE,
      FLAG_NEED_REPLY,
      encodeMemTable([{ guestPhysAddr: 0n, size: BigInt(MEM_SIZE), userAddr: UA, mmapOffset: 0n }]),
    ),
    ...(o.log ? [encodeMessage(R.SET_LOG_BASE, 0, encodeLogDescription({ mmapSize: 4096n, mmapOffset: 0n }))] : []),
    encodeMessage(R.SET_VRING_NUM, 0, encodeVringState({ index: ring, num: 16 })),
    encodeMessage(R.SET_VRING_BASE, 0, encodeVringState({ index: ring, num: 0 })),
    encodeMessage(
      R.SET_VRING_ADDR,
      0,
      encodeVringAddr({
        index: ring,
        flags: o.log ? 1 : 0,
        desc: UA + BigInt(DESC),
        used: UA + BigInt(USED),
        avail: UA + BigInt(AVAIL),
        log: BigInt(USED),
      }),
    ),
    encodeMessage(R.SET_VRING_CALL, 0, u64Payload(BigInt(ring))),
    encodeMessage(R.SET_VRING_ERR, 0, u64Payload(BigInt(ring))),
    encodeMessage(R.SET_VRING_KICK, 0, u64Payload(BigInt(ring))),
    encodeMessage(R.SET_VRING_ENABLE, 0, encodeVringState({ index: ring, num: 1 })),
    ...(o.extra ?? []),
  ];
  return Buffer.concat([memImage(), ...msgs.map((m) => Buffer.from(m))]);
}

export function seeds(): Record<string, Uint8Array> {
  return {
    'inquiry-session': session(),
    'no-protocol-features': session({ protocol: false }),
    'dirty-log': session({ log: true }),
    'get-vring-base-reset-owner': session({
      extra: [encodeMessage(R.GET_VRING_BASE, 0, encodeVringState({ index: 2, num: 0 })), encodeMessage(R.RESET_OWNER, 0)],
    }),
    'control-ring': session({ ring: 0 }),
  };
}
