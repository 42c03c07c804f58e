// Seed inputs for state.fuzz.ts (written by `node tools/fuzz/src/make-seeds.js plugins/virtio-net`).
const json = (v: unknown): Uint8Array => Buffer.from(JSON.stringify(v));

export function seeds(): Record<string, Uint8Array> {
  return {
    empty: json({}),
    none: json(null),
    full: json({ activePairs: 2, mac: '52:54:00:ab:cd:ef', rxMode: { promisc: false, allmulti: true, nobcast: true } }),
    'pairs-hostile': json({ activePairs: 3 }),
    'mac-hostile': json({ mac: '52:54:00:12:34' }),
    'rx-mode-hostile': json({ rxMode: { promisc: 1, toString: true } }),
  };
}
