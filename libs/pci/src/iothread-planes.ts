/**
 * Starting a virtio-pci device's data planes on iothreads, for any device
 * type: one channel per placement (`iothread=ID`: one plane with every
 * queue; iothread-vq-mapping: one plane per iothread with its queues), each
 * plane's worker sent an 'init' with guest RAM, the device's shared queue
 * figures, the iothread's poll settings and the type's own fields. A dead
 * worker's replacement (the guest's reset) gets a fresh init, so `fields`
 * is called again (fresh duplicated descriptors: the worker owns and closes
 * what it was given).
 */
import { closeFds } from '@tsvmm/kvm-native';
import {
  DataPlane,
  DataPlaneDevice,
  DEFAULT_POLL_SETTINGS,
  IoThreadChannel,
  ioThreadHost,
  IoThreadInit,
  SharedQueueStats,
} from '@tsvmm/virtio-core';
import type { DeviceContext } from './plugin';
import type { VirtioPciDevice } from './virtio-pci';

/** Where a device's queues run: an iothread, and (iothread-vq-mapping) which of the queues. */
export interface IoThreadPlacement {
  iothread: string;
  /** The queues this iothread processes; undefined: all of them. */
  queues?: number[];
}

/** The fields every init has (IoThreadInit's); the device type gives the rest. */
type CommonInit = keyof IoThreadInit;

export interface DataPlaneStart<Init extends IoThreadInit> {
  ctx: DeviceContext;
  id: string;
  /** The main-thread device: its planes are attached, their messages go to it. */
  device: DataPlaneDevice;
  transport: VirtioPciDevice;
  /** The plane factory's name in the worker (the plugin's `iothreadPlanes` key). */
  plane: string;
  eventIdx: boolean;
  placements: IoThreadPlacement[];
  /** The type's own init fields, made for each worker start. */
  fields: () => Omit<Init, CommonInit>;
  /**
   * The descriptors in `fields` the worker owns (duplicates it closes when
   * its plane closes). A worker that died never closes them: they are
   * closed here when its replacement starts.
   */
  ownedFds?: (fields: Omit<Init, CommonInit>) => number[];
}

/** Starts the device's planes and attaches them to it (its queues' handlers then live on the iothreads). */
export function attachIoThreadPlanes<Init extends IoThreadInit>(s: DataPlaneStart<Init>): void {
  const { ctx, id, device, transport } = s;
  // One SharedQueueStats for the device: each worker keeps its own queues' slots.
  const stats = SharedQueueStats.create(device.queues.length);
  /** Per placement: the descriptors its current worker owns. */
  const owned: number[][] = s.placements.map(() => []);
  const start = (name: string, plane: number, queues: number[] | undefined) => {
    // A restart: the dead worker's descriptors (nothing runs there any more to use or close them).
    closeFds(owned[plane].splice(0));
    const host = ioThreadHost(ctx.vm, name, ctx.log);
    const thread = new IoThreadChannel(name, (m) => device.onDataPlaneMessage(m, plane), host.connect(id));
    const others = host.devices.filter((d) => d !== id);
    if (others.length) ctx.log(`${id}: data plane on iothread ${name}, shared with ${others.join(', ')}`);
    const init: IoThreadInit = {
      type: 'init',
      plane: s.plane,
      id,
      regions: ctx.vm.memoryRegions.map((r) => ({ fd: r.fd, gpa: Number(r.guestPhysAddr), size: r.size })),
      eventIdx: s.eventIdx,
      stats: stats.buffer,
      queues,
      poll: ctx.iothread?.(name)?.poll ?? DEFAULT_POLL_SETTINGS,
      sent: thread.sent.buffer as SharedArrayBuffer,
    };
    const fields = s.fields();
    owned[plane] = s.ownedFds?.(fields) ?? [];
    thread.send({ ...fields, ...init } as Init);
    return thread;
  };
  // The worker writes each queue's irqfd itself: the eventfd of the MSI-X vector the driver assigned (-1: none).
  const vectorFd = (q: number) => {
    const v = transport.queueVector(q);
    return v === 0xffff ? -1 : (transport.msix.eventFd(v)?.fd ?? -1);
  };
  const planes = s.placements.map(({ iothread, queues }, k): DataPlane => {
    if (queues) ctx.log(`${id}: queue${queues.length > 1 ? 's' : ''} ${queues.join(', ')} on iothread ${iothread}`);
    return { thread: start(iothread, k, queues), restart: () => start(iothread, k, queues), stats, vectorFd, queues };
  });
  device.attachDataPlane(planes);
}
