/**
 * The virtio-blk plugin: `--device virtio-blk,id=ID,file=PATH[,readonly=on][,num-queues=N]
 * [,serial=STR][,ioeventfd=on|off][,cache=writeback|none][,aio=io_uring|threads][,event-idx=on|off]
 * [,iothread=ID | ,iothread-vq-mapping=IO0;IO1 | ,iothread-vq-mapping=IO0:Q+Q;IO1:Q]`.
 */
import {
  attachIoThreadPlanes,
  DeviceContext,
  DevicePlugin,
  PLUGIN_API_VERSION,
  PropertyValue,
  stallSettings,
  VIRTIO_PCI_DEBUG_PROPERTIES,
  VirtioPciDevice,
  VirtioPciPluginDevice,
} from '@tsvmm/pci';
import { AIO_MODES, AioMode, BackendOpenError, RawFileBackend } from '@tsvmm/block';
import { BLK_PLANE, BlkInit } from './iothread';
import { BlkExtraState, VirtioBlkDevice } from './device';
import { parseVqMapping, VqMappingEntry } from './vq-mapping';

export { VirtioBlkDevice, VIRTIO_ID_BLOCK, QUEUE_SIZE } from './device';
export type { BlkCounters, BlkExtraState, VirtioBlkOptions } from './device';
export * as virtioBlkUapi from './generated/virtio-blk-uapi';
export { parseVqMapping } from './vq-mapping';
export type { VqMappingEntry } from './vq-mapping';

/** PCI class: mass storage controller, other. */
export const VIRTIO_BLK_CLASS_CODE = 0x018000;

export class VirtioBlkPci extends VirtioPciPluginDevice {
  readonly type = 'virtio-blk';
  constructor(
    id: string,
    readonly blk: VirtioBlkDevice,
    transport: VirtioPciDevice,
  ) {
    super(id, transport);
  }

  drain(): Promise<void> {
    return this.blk.drain();
  }

  override setRunning(running: boolean): void {
    // The worker first takes requests again, then the transport's notifiers (and a restore's kicks) reach it.
    if (running) this.blk.resumeDataPlane();
    super.setRunning(running);
  }

  async startDirtyLog(): Promise<void> {
    await this.blk.dataPlaneDirtyLog('start');
  }

  syncDirtyLog(): Promise<Iterable<number>> {
    return this.blk.dataPlaneDirtyLog('sync');
  }

  async stopDirtyLog(): Promise<void> {
    await this.blk.dataPlaneDirtyLog('stop');
  }

  protected override saveExtra(): unknown {
    return this.blk.saveBlkState();
  }

  protected override checkExtra(extra: unknown): void {
    this.blk.checkBlkState(extra);
  }

  protected override loadExtra(extra: unknown): void {
    this.blk.loadBlkState(extra as BlkExtraState);
  }

  override async destroy(): Promise<void> {
    await super.destroy();
    await this.blk.destroy();
  }
}

export function createVirtioBlk(ctx: DeviceContext, id: string, props: Record<string, PropertyValue | undefined>): VirtioBlkPci {
  const numQueues = props['num-queues'] as number;
  let mapping: VqMappingEntry[] | undefined;
  if (props['iothread-vq-mapping'] !== undefined) {
    if (props.iothread !== undefined)
      throw new Error(
        `--device virtio-blk,id=${id}: iothread= and iothread-vq-mapping= exclude each other (the mapping names every iothread)`,
      );
    try {
      mapping = parseVqMapping(props['iothread-vq-mapping'] as string, numQueues);
    } catch (e) {
      throw new Error(`--device virtio-blk,id=${id}: iothread-vq-mapping: ${(e as Error).message}`);
    }
  } else if (props.iothread !== undefined) mapping = [{ iothread: props.iothread as string, queues: [] }];
  let backend: RawFileBackend;
  try {
    backend = new RawFileBackend(props.file as string, props.readonly as boolean, props.cache === 'none', props.aio as AioMode | undefined);
  } catch (e) {
    if (e instanceof BackendOpenError) throw new Error(`--device virtio-blk,id=${id}: file=${e.message}`);
    throw e;
  }
  if (backend.aioFallback) ctx.log(`${id}: ${backend.aioFallback}`);
  if (backend.size < 512) {
    backend.close();
    throw new Error(`--device virtio-blk,id=${id}: file=${props.file as string} is smaller than one 512-byte sector`);
  }
  const blk = new VirtioBlkDevice(ctx.memory, {
    id,
    backend,
    numQueues: props['num-queues'] as number,
    serial: (props.serial as string | undefined) ?? id,
    eventIdx: props['event-idx'] as boolean,
    log: ctx.log,
  });
  const transport = new VirtioPciDevice(blk, ctx, { classCode: VIRTIO_BLK_CLASS_CODE, ioeventfd: props.ioeventfd as boolean });
  if (mapping) {
    const mapped = props['iothread-vq-mapping'] !== undefined;
    attachIoThreadPlanes<BlkInit>({
      ctx,
      id,
      device: blk,
      transport,
      plane: BLK_PLANE,
      eventIdx: props['event-idx'] as boolean,
      placements: mapping.map(({ iothread, queues }) => ({ iothread, queues: mapped ? queues : undefined })),
      fields: () => ({
        file: props.file as string,
        fds: backend.dupFds(),
        readonly: props.readonly as boolean,
        direct: props.cache === 'none',
        aio: backend.aio as AioMode,
        numQueues: props['num-queues'] as number,
        serial: (props.serial as string | undefined) ?? id,
      }),
      ownedFds: (f) => (f.fds ? [f.fds.fd, ...(f.fds.bufferedFd !== undefined ? [f.fds.bufferedFd] : [])] : []),
    });
  }
  transport.stall = stallSettings(props);
  return new VirtioBlkPci(id, blk, transport);
}

export const plugin: DevicePlugin = {
  apiVersion: PLUGIN_API_VERSION,
  name: '@tsvmm/virtio-blk',
  version: '0.1.0',
  deviceTypes: [
    {
      type: 'virtio-blk',
      description: 'virtio block device (virtio-pci, modern) backed by a raw image file',
      properties: {
        file: { type: 'path', description: 'raw image file or block device', required: true },
        readonly: { type: 'bool', description: 'offer VIRTIO_BLK_F_RO and refuse writes', default: false },
        'num-queues': { type: 'int', description: 'request queues (VIRTIO_BLK_F_MQ when > 1)', default: 1, min: 1, max: 16 },
        serial: {
          type: 'string',
          description: 'GET_ID string (up to 20 bytes; default: the device id)',
          pattern: /^[\x20-\x7e]{1,20}$/,
          patternHint: '1 to 20 printable ASCII characters',
        },
        ioeventfd: { type: 'bool', description: 'queue notifications through KVM ioeventfd (off: through the exit path)', default: true },
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
        'event-idx': { type: 'bool', description: 'offer VIRTIO_RING_F_EVENT_IDX', default: true },
        iothread: {
          type: 'string',
          description: 'run the data plane (queues and I/O) in a worker thread with this name',
          pattern: /^[A-Za-z][A-Za-z0-9_.-]*$/,
          patternHint: 'a name starting with a letter',
        },
        'iothread-vq-mapping': {
          type: 'string',
          description: 'spread the queues over iothreads: IO0;IO1 (round-robin) or IO0:Q+Q;IO1:Q (each queue once); not with iothread=',
          pattern: /^[A-Za-z0-9_.:;+-]{1,512}$/,
          patternHint: 'iothread ids separated by ;, each optionally followed by :QUEUE+QUEUE...',
        },
        ...VIRTIO_PCI_DEBUG_PROPERTIES,
      },
      create: createVirtioBlk,
    },
  ],
};
