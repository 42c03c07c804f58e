/**
 * The virtio-blk data plane in a worker thread (iothread=ID). The worker maps
 * guest RAM again from the same memfds (its own ArrayBuffers over the same
 * pages), runs a VirtioBlkDevice over its own queues and backend (dataplane.ts),
 * and writes the queues' MSI-X eventfds itself. The main thread keeps
 * configuration, status and MSI-X, and forwards kicks.
 */
import { parentPort } from 'worker_threads';
import { loadNative, mapGuestRam } from '@tsvmm/kvm-native';
import { GuestMemory } from '@tsvmm/virtio-core';
import { RawFileBackend } from '@tsvmm/block';
import { BlkWorkerPlane } from './dataplane';
import type { FromWorker, ToWorker } from './iothread';

let plane: BlkWorkerPlane | undefined;
const port = parentPort!;
const post = (m: FromWorker) => port.postMessage(m);

port.on('message', (m: ToWorker) => {
  try {
    if (m.type === 'init') {
      const native = loadNative();
      const regions = m.regions.flatMap((r) => mapGuestRam(r.fd, r.gpa, r.size).pieces); // 1 GiB buffers, as the main thread's
      const backend = new RawFileBackend(m.file, m.readonly, m.direct, m.aio);
      plane = new BlkWorkerPlane(new GuestMemory(regions), backend, m, post, (fd) => native.eventfdWrite(fd, 1));
      return;
    }
    plane?.handle(m);
    if (m.type === 'close') port.close();
  } catch (e) {
    // The device fault boundary of the worker's copy of the device: needs-reset (posted as 'broken'), stack logged.
    if (plane) plane.dev.deviceFault(`iothread message ${m.type}`, e);
    else post({ type: 'log', message: `iothread: ${(e as Error).stack ?? e}` });
  }
});
