// Seed inputs for state.fuzz.ts (written by `node tools/fuzz/src/make-seeds.js libs/virtio-scsi-core`).
const json = (v: unknown): Uint8Array => Buffer.from(JSON.stringify(v));

export function seeds(): Record<string, Uint8Array> {
  return {
    empty: json({}),
    none: json(null),
    config: json({ config: { senseSize: 64, cdbSize: 16 } }),
    luns: json({ luns: { '0': { ua: 'power-on' } } }),
    held: json({ pendingWrites: [{ bufs: [{ addr: 0x1000, len: 4 }], bytes: Buffer.from([1, 2, 3, 4]).toString('base64') }] }),
    'config-hostile': json({ config: { senseSize: -1, cdbSize: 2 ** 40 } }),
  };
}
