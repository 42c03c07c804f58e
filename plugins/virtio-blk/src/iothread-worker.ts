/**
 * The virtio-blk data plane in a worker thread (iothread=ID). The worker maps
 * guest RAM again from the same memfds (its own ArrayBuffers over the same
 * pages), runs a VirtioBlkDevice over its own queues and backend, and writes
 * the queues' MSI-X eventfds itself. The main thread keeps configuration,
 * status and MSI-X, and forwards kicks.
 */
import { parentPort } from 'worker_threads';
import { loadNative } from '@tsvmm/kvm-native';
import { GuestMemory, virtioUapi as V } from '@tsvmm/virtio-core';
import { RawFileBackend } from '@tsvmm/block';
import { VirtioBlkDevice } from './device';
import type { ToWorker } from './iothread';

let dev: VirtioBlkDevice | undefined;
let vectorFds: number[] = [];
const port = parentPort!;
const post = (m: unknown) => port.postMessage(m);

port.on('message', (m: ToWorker) => {
  try {
    handle(m);
  } catch (e) {
    post({ type: 'log', message: `iothread: ${(e as Error).stack ?? e}` });
  }
});

function handle(m: ToWorker): void {
  switch (m.type) {
    case 'init': {
      const native = loadNative();
      const regions = m.regions.map((r) => ({ guestPhysAddr: r.gpa, bytes: new Uint8Array(native.mmapFd(r.fd, r.size, 0).buffer) }));
      const backend = new RawFileBackend(m.file, m.readonly, m.direct);
      dev = new VirtioBlkDevice(new GuestMemory(regions), {
        id: m.id, backend, numQueues: m.numQueues, serial: m.serial, eventIdx: m.eventIdx,
        // The main thread logs the needs-reset itself when it hears 'broken'.
        log: (message) => (dev?.broken && message.includes('needs reset') ? undefined : post({ type: 'log', message })),
      });
      dev.interrupt = {
        signalQueue: (q) => {
          const fd = vectorFds[q];
          if (fd >= 0) {
            try {
              native.eventfdWrite(fd, 1);
              return;
            } catch {
              // the vector went away: let the main thread route it
            }
          }
          post({ type: 'interrupt', queue: q });
        },
        signalConfig: () => post({ type: 'broken', reason: dev!.brokenReason ?? 'device error' }),
      };
      dev.setDisabled(true);
      return;
    }
    case 'activate': {
      const d = dev!;
      d.reset();
      vectorFds = m.vectorFds;
      d.writeStatus(V.VIRTIO_CONFIG_S_ACKNOWLEDGE | V.VIRTIO_CONFIG_S_DRIVER);
      d.writeDriverFeatures(0, Number(BigInt(`0x${m.driverFeatures}`) & 0xffffffffn));
      d.writeDriverFeatures(1, Number(BigInt(`0x${m.driverFeatures}`) >> 32n));
      d.writeStatus(V.VIRTIO_CONFIG_S_ACKNOWLEDGE | V.VIRTIO_CONFIG_S_DRIVER | V.VIRTIO_CONFIG_S_FEATURES_OK);
      m.queues.forEach((q, i) => d.queues[i].load({ ...q, lastAvailIdx: 0, usedIdx: 0 }));
      d.writeStatus(V.VIRTIO_CONFIG_S_ACKNOWLEDGE | V.VIRTIO_CONFIG_S_DRIVER | V.VIRTIO_CONFIG_S_FEATURES_OK | V.VIRTIO_CONFIG_S_DRIVER_OK);
      d.setDisabled(m.disabled);
      return;
    }
    case 'kick':
      dev?.notify(m.queue, 'debug'); // already counted on the main thread
      return;
    case 'disabled':
      dev?.setDisabled(m.disabled);
      return;
    case 'reset':
      dev?.reset();
      post({ type: 'reset-done' });
      return;
    case 'stats':
      post({ type: 'stats', blk: dev?.blk, counters: dev?.counters, inFlight: dev?.inFlight ?? 0 });
      return;
    case 'close':
      dev?.backend.close();
      port.close();
      return;
  }
}
