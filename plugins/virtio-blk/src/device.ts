/**
 * The virtio-blk device (virtio 1.2 section 5.2) over a BlockBackend.
 */
import {
  DataPlane,
  DataPlaneDevice,
  Fields,
  GuestMemory,
  GuestWrite,
  InFlightRequest,
  readConfigImage,
  scatter,
  SplitVirtqueue,
  StateError,
  views as guestViews,
} from '@tsvmm/virtio-core';
import * as B from './generated/virtio-blk-uapi';
import { BlockBackend } from '@tsvmm/block';
import { BlkRequest, describeBlkChainError, parseRequest, parseSegments, SECTOR_SIZE } from './request';

/** How the main-thread device reaches its data plane when it runs in an iothread (virtio-core's generic DataPlane). */
export type BlkDataPlane = DataPlane;

export const VIRTIO_ID_BLOCK = 2;
export const QUEUE_SIZE = 256;
/** Largest discard / write-zeroes request, in sectors (and one segment per request). */
const MAX_DISCARD_SECTORS = 0x3fffff;

/** virtio-blk's migration fields beyond VirtioDeviceState: status bytes held back while bus mastering is off. */
export type BlkExtraState = { pendingStatus?: { addr: number; status: number }[] } | undefined;

export interface VirtioBlkOptions {
  id: string;
  backend: BlockBackend;
  numQueues: number;
  serial: string;
  eventIdx?: boolean;
  log?: (m: string) => void;
  /** iothread-vq-mapping, in a worker's plane: the queues this copy processes (the others are another worker's). */
  ownedQueues?: number[];
}

const bit = (n: number) => 1n << BigInt(n);

export interface BlkCounters {
  reads: number;
  writes: number;
  flushes: number;
  discards: number;
  writeZeroes: number;
  getId: number;
  unsupported: number;
  ioErrors: number;
  bytesRead: number;
  bytesWritten: number;
}

export class VirtioBlkDevice extends DataPlaneDevice {
  readonly backend: BlockBackend;
  readonly capacity: number; // in 512-byte sectors
  readonly serial: string;
  readonly blk: BlkCounters = {
    reads: 0,
    writes: 0,
    flushes: 0,
    discards: 0,
    writeZeroes: 0,
    getId: 0,
    unsupported: 0,
    ioErrors: 0,
    bytesRead: 0,
    bytesWritten: 0,
  };
  private readonly config = new Uint8Array(B.SIZEOF_virtio_blk_config);
  private readonly ownedQueues: Set<number> | undefined;

  constructor(memory: GuestMemory, opts: VirtioBlkOptions) {
    let features = bit(B.VIRTIO_BLK_F_SEG_MAX) | bit(B.VIRTIO_BLK_F_BLK_SIZE) | bit(B.VIRTIO_BLK_F_FLUSH) | bit(B.VIRTIO_BLK_F_TOPOLOGY);
    if (opts.backend.readonly) features |= bit(B.VIRTIO_BLK_F_RO);
    else features |= bit(B.VIRTIO_BLK_F_DISCARD) | bit(B.VIRTIO_BLK_F_WRITE_ZEROES);
    if (opts.numQueues > 1) features |= bit(B.VIRTIO_BLK_F_MQ);
    super(memory, {
      id: opts.id,
      deviceId: VIRTIO_ID_BLOCK,
      numQueues: opts.numQueues,
      queueMaxSize: QUEUE_SIZE,
      features,
      eventIdx: opts.eventIdx,
      log: opts.log,
    });
    this.backend = opts.backend;
    this.serial = opts.serial;
    this.ownedQueues = opts.ownedQueues && new Set(opts.ownedQueues);
    this.capacity = Math.floor(opts.backend.size / SECTOR_SIZE);
    const dv = new DataView(this.config.buffer);
    dv.setBigUint64(B.OFF_virtio_blk_config_capacity, BigInt(this.capacity), true);
    dv.setUint32(B.OFF_virtio_blk_config_seg_max, QUEUE_SIZE - 2, true);
    dv.setUint32(B.OFF_virtio_blk_config_blk_size, SECTOR_SIZE, true);
    this.config[B.OFF_virtio_blk_config_physical_block_exp] = 3; // 4 KiB physical blocks
    dv.setUint16(B.OFF_virtio_blk_config_min_io_size, 1, true);
    dv.setUint32(B.OFF_virtio_blk_config_opt_io_size, 0, true);
    dv.setUint16(B.OFF_virtio_blk_config_num_queues, opts.numQueues, true);
    dv.setUint32(B.OFF_virtio_blk_config_max_discard_sectors, MAX_DISCARD_SECTORS, true);
    dv.setUint32(B.OFF_virtio_blk_config_max_discard_seg, 1, true);
    dv.setUint32(B.OFF_virtio_blk_config_discard_sector_alignment, 8, true);
    dv.setUint32(B.OFF_virtio_blk_config_max_write_zeroes_sectors, MAX_DISCARD_SECTORS, true);
    dv.setUint32(B.OFF_virtio_blk_config_max_write_zeroes_seg, 1, true);
    this.config[B.OFF_virtio_blk_config_write_zeroes_may_unmap] = 1;
  }

  override deviceInfo(): Record<string, unknown> {
    return {
      capacity: this.capacity,
      readonly: this.backend.readonly,
      serial: this.serial,
      iothread: this.iothread ?? null,
      aio: this.backend.aio ?? null,
      'write-cache': this.driverOk ? (this.writeCache ? 'writeback' : 'writethrough') : null,
      // With an iothread: the worker's counters as it last reported them (within 100 ms; exact after a drain).
      'in-flight': this.workerInFlight() ?? this.inFlightCount,
      ...(this.workerCounters<BlkCounters>() ?? this.blk),
    };
  }

  readConfig(offset: number, size: number): number {
    return readConfigImage(this.config, offset, size);
  }

  override queueName(queue: number): string {
    return `req${queue}`;
  }

  protected override onReset(): void {
    super.onReset(); // the iothreads' planes (a dead worker is restarted)
    // A failed flush stays failed until a reset (the new driver starts from what is in the file).
    this.backend.clearErrors?.();
  }

  protected processQueue(q: SplitVirtqueue): void {
    // iothread-vq-mapping: another worker's queue (its kicks go there; this copy never pops from it).
    if (this.ownedQueues && !this.ownedQueues.has(q.index)) return;
    do {
      q.disableNotification();
      for (let taken = this.popRequest(q); taken; taken = this.popRequest(q)) {
        const parsed = parseRequest(this.memory, taken.chain);
        if ('error' in parsed) {
          this.abandonRequest(taken.request);
          this.markBroken(describeBlkChainError(parsed.error));
          return;
        }
        this.submit(taken.request, parsed.request);
      }
    } while (this.canProcess && q.enableNotification());
  }

  private submit(req: InFlightRequest, r: BlkRequest): void {
    // The status byte goes with the used entry (held back with it while bus mastering is off); a
    // completion from before a reset is dropped by the completion path.
    const done = (status: number, written: number) => {
      const write: GuestWrite = { bufs: [{ addr: r.statusAddr, len: 1 }], bytes: Uint8Array.of(status) };
      this.completeRequest(req, written + 1, write);
    };
    const fail = (e: unknown) => {
      this.blk.ioErrors++;
      // Rate-limited: a guest writing on into a full host disk gets one error per request.
      this.guestLog.log(
        'host-io-error',
        () => `${this.id}: host I/O error on ${typeName(r.type)} at sector ${r.sector}: ${(e as Error).message}`,
      );
      done(B.VIRTIO_BLK_S_IOERR, 0);
    };
    const async = (p: Promise<number>) => {
      // The completion runs inside the device fault boundary (a throw there breaks this device only).
      this.guardPromise(
        `${typeName(r.type)} completion`,
        p
          .then(
            (written) => done(B.VIRTIO_BLK_S_OK, written),
            (e) => fail(e),
          )
          .finally(() => this.abandonRequest(req)),
      );
    };
    switch (r.type) {
      case B.VIRTIO_BLK_T_IN:
      case B.VIRTIO_BLK_T_OUT: {
        const isRead = r.type === B.VIRTIO_BLK_T_IN;
        if (!isRead && this.backend.readonly) return done(B.VIRTIO_BLK_S_IOERR, 0);
        if (r.dataLength % SECTOR_SIZE || !this.inRange(r.sector, r.dataLength / SECTOR_SIZE)) return done(B.VIRTIO_BLK_S_IOERR, 0);
        const views = guestViews(this.memory, r.data); // a buffer across a RAM split is two views
        const offset = r.sector * SECTOR_SIZE;
        if (isRead) {
          this.blk.reads++;
          // The backend fills every view or rejects (bytes past the end of the file read as zeros).
          async(
            this.backend.readv(views, offset).then(() => {
              // The data landed now: while migration tracks this memory, its pages count again (a
              // dirty log cleared since the views were handed out must see them).
              for (const d of r.data) this.memory.noteWritten(d.addr, d.len);
              this.blk.bytesRead += r.dataLength;
              return r.dataLength;
            }),
          );
        } else {
          this.blk.writes++;
          // All of it written (write-through: and synced), or IOERR; never OK for a short write.
          async(
            this.backend.writev(views, offset, !this.writeCache).then(() => {
              this.blk.bytesWritten += r.dataLength;
              return 0;
            }),
          );
        }
        return;
      }
      case B.VIRTIO_BLK_T_FLUSH:
        this.blk.flushes++;
        return async(this.backend.flush().then(() => 0));
      case B.VIRTIO_BLK_T_GET_ID: {
        this.blk.getId++;
        const id = Buffer.from(this.serial, 'latin1').subarray(0, B.VIRTIO_BLK_ID_BYTES);
        const left = Math.min(id.length + 1 <= B.VIRTIO_BLK_ID_BYTES ? id.length + 1 : id.length, r.dataLength);
        const bytes = Buffer.alloc(left);
        id.copy(bytes, 0, 0, Math.min(id.length, left));
        return done(B.VIRTIO_BLK_S_OK, scatter(this.memory, r.data, bytes));
      }
      case B.VIRTIO_BLK_T_DISCARD:
      case B.VIRTIO_BLK_T_WRITE_ZEROES: {
        const discard = r.type === B.VIRTIO_BLK_T_DISCARD;
        const feature = discard ? B.VIRTIO_BLK_F_DISCARD : B.VIRTIO_BLK_F_WRITE_ZEROES;
        if (!this.hasFeature(feature)) return this.unsupported(done);
        if (this.backend.readonly) return done(B.VIRTIO_BLK_S_IOERR, 0);
        const segs = parseSegments(this.memory, r);
        if (!segs || segs.length !== 1) return done(B.VIRTIO_BLK_S_UNSUPP, 0);
        const s = segs[0];
        const unmap = (s.flags & B.VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) !== 0;
        if ((discard && s.flags !== 0) || (!discard && s.flags & ~B.VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP))
          return done(B.VIRTIO_BLK_S_UNSUPP, 0);
        if (s.sectors > MAX_DISCARD_SECTORS || !this.inRange(s.sector, s.sectors)) return done(B.VIRTIO_BLK_S_IOERR, 0);
        if (discard) this.blk.discards++;
        else this.blk.writeZeroes++;
        const off = s.sector * SECTOR_SIZE;
        const len = s.sectors * SECTOR_SIZE;
        return async(
          (discard ? this.backend.discard(off, len) : this.backend.writeZeroes(off, len, unmap, !this.writeCache)).then(() => 0),
        );
      }
      default:
        return this.unsupported(done);
    }
  }

  /**
   * Write-back caching only for a driver that can flush (virtio 1.2 5.2.6.2;
   * VIRTIO_BLK_F_CONFIG_WCE is not offered): without VIRTIO_BLK_F_FLUSH every
   * write is synced before it completes.
   */
  get writeCache(): boolean {
    return this.hasFeature(B.VIRTIO_BLK_F_FLUSH);
  }

  private unsupported(done: (status: number, written: number) => void): void {
    this.blk.unsupported++;
    done(B.VIRTIO_BLK_S_UNSUPP, 0);
  }

  private inRange(sector: number, sectors: number): boolean {
    return Number.isSafeInteger(sector) && sector >= 0 && sector + sectors <= this.capacity;
  }

  /** Held-back status bytes of several workers (iothread-vq-mapping): every worker's, each address once. */
  protected override mergeDrainedExtra(extras: unknown[]): unknown {
    const status = new Map<number, number>();
    for (const e of extras as BlkExtraState[]) for (const p of e?.pendingStatus ?? []) status.set(p.addr, p.status);
    return status.size ? { pendingStatus: [...status].map(([addr, st]) => ({ addr, status: st })) } : undefined;
  }

  /** Migration: the fields VirtioDevice.saveState does not hold (status bytes held back while bus mastering is off). */
  saveBlkState(): BlkExtraState {
    if (this.dataPlane) {
      const b = this.drainedState().extra as BlkExtraState;
      return b?.pendingStatus?.length ? { pendingStatus: b.pendingStatus.map((p) => ({ ...p })) } : undefined;
    }
    if (this.inFlightCount > 0) throw new Error(`${this.id}: ${this.inFlightCount} requests still in flight (not drained)`);
    const held = this.heldWrites;
    return held.length ? { pendingStatus: held.map((w) => ({ addr: w.bufs[0].addr, status: w.bytes[0] })) } : undefined;
  }

  /**
   * Migration: parses the extra state (StateError naming the field): at most
   * one held-back status byte per descriptor of every queue, each a u8 at an
   * address in guest RAM.
   */
  checkBlkState(raw: unknown): BlkExtraState {
    if (raw === undefined || raw === null) return undefined;
    const f = new Fields(raw, '');
    const max = this.queues.reduce((n, q) => n + q.maxSize, 0);
    const pendingStatus = f.optional('pendingStatus', (g, k) =>
      g.array(k, max, (v, p) => {
        const e = new Fields(v, p);
        const addr = e.uint('addr');
        if (!this.memory.checkRange(addr, 1)) throw new StateError(e.at('addr'), `0x${addr.toString(16)} is not guest RAM`);
        return { addr, status: e.u8('status') };
      }),
    );
    return pendingStatus ? { pendingStatus } : undefined;
  }

  /** Called before loadState (VirtioPciPluginDevice.loadState restores the extra first). */
  loadBlkState(raw: BlkExtraState): void {
    const s = this.checkBlkState(raw);
    this.setHeldWrites([]);
    if (this.dataPlane) {
      this.restoredExtra = s?.pendingStatus ? { pendingStatus: s.pendingStatus.map((p) => ({ ...p })) } : undefined;
      return;
    }
    this.setHeldWrites((s?.pendingStatus ?? []).map((p) => ({ bufs: [{ addr: p.addr, len: 1 }], bytes: Uint8Array.of(p.status) })));
  }

  async destroy(): Promise<void> {
    this.backend.close();
    await this.closePlanes();
  }
}

function typeName(t: number): string {
  return (
    ({ [B.VIRTIO_BLK_T_IN]: 'read', [B.VIRTIO_BLK_T_OUT]: 'write', [B.VIRTIO_BLK_T_FLUSH]: 'flush' } as Record<number, string>)[t] ??
    `type ${t}`
  );
}
