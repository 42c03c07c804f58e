/**
 * The main-thread side of a device whose queues run on iothreads, for any
 * device type: this object keeps configuration, status, negotiation and
 * MSI-X; each queue's handler lives on a worker's plane (one plane with
 * `iothread=`, one per iothread with iothread-vq-mapping), which watches the
 * queue's ioeventfd and writes its irqfd itself. Monitor figures come from
 * shared memory (SharedQueueStats); migration drains the planes and takes
 * their exact state; a dead worker marks the device needs-reset and the
 * guest's reset starts a new one.
 */
import { dupFd, EventFd } from '@tsvmm/kvm-native';
import type { ActivationContext, QueueHandler } from './activation';
import { VirtioDevice, VirtioDeviceState } from './device';
import type { IoThreadFromWorker, IoThreadReply, IoThreadToWorker, WorkerPollStats, WorkerQueueStats } from './iothread';
import type { SharedQueueStats } from './shared-stats';

/** What the device needs of its channel to a plane (IoThreadChannel of any device type's messages). */
export interface DataPlaneThread {
  readonly name: string;
  readonly alive: boolean;
  send(m: IoThreadToWorker): void;
  request(m: { type: 'drain' }): Promise<Extract<IoThreadReply, { type: 'drained' }>>;
  request(m: { type: 'dirty'; op: 'start' | 'sync' | 'stop' }): Promise<Extract<IoThreadReply, { type: 'dirty' }>>;
  close(): Promise<void>;
}

/** How the main-thread device reaches one of its planes on an iothread. */
export interface DataPlane {
  thread: DataPlaneThread;
  /** Starts a new worker (sent its init) in place of a dead one; called by the guest's reset. */
  restart?: () => DataPlaneThread;
  /** The eventfd of the MSI-X vector assigned to a queue (-1: none, route through the main thread). */
  vectorFd(queue: number): number;
  /** The worker's queue indices, counters and interrupt records (and dropInterrupts), in shared memory. */
  stats?: SharedQueueStats;
  /** iothread-vq-mapping: the queues this worker processes (default: all of them). */
  queues?: number[];
}

/** A drained plane's state: the generic part and the device type's extra. */
export interface DrainedState {
  virtio: VirtioDeviceState;
  extra: unknown;
}

export abstract class DataPlaneDevice extends VirtioDevice {
  /** The iothreads' planes: one (iothread=), or one per iothread of iothread-vq-mapping, each with its queues. */
  protected planes: DataPlane[] = [];
  /** Per plane: its worker's last report. */
  protected workerStats: ({ counters: unknown; inFlight: number; queues: WorkerQueueStats[]; poll?: WorkerPollStats } | undefined)[] = [];
  /** The workers' state from the last drain, valid until the VM resumes. */
  private drained: DrainedState | undefined;
  /** Restored extra state for the workers (set by the type's load of its extra, sent by loadState). */
  protected restoredExtra: unknown;

  /** The first plane (every plane sees the whole device; what differs is the queues each processes). */
  protected get dataPlane(): DataPlane | undefined {
    return this.planes[0];
  }

  /** The plane that processes `queue`. */
  protected planeOf(queue: number): DataPlane {
    return this.planes.find((p) => !p.queues || p.queues.includes(queue)) ?? this.planes[0];
  }

  /**
   * Hands queue processing to iothreads (one, or several each with its own
   * queues: iothread-vq-mapping); this object keeps config, status and negotiation.
   */
  attachDataPlane(dp: DataPlane | DataPlane[]): void {
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

  /** A device type's own message to every plane (a new LUN, a config write). */
  protected sendToPlanes(m: unknown): void {
    for (const dp of this.planes) dp.thread.send({ type: 'device', m });
  }

  /**
   * A message made for each live plane only: one that carries descriptors
   * the worker will own (a dead worker would never close them; its
   * replacement gets what it needs in its own init).
   */
  protected sendToLivePlanes(make: () => unknown): void {
    for (const dp of this.planes) if (dp.thread.alive) dp.thread.send({ type: 'device', m: make() });
  }

  /** The device type's part of 'activate' and 'restore' (e.g. driver-written config); default none. */
  protected planeDeviceState(): unknown {
    return undefined;
  }

  /** Messages from the iothread of plane `plane` (its index in the mapping). */
  onDataPlaneMessage(m: IoThreadFromWorker, plane = 0): void {
    this.runGuarded(`iothread message ${m.type}`, () => this.dataPlaneMessage(m, plane));
  }

  private dataPlaneMessage(m: IoThreadFromWorker, plane: number): void {
    if (m.type === 'dead') {
      // The data plane is gone: the device needs a reset, and the guest's reset starts a new worker.
      this.markBroken(`${m.reason}; the guest's reset starts a new iothread`);
      return;
    }
    if (m.type === 'interrupt') this.interrupt?.signalQueue(m.queue);
    else if (m.type === 'broken') this.markBroken(m.reason);
    else if (m.type === 'log') this.log(m.message);
    else if (m.type === 'stats' && m.counters !== undefined)
      this.workerStats[plane] = { counters: m.counters, inFlight: m.inFlight, queues: m.queues ?? [], poll: m.poll };
  }

  /** The workers' last reported counters, numeric fields summed (undefined without an iothread or a report). */
  protected workerCounters<C extends object>(): C | undefined {
    const reports = this.workerStats.filter((w) => w !== undefined);
    if (!reports.length) return undefined;
    const total = { ...(reports[0].counters as Record<string, unknown>) };
    for (const w of reports.slice(1))
      for (const [k, v] of Object.entries(w.counters as Record<string, unknown>))
        if (typeof v === 'number' && typeof total[k] === 'number') total[k] = (total[k] as number) + v;
    return total as C;
  }

  /** Requests in flight on the workers, as last reported (undefined without an iothread). */
  protected workerInFlight(): number | undefined {
    if (!this.planes.length) return undefined;
    return this.workerStats.reduce((n, w) => n + (w?.inFlight ?? 0), 0);
  }

  /**
   * x-query-virtio-queue-status: with an iothread the worker pops and
   * completes requests, so this object's ring indices and chain/interrupt
   * counters stand still; show the worker's, read from shared memory as they
   * are now. `kicks-iothread`: the guest kicks the worker read from the
   * queue's ioeventfd itself (the main thread never saw them).
   */
  override queueInfo(queue: number): Record<string, unknown> {
    if (!this.dataPlane) return {};
    const dp = this.planeOf(queue);
    const shared = dp.stats;
    // A polling iothread: its poller's counters and window, as last reported (within 100 ms).
    const p = this.workerStats[this.planes.indexOf(dp)]?.poll;
    const poll = p && { 'iothread-poll': { polls: p.polls, hits: p.hits, timeouts: p.timeouts, 'window-ns': p.windowNs } };
    if (shared) {
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
        ...poll,
      };
    }
    const w = this.workerStats[this.planes.indexOf(dp)]?.queues[queue];
    if (!w) return { 'data-plane': `iothread ${dp.thread.name} (no report yet)` };
    return {
      'last-avail-idx': w.lastAvailIdx,
      'shadow-avail-idx': null,
      'used-idx': w.usedIdx,
      chains: w.chains,
      'interrupts-injected': w.interrupts,
      'interrupts-suppressed': w.suppressed,
      'data-plane': `iothread ${dp.thread.name}`,
      ...poll,
    };
  }

  /**
   * The stall detector reads the copy that processes the queue: with an
   * iothread, the worker's next avail index, interrupt count and interrupt
   * record; the last kick is the later of the worker's (its ioeventfd) and
   * this thread's (exit path, operator, a kick that raced a notifier's removal).
   */
  override stallView(queue: number): ReturnType<VirtioDevice['stallView']> {
    const own = super.stallView(queue);
    if (!this.dataPlane) return own;
    const shared = this.planeOf(queue).stats;
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
    const device = this.planeDeviceState();
    for (const dp of this.planes)
      dp.thread.send({ type: 'activate', virtio, vectorFds: this.queues.map((_, i) => dp.vectorFd(i)), device });
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
      const rs = await Promise.all(this.planes.map((dp) => dp.thread.request({ type: 'drain' })));
      this.drained = this.mergeDrained(rs);
      return;
    }
    await this.drainRequests();
  }

  /** The device type's extra state from several workers' drains (iothread-vq-mapping); default: the first's. */
  protected mergeDrainedExtra(extras: unknown[]): unknown {
    return extras[0];
  }

  /**
   * The device's state from its workers' drains: each queue's indices,
   * held-back used entries and kicks from the worker that owns the queue;
   * the type's extra merged by mergeDrainedExtra.
   */
  private mergeDrained(rs: DrainedState[]): DrainedState {
    if (rs.length === 1) return { virtio: rs[0].virtio, extra: rs[0].extra };
    const owner = (q: number) => this.planes.indexOf(this.planeOf(q));
    const virtio: VirtioDeviceState = { ...rs[0].virtio, queues: rs[0].virtio.queues.map((_, q) => rs[owner(q)].virtio.queues[q]) };
    delete virtio.deferred;
    delete virtio.kickedWhileDisabled;
    const deferred = rs.flatMap((r, k) => (r.virtio.deferred ?? []).filter((d) => owner(d.queue) === k));
    if (deferred.length) virtio.deferred = deferred;
    const kicked = rs.flatMap((r, k) => (r.virtio.kickedWhileDisabled ?? []).filter((q) => owner(q) === k));
    if (kicked.length) virtio.kickedWhileDisabled = kicked.sort((a, b) => a - b);
    return { virtio, extra: this.mergeDrainedExtra(rs.map((r) => r.extra)) };
  }

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

  /** The workers' state from the last drain (throws when the planes were not drained). */
  protected drainedState(): DrainedState {
    if (!this.drained) throw new Error(`${this.id}: the iothread ${this.iothread} was not drained (its state is not final)`);
    return this.drained;
  }

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
    const device = this.planeDeviceState();
    for (const dp of this.planes) {
      // Each worker gets the held-back used entries and kicks of its own queues (so none is pushed twice), and the
      // type's whole extra state (blk: every held-back status byte, the same bytes, before it pushes its used entries).
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
      dp.thread.send({ type: 'restore', virtio, extra: this.restoredExtra, vectorFds: this.queues.map((_, i) => dp.vectorFd(i)), device });
    }
    this.restoredExtra = undefined;
  }

  /** Migration dirty log of the pages the iothreads write (the main thread's writes go through its own GuestMemory). */
  async dataPlaneDirtyLog(op: 'start' | 'sync' | 'stop'): Promise<number[]> {
    const rs = await Promise.all(this.planes.map((dp) => dp.thread.request({ type: 'dirty', op })));
    return [...new Set(rs.flatMap((r) => r.pages))];
  }

  /** Closes the channels to the planes (the worker ends with its last device). */
  protected async closePlanes(): Promise<void> {
    await Promise.all(this.planes.map((dp) => dp.thread.close()));
  }
}
