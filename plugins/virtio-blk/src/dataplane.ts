/**
 * virtio-blk's plane on an iothread: a VirtioBlkDevice over the worker's own
 * mapping of guest RAM and a RawFileBackend over duplicated descriptors of
 * the image, driven by virtio-core's generic WorkerPlane (kicks from the
 * queues' ioeventfds, irqfd writes, shared-memory figures, drain, dirty log).
 * What is blk's own: the extra migration state (status bytes held back while
 * bus mastering is off), the counters, and closing the backend.
 */
import { GuestMemory, IoThreadFromWorker, PlaneFactory, VirtioDeviceState, WorkerPlane } from '@tsvmm/virtio-core';
import { BlockBackend, RawFileBackend } from '@tsvmm/block';
import { BlkExtraState, VirtioBlkDevice } from './device';
import type { BlkInit, FromWorker } from './iothread';

export class BlkWorkerPlane extends WorkerPlane<VirtioBlkDevice> {
  constructor(
    memory: GuestMemory,
    backend: BlockBackend,
    init: BlkInit,
    post: (m: FromWorker) => void,
    /** Writes an MSI-X eventfd; throws when it is gone. */
    eventfdWrite: (fd: number) => void,
  ) {
    const dev: VirtioBlkDevice = new VirtioBlkDevice(memory, {
      id: init.id,
      backend,
      numQueues: init.numQueues,
      serial: init.serial,
      eventIdx: init.eventIdx,
      ownedQueues: init.queues,
      // The main thread logs the needs-reset itself when it hears 'broken'.
      log: (message) => (dev.broken && message.includes('needs reset') ? undefined : post({ type: 'log', message })),
    });
    super(
      dev,
      init,
      {
        saveExtra: () => dev.saveBlkState(),
        loadExtra: (extra) => dev.loadBlkState(extra as BlkExtraState),
        counters: () => ({ ...dev.blk }),
        close: () => dev.backend.close(),
        reapCompletions: () => backend.pollCompletions?.() ?? 0,
      },
      post as (m: IoThreadFromWorker) => void,
      eventfdWrite,
    );
  }
}

/** The worker's factory for virtio-blk planes (registered under BLK_PLANE; see iothread-plane.ts). */
export const createBlkPlane: PlaneFactory = (memory, init, post, eventfdWrite) => {
  const m = init as BlkInit;
  return new BlkWorkerPlane(memory, new RawFileBackend(m.file, m.readonly, m.direct, m.aio, m.fds), m, post, eventfdWrite);
};

export type { BlkExtraState, VirtioDeviceState };
