/**
 * Adaptive polling for a data plane on an iothread (`--object
 * iothread,poll-max-ns=N,poll-grow=G,poll-shrink=S`).
 *
 * Every request otherwise pays thread wake-ups: the guest's kick wakes the
 * worker through its ioeventfd, and each io_uring completion through an
 * eventfd. After the plane handled a kick or a completion, the poller looks
 * at its queues' avail indices and its back-end's completion ring in a busy
 * loop for up to the current window. While it looks, the driver is asked
 * not to notify (SplitVirtqueue.suppressNotification), so a guest that
 * publishes within the window takes no notify exit at all. Before the plane
 * goes back to sleep on its eventfds, notifications are turned on again and
 * the rings re-checked (virtio 1.2 2.7.10: a buffer published between the
 * last look and the re-enable would otherwise wait for a kick that never
 * comes).
 *
 * The window adapts as the settings say: a sleep that ended within
 * poll-max-ns of the poll's start means a longer poll would have caught the
 * work, so the window grows (times poll-grow, from POLL_START_NS); a sleep
 * longer than poll-max-ns shrinks it (divided by poll-shrink, or back to 0
 * with poll-shrink=0). An idle guest therefore costs one window per wake-up
 * and then none: the poller never runs without a kick or a completion first.
 */
import type { SplitVirtqueue } from './virtqueue';

export interface PollSettings {
  /** Longest poll window in nanoseconds; 0: no polling. */
  maxNs: number;
  /** Factor the window grows by; 0: the default (2). */
  grow: number;
  /** Divisor the window shrinks by; 0: back to 0 at once. */
  shrink: number;
}

/**
 * poll-max-ns when an iothread does not say: off. Measured on the 2-CPU host
 * this project runs on, polling lost (docs/ARCHITECTURE.md "Polling"): the
 * spinning worker takes the CPU the guest's vCPU needs. QEMU's 32768 is
 * worth setting where the iothread has a core of its own.
 */
export const DEFAULT_POLL_MAX_NS = 0;
/** Largest poll-max-ns accepted (1 s: a longer busy loop only burns a core). */
export const POLL_MAX_NS_LIMIT = 1_000_000_000;
/** Largest poll-grow / poll-shrink accepted. */
export const POLL_FACTOR_LIMIT = 65536;
/** The first window after polling was off (and the smallest a shrink leaves before 0). */
export const POLL_START_NS = 4096;
export const DEFAULT_POLL_GROW = 2;

export const DEFAULT_POLL_SETTINGS: PollSettings = { maxNs: DEFAULT_POLL_MAX_NS, grow: 0, shrink: 0 };

/** The adaptive window (nanoseconds). */
export class PollWindow {
  ns = 0;
  constructor(readonly settings: PollSettings) {}

  /**
   * The plane slept after a poll that found nothing; `idleNs` is the time
   * from that poll's start to the kick or completion that woke it.
   */
  woke(idleNs: number): void {
    const { maxNs, grow, shrink } = this.settings;
    if (maxNs <= 0) {
      this.ns = 0;
      return;
    }
    if (idleNs <= this.ns) return; // the window would have caught it: timing noise, no change
    if (idleNs > maxNs) {
      // Idle longer than any poll allowed: polling only burnt CPU.
      const next = shrink === 0 ? 0 : Math.floor(this.ns / shrink);
      this.ns = next < POLL_START_NS ? 0 : next;
    } else if (this.ns < maxNs) {
      this.ns = Math.min(maxNs, this.ns === 0 ? POLL_START_NS : this.ns * (grow || DEFAULT_POLL_GROW));
    }
  }
}

/** What the poller polls: one data plane. */
export interface PollTarget {
  /** Whether the plane may take requests now (device live, not drained, bus mastering on, no control message waiting). */
  canPoll(): boolean;
  /** The queues the plane owns (inactive ones are skipped). */
  queues(): readonly SplitVirtqueue[];
  /** Takes what the back-end completed by now without blocking (its callbacks run); returns how many. */
  reapCompletions?(): number;
  /** Whether the device may write guest memory now (false while bus mastering is off: suppression then stays until it is back). */
  memoryAccess?(): boolean;
  /** Buffers the poll found on `queue`: process them as a kick would (not counted as a kick: none was needed). */
  process(queue: SplitVirtqueue): void;
  /** An exception out of a poll (a VMM bug): the plane's fault boundary. */
  fault(e: unknown): void;
}

/** Monotonic nanoseconds. */
export function monotonicNs(): number {
  return performance.now() * 1e6;
}

export interface PollCounters {
  /** Poll windows started. */
  polls: number;
  /** Polls that found buffers or completions. */
  hits: number;
  /** Polls that ran out of window (the plane slept after them). */
  timeouts: number;
}

export class QueuePoller {
  readonly window: PollWindow;
  readonly counters: PollCounters = { polls: 0, hits: 0, timeouts: 0 };
  private scheduled = false;
  /** Start of the poll that timed out, while the plane sleeps. */
  private sleepingSince: number | undefined;
  private closed = false;
  /** The queues whose notifications this poller has off (between a poll that found work and the next). */
  private suppressed: SplitVirtqueue[] | undefined;

  constructor(
    readonly settings: PollSettings,
    private readonly target: PollTarget,
    private readonly now: () => number = monotonicNs,
  ) {
    this.window = new PollWindow(settings);
  }

  get enabled(): boolean {
    return this.settings.maxNs > 0 && !this.closed;
  }

  /** A kick or a completion woke the plane: poll once the work of this turn is done. */
  activity(): void {
    if (!this.enabled) return;
    const now = this.now();
    if (this.sleepingSince !== undefined) {
      this.window.woke(now - this.sleepingSince);
      this.sleepingSince = undefined;
    }
    // No window yet (and no suppression to undo): nothing to poll, the plane sleeps on its eventfds from now
    // on, and the next wake-up sizes the window. (A poll of zero length scheduled here would often run after
    // the guest's next kick and find nothing, so the window would never leave 0.)
    if (this.window.ns === 0 && this.suppressed === undefined && !this.scheduled) {
      this.sleepingSince = now;
      return;
    }
    // A poll comes after this turn: the driver need not kick meanwhile (the processing that ran before this
    // call turned its notifications on; a driver that publishes before the poll runs would kick for nothing).
    if (this.window.ns > 0) this.suppress();
    this.schedule();
  }

  /** Notifications off on the plane's active queues while it may take requests and write guest memory. */
  private suppress(): void {
    const t = this.target;
    if (!t.canPoll() || t.memoryAccess?.() === false) return;
    const qs = t.queues().filter((q) => q.active);
    for (const q of qs) q.suppressNotification();
    this.suppressed = qs;
  }

  close(): void {
    this.release();
    this.closed = true;
  }

  private schedule(): void {
    if (this.scheduled || this.closed) return;
    this.scheduled = true;
    const run = () => {
      this.scheduled = false;
      if (this.closed) return;
      try {
        this.poll();
      } catch (e) {
        this.target.fault(e);
      }
    };
    // After this turn's microtasks (io_uring submissions, completions), the messages waiting, and every
    // setImmediate queued in this turn (batched interrupts, completions): a poll must not hold those up.
    setImmediate(() => setImmediate(run));
  }

  /**
   * One poll: the rings are looked at, for up to the window with the
   * driver's notifications suppressed. Work found is processed, the
   * suppression kept (processing turned notifications on again) and the
   * next poll scheduled; a poll that times out turns notifications on,
   * re-checks, and leaves the plane asleep on its eventfds. Exposed for unit
   * tests.
   */
  poll(): void {
    const t = this.target;
    // Not now (reset, drained, bus mastering off, a message waits): notifications on; activity() comes again.
    if (!t.canPoll()) {
      if (this.release()) this.schedule();
      return;
    }
    const qs = t.queues().filter((q) => q.active);
    const start = this.now();
    const w = this.window.ns;
    if (w > 0) {
      this.counters.polls++;
      for (const q of qs) q.suppressNotification();
      this.suppressed = qs;
    }
    const look = (): boolean => {
      let found = t.reapCompletions !== undefined && t.reapCompletions() > 0;
      for (const q of qs) if (q.pending() > 0) found = true;
      return found;
    };
    let found = look();
    while (!found && w > 0 && t.canPoll() && this.now() - start < w) found = look();
    if (!t.canPoll()) {
      // The message first; what was found is taken by the next poll (or, drained / bus mastering off, on resume).
      if (this.release() || found) this.schedule();
      return;
    }
    if (!found) {
      // Notifications back on, then the re-check (virtio 1.2 2.7.10).
      if (!this.release()) {
        if (w > 0) this.counters.timeouts++;
        this.sleepingSince = start;
        return;
      }
    } else if (w > 0) this.counters.hits++;
    for (const q of qs) if (q.pending() > 0) t.process(q);
    // Processing turned notifications on again: off until the next poll, which comes right after this turn.
    if (w > 0 && t.canPoll()) {
      for (const q of qs) q.suppressNotification();
      this.suppressed = qs;
    }
    this.schedule();
  }

  /**
   * Turns the driver's notifications back on where this poller had them off
   * (before the plane sleeps, drains, resets or loses bus mastering: a
   * driver told not to kick would otherwise never kick again). Returns true
   * when buffers arrived meanwhile (the caller must see to them).
   */
  release(): boolean {
    const qs = this.suppressed;
    if (qs && this.target.memoryAccess?.() === false) return false;
    this.suppressed = undefined;
    let pending = false;
    for (const q of qs ?? []) if (q.active && q.enableNotification()) pending = true;
    return pending;
  }
}
