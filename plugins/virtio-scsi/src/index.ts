/**
 * The virtio-scsi plugin, QEMU-shaped:
 *   --device virtio-scsi,id=scsi0[,num-queues=N][,ioeventfd=on|off][,event-idx=on|off][,iothread=ID]
 *   --device scsi-hd,bus=scsi0,lun=N,file=PATH[,readonly=on][,serial=S][,cache=writeback|none][,aio=io_uring|threads][,logical-block-size=512|4096]
 * The adapter exposes one target (0); each scsi-hd is a LUN on it, emulated by
 * @tsvmm/scsi over a raw image file. `iothread=ID` runs the adapter's queues
 * (control, event and request queues) and its LUNs' I/O on that iothread
 * (dataplane.ts).
 */
import { AIO_MODES, AioMode, BackendOpenError, RawFileBackend } from '@tsvmm/block';
import {
  attachIoThreadPlanes,
  Device,
  DeviceContext,
  DevicePlugin,
  PLUGIN_API_VERSION,
  PropertyValue,
  stallSettings,
  VIRTIO_PCI_DEBUG_PROPERTIES,
  VirtioPciDevice,
  VirtioPciPluginDevice,
} from '@tsvmm/pci';
import { ScsiDisk } from '@tsvmm/scsi';
import { MAX_LUN, REQUEST_QUEUE_BASE, VirtioScsiDevice, VirtioScsiExtraState } from '@tsvmm/virtio-scsi-core';
import { SCSI_PLANE, ScsiInit, ScsiLunSpec, ScsiPlaneDeviceMessage } from './dataplane';

export { VirtioScsiDevice, VIRTIO_ID_SCSI, REQUEST_QUEUE_BASE, MAX_LUN, virtioScsiUapi } from '@tsvmm/virtio-scsi-core';
export type { ScsiAdapterCounters } from '@tsvmm/virtio-scsi-core';

/** PCI class: mass storage controller, SCSI. */
export const VIRTIO_SCSI_CLASS_CODE = 0x010000;

export class VirtioScsiPci extends VirtioPciPluginDevice {
  readonly type = 'virtio-scsi';
  constructor(
    id: string,
    readonly scsi: VirtioScsiDevice,
    transport: VirtioPciDevice,
  ) {
    super(id, transport);
  }

  /** The LUNs as an iothread's plane opens them (duplicated descriptors of each image, fresh for each worker). */
  readonly lunSpecs = new Map<number, { spec: Omit<ScsiLunSpec, 'fds'>; backend: RawFileBackend }>();

  override reset(): void {
    super.reset();
    this.scsi.powerOnReset();
  }

  override setRunning(running: boolean): void {
    // On an iothread the plane first takes requests again, then the transport's notifiers (and a restore's kicks) reach it.
    if (running) this.scsi.resumeDataPlane();
    super.setRunning(running);
  }

  /** Migration dirty log of the pages the iothread writes (none without one: the main thread's writes are tracked by the VM). */
  async startDirtyLog(): Promise<void> {
    await this.scsi.dataPlaneDirtyLog('start');
  }

  syncDirtyLog(): Promise<Iterable<number>> {
    return this.scsi.dataPlaneDirtyLog('sync');
  }

  async stopDirtyLog(): Promise<void> {
    await this.scsi.dataPlaneDirtyLog('stop');
  }

  /** Migration: resolves when no SCSI command or control request is in flight and their interrupts went out. */
  drain(): Promise<void> {
    return this.scsi.drain();
  }

  /** Per-LUN unit attentions and mode parameters, responses held back while bus mastering is off. */
  protected override saveExtra(): unknown {
    return this.scsi.saveScsiState();
  }

  protected override checkExtra(extra: unknown): void {
    this.scsi.checkScsiState(extra);
  }

  protected override loadExtra(extra: unknown): void {
    this.scsi.loadScsiState(extra as VirtioScsiExtraState | undefined);
  }

  override async destroy(): Promise<void> {
    await super.destroy();
    await this.scsi.destroy();
  }
}

/** A LUN on an adapter; the adapter owns (and closes) its disk. */
export class ScsiHd implements Device {
  readonly type = 'scsi-hd';
  constructor(
    readonly id: string,
    readonly bus: VirtioScsiPci,
    readonly lun: number,
    readonly disk: ScsiDisk,
  ) {}

  /** Migration: the LUN's own state (unit attention, mode parameters) travels with its adapter's; this names the LUN. */
  saveState(): { lun: number } {
    return { lun: this.lun };
  }

  /** Migration: the LUN number must be this one (nothing else to apply). */
  checkState(state: unknown): void {
    this.loadState(state);
  }

  loadState(state: unknown): void {
    const s = state as { lun?: unknown } | null;
    if (!s || typeof s !== 'object') throw new Error(`${this.id}: malformed scsi-hd state`);
    if (s.lun !== undefined && s.lun !== this.lun)
      throw new Error(`${this.id}: migrated as lun=${String(s.lun)}, configured here as lun=${this.lun}`);
  }
}

export function createVirtioScsi(ctx: DeviceContext, id: string, props: Record<string, PropertyValue | undefined>): VirtioScsiPci {
  const scsi = new VirtioScsiDevice(ctx.memory, {
    id,
    numQueues: props['num-queues'] as number,
    eventIdx: props['event-idx'] as boolean,
    log: ctx.log,
  });
  const transport = new VirtioPciDevice(scsi, ctx, { classCode: VIRTIO_SCSI_CLASS_CODE, ioeventfd: props.ioeventfd as boolean });
  transport.stall = stallSettings(props);
  const pci = new VirtioScsiPci(id, scsi, transport);
  const iothread = props.iothread as string | undefined;
  if (iothread !== undefined)
    attachIoThreadPlanes<ScsiInit>({
      ctx,
      id,
      device: scsi,
      transport,
      plane: SCSI_PLANE,
      eventIdx: props['event-idx'] as boolean,
      placements: [{ iothread }],
      // A new worker's plane gets every LUN defined so far (later ones follow as 'device' messages).
      fields: () => ({
        numQueues: scsi.queues.length - REQUEST_QUEUE_BASE,
        luns: [...pci.lunSpecs.values()].map(({ spec, backend }) => ({ ...spec, fds: backend.dupFds() })),
      }),
      ownedFds: (f) => f.luns.flatMap((l) => [l.fds.fd, ...(l.fds.bufferedFd !== undefined ? [l.fds.bufferedFd] : [])]),
    });
  return pci;
}

export function createScsiHd(ctx: DeviceContext, id: string, props: Record<string, PropertyValue | undefined>): ScsiHd {
  // QEMU names the bus "scsi0.0"; the adapter's id alone is accepted too.
  const busId = (props.bus as string).replace(/\.0$/, '');
  const bus = ctx.device(busId);
  if (!(bus instanceof VirtioScsiPci))
    throw new Error(
      `bus=${props.bus as string}: no virtio-scsi adapter with that id (define --device virtio-scsi,id=${busId} before its disks)`,
    );
  const lun = props.lun as number;
  if (bus.scsi.target.lun(lun)) throw new Error(`lun=${lun}: bus ${busId} already has a device on that LUN`);
  let backend: RawFileBackend;
  try {
    backend = new RawFileBackend(props.file as string, props.readonly as boolean, props.cache === 'none', props.aio as AioMode | undefined);
  } catch (e) {
    if (e instanceof BackendOpenError) throw new Error(`file=${e.message}`);
    throw e;
  }
  if (backend.aioFallback) ctx.log(`${id}: ${backend.aioFallback}`);
  const blockSize = props['logical-block-size'] as number;
  if (blockSize !== 512 && blockSize !== 4096) throw new Error(`logical-block-size=${blockSize}: must be 512 or 4096`);
  if (backend.size < blockSize) {
    backend.close();
    throw new Error(`file=${props.file as string} is smaller than one ${blockSize}-byte block`);
  }
  const disk = new ScsiDisk({
    backend,
    readonly: props.readonly as boolean,
    serial: (props.serial as string | undefined) ?? id,
    logicalBlockSize: blockSize,
  });
  bus.scsi.target.attach(lun, disk);
  const spec = {
    lun,
    file: props.file as string,
    readonly: props.readonly as boolean,
    direct: props.cache === 'none',
    aio: backend.aio as AioMode,
    serial: (props.serial as string | undefined) ?? id,
    logicalBlockSize: blockSize,
  };
  bus.lunSpecs.set(lun, { spec, backend });
  // An adapter on an iothread: its plane opens the LUN too (over duplicated descriptors).
  // A dead worker gets nothing (its replacement's init lists this LUN), so no duplicate is left unowned.
  if (bus.scsi.iothread) bus.scsi.sendPlaneMessage(() => ({ attach: { ...spec, fds: backend.dupFds() } }) satisfies ScsiPlaneDeviceMessage);
  return new ScsiHd(id, bus, lun, disk);
}

export const plugin: DevicePlugin = {
  apiVersion: PLUGIN_API_VERSION,
  name: '@tsvmm/virtio-scsi',
  version: '0.1.0',
  deviceTypes: [
    {
      type: 'virtio-scsi',
      description: 'virtio SCSI host adapter (virtio-pci, modern); its disks are scsi-hd devices on bus=ID',
      properties: {
        'num-queues': { type: 'int', description: 'request queues', default: 1, min: 1, max: 16 },
        ioeventfd: { type: 'bool', description: 'queue notifications through KVM ioeventfd (off: through the exit path)', default: true },
        'event-idx': { type: 'bool', description: 'offer VIRTIO_RING_F_EVENT_IDX', default: true },
        iothread: {
          type: 'string',
          description: "run the queues (control, event, requests) and the LUNs' I/O in the worker thread of this iothread",
          pattern: /^[A-Za-z][A-Za-z0-9_.-]*$/,
          patternHint: 'a name starting with a letter',
        },
        ...VIRTIO_PCI_DEBUG_PROPERTIES,
      },
      create: createVirtioScsi,
    },
    {
      type: 'scsi-hd',
      description: 'SCSI disk (SBC) on a virtio-scsi adapter, backed by a raw image file',
      properties: {
        bus: { type: 'string', description: "id of the virtio-scsi adapter (QEMU's ID.0 accepted)", required: true },
        lun: { type: 'int', description: 'logical unit number on target 0', default: 0, min: 0, max: MAX_LUN },
        file: { type: 'path', description: 'raw image file or block device', required: true },
        readonly: { type: 'bool', description: 'write-protect the LUN (DATA PROTECT on writes)', default: false },
        serial: {
          type: 'string',
          description: 'unit serial number, VPD page 0x80 (default: the device id)',
          pattern: /^[\x21-\x7e]{1,36}$/,
          patternHint: '1 to 36 printable ASCII characters without spaces',
        },
        cache: {
          type: 'enum',
          description: 'writeback (page cache) or none (O_DIRECT)',
          values: ['writeback', 'none'],
          default: 'writeback',
        },
        aio: {
          type: 'enum',
          description: "I/O engine: io_uring or threads (libuv's pool); default io_uring where the kernel allows it",
          values: [...AIO_MODES],
        },
        'logical-block-size': { type: 'int', description: 'logical block size in bytes: 512 or 4096', default: 512, min: 512, max: 4096 },
      },
      create: createScsiHd,
    },
  ],
};
