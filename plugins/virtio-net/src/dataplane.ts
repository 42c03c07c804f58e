/**
 * virtio-net on an iothread (`--device virtio-net,iothread=ID`): the plane in
 * the worker is a VirtioNetDevice over the worker's own mapping of guest RAM
 * and a Tap over duplicated descriptors of the TAP queues (it opens nothing by
 * path, so it works after --run-with dropped privileges and inside the jail).
 * The whole device runs there, as QEMU runs it with an iothread: receive,
 * transmit and control queues, the TAP's readiness watched on the worker's
 * loop. virtio-core's WorkerPlane does the rest (ioeventfds, irqfds,
 * shared-memory figures, drain, dirty log).
 */
import { GuestMemory, IoThreadFromWorker, IoThreadInit, PlaneFactory, WorkerPlane } from '@tsvmm/virtio-core';
import { Tap } from './backend/tap';
import { NetExtraState, NetPlaneMessage, VirtioNetDevice } from './device';

/** The plane factory's name in the iothread worker. */
export const NET_PLANE = 'virtio-net';

export interface NetInit extends IoThreadInit {
  /** The TAP's name (for the monitor) and its queues' descriptors, duplicated for the worker (which owns and closes them). */
  tap: { name: string; fds: number[] };
  /** The configured MAC (the driver may set another through the control queue). */
  mac: number[];
  pairs: number;
  mtu: number;
}

/** The worker's factory for virtio-net planes (registered under NET_PLANE). */
export const createNetPlane: PlaneFactory = (memory, raw, post, eventfdWrite) => {
  const init = raw as NetInit;
  const tap = new Tap({ name: init.tap.name, fds: init.tap.fds, queues: init.pairs });
  return netPlane(memory, init, tap, post, eventfdWrite);
};

/** A plane over an opened TAP (createNetPlane; tests). */
export function netPlane(
  memory: GuestMemory,
  init: NetInit,
  tap: Tap,
  post: (m: IoThreadFromWorker) => void,
  eventfdWrite: (fd: number) => void,
): WorkerPlane<VirtioNetDevice> {
  const dev: VirtioNetDevice = new VirtioNetDevice(memory, {
    id: init.id,
    tap,
    mac: Uint8Array.from(init.mac),
    pairs: init.pairs,
    mtu: init.mtu,
    eventIdx: init.eventIdx,
    // The main thread logs the needs-reset itself when it hears 'broken'.
    log: (message) => (dev.broken && message.includes('needs reset') ? undefined : post({ type: 'log', message })),
  });
  return new WorkerPlane(
    dev,
    init,
    {
      saveExtra: () => dev.saveNetState(),
      loadExtra: (extra) => dev.loadNetState(extra as NetExtraState | undefined),
      counters: () => dev.planeCounters(),
      device: (m) => dev.applyPlaneMessage(m as NetPlaneMessage),
      loaded: () => dev.startDataPath(),
      close: () => void dev.destroy(),
    },
    post,
    eventfdWrite,
  );
}
