/**
 * The iothread's side of a device's data plane, for any device type, apart
 * from the worker plumbing (so unit tests can drive it in-process): a copy of
 * the device over the worker's own mapping of guest RAM, loaded from the
 * transport's state, and the messages the main thread sends it.
 *
 * Guest kicks: while the transport has a queue's ioeventfd registered, the
 * plane watches a duplicate of it ('watch-notifier') and takes the kicks on
 * this thread through VirtioDevice.notify, the same rules as in-process
 * (counted, x-debug-virtqueue-drop kicks= spent, recorded for the stall
 * detector in shared memory, held while bus mastering is off or drained).
 * Interrupts: the plane writes the queue's MSI-X irqfd itself.
 *
 * Migration (docs/migration.md): `drain` stops the plane taking new requests
 * (kicks are remembered), waits for what is in flight and its interrupts, and
 * answers with the device's exact state (ring indices, held-back used entries
 * and the type's extra state). `resume` takes requests again and processes
 * the queues kicked meanwhile. `restore` loads a state from the stream on the
 * destination. `dirty` start/sync/stop logs the guest pages the worker writes.
 *
 * Polling (the iothread's poll-max-ns, poll.ts): after a kick or a
 * completion the plane polls its queues and its back-ends' completion rings
 * for up to the adaptive window, with the driver's notifications suppressed
 * meanwhile. A poll stops as soon as the main thread has sent a message not
 * handled yet (init's `sent` counter), so a drain, bus mastering off or reset
 * is never held behind a poll window.
 */
import { EventFd } from '@tsvmm/kvm-native';
import type { VirtioDevice } from './device';
import type { GuestMemory } from './guest-memory';
import type { IoThreadFromWorker, IoThreadInit, IoThreadToWorker, WorkerQueueStats } from './iothread';
import { QueuePoller } from './poll';
import { SharedQueueStats } from './shared-stats';

const PAGE = 4096;

/** What a device type adds to the generic plane: its state beyond VirtioDeviceState, its counters, its backends. */
export interface PlaneHooks {
  /** Migration, after a drain: the type's extra state (held-back status bytes, LUN states). */
  saveExtra(): unknown;
  /** Migration destination: the type's extra state from the stream. */
  loadExtra(extra: unknown): void;
  /** The type's counters for the monitor (x-query-virtio-status device-info), JSON-able. */
  counters(): unknown;
  /** The `device` part of 'activate' / 'restore', and 'device' messages (a new LUN, a config write...). */
  device?(m: unknown): void;
  /** After 'activate' or 'restore' loaded the device's state: what the type starts itself (virtio-net: TAP offloads, RX). */
  loaded?(): void;
  /** The plane closes: its backends. */
  close(): void;
  /** Polling: reaps the back-ends' completions that are ready now, without waiting or a system call where it can; returns how many. */
  reapCompletions?(): number;
}

/** What the worker passes a plane factory (one per device type, registered with runIoThreadWorker). */
export type PlaneFactory = (
  memory: GuestMemory,
  init: IoThreadInit,
  post: (m: IoThreadFromWorker) => void,
  /** Writes an MSI-X eventfd; throws when it is gone. */
  eventfdWrite: (fd: number) => void,
) => WorkerPlane;

export class WorkerPlane<D extends VirtioDevice = VirtioDevice> {
  private vectorFds: number[] = [];
  /** Set by `drain`, cleared by `resume`: no new request is taken meanwhile. */
  private stopped = false;
  private readonly kickedWhileStopped = new Set<number>();
  private logging = false;
  /** Per queue: the duplicate of its ioeventfd this thread watches ('watch-notifier'). */
  private readonly notifiers = new Map<number, EventFd>();
  private readonly statsTimer: ReturnType<typeof setInterval>;
  private lastStats = '';
  private readonly shared: SharedQueueStats | undefined;
  private readonly owned: (queue: number) => boolean;
  /** The iothread's adaptive poll (undefined: poll-max-ns=0). */
  readonly poller: QueuePoller | undefined;
  /** Messages the main thread sent this plane (init's `sent`), against those handled here (init counts as one). */
  private readonly sent: Int32Array | undefined;
  private handled = 1;

  constructor(
    readonly dev: D,
    init: IoThreadInit,
    private readonly hooks: PlaneHooks,
    private readonly post: (m: IoThreadFromWorker) => void,
    /** Writes an MSI-X eventfd; throws when it is gone. */
    eventfdWrite: (fd: number) => void,
  ) {
    // The queues' figures in shared memory: the main thread reads this thread's exact values there.
    const shared = init.stats ? new SharedQueueStats(init.stats, dev.queues.length) : undefined;
    this.shared = shared;
    // iothread-vq-mapping: this plane's queues only (another worker owns the others' slots).
    this.owned = (q) => !init.queues || init.queues.includes(q);
    dev.queues.forEach((q, i) => {
      if (!shared || !this.owned(i)) return;
      q.shareIndices(shared.indexView(i));
      // Counts and fault injection as the main thread has them (a restarted worker goes on from there).
      dev.counters[i] = shared.counters(i);
      dev.faults[i] = shared.faults(i);
    });
    // Each interrupt decision (sent, dropped, suppressed) and each kick is published as soon as the record has it.
    dev.interruptRecorded = (q) => {
      if (this.owned(q)) this.shared?.setInterruptRecord(q, dev.queues[q].stall.interrupt);
      this.poller?.activity(); // a completion was just handled: poll for the next
    };
    dev.kickRecorded = (q) =>
      this.owned(q) && this.shared?.setKickRecord(q, dev.queues[q].stall.lastKickAt, dev.queues[q].stall.availIdxAtLastKick);
    // A migration drain holds kicks (counted and recorded already) until 'resume'.
    dev.kickHeld = (q) => {
      if (!this.stopped) return false;
      this.kickedWhileStopped.add(q);
      return true;
    };
    dev.interrupt = {
      signalQueue: (q) => {
        const fd = this.vectorFds[q];
        if (fd !== undefined && fd >= 0) {
          try {
            eventfdWrite(fd);
            return;
          } catch {
            // the vector went away: let the main thread route it
          }
        }
        post({ type: 'interrupt', queue: q });
      },
      signalConfig: () => post({ type: 'broken', reason: dev.brokenReason ?? 'device error' }),
    };
    dev.setDisabled(true);
    this.sent = init.sent ? new Int32Array(init.sent) : undefined;
    if (init.poll && init.poll.maxNs > 0) {
      const queues = dev.queues.filter((_, i) => this.owned(i));
      this.poller = new QueuePoller(init.poll, {
        canPoll: () => !this.stopped && dev.canProcess && (!this.sent || Atomics.load(this.sent, 0) === this.handled),
        queues: () => queues,
        reapCompletions: () => hooks.reapCompletions?.() ?? 0,
        memoryAccess: () => !dev.disabled,
        process: (q) => dev.pollQueue(q.index),
        fault: (e) => dev.deviceFault('iothread poll', e),
      });
    }
    // The counters for the monitor (x-query-virtio-status device-info): sent when they changed, at most every 100 ms.
    this.statsTimer = setInterval(() => this.postStatsIfChanged(), 100);
    this.statsTimer.unref?.();
  }

  /** Each queue's interrupt record (the stall detector's interrupt side) into shared memory. */
  private publishInterruptRecords(): void {
    if (this.shared) this.dev.queues.forEach((q, i) => this.owned(i) && this.shared!.setInterruptRecord(i, q.stall.interrupt));
  }

  private postStatsIfChanged(): void {
    this.publishInterruptRecords(); // also those changed without an interrupt sent (suppressed, dropped, reset)
    const m = this.stats();
    const s = JSON.stringify(m);
    if (s === this.lastStats) return;
    this.lastStats = s;
    this.post(m);
  }

  /** The device's counters and each queue's indices, as the worker has them. */
  private stats(): Extract<IoThreadFromWorker, { type: 'stats' }> {
    const d = this.dev;
    const queues: WorkerQueueStats[] = d.queues.map((q, i) => ({
      lastAvailIdx: q.lastAvailIdx,
      usedIdx: q.usedIdx,
      chains: d.counters[i].chains,
      interrupts: d.counters[i].interrupts,
      suppressed: d.counters[i].suppressed,
      interrupt: { lastInterruptAt: q.stall.interrupt.lastInterruptAt, owed: q.stall.interrupt.owed && { ...q.stall.interrupt.owed } },
    }));
    const p = this.poller;
    const poll = p ? { ...p.counters, windowNs: p.window.ns } : undefined;
    return { type: 'stats', counters: this.hooks.counters(), inFlight: d.inFlightCount, queues, poll };
  }

  handle(m: IoThreadToWorker): void {
    if (m.type !== 'init') this.handled++;
    // Notifications the poll has off go back on before the plane drains, resets or closes (after bus mastering
    // went off the device writes nothing: the next activation or poll turns them on).
    if (m.type === 'drain' || m.type === 'reset' || m.type === 'close' || m.type === 'activate' || m.type === 'restore')
      this.poller?.release();
    const d = this.dev;
    switch (m.type) {
      case 'init':
        return;
      case 'activate':
        // The transport's negotiated state, loaded as a migration destination loads one (checked, then applied): no replay.
        d.reset();
        this.vectorFds = m.vectorFds;
        if (m.device !== undefined) this.hooks.device?.(m.device);
        d.loadState(m.virtio);
        this.hooks.loaded?.();
        this.postStatsIfChanged(); // the loaded state's figures at once (the monitor, virtio-net's MAC in config space)
        return;
      case 'restore': {
        // The destination: the source's exact state (the main thread loaded the same into its own copy).
        d.reset();
        this.vectorFds = m.vectorFds;
        if (m.device !== undefined) this.hooks.device?.(m.device);
        d.loadState(m.virtio);
        this.hooks.loadExtra(m.extra);
        if (m.virtio.broken) d.brokenReason = 'broken on the migration source';
        this.hooks.loaded?.();
        this.postStatsIfChanged(); // the loaded state's figures at once (the monitor, virtio-net's MAC in config space)
        return;
      }
      case 'kick':
        d.notify(m.queue, 'debug'); // already counted and recorded on the main thread
        this.poller?.activity();
        return;
      case 'watch-notifier': {
        this.unwatchNotifier(m.queue);
        const efd = EventFd.adopt(m.fd);
        this.notifiers.set(m.queue, efd);
        efd.watch(() => this.guestKick(m.queue));
        return;
      }
      case 'unwatch-notifier':
        this.unwatchNotifier(m.queue);
        return;
      case 'disabled':
        d.setDisabled(m.disabled);
        if (!m.disabled) this.poller?.activity(); // buffers a poll found while bus mastering was off
        return;
      case 'reset':
        for (const q of [...this.notifiers.keys()]) this.unwatchNotifier(q);
        d.reset();
        this.kickedWhileStopped.clear();
        this.post({ type: 'reset-done' });
        return;
      case 'device':
        this.hooks.device?.(m.m);
        return;
      case 'drain':
        this.stopped = true;
        d.drainRequests()
          .then(() => {
            this.postStatsIfChanged(); // ahead of the answer: the main thread's counters are final too
            this.post({ type: 'drained', seq: m.seq, virtio: d.saveState(), extra: this.hooks.saveExtra() });
          })
          .catch((e: Error) => this.post({ type: 'failed', seq: m.seq, error: e.message }));
        return;
      case 'resume': {
        this.stopped = false;
        const kicked = [...this.kickedWhileStopped];
        this.kickedWhileStopped.clear();
        for (const q of kicked) d.notify(q, 'debug');
        this.poller?.activity(); // buffers a poll found while drained
        return;
      }
      case 'dirty':
        try {
          this.post({ type: 'dirty', seq: m.seq, pages: this.dirty(m.op) });
        } catch (e) {
          this.post({ type: 'failed', seq: m.seq, error: (e as Error).message });
        }
        return;
      case 'stats':
        this.post(this.stats());
        return;
      case 'close':
        for (const q of [...this.notifiers.keys()]) this.unwatchNotifier(q);
        clearInterval(this.statsTimer);
        this.poller?.close();
        this.hooks.close();
        return;
    }
  }

  /** A guest kick read from the queue's ioeventfd on this thread: notify's rules, inside the fault boundary. */
  private guestKick(queue: number): void {
    this.shared?.noteOwnerKick(queue);
    const dropped = this.dev.counters[queue].kicksDropped;
    this.dev.runGuarded(`ioeventfd of queue ${queue}`, () => this.dev.notify(queue, 'ioeventfd'));
    // A kick x-debug-virtqueue-drop took is lost: it does not start a poll either (an idle device then strands the buffer).
    if (this.dev.counters[queue].kicksDropped === dropped) this.poller?.activity();
  }

  private unwatchNotifier(queue: number): void {
    const efd = this.notifiers.get(queue);
    if (!efd) return;
    this.notifiers.delete(queue);
    efd.close(); // unwatches first
  }

  /**
   * The dirty log: GuestMemory tracking of this plane's memory (every view
   * handed out, every byte written; a read's buffers again when its data
   * landed), plus the used rings of the active queues (written through views
   * made at activation, which tracking does not see).
   */
  private dirty(op: 'start' | 'sync' | 'stop'): number[] {
    const mem = this.dev.memory;
    if (op === 'start') {
      mem.startTracking();
      this.logging = true;
      return [];
    }
    if (!this.logging) return [];
    const pages = mem.stopTracking();
    if (op === 'stop') {
      this.logging = false;
      return [];
    }
    mem.startTracking();
    for (const q of this.dev.queues) if (q.active) for (const p of q.usedRingPages(PAGE)) pages.add(p);
    return [...pages];
  }
}
