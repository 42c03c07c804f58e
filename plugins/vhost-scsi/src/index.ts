/**
 * The vhost-scsi plugin: a virtio-scsi adapter whose data plane is a vhost
 * backend.
 *   --device vhost-scsi,id=vs0,backend=user,socket=PATH[,num-queues=N][,ioeventfd=on|off][,event-idx=on|off]
 *   --device vhost-scsi,id=vs0,backend=kernel,wwpn=naa.XXXX[,tpgt=N]
 * The LUNs live in the backend (the vhost-user-scsi process's --lun, or the
 * kernel's LIO configuration), not in the VMM.
 */
import { DeviceContext, DevicePlugin, PLUGIN_API_VERSION, PropertyValue, VirtioPciDevice, VirtioPciPluginDevice } from '@tsvmm/pci';
import { VhostBackend } from './backend/backend';
import { VhostKernelBackend } from './backend/kernel';
import { VhostUserBackend } from './backend/user';
import { VhostScsiDevice } from './device';

export { VhostScsiDevice, VHOST_SCSI_FEATURES } from './device';
export { VhostKernelBackend, hostVhostIoctls, describeOpenError, VHOST_SCSI_DEVICE } from './backend/kernel';
export type { VhostIoctls } from './backend/kernel';
export { VhostUserBackend } from './backend/user';
export type { VhostBackend, VhostMemRegion } from './backend/backend';

/** PCI class: mass storage controller, SCSI. */
export const VHOST_SCSI_CLASS_CODE = 0x010000;

export class VhostScsiPci extends VirtioPciPluginDevice {
  readonly type = 'vhost-scsi';
  constructor(
    id: string,
    readonly scsi: VhostScsiDevice,
    transport: VirtioPciDevice,
  ) {
    super(id, transport);
  }

  override setRunning(running: boolean): void {
    // Stopping: rings come back before the notifiers go off; resuming: the other way round.
    if (!running) this.scsi.setRunning(false);
    super.setRunning(running);
    if (running) this.scsi.setRunning(true);
  }

  /**
   * Migration: allowed when the backend logs the guest pages it writes
   * (vhost-user with VHOST_USER_PROTOCOL_F_LOG_SHMFD); otherwise a reason
   * naming the missing feature. The rings come back with GET_VRING_BASE
   * when the VM stops, so the state saved then is final.
   */
  override migrationBlocker(): string | undefined {
    return this.scsi.migrationBlocker();
  }

  async startDirtyLog(): Promise<void> {
    this.scsi.startDirtyLog();
  }

  async syncDirtyLog(): Promise<Iterable<number>> {
    return this.scsi.syncDirtyLog();
  }

  async stopDirtyLog(): Promise<void> {
    this.scsi.stopDirtyLog();
  }

  override destroy(): void | Promise<void> {
    this.scsi.destroy();
    return super.destroy();
  }
}

export function createVhostScsi(
  ctx: DeviceContext,
  id: string,
  props: Record<string, PropertyValue | undefined>,
  backendOverride?: VhostBackend,
): VhostScsiPci {
  const kind = props.backend as 'kernel' | 'user';
  let backend: VhostBackend;
  if (backendOverride) backend = backendOverride;
  else if (kind === 'user') {
    if (props.socket === undefined) throw new Error("backend=user needs socket=PATH (the vhost-user-scsi back-end's socket)");
    if (props.wwpn !== undefined) throw new Error('wwpn= is for backend=kernel');
    backend = new VhostUserBackend(props.socket as string);
  } else {
    if (props.wwpn === undefined) throw new Error('backend=kernel needs wwpn=naa.XXXX (the LIO vhost target port)');
    if (props.socket !== undefined) throw new Error('socket= is for backend=user');
    backend = new VhostKernelBackend(props.wwpn as string, props.tpgt as number);
  }
  // Fail at start-up, not at the guest's first DRIVER_OK, when the backend is not there.
  const features = backend.connect();
  const numQueues = props['num-queues'] as number;
  try {
    const dev = new VhostScsiDevice(ctx.memory, backend, features, {
      id,
      numQueues,
      eventIdx: props['event-idx'] as boolean,
      log: ctx.log,
      regions: () => ctx.vm.memoryRegions,
    });
    if (backend.maxQueues !== undefined && backend.maxQueues < dev.queues.length)
      throw new Error(`num-queues=${numQueues}: the ${backend.description} serves ${backend.maxQueues - 2} request queue(s)`);
    const transport = new VirtioPciDevice(dev, ctx, { classCode: VHOST_SCSI_CLASS_CODE, ioeventfd: props.ioeventfd as boolean });
    dev.transport = transport;
    ctx.log(`${id}: vhost-scsi on the ${backend.description}`);
    return new VhostScsiPci(id, dev, transport);
  } catch (e) {
    backend.close();
    throw e;
  }
}

export const plugin: DevicePlugin = {
  apiVersion: PLUGIN_API_VERSION,
  name: '@tsvmm/vhost-scsi',
  version: '0.1.0',
  deviceTypes: [
    {
      type: 'vhost-scsi',
      description:
        'virtio SCSI adapter served by a vhost backend: kernel vhost-scsi (backend=kernel) or a vhost-user-scsi process (backend=user)',
      properties: {
        backend: {
          type: 'enum',
          description: 'kernel (/dev/vhost-scsi) or user (a vhost-user back-end on socket=)',
          values: ['kernel', 'user'],
          default: 'user',
        },
        socket: { type: 'path', description: "backend=user: the vhost-user back-end's unix socket" },
        wwpn: {
          type: 'string',
          description: 'backend=kernel: WWPN of the LIO vhost target port (naa.XXXX)',
          pattern: /^[\x21-\x7e]{1,223}$/,
          patternHint: 'printable ASCII without spaces, at most 223 characters',
        },
        tpgt: { type: 'int', description: 'backend=kernel: target portal group tag', default: 0, min: 0, max: 65535 },
        'num-queues': { type: 'int', description: 'request queues', default: 1, min: 1, max: 16 },
        ioeventfd: {
          type: 'bool',
          description: 'guest kicks through KVM ioeventfd straight to the backend (off: through the exit path and the VMM)',
          default: true,
        },
        'event-idx': { type: 'bool', description: 'offer VIRTIO_RING_F_EVENT_IDX (when the backend has it)', default: true },
        // No stall-ms/stall-policy: the backend advances the rings, so the VMM's view of
        // last_avail_idx is only current after a stop (docs/vhost.md).
      },
      create: (ctx, id, props) => createVhostScsi(ctx, id, props),
    },
  ],
};
