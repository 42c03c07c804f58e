/**
 * virtio-scsi on an iothread (`--device virtio-scsi,iothread=ID`): the
 * adapter's plane in the worker is a VirtioScsiDevice over the worker's own
 * mapping of guest RAM, with an ScsiTarget whose scsi-hd LUNs read and write
 * duplicated descriptors of the images (it opens nothing by path, so it works
 * after --run-with dropped privileges and inside the jail). The whole device
 * runs there, as QEMU runs it: control, event and request queues. virtio-core's
 * WorkerPlane does the rest (ioeventfds, irqfds, shared-memory figures, drain,
 * dirty log).
 */
import { OpenedImage, RawFileBackend } from '@tsvmm/block';
import { ScsiDisk, ScsiTarget } from '@tsvmm/scsi';
import { GuestMemory, IoThreadFromWorker, IoThreadInit, PlaneFactory, WorkerPlane } from '@tsvmm/virtio-core';
import { ScsiPlaneMessage, VirtioScsiDevice, VirtioScsiExtraState } from '@tsvmm/virtio-scsi-core';

/** The plane factory's name in the iothread worker. */
export const SCSI_PLANE = 'virtio-scsi';

/** A scsi-hd LUN as the plane opens it. */
export interface ScsiLunSpec {
  lun: number;
  file: string;
  /** The image's descriptors, duplicated for the worker (which owns and closes them). */
  fds: OpenedImage;
  readonly: boolean;
  direct: boolean;
  aio?: 'io_uring' | 'threads';
  serial: string;
  logicalBlockSize: number;
}

export interface ScsiInit extends IoThreadInit {
  /** Request queues. */
  numQueues: number;
  luns: ScsiLunSpec[];
}

/** What the plane takes as 'device' messages: ScsiPlaneMessage, and a LUN defined after the adapter. */
export type ScsiPlaneDeviceMessage = ScsiPlaneMessage & { attach?: ScsiLunSpec };

/** The back-ends the plane opened (a polling iothread reaps their completion rings). */
type Backends = RawFileBackend[];

function attach(target: ScsiTarget, l: ScsiLunSpec, backends: Backends): void {
  const backend = new RawFileBackend(l.file, l.readonly, l.direct, l.aio, l.fds);
  backends.push(backend);
  target.attach(l.lun, new ScsiDisk({ backend, readonly: l.readonly, serial: l.serial, logicalBlockSize: l.logicalBlockSize }));
}

/** The worker's factory for virtio-scsi planes (registered under SCSI_PLANE): the LUNs of `init` opened. */
export const createScsiPlane: PlaneFactory = (memory, raw, post, eventfdWrite) => {
  const init = raw as ScsiInit;
  const target = new ScsiTarget();
  const backends: Backends = [];
  for (const l of init.luns) attach(target, l, backends);
  return scsiPlane(memory, init, target, post, eventfdWrite, backends);
};

/** A plane over a target whose LUNs are already attached (createScsiPlane; tests with their own backends). */
export function scsiPlane(
  memory: GuestMemory,
  init: ScsiInit,
  target: ScsiTarget,
  post: (m: IoThreadFromWorker) => void,
  eventfdWrite: (fd: number) => void,
  backends: Backends = [],
): WorkerPlane<VirtioScsiDevice> {
  const dev: VirtioScsiDevice = new VirtioScsiDevice(memory, {
    id: init.id,
    numQueues: init.numQueues,
    eventIdx: init.eventIdx,
    target,
    // The main thread logs the needs-reset itself when it hears 'broken'.
    log: (message) => (dev.broken && message.includes('needs reset') ? undefined : post({ type: 'log', message })),
  });
  return new WorkerPlane(
    dev,
    init,
    {
      saveExtra: () => dev.saveScsiState(),
      loadExtra: (extra) => dev.loadScsiState(extra as VirtioScsiExtraState | undefined),
      counters: () => dev.planeCounters(),
      device: (m) => {
        const d = m as ScsiPlaneDeviceMessage;
        if (d.attach) attach(target, d.attach, backends);
        dev.applyPlaneMessage(d);
      },
      close: () => target.close(),
      reapCompletions: () => backends.reduce((n, b) => n + (b.pollCompletions?.() ?? 0), 0),
    },
    post,
    eventfdWrite,
  );
}
