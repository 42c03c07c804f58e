// Seed inputs for qmp.fuzz.ts (written by `node tools/fuzz/src/make-seeds.js apps/vmm qmp`).
const lines = (...o: unknown[]) => Buffer.from(o.map((x) => (typeof x === 'string' ? x : JSON.stringify(x))).join('\n') + '\n');
const CAPS = { execute: 'qmp_capabilities' };
const hmp = (l: string) => ({ execute: 'human-monitor-command', arguments: { 'command-line': l }, id: l });

export function seeds(): Record<string, Uint8Array> {
  return {
    queries: lines(
      CAPS,
      { execute: 'query-version', id: 1 },
      { execute: 'query-commands' },
      { execute: 'query-status' },
      { execute: 'query-migrate' },
      { execute: 'query-migrate-parameters' },
      { execute: 'x-query-virtio' },
    ),
    arguments: lines(
      CAPS,
      { execute: 'migrate-set-parameters', arguments: { 'downtime-limit': 300, 'x-max-passes': 5 } },
      { execute: 'x-query-virtio-queue-status', arguments: { path: '/machine/peripheral/d0/virtio-backend', queue: 0 } },
      { execute: 'x-debug-virtqueue-drop', arguments: { dev: 'd0', queue: 1, kicks: 2 } },
      { execute: 'x-debug-device-event', arguments: { dev: 'd0', event: 'kick', queue: 0 } },
    ),
    hmp: lines(
      CAPS,
      hmp('info status'),
      hmp('info virtio'),
      hmp('info virtio-queue-status d0 0'),
      hmp('migrate_set_downtime 0.5'),
      hmp('virtqueue_drop d0 0 1 1'),
      hmp('help'),
      hmp('stop'),
      hmp('info migrate'),
    ),
    'bad-input': lines(
      '{"execute":"query-status"}',
      CAPS,
      CAPS,
      '[1,2]',
      'not json',
      '{"execute":1}',
      '{"execute":"x","foo":2}',
      '{"execute":"stop","arguments":[]}',
      '{"execute":"cont","arguments":{"x":1}}',
      '{"execute":"query-pci"',
    ),
    'multi-line-object': Buffer.from('{"execute":\n "qmp_capabilities"}{"execute":"query-version","id":{"a":[1,"}"]}}\r\n'),
  };
}
