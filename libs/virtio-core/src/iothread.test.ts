// The generic iothread host with a real worker thread: devices of two types share one worker
// (messages routed by device id), the worker's death marks every device on it needs-reset, and
// each device's reset starts a new worker. The worker here is a small script that answers as a
// plane would (the VMM's iothread.js needs the bundled plugins' planes; their tests use it).
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { DataPlaneDevice } from './iothread-device';
import { IoThreadChannel, ioThreadHost } from './iothread';
import { SharedQueueStats } from './shared-stats';
import { fakeMemory } from './testing';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'iotscsi-host-'));
const SCRIPT = path.join(dir, 'worker.js');
fs.writeFileSync(
  SCRIPT,
  `const { parentPort, threadId } = require('worker_threads');
const fs = require('fs');
const path = require('path');
const types = new Map();
parentPort.on('message', ({ dev, m }) => {
  if (dev === '' && m.type === 'exit') process.exit(0);
  const post = (out) => parentPort.postMessage({ dev, m: out });
  // A plane's close (what closes its descriptors), seen by the test as a file.
  if (m.type === 'close') fs.writeFileSync(path.join(${JSON.stringify(dir)}, 'closed-' + dev), String(threadId));
  if (m.type === 'init') types.set(dev, m.plane);
  if (m.type === 'stats') post({ type: 'stats', counters: { plane: types.get(dev), thread: threadId }, inFlight: 0 });
  if (m.type === 'reset') post({ type: 'reset-done' });
  if (m.type === 'crash') process.exit(7);
});
`,
);
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

class TypedDevice extends DataPlaneDevice {
  readonly logs: string[] = [];
  constructor(
    id: string,
    readonly kind: string,
  ) {
    super(fakeMemory(1 << 16), { id, deviceId: 0x7f, numQueues: 1, queueMaxSize: 8, features: 0n, log: (m) => this.logs.push(m) });
  }
  protected processQueue(): void {}
  readConfig(): number {
    return 0;
  }
  close(): Promise<void> {
    return this.closePlanes();
  }
  /** A message to the device's plane. */
  toPlane(m: unknown): void {
    this.planes[0].thread.send(m as never);
  }
  /** The plane's counters as the worker reported them. */
  reported(): { plane: string; thread: number } | undefined {
    return this.workerCounters();
  }
}

async function until(what: string, ok: () => boolean): Promise<void> {
  for (let i = 0; i < 500 && !ok(); i++) await new Promise((r) => setTimeout(r, 10));
  if (!ok()) throw new Error(`never happened: ${what}`);
}

describe('IoThreadHost: one worker per iothread id, shared by devices of any type', () => {
  it('routes each device its own answers; the worker dying marks both needs-reset; each reset starts a new worker', async () => {
    const vm = {};
    const started: string[] = [];
    const hosts: ReturnType<typeof ioThreadHost>[] = [];
    const attach = (dev: TypedDevice) => {
      const stats = SharedQueueStats.create(1);
      const start = () => {
        const host = ioThreadHost(vm, 'iotscsi-unit', (m) => started.push(m), SCRIPT);
        if (!hosts.includes(host)) hosts.push(host);
        const thread = new IoThreadChannel('iotscsi-unit', (m) => dev.onDataPlaneMessage(m), host.connect(dev.id));
        thread.send({ type: 'init', plane: dev.kind, id: dev.id, regions: [], eventIdx: true, stats: stats.buffer });
        return thread;
      };
      dev.attachDataPlane({ thread: start(), restart: start, stats, vectorFd: () => -1 });
      return dev;
    };
    const blk = attach(new TypedDevice('blk0', 'virtio-blk'));
    const scsi = attach(new TypedDevice('scsi0', 'virtio-scsi'));
    try {
      expect(hosts).toHaveLength(1);
      expect(started).toEqual(['iothread iotscsi-unit: worker thread started']);
      expect(hosts[0].devices).toEqual(['blk0', 'scsi0']);
      expect(blk.iothread).toBe('iotscsi-unit');
      // Each device hears its own plane (the envelope's device id), from the same thread.
      for (const d of [blk, scsi]) d.toPlane({ type: 'stats' });
      await until('both reports', () => blk.reported() !== undefined && scsi.reported() !== undefined);
      expect(blk.reported()!.plane).toBe('virtio-blk');
      expect(scsi.reported()!.plane).toBe('virtio-scsi');
      const firstThread = blk.reported()!.thread;
      expect(scsi.reported()!.thread).toBe(firstThread);

      // The worker dies (what an uncaught error in it does): every device on it needs a reset.
      blk.toPlane({ type: 'crash' });
      await until('both devices broken', () => blk.broken && scsi.broken);
      for (const d of [blk, scsi]) {
        expect(d.brokenReason).toMatch(/iothread iotscsi-unit exited \(code 7\); the guest's reset starts a new iothread/);
        expect(d.logs.some((l) => l.includes(`${d.id}: guest error, device needs reset`))).toBe(true);
      }
      expect(hosts[0].alive).toBe(false);

      // The guest resets one device: a new worker; the other device joins it on its own reset.
      blk.reset();
      expect(blk.broken).toBe(false);
      expect(blk.logs).toContain('blk0: iothread iotscsi-unit restarted');
      expect(hosts).toHaveLength(2);
      expect(hosts[1].alive).toBe(true);
      expect(scsi.broken).toBe(true);
      scsi.reset();
      expect(hosts).toHaveLength(2);
      expect(hosts[1].devices).toEqual(['blk0', 'scsi0']);
      for (const d of [blk, scsi]) d.toPlane({ type: 'stats' });
      const fresh = (d: TypedDevice) => d.reported() !== undefined && d.reported()!.thread !== firstThread;
      await until('reports from the new worker', () => fresh(blk) && fresh(scsi));
      expect(blk.reported()!.thread).toBe(scsi.reported()!.thread);
    } finally {
      await Promise.all([blk, scsi].map((d) => d.close()));
    }
    expect(hosts[1].alive).toBe(false); // the last device closed its channel: the worker ended
    // ... after it handled each plane's close (terminating it at once would drop the last one unhandled).
    for (const id of ['blk0', 'scsi0']) expect(fs.existsSync(path.join(dir, `closed-${id}`))).toBe(true);
  });
});
