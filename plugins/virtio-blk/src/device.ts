/**
 * The virtio-blk device (virtio 1.2 section 5.2) over a BlockBackend.
 */
import {
  ActivationContext,
  Fields,
  GuestMemory,
  GuestWrite,
  InFlightRequest,
  QueueHandler,
  readConfigImage,
  SharedQueueStats,
  scatter,
  SplitVirtqueue,
  StateError,
  views as guestViews,
  VirtioDevice,
  VirtioDeviceState,
} from '@tsvmm/virtio-core';
import { dupFd, EventFd } from '@tsvmm/kvm-native';
import * as B from './generated/virtio-blk-uapi';
import { BlockBackend } from '@tsvmm/block';
import { BlkRequest, describeBlkChainError, parseRequest, parseSegments, SECTOR_SIZE } from './request';
import type { BlkIoThread, FromWorker, WorkerQueueStats } from './iothread';

/** How the main-thread device reaches its data plane when it runs in an iothread. */
export interface BlkDataPlane {
  thread: BlkIoThread;
  /** Starts a new worker (sent its init) in place of a dead one; called by the guest's reset. */
  restart?: () => BlkIoThread;
  /** The eventfd of the MSI-X vector assigned to a queue (-1: none, route through the main thread). */
  vectorFd(queue: number): number;
  /** The worker's queue indices, counters and interrupt records (and dropInterrupts), in shared memory. */
  stats?: SharedQueueStats;
  /** iothread-vq-mapping: the queues this worker processes (default: all of them). */
  queues?: number[];
}

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

export class VirtioBlkDevice extends VirtioDevice {
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
      'in-flight': this.planes.length ? sum(this.workerStats.map((w) => w?.inFlight ?? 0)) : this.inFlightCount,
      ...(this.workerBlk() ?? this.blk),
    };
  }

  readConfig(offset: number, size: number): number {
    return readConfigImage(this.config, offset, size);
  }

  /** The iothreads' planes: one (iothread=), or one per iothread of iothread-vq-mapping, each with its queues. */
  private planes: BlkDataPlane[] = [];

  /** The first plane (every plane sees the whole device; what differs is the queues each processes). */
  private get dataPlane(): BlkDataPlane | undefined {
    return this.planes[0];
  }

  /** The plane that processes `queue`. */
  private planeOf(queue: number): BlkDataPlane {
    return this.planes.find((p) => !p.queues || p.queues.includes(queue)) ?? this.planes[0];
  }

  /**
   * Hands queue processing to iothreads (one, or several each with its own
   * queues: iothread-vq-mapping); this object keeps config, status and negotiation.
   */
  attachDataPlane(dp: BlkDataPlane | BlkDataPlane[]): void {
    this.planes = Array.isArray(dp) ? dp : [dp];
    this.workerStats = this.planes.map(() => undefined);
    // x-debug-virtqueue-drop reaches the worker, which takes the kicks and sends the interrupts; the
    // queues' counters are the worker's too (kicks this thread still takes are added atomically).
    const stats = this.planes[0].stats;
    if (stats)
      this.queues.forEach((_, i) => {
        this.faults[i] = stats.faults(i, this.faults[i]);
        this.counters[i] = stats.counters(i, this.counters[i]);
      });
  }

  /** The iothread (with iothread-vq-mapping: the iothreads, comma-separated). */
  get iothread(): string | undefined {
    return this.planes.length ? this.planes.map((p) => p.thread.name).join(',') : undefined;
  }

  /** Messages from the iothread of plane `plane` (its index in the mapping). */
  onDataPlaneMessage(m: FromWorker, plane = 0): void {
    this.runGuarded(`iothread message ${m.type}`, () => this.dataPlaneMessage(m, plane));
  }

  /** The device's counters as the workers last reported them, summed (undefined without an iothread or a report). */
  private workerBlk(): BlkCounters | undefined {
    const reports = this.workerStats.filter((w) => w !== undefined);
    if (!reports.length) return undefined;
    const total = { ...reports[0].blk };
    for (const w of reports.slice(1)) for (const k of Object.keys(total) as (keyof BlkCounters)[]) total[k] += w.blk[k];
    return total;
  }

  private dataPlaneMessage(m: FromWorker, plane: number): void {
    if (m.type === 'dead') {
      // The data plane is gone: the device needs a reset, and the guest's reset starts a new worker.
      this.markBroken(`${m.reason}; the guest's reset starts a new iothread`);
      return;
    }
    if (m.type === 'interrupt') this.interrupt?.signalQueue(m.queue);
    else if (m.type === 'broken') this.markBroken(m.reason);
    else if (m.type === 'log') this.log(m.message);
    else if (m.type === 'stats' && m.blk) this.workerStats[plane] = { blk: m.blk, inFlight: m.inFlight, queues: m.queues ?? [] };
  }

  /** Per plane: its worker's last report. */
  private workerStats: ({ blk: BlkCounters; inFlight: number; queues: WorkerQueueStats[] } | undefined)[] = [];

  /**
   * x-query-virtio-queue-status: with an iothread the worker pops and
   * completes requests, so this object's ring indices and chain/interrupt
   * counters stand still; show the worker's, as it last reported them
   * (within 100 ms). `kicks-iothread`: the guest kicks the worker read from
   * the queue's ioeventfd itself (the main thread never saw them).
   */
  override queueName(queue: number): string {
    return `req${queue}`;
  }

  override queueInfo(queue: number): Record<string, unknown> {
    if (!this.dataPlane) return {};
    const dp = this.planeOf(queue);
    const w = this.workerStats[this.planes.indexOf(dp)]?.queues[queue];
    const shared = dp.stats;
    if (shared) {
      // The worker's own values, read from shared memory as they are now.
      const c = shared.counters(queue);
      const ix = shared.indices(queue);
      return {
        'last-avail-idx': ix.lastAvailIdx,
        'shadow-avail-idx': null,
        'used-idx': ix.usedIdx,
        chains: c.chains,
        'interrupts-injected': c.interrupts,
        'interrupts-suppressed': c.suppressed,
        'interrupts-dropped': c.interruptsDropped,
        'kicks-iothread': shared.ownerKicks(queue),
        'data-plane': `iothread ${dp.thread.name}`,
      };
    }
    if (!w) return { 'data-plane': `iothread ${dp.thread.name} (no report yet)` };
    return {
      'last-avail-idx': w.lastAvailIdx,
      'shadow-avail-idx': null,
      'used-idx': w.usedIdx,
      chains: w.chains,
      'interrupts-injected': w.interrupts,
      'interrupts-suppressed': w.suppressed,
      'data-plane': `iothread ${dp.thread.name}`,
    };
  }

  /**
   * The stall detector reads the copy that processes the queue: with an
   * iothread, the worker's next avail index, interrupt count and interrupt
   * record as it last reported them (within 100 ms); the last kick is the
   * later of the worker's (its ioeventfd) and this thread's (exit path,
   * operator, a kick that raced a notifier's removal).
   */
  override stallView(queue: number): ReturnType<VirtioDevice['stallView']> {
    const own = super.stallView(queue);
    if (!this.dataPlane) return own;
    const shared = this.dataPlane.stats;
    if (shared) {
      const k = shared.kickRecord(queue);
      const workerLater = k.lastKickAt !== undefined && (own.lastKickAt === undefined || k.lastKickAt >= own.lastKickAt);
      return {
        lastAvailIdx: shared.indices(queue).lastAvailIdx,
        interrupts: shared.counters(queue).interrupts,
        interrupt: shared.interruptRecord(queue),
        lastKickAt: workerLater ? k.lastKickAt : own.lastKickAt,
        availIdxAtLastKick: workerLater ? k.availIdxAtLastKick : own.availIdxAtLastKick,
      };
    }
    const w = this.workerStats[this.planes.indexOf(this.planeOf(queue))]?.queues[queue];
    return {
      ...own,
      lastAvailIdx: w?.lastAvailIdx ?? this.queues[queue].lastAvailIdx,
      interrupts: w?.interrupts ?? 0,
      interrupt: w?.interrupt ?? {},
    };
  }

  protected override onActivate(): void {
    // This object's own state (features, status, queue layout; nothing in flight yet), not the worker's merged one.
    const virtio = super.saveState();
    for (const dp of this.planes) dp.thread.send({ type: 'activate', virtio, vectorFds: this.queues.map((_, i) => dp.vectorFd(i)) });
  }

  protected override onReset(): void {
    this.planes.forEach((dp, k) => {
      if (!dp.thread.alive && dp.restart) {
        dp.thread = dp.restart();
        this.workerStats[k] = undefined;
        this.log(`${this.id}: iothread ${dp.thread.name} restarted`);
      }
      dp.thread.send({ type: 'reset' });
    });
    // A failed flush stays failed until a reset (the new driver starts from what is in the file).
    this.backend.clearErrors?.();
  }

  /**
   * With an iothread, each queue's handler lives on the worker (onActivate
   * sent it the queues): the transport hands it the queue's ioeventfd
   * (attachNotifier: a duplicate goes to the worker, which watches it and
   * takes guest kicks itself); kicks that still arrive here (exit path,
   * operator, one that raced a notifier's removal, after bus mastering came
   * back) are forwarded.
   */
  protected override activateQueues(ctx: ActivationContext): (QueueHandler | undefined)[] {
    if (!this.dataPlane) return super.activateQueues(ctx);
    return ctx.queues.map((r, i): QueueHandler | undefined => {
      if (!r) return undefined;
      const dp = this.planeOf(i);
      let live = true;
      /** The duplicate of the queue's ioeventfd the worker watches; the worker closes it when told to detach. */
      let lent: number | undefined;
      const detach = () => {
        if (lent === undefined) return;
        // A worker that died never got the message: its duplicate is closed here.
        if (dp.thread.alive) dp.thread.send({ type: 'unwatch-notifier', queue: i });
        else EventFd.adopt(lent).close();
        lent = undefined;
      };
      return {
        placement: { kind: 'iothread', iothread: dp.thread.name },
        kick: () => live && dp.thread.send({ type: 'kick', queue: i }),
        drain: () => this.drain(),
        dispose: () => {
          detach();
          live = false;
        },
        attachNotifier: (fd) => {
          if (!live || !dp.thread.alive) return false;
          detach();
          lent = dupFd(fd);
          dp.thread.send({ type: 'watch-notifier', queue: i, fd: lent });
          return true;
        },
        detachNotifier: detach,
      };
    });
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

  override setDisabled(disabled: boolean): void {
    for (const dp of this.planes) dp.thread.send({ type: 'disabled', disabled });
    super.setDisabled(disabled);
  }

  /**
   * Migration: resolves when no request is in flight and every batched
   * interrupt went out. With an iothread the worker stops taking requests
   * (until resumeDataPlane), finishes its own, and hands over its state.
   */
  async drain(): Promise<void> {
    if (this.planes.length) {
      const rs = await Promise.all(this.planes.map((dp) => dp.thread.request<'drained'>({ type: 'drain' })));
      this.drained = this.mergeDrained(rs);
      return;
    }
    await this.drainRequests();
  }

  /**
   * The device's state from its workers' drains: each queue's indices,
   * held-back used entries and kicks from the worker that owns the queue;
   * the held-back status bytes of all of them.
   */
  private mergeDrained(rs: { virtio: VirtioDeviceState; blk: BlkExtraState }[]): { virtio: VirtioDeviceState; blk: BlkExtraState } {
    if (rs.length === 1) return { virtio: rs[0].virtio, blk: rs[0].blk };
    const owner = (q: number) => this.planes.indexOf(this.planeOf(q));
    const virtio: VirtioDeviceState = { ...rs[0].virtio, queues: rs[0].virtio.queues.map((_, q) => rs[owner(q)].virtio.queues[q]) };
    delete virtio.deferred;
    delete virtio.kickedWhileDisabled;
    const deferred = rs.flatMap((r, k) => (r.virtio.deferred ?? []).filter((d) => owner(d.queue) === k));
    if (deferred.length) virtio.deferred = deferred;
    const kicked = rs.flatMap((r, k) => (r.virtio.kickedWhileDisabled ?? []).filter((q) => owner(q) === k));
    if (kicked.length) virtio.kickedWhileDisabled = kicked.sort((a, b) => a - b);
    const status = new Map<number, number>();
    for (const r of rs) for (const p of r.blk?.pendingStatus ?? []) status.set(p.addr, p.status);
    const blk = status.size ? { pendingStatus: [...status].map(([addr, s]) => ({ addr, status: s })) } : undefined;
    return { virtio, blk };
  }

  /** The worker's state from the last drain, valid until the VM resumes. */
  private drained: { virtio: VirtioDeviceState; blk: BlkExtraState } | undefined;

  /** The VM runs again (after a drain): the worker takes requests again. */
  resumeDataPlane(): void {
    this.drained = undefined;
    for (const dp of this.planes) dp.thread.send({ type: 'resume' });
  }

  /**
   * Migration: features, status and queues as VirtioDevice saves them; with an
   * iothread the ring indices and held-back completions are the worker's (this
   * object never pops or completes a request then), taken by the last drain.
   */
  override saveState(): VirtioDeviceState {
    const s = super.saveState();
    if (!this.dataPlane) return s;
    const w = this.drainedState();
    s.queues = s.queues.map((q, i) => {
      const wq = w.virtio.queues[i];
      return wq && wq.ready ? { ...q, lastAvailIdx: wq.lastAvailIdx, usedIdx: wq.usedIdx } : q;
    });
    delete s.deferred;
    if (w.virtio.deferred?.length) s.deferred = w.virtio.deferred.map((d) => ({ ...d }));
    const kicked = new Set([...(s.kickedWhileDisabled ?? []), ...(w.virtio.kickedWhileDisabled ?? [])]);
    delete s.kickedWhileDisabled;
    if (kicked.size) s.kickedWhileDisabled = [...kicked].sort((a, b) => a - b);
    return s;
  }

  private drainedState(): { virtio: VirtioDeviceState; blk: BlkExtraState } {
    if (!this.drained) throw new Error(`${this.id}: the iothread ${this.iothread} was not drained (its state is not final)`);
    return this.drained;
  }

  /** Restored state for the worker, sent once the transport has restored the vectors. */
  private restoredExtra: BlkExtraState;

  /**
   * Migration: with an iothread, this object takes features, status and queue
   * layout (it keeps negotiation, and kicks go through it), and the worker
   * takes the whole state: it resumes from the stream's indices and owns the
   * held-back completions (so they are not pushed twice).
   */
  override loadState(s: VirtioDeviceState): void {
    this.checkState(s); // the whole state, held-back completions included, before anything is applied
    if (!this.dataPlane) {
      super.loadState(s);
      return;
    }
    const mine: VirtioDeviceState = { ...s };
    delete mine.deferred;
    super.loadState(mine);
    // The restored indices are in shared memory at once, where the monitor reads the workers' (each
    // worker stores the same values when its 'restore' message arrives, before it takes a request).
    this.queues.forEach((q, i) => {
      const view = this.planeOf(i).stats?.indexView(i);
      if (!view) return;
      Atomics.store(view, 0, q.lastAvailIdx);
      Atomics.store(view, 1, q.usedIdx);
    });
    for (const dp of this.planes) {
      // Each worker gets the held-back used entries and kicks of its own queues (so none is pushed twice), and every
      // held-back status byte (each worker writes them all, the same bytes, before it pushes its own used entries).
      const own = (q: number) => this.planeOf(q) === dp;
      const virtio: VirtioDeviceState = { ...s };
      if (this.planes.length > 1) {
        delete virtio.deferred;
        delete virtio.kickedWhileDisabled;
        const deferred = s.deferred?.filter((d) => own(d.queue));
        if (deferred?.length) virtio.deferred = deferred;
        const kicked = s.kickedWhileDisabled?.filter(own);
        if (kicked?.length) virtio.kickedWhileDisabled = kicked;
      }
      dp.thread.send({ type: 'restore', virtio, blk: this.restoredExtra, vectorFds: this.queues.map((_, i) => dp.vectorFd(i)) });
    }
    this.restoredExtra = undefined;
  }

  /** Migration: the fields VirtioDevice.saveState does not hold (status bytes held back while bus mastering is off). */
  saveBlkState(): BlkExtraState {
    if (this.dataPlane) {
      const b = this.drainedState().blk;
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

  /** Migration dirty log of the pages the iothread writes (the main thread's writes go through its own GuestMemory). */
  async dataPlaneDirtyLog(op: 'start' | 'sync' | 'stop'): Promise<number[]> {
    const rs = await Promise.all(this.planes.map((dp) => dp.thread.request<'dirty'>({ type: 'dirty', op })));
    return [...new Set(rs.flatMap((r) => r.pages))];
  }

  async destroy(): Promise<void> {
    this.backend.close();
    await Promise.all(this.planes.map((dp) => dp.thread.close()));
  }
}

const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);

function typeName(t: number): string {
  return (
    ({ [B.VIRTIO_BLK_T_IN]: 'read', [B.VIRTIO_BLK_T_OUT]: 'write', [B.VIRTIO_BLK_T_FLUSH]: 'flush' } as Record<number, string>)[t] ??
    `type ${t}`
  );
}
