// Seed inputs for runclock.fuzz.ts (written by `node tools/fuzz/src/make-seeds.js libs/virtio-core runclock`).
const reading = (stepMs: number, schedstat: string, stat: string, procStat: string) =>
  String.fromCharCode(stepMs & 0xff, stepMs >> 8) + [schedstat, stat, procStat].join('\x02');
const input = (...r: string[]) => Buffer.from(r.join('\x01'), 'latin1');
const STAT = (steal: number) => `cpu  1 0 1 1 0 0 0 ${2 * steal} 0 0\ncpu0 1 0 1 1 0 0 0 ${steal} 0 0\ncpu1 1 0 1 1 0 0 0 ${steal} 0 0\n`;

export function seeds(): Record<string, Uint8Array> {
  return {
    'starved-then-running': input(
      reading(0, '1000 5000 3', '42 (vcpu) S 1', STAT(10)),
      reading(100, '2000 95005000 4', '42 (vcpu) R 1', STAT(10)),
      reading(100, '3000 95005000 4', '42 (vcpu) R 1', STAT(12)),
      reading(100, '90003000 290005000 9', '42 (vcpu) S 1', STAT(12)),
    ),
    'no-schedstat': input(reading(0, '', '', ''), reading(50, 'garbage', '(x', 'cpu0 1 2')),
  };
}
