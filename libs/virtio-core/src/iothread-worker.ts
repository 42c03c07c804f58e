/**
 * The entry of an iothread's worker thread (`--object iothread,id=ID`), for
 * any device type: it maps guest RAM once from the VM's memfds (its own
 * ArrayBuffers over the same pages) and runs, per device, the plane the
 * device type's factory builds (iothread-plane.ts). The VMM's bundle makes
 * `iothread.js` from a generated entry that passes every bundled plugin's
 * factories (package.json `vmmPlugin.iothreadPlanes`) to runIoThreadWorker.
 * Messages carry the device id (Envelope).
 */
import { parentPort } from 'worker_threads';
import { loadNative, mapGuestRam } from '@tsvmm/kvm-native';
import { GuestMemory, GuestRegion } from './guest-memory';
import type { Envelope, IoThreadFromWorker, IoThreadToWorker, WorkerExitRequest, WorkerThreadReport } from './iothread';
import type { PlaneFactory, WorkerPlane } from './iothread-plane';

export function runIoThreadWorker(factories: Record<string, PlaneFactory>): void {
  const planes = new Map<string, WorkerPlane>();
  let pieces: GuestRegion[] | undefined;
  const port = parentPort!;
  port.postMessage({ dev: '', m: { type: 'thread', tid: loadNative().gettid() } } satisfies Envelope<WorkerThreadReport>);
  port.on('message', ({ dev, m }: Envelope<IoThreadToWorker | WorkerExitRequest>) => {
    if (dev === '' && m.type === 'exit') {
      // Every message before this one was handled (each plane closed its descriptors): end the thread.
      for (const p of planes.values()) p.handle({ type: 'close' });
      planes.clear();
      process.exit(0);
    }
    if (m.type === 'exit') return;
    const post = (out: IoThreadFromWorker) => port.postMessage({ dev, m: out } satisfies Envelope<IoThreadFromWorker>);
    const plane = planes.get(dev);
    try {
      if (m.type === 'init') {
        const factory = factories[m.plane];
        if (!factory)
          throw new Error(
            `no data plane for device type ${m.plane} in this iothread (built with: ${Object.keys(factories).join(', ') || 'none'})`,
          );
        const native = loadNative();
        // Every device of the VM has the same RAM: mapped once, by the first (1 GiB buffers, as the main thread's).
        pieces ??= m.regions.flatMap((r) => mapGuestRam(r.fd, r.gpa, r.size).pieces);
        planes.get(dev)?.handle({ type: 'close' });
        // A GuestMemory per plane over the same buffers: each device's dirty log tracks its own writes.
        planes.set(
          dev,
          factory(new GuestMemory(pieces), m, post, (fd) => native.eventfdWrite(fd, 1)),
        );
        return;
      }
      plane?.handle(m);
      if (m.type === 'close') planes.delete(dev);
    } catch (e) {
      // The device fault boundary of the plane's device: needs-reset (posted as 'broken'), stack logged. Other planes go on.
      if (plane) plane.dev.deviceFault(`iothread message ${m.type}`, e);
      else if (m.type === 'init') post({ type: 'broken', reason: `iothread: ${(e as Error).message}` });
      else post({ type: 'log', message: `iothread: ${(e as Error).stack ?? e}` });
    }
  });
}
