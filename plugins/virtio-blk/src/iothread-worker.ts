/**
 * An iothread (`--object iothread,id=ID`): one worker thread that hosts the
 * virtio-blk data planes of every device naming it. The worker maps guest
 * RAM once from the same memfds (its own ArrayBuffers over the same pages)
 * and runs, per device, a plane over its own queues and backend
 * (dataplane.ts); it writes the queues' MSI-X eventfds itself. The main
 * thread keeps configuration, status and MSI-X, and forwards kicks.
 * Messages carry the device id (Envelope).
 */
import { parentPort } from 'worker_threads';
import { loadNative, mapGuestRam } from '@tsvmm/kvm-native';
import { GuestMemory } from '@tsvmm/virtio-core';
import { RawFileBackend } from '@tsvmm/block';
import { BlkWorkerPlane } from './dataplane';
import type { Envelope, FromWorker, ToWorker } from './iothread';

const planes = new Map<string, BlkWorkerPlane>();
let memory: GuestMemory | undefined;
const port = parentPort!;

port.on('message', ({ dev, m }: Envelope<ToWorker>) => {
  const post = (out: FromWorker) => port.postMessage({ dev, m: out } satisfies Envelope<FromWorker>);
  const plane = planes.get(dev);
  try {
    if (m.type === 'init') {
      const native = loadNative();
      // Every device of the VM has the same RAM: mapped once, by the first (1 GiB buffers, as the main thread's).
      memory ??= new GuestMemory(m.regions.flatMap((r) => mapGuestRam(r.fd, r.gpa, r.size).pieces));
      const backend = new RawFileBackend(m.file, m.readonly, m.direct, m.aio, m.fds);
      planes.get(dev)?.handle({ type: 'close' });
      planes.set(dev, new BlkWorkerPlane(memory, backend, m, post, (fd) => native.eventfdWrite(fd, 1)));
      return;
    }
    plane?.handle(m);
    if (m.type === 'close') planes.delete(dev);
  } catch (e) {
    // The device fault boundary of the plane's device: needs-reset (posted as 'broken'), stack logged. Other planes go on.
    if (plane) plane.dev.deviceFault(`iothread message ${m.type}`, e);
    else post({ type: 'log', message: `iothread: ${(e as Error).stack ?? e}` });
  }
});
