/**
 * The virtqueue stall detector's rules (docs/qmp.md "Stall detector"). The
 * state lives with the queue (SplitVirtqueue.stall), so it follows the queue
 * to whichever thread processes it; the monitor only calls
 * VirtioDevice.checkStalls on a timer and turns the transitions into events.
 *
 * Kick side: the driver published buffers after the last notification the
 * device received, it was required to notify (VRING_USED_F_NO_NOTIFY clear,
 * or with EVENT_IDX the new avail index crossed avail_event), the device
 * does not hold the queue's buffers on purpose, and no notification came for
 * stall-ms of VM run time.
 *
 * Interrupt side: the device owes the driver an interrupt (it decided one was
 * needed: used_event crossed, or VRING_AVAIL_F_NO_INTERRUPT clear) and for
 * stall-ms it could not be delivered (dropped, no vector, MSI-X disabled,
 * vector masked with its PBA bit pending, irqfd missing), or it was delivered
 * and the driver has not consumed the used entries (driver-silent). The debt
 * is settled when the driver shows progress: with EVENT_IDX it moved
 * used_event up to the used index of the interrupt (virtio 1.2 2.7.10), or
 * it published buffers since (any driver). Without EVENT_IDX a delivered
 * interrupt settles it (the driver's consumer index is invisible).
 */

export type StallSide = 'kick' | 'interrupt';
/** Why the transport could not deliver a queue's interrupt now. */
export type DeliveryBlock = 'vector-masked' | 'no-vector' | 'msix-disabled' | 'no-irqfd';
export type StallCause = 'no-notify' | 'dropped' | 'driver-silent' | DeliveryBlock;

/**
 * The transport's view of interrupt delivery, for the detector (libs/pci
 * implements it; virtio-core does not import the transport).
 */
export interface InterruptDeliveryView {
  /**
   * Why an interrupt for `queue` is not reaching the driver now: the queue
   * has no vector, MSI-X is disabled, the vector (or the function) is masked
   * and its PBA bit is pending, or the vector has no irqfd. Undefined when
   * it would be (or was) delivered.
   */
  queueDeliveryBlock(queue: number): DeliveryBlock | undefined;
}

/** An interrupt the device owes the driver for the used entries up to `usedIdx`. */
export interface OwedInterrupt {
  usedIdx: number;
  /** Date.now() when the device decided the interrupt was needed. */
  since: number;
  /** Fault injection (x-debug-virtqueue-drop) threw it away. */
  dropped: boolean;
  /** What the transport said when it was sent (a later unmask may still deliver a masked one). */
  block?: DeliveryBlock;
  /** The avail index when it was sent: a driver that published buffers since is not silent. */
  availIdx?: number;
}

/** The interrupt half of a queue's record: kept by the copy that completes requests. */
export interface InterruptRecord {
  lastInterruptAt?: number;
  owed?: OwedInterrupt;
}

/** The rings as the driver sees them (guest memory), read at check time. */
export interface RingSnapshot {
  availIdx: number;
  availFlags: number;
  usedIdx: number;
  usedFlags: number;
  eventIdx: boolean;
  /** avail ring's used_event (EVENT_IDX only). */
  usedEvent?: number;
  /** used ring's avail_event (EVENT_IDX only). */
  availEvent?: number;
}

export interface StallVerdict {
  side: StallSide;
  cause: StallCause;
}

const VRING_USED_F_NO_NOTIFY = 1;

/** virtio 1.2 2.7.10: has `newIdx` crossed `event` since `old`? */
export function vringNeedEvent(event: number, newIdx: number, old: number): boolean {
  return ((newIdx - event - 1) & 0xffff) < ((newIdx - old) & 0xffff);
}

/** `a` is ahead of `b` in 16-bit ring arithmetic. */
function ahead(a: number, b: number): boolean {
  const d = (a - b) & 0xffff;
  return d !== 0 && d < 0x8000;
}

/**
 * The kick-side rule. `lastAvailIdx`: the processing copy's next index to
 * take; `availIdxAtLastKick`: the avail index when the device last received
 * a kick (undefined: none since activation, i.e. the activation index).
 */
export function kickStalled(
  ring: RingSnapshot,
  lastAvailIdx: number,
  availIdxAtLastKick: number | undefined,
  holdsBuffers: boolean,
): boolean {
  if (holdsBuffers) return false;
  if (ring.availIdx === lastAvailIdx) return false; // nothing left for the device
  // Buffers the device took without a kick (a re-check, a budget continuation) need none.
  let seen = availIdxAtLastKick ?? lastAvailIdx;
  if (ahead(lastAvailIdx, seen)) seen = lastAvailIdx;
  if (ring.availIdx === seen) return false;
  if (ring.eventIdx) return vringNeedEvent(ring.availEvent ?? 0, ring.availIdx, seen);
  return (ring.usedFlags & VRING_USED_F_NO_NOTIFY) === 0;
}

/** The interrupt-side rule; `block` is the transport's view now. */
export function interruptStalled(ring: RingSnapshot, rec: InterruptRecord, block: DeliveryBlock | undefined): StallCause | undefined {
  const owed = rec.owed;
  if (!owed) return undefined;
  // The driver shows it consumed the entries by moving used_event up to them (EVENT_IDX), or shows
  // it is alive by publishing buffers since (a driver polling under load, e.g. Linux NAPI, leaves
  // used_event behind until it re-enables interrupts; blocked on a lost interrupt it publishes nothing).
  const consumed =
    (ring.eventIdx && ring.usedEvent !== undefined && !ahead(owed.usedIdx, ring.usedEvent)) ||
    (owed.availIdx !== undefined && ring.availIdx !== owed.availIdx);
  if (consumed) return undefined;
  if (owed.dropped) return 'dropped';
  if (block) return block;
  // Sent into nothing (no vector, MSI-X off, no irqfd): lost even if the driver fixed that since.
  if (owed.block && owed.block !== 'vector-masked') return owed.block;
  return ring.eventIdx ? 'driver-silent' : undefined;
}

/** What checkStall reports: a new episode, or the end of one. */
export type StallTransition =
  | { kind: 'stall'; side: StallSide; cause: StallCause; stalledMs: number }
  | { kind: 'cleared'; side: StallSide; cause: StallCause; stalledMs: number };

/**
 * A queue's stall detector state (SplitVirtqueue.stall): the kick record,
 * the interrupt record of the copy that processes the queue in-process, and
 * the detector's own bookkeeping (run time accumulated per side, the episode
 * reported, the rates of the last interval).
 */
export class QueueStallState {
  lastKickAt: number | undefined;
  availIdxAtLastKick: number | undefined;
  readonly interrupt: InterruptRecord = {};
  /** Per side: the cause seen at the last check and the VM run time it has held. */
  private readonly held: Record<StallSide, { cause: StallCause; ms: number } | undefined> = { kick: undefined, interrupt: undefined };
  /** Per side: the episode reported (one event per episode). */
  private readonly reported: Record<StallSide, StallCause | undefined> = { kick: undefined, interrupt: undefined };
  private lastCheckAt: number | undefined;
  private readonly lastMarks: Partial<Record<StallSide, string>> = {};
  /** The VM run clock (see check) at the last check of a running VM. */
  private lastRunAt: number | undefined;
  private lastCounts: { kicks: number; interrupts: number } | undefined;
  kicksPerSec = 0;
  interruptsPerSec = 0;

  /** The device received a kick; `availIdx` is the driver's avail index then. */
  kicked(now: number, availIdx: number | undefined): void {
    this.lastKickAt = now;
    this.availIdxAtLastKick = availIdx;
  }

  /** The device decided the driver needs an interrupt for used entries up to `usedIdx`. */
  static interruptSent(
    rec: InterruptRecord,
    now: number,
    usedIdx: number,
    block: DeliveryBlock | undefined,
    availIdx: number | undefined,
  ): void {
    rec.lastInterruptAt = now;
    rec.owed = { usedIdx, since: now, dropped: false, block, availIdx };
  }

  /** An interrupt sent that the driver had not asked for (the first after activation): nothing owed. */
  static interruptUnasked(rec: InterruptRecord, now: number): void {
    rec.lastInterruptAt = now;
    rec.owed = undefined;
  }

  /** The interrupt was thrown away (fault injection): owed from the first one lost. */
  static interruptDropped(rec: InterruptRecord, now: number, usedIdx: number, availIdx: number | undefined): void {
    if (rec.owed?.dropped) rec.owed.usedIdx = usedIdx;
    else rec.owed = { usedIdx, since: now, dropped: true, availIdx };
  }

  /** Device reset or queue (re)activation: nothing owed, no episode. */
  reset(): void {
    this.lastKickAt = this.availIdxAtLastKick = undefined;
    this.interrupt.lastInterruptAt = undefined;
    this.interrupt.owed = undefined;
    this.held.kick = this.held.interrupt = undefined;
    this.reported.kick = this.reported.interrupt = undefined;
    this.lastCheckAt = this.lastRunAt = undefined;
    this.lastMarks.kick = this.lastMarks.interrupt = undefined;
  }

  /** The episode being reported on a side, if any (x-query-virtio-queue-status "stall"). */
  current(): { side: StallSide; cause: StallCause; stalledMs: number } | undefined {
    for (const side of ['kick', 'interrupt'] as const) {
      const c = this.reported[side];
      if (c) return { side, cause: c, stalledMs: Math.round(this.held[side]?.ms ?? 0) };
    }
    return undefined;
  }

  /**
   * One check. `verdicts` are this instant's rule results; time accumulates
   * only between consecutive checks of a running VM (a stopped VM's check
   * passes running=false and keeps the totals). `runNow` is the VM run clock
   * in ms (RunClock: wall time less the time the guest could not run because
   * the host gave its threads no CPU); the stall time is counted on it, the
   * rates on the wall clock `now`. Returns the transitions.
   */
  check(
    now: number,
    running: boolean,
    stallMs: number,
    verdicts: Partial<Record<StallSide, StallCause>>,
    counts: { kicks: number; interrupts: number },
    runNow = now,
    /**
     * Per side, what identifies the state the verdict is about (kick side: the
     * last kick and the device's next avail index). When it changed since the
     * last check the queue moved in between (a kick came, buffers were taken):
     * the side's time starts again, and a reported episode ends. Without it a
     * busy queue that shows a kick still in flight at every check would add
     * up the gaps between checks into a false stall.
     */
    marks: Partial<Record<StallSide, string>> = {},
  ): StallTransition[] {
    const wall = running && this.lastCheckAt !== undefined ? Math.max(0, now - this.lastCheckAt) : 0;
    if (wall > 0 && this.lastCounts) {
      this.kicksPerSec = Math.round(((counts.kicks - this.lastCounts.kicks) * 1000) / wall);
      this.interruptsPerSec = Math.round(((counts.interrupts - this.lastCounts.interrupts) * 1000) / wall);
    }
    const dt = running && this.lastRunAt !== undefined ? Math.max(0, runNow - this.lastRunAt) : 0;
    this.lastCounts = counts;
    this.lastCheckAt = running ? now : undefined;
    this.lastRunAt = running ? runNow : undefined;
    if (!running) return [];
    const out: StallTransition[] = [];
    for (const side of ['kick', 'interrupt'] as const) {
      const cause = verdicts[side];
      const moved = this.lastMarks[side] !== marks[side];
      this.lastMarks[side] = marks[side];
      if (cause && moved && this.held[side]) {
        const reportedBefore = this.reported[side];
        if (reportedBefore) out.push({ kind: 'cleared', side, cause: reportedBefore, stalledMs: Math.round(this.held[side]!.ms) });
        this.held[side] = undefined;
        this.reported[side] = undefined;
      }
      const held = this.held[side];
      const reported = this.reported[side];
      if (!cause) {
        if (reported) out.push({ kind: 'cleared', side, cause: reported, stalledMs: Math.round(held?.ms ?? 0) });
        this.held[side] = undefined;
        this.reported[side] = undefined;
        continue;
      }
      // A changed cause (e.g. dropped, then the vector masked) continues the same episode's time.
      this.held[side] = { cause, ms: (held?.ms ?? 0) + (moved ? 0 : dt) };
      if (!reported && stallMs > 0 && this.held[side]!.ms >= stallMs) {
        this.reported[side] = cause;
        out.push({ kind: 'stall', side, cause, stalledMs: Math.round(this.held[side]!.ms) });
      }
    }
    return out;
  }
}

/** A thread's scheduler figures, as Linux shows them in /proc/self/task/TID/{schedstat,stat}. */
export interface ThreadSched {
  /** ns on a CPU so far (schedstat's first field). */
  runNs: number;
  /** ns runnable but waiting for a CPU so far (schedstat's second field). */
  waitNs: number;
  /** Runnable now and not the caller (stat's state R): it may be waiting for a CPU right now. */
  runnable: boolean;
}

/**
 * The VM run clock: wall time less the time the guest could not run because
 * the host kept its threads waiting for a CPU. Over each interval between two
 * readings it takes the most-starved of the threads it is given (the vCPU
 * threads, and the thread that runs the device model), conservatively: a
 * healthy driver whose vCPU waited 400 ms of a 500 ms interval had 100 ms to
 * consume its used entries.
 *
 * Linux adds a wait to schedstat only when it ends (the thread gets its CPU),
 * so a thread that is runnable at a reading counts the part of the interval
 * it neither ran nor had credited as waiting; the wait credited later is set
 * against that advance. A thread whose figures cannot be read counts as never
 * starved (wall time), as does every thread on a host without schedstat.
 * On a host that is itself a VM, the most any CPU had stolen by the
 * hypervisor below it in the interval is added to that.
 */
export class RunClock {
  private lastWall: number | undefined;
  private run = 0;
  /** Per thread: the last figures, and the wait counted in advance (ns) that schedstat has not credited yet. */
  private readonly threads = new Map<number, { last: ThreadSched; advance: number }>();
  /** False once a thread's figures could not be read (the clock then runs on wall time for it). */
  schedstat = true;

  private steal: readonly number[] | undefined;

  /**
   * `read(tid)`: a thread's figures; `readSteal()`: each host CPU's steal
   * time so far (ns; time a hypervisor below this host ran something else on
   * it, which no thread's figures show), undefined when not available.
   */
  constructor(
    private readonly read: (tid: number) => ThreadSched | undefined,
    private readonly readSteal: () => readonly number[] | undefined = () => undefined,
  ) {}

  /** The run clock (ms) at wall time `now` (ms), with `tids` the threads the guest needs to run. */
  tick(now: number, tids: readonly number[]): number {
    const wall = this.lastWall === undefined ? 0 : Math.max(0, now - this.lastWall);
    this.lastWall = now;
    const wallNs = wall * 1e6;
    let starvedNs = 0;
    const seen = new Set<number>();
    for (const tid of tids) {
      seen.add(tid);
      const cur = this.read(tid);
      if (!cur) {
        this.schedstat = false;
        this.threads.delete(tid);
        continue;
      }
      const t = this.threads.get(tid);
      if (t) {
        const waited = Math.max(0, cur.waitNs - t.last.waitNs);
        const ran = Math.max(0, cur.runNs - t.last.runNs);
        const credited = Math.max(0, waited - t.advance);
        const uncounted = cur.runnable ? Math.max(0, wallNs - ran - credited) : 0;
        starvedNs = Math.max(starvedNs, credited + uncounted);
        // A thread not runnable now has had every wait credited: an advance left over was an overestimate.
        t.advance = cur.runnable ? Math.max(0, t.advance - waited) + uncounted : 0;
        t.last = cur;
      } else this.threads.set(tid, { last: cur, advance: 0 });
    }
    for (const tid of [...this.threads.keys()]) if (!seen.has(tid)) this.threads.delete(tid);
    // Stolen from the CPU the guest ran on, or any: the most stolen, on top of the run-queue wait.
    const steal = this.readSteal();
    if (steal && this.steal && steal.length === this.steal.length) starvedNs += Math.max(0, ...steal.map((n, i) => n - this.steal![i]));
    this.steal = steal;
    this.run += Math.max(0, wall - starvedNs / 1e6);
    return this.run;
  }
}

/** schedstat's text ("run_ns wait_ns timeslices"): the two times, undefined if malformed. */
export function parseSchedstat(text: string): { runNs: number; waitNs: number } | undefined {
  const f = text.trim().split(/\s+/);
  if (f.length < 3 || !/^\d+$/.test(f[0]) || !/^\d+$/.test(f[1])) return undefined;
  const runNs = Number(f[0]);
  const waitNs = Number(f[1]);
  return Number.isSafeInteger(runNs) && Number.isSafeInteger(waitNs) ? { runNs, waitNs } : undefined;
}

/** The state letter of a /proc/.../stat text ("pid (comm) S ..."; comm may hold spaces and parentheses). */
export function parseStatState(text: string): string | undefined {
  const i = text.lastIndexOf(')');
  return i < 0 ? undefined : /^ (\S)/.exec(text.slice(i + 1))?.[1];
}

/**
 * Each CPU's steal time (ns) in a /proc/stat text (the cpuN lines' eighth
 * field, in USER_HZ ticks: 100 a second on Linux), undefined if malformed.
 */
export function parseProcStatSteal(text: string): number[] | undefined {
  const out: number[] = [];
  for (const line of text.split('\n')) {
    const m = /^cpu\d+ ((?:\d+ ){7})(\d+)/.exec(line);
    if (m) out.push(Number(m[2]) * 1e7);
  }
  return out.length && out.every(Number.isSafeInteger) ? out : undefined;
}
