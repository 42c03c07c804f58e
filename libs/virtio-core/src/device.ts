/**
 * The transport-neutral virtio device: feature negotiation, the device-status
 * state machine, queues, and the two flags every queue operation checks:
 *
 * - `broken`: the guest corrupted a ring or chain; the device sets
 *   VIRTIO_CONFIG_S_NEEDS_RESET, raises a config interrupt and stops until the
 *   driver resets it.
 * - `disabled`: the guest cleared PCI bus mastering (or the transport's
 *   equivalent); the device touches no guest memory until it is set again.
 *
 * The device fault boundary (runGuarded / guarded / later / service): every
 * entry into device code (queue kicks from ioeventfds and exits, BAR and
 * config accesses, TAP and eventfd watchers, timers, promise completions,
 * worker messages, monitor-driven events) runs inside it. Whatever the device
 * throws there breaks that device only: a guest error (GuestMemoryError,
 * GuestError) sets needs-reset with one rate-limited log line; any other
 * exception is a VMM bug and does the same, with its stack logged. Nothing
 * escapes to the event loop, so nothing a device throws ends the process.
 */
import * as V from './generated/virtio-uapi';
import { GuestMemory, GuestMemoryError } from './guest-memory';
import { LogRateLimiter } from './rate-limit';
import { DescriptorChain, describeQueueError, QueueError, QueueState, SplitVirtqueue } from './virtqueue';
import { scatter } from './chain-io';
import { ActivationContext, QueueHandler, QueueResources } from './activation';
import { StateError } from './state-check';
import { CheckedVirtioState, parseVirtioState } from './virtio-state';
import {
  InterruptDeliveryView,
  InterruptRecord,
  kickStalled,
  interruptStalled,
  QueueStallState,
  StallCause,
  StallSide,
  StallTransition,
} from './stall';

/**
 * A guest broke the device protocol in a way the device notices deep in its
 * request handling: throw it inside the fault boundary and the device is
 * marked needs-reset with `message` (no stack: it is not a VMM bug).
 */
export class GuestError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'GuestError';
  }
}

/**
 * Chains one pass over a queue takes before it yields to the event loop (and
 * so to every other device); the rest are taken in a later turn. Keeps one
 * busy or hostile queue from starving the others.
 */
export const CHAIN_BUDGET = 64;

/**
 * What the transport gives the device: how to interrupt the driver, and
 * (for the stall detector) why an interrupt would not reach it now.
 */
export interface VirtioInterrupt extends Partial<InterruptDeliveryView> {
  /** The queue's used-buffer notification (MSI-X vector, or ISR bit 0 + INTx). */
  signalQueue(queue: number): void;
  /** A configuration-change notification (ISR bit 1). */
  signalConfig(): void;
  /** The eventfd that raises a queue's interrupt from any thread (QueueResources.interruptFd). */
  queueInterruptFd?(queue: number): number | undefined;
  /** The eventfd registered for a queue's doorbell, if any (QueueResources.notifierFd). */
  queueNotifierFd?(queue: number): number | undefined;
}

export const VIRTIO_F_VERSION_1 = 1n << BigInt(V.VIRTIO_F_VERSION_1);
export const VIRTIO_RING_F_EVENT_IDX = 1n << BigInt(V.VIRTIO_RING_F_EVENT_IDX);
export const VIRTIO_RING_F_INDIRECT_DESC = 1n << BigInt(V.VIRTIO_RING_F_INDIRECT_DESC);

export interface VirtioDeviceState {
  deviceFeatures: string;
  driverFeatures: string;
  status: number;
  configGeneration: number;
  broken: boolean;
  /** Present only when set, so streams from devices without it still load. */
  disabled?: true;
  queues: QueueState[];
  /** Completions held back while bus mastering was off (present only when there are any). */
  deferred?: { queue: number; head: number; len: number }[];
  /** Queues kicked while bus mastering was off (present only when there are any). */
  kickedWhileDisabled?: number[];
  device?: unknown;
}

export interface VirtioDeviceOptions {
  id: string;
  deviceId: number;
  numQueues: number;
  queueMaxSize: number;
  /** Device-specific feature bits; VERSION_1, EVENT_IDX and INDIRECT_DESC are added unless disabled. */
  features: bigint;
  eventIdx?: boolean;
  log?: (message: string) => void;
}

/**
 * A chain the device took with popRequest and has not completed yet (the
 * completion path). `epoch` is the device's reset count when it was taken: a
 * completion from before a reset is dropped.
 */
export interface InFlightRequest {
  readonly queue: number;
  readonly head: number;
  readonly epoch: number;
  /** Completed or abandoned (a request settles once). */
  settled: boolean;
}

/**
 * Bytes a device writes into a chain's buffers when it completes it (a status
 * byte, a response header): held back with the used entry while bus
 * mastering is off, written just before it when it is set again.
 */
export interface GuestWrite {
  bufs: { addr: number; len: number }[];
  bytes: Uint8Array;
}

/** Where a queue notification came from. */
export type KickSource = 'ioeventfd' | 'exit' | 'debug' | 'restore';

export interface QueueCounters {
  /** Kicks that arrived through the queue's ioeventfd. */
  kicksEventfd: number;
  /** Kicks that arrived through the notify exit path (ioeventfd off, or an odd access width). */
  kicksExit: number;
  /** Kicks thrown away by fault injection (x-debug-virtqueue-drop). */
  kicksDropped: number;
  /** Chains taken from the available ring. */
  chains: number;
  /** Used-buffer interrupts sent to the driver. */
  interrupts: number;
  /** Interrupts the driver suppressed (EVENT_IDX or NO_INTERRUPT). */
  suppressed: number;
  /** Interrupts thrown away by fault injection. */
  interruptsDropped: number;
  /** x-debug-device-event kicks and calls on this queue. */
  debugEvents: number;
}

/** A stall detector transition of one queue, with the ring indices for the event. */
export interface StallReport {
  queue: number;
  transition: StallTransition;
  indices: Record<string, number>;
}

/** Deliberate faults for diagnosing lost kicks and interrupts. */
export interface QueueFaults {
  dropKicks: number;
  dropInterrupts: number;
  /** Spends one of `kind` if any is left (atomically where two threads spend them: SharedQueueStats.faults). */
  take?(kind: 'dropKicks' | 'dropInterrupts'): boolean;
}

/** Spends one fault of `kind` from `f`: true when the kick or interrupt at hand is to be dropped. */
export function takeFault(f: QueueFaults, kind: 'dropKicks' | 'dropInterrupts'): boolean {
  if (f.take) return f.take(kind);
  if (f[kind] <= 0) return false;
  f[kind]--;
  return true;
}

/**
 * A read of `size` (1, 2 or 4) bytes at `offset` of a device configuration
 * image (little-endian, as virtio 1.x defines it); 0 beyond its end.
 */
export function readConfigImage(image: Uint8Array, offset: number, size: number): number {
  if (offset < 0 || offset + size > image.length) return 0;
  const dv = new DataView(image.buffer, image.byteOffset, image.byteLength);
  return size === 1 ? dv.getUint8(offset) : size === 2 ? dv.getUint16(offset, true) : dv.getUint32(offset, true);
}

export abstract class VirtioDevice {
  readonly id: string;
  readonly deviceId: number;
  readonly queues: SplitVirtqueue[];
  readonly counters: QueueCounters[];
  readonly faults: QueueFaults[];
  deviceFeatures: bigint;
  driverFeatures = 0n;
  status = 0;
  configGeneration = 0;
  broken = false;
  disabled = false;
  brokenReason: string | undefined;
  interrupt: VirtioInterrupt | undefined;

  protected readonly log: (message: string) => void;
  /** Guest-triggered log lines, rate-limited per kind (see LogRateLimiter). */
  protected readonly guestLog: LogRateLimiter;
  /** Faults the boundary caught: guest errors and VMM bugs (unexpected exceptions). */
  readonly faultCounters = { guestErrors: 0, internalErrors: 0 };
  private readonly budgetRescheduled = new Set<number>();
  private readonly deferred: { queue: number; head: number; len: number }[] = [];
  private readonly kickedWhileDisabled = new Set<number>();
  // The completion path (popRequest / completeRequest / drainRequests).
  /** Bumped on reset: completions of requests taken before it are dropped. */
  private epoch = 0;
  /** Heads of each queue's requests in flight in this epoch (a head made available again meanwhile is a guest error). */
  private readonly inFlightHeads: Set<number>[];
  /** Requests not settled yet, older epochs included (their I/O may still write guest memory). */
  private outstanding = 0;
  private idleWaiters: (() => void)[] = [];
  /** Queues with a used-buffer interrupt scheduled for the end of this turn. */
  private readonly signalScheduled = new Set<number>();
  /** Guest writes held back with their used entries while bus mastering is off. */
  private readonly deferredWrites: GuestWrite[] = [];

  private mem: GuestMemory;

  constructor(memory: GuestMemory, opts: VirtioDeviceOptions) {
    this.mem = memory;
    this.id = opts.id;
    this.deviceId = opts.deviceId;
    this.queues = Array.from({ length: opts.numQueues }, (_, i) => new SplitVirtqueue(i, opts.queueMaxSize));
    this.counters = this.queues.map(() => ({
      kicksEventfd: 0,
      kicksExit: 0,
      kicksDropped: 0,
      chains: 0,
      interrupts: 0,
      suppressed: 0,
      interruptsDropped: 0,
      debugEvents: 0,
    }));
    this.faults = this.queues.map((_, i) => this.makeFaults(i));
    this.inFlightHeads = this.queues.map(() => new Set<number>());
    this.deviceFeatures =
      opts.features | VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC | (opts.eventIdx === false ? 0n : VIRTIO_RING_F_EVENT_IDX);
    this.log = opts.log ?? (() => undefined);
    this.guestLog = new LogRateLimiter((m) => this.log(m));
  }

  /**
   * Set by the transport: called when a queue's kick fault injection starts
   * or ends (dropKicks becomes non-zero or zero), e.g. so kicks that a vhost
   * backend takes directly are routed through the VMM while they are dropped.
   */
  faultsChanged: ((queue: number) => void) | undefined;

  private makeFaults(queue: number): QueueFaults {
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const self = this;
    let dropKicks = 0;
    let dropInterrupts = 0;
    return {
      get dropKicks() {
        return dropKicks;
      },
      set dropKicks(v: number) {
        const was = dropKicks;
        dropKicks = v;
        if (was > 0 !== v > 0) changed();
      },
      get dropInterrupts() {
        return dropInterrupts;
      },
      set dropInterrupts(v: number) {
        dropInterrupts = v;
      },
    };
    function changed() {
      self.faultsChanged?.(queue);
    }
  }

  // --- the device's own part -------------------------------------------------

  /** Device configuration space (little-endian), `size` bytes at `offset`. */
  abstract readConfig(offset: number, size: number): number;
  writeConfig(_offset: number, _size: number, _value: number): void {}
  /** Takes and handles the available chains of a queue. Only called when the device may touch memory. */
  protected abstract processQueue(queue: SplitVirtqueue): void;
  /** Device-specific facts for the monitor (x-query-virtio-status "device-info"). */
  deviceInfo(): Record<string, unknown> {
    return {};
  }
  /** Device-specific facts about one queue for the monitor (merged into x-query-virtio-queue-status). */
  queueInfo(_queue: number): Record<string, unknown> {
    return {};
  }
  /**
   * The queue's name for the monitor (`info virtqueues`), e.g. `rx0`, `req0`;
   * a device that does not say gets `q<N>`.
   */
  queueName?(queue: number): string;
  /**
   * Why a monitor debug action (x-debug-virtqueue-drop, x-debug-device-event)
   * cannot apply to a queue of this device, or undefined when it can.
   */
  debugActionRefusal?(action: 'drop-kicks' | 'drop-interrupts' | 'kick' | 'call', queue: number): string | undefined;
  /** DRIVER_OK: the queues are live. */
  protected onActivate(): void {}
  /** The driver reset the device: drop in-flight state. */
  protected onReset(): void {}

  /** Guest RAM as the device sees it. */
  get memory(): GuestMemory {
    return this.mem;
  }

  /**
   * The guest memory map was replaced (a vhost-user front-end sent a new
   * memory table): active queues are mapped onto the new regions, keeping
   * their indices. A queue whose rings are no longer RAM breaks the device.
   */
  replaceMemory(memory: GuestMemory): void {
    this.mem = memory;
    const features = { eventIdx: this.hasFeature(V.VIRTIO_RING_F_EVENT_IDX), indirect: this.hasFeature(V.VIRTIO_RING_F_INDIRECT_DESC) };
    for (const q of this.queues) {
      if (!q.active) continue;
      const err = q.activate(memory, features);
      if (err) {
        this.markBroken(err);
        return;
      }
    }
  }

  // --- negotiation and status ------------------------------------------------

  hasFeature(bit: number | bigint): boolean {
    return (this.driverFeatures & (1n << BigInt(bit))) !== 0n;
  }

  get driverOk(): boolean {
    return (this.status & V.VIRTIO_CONFIG_S_DRIVER_OK) !== 0;
  }

  /** The driver wrote the device status register. */
  writeStatus(value: number): void {
    value &= 0xff;
    if (value === 0) {
      this.reset();
      return;
    }
    const old = this.status;
    if (value & V.VIRTIO_CONFIG_S_FEATURES_OK && !(old & V.VIRTIO_CONFIG_S_FEATURES_OK)) {
      // FEATURES_OK sticks only for an acceptable subset: VERSION_1 required, nothing unoffered.
      const extra = this.driverFeatures & ~this.deviceFeatures;
      if (!(this.driverFeatures & VIRTIO_F_VERSION_1) || extra !== 0n) value &= ~V.VIRTIO_CONFIG_S_FEATURES_OK;
    }
    this.status = value | (old & V.VIRTIO_CONFIG_S_NEEDS_RESET);
    if (value & V.VIRTIO_CONFIG_S_DRIVER_OK && !(old & V.VIRTIO_CONFIG_S_DRIVER_OK)) this.activate();
  }

  /** The driver wrote 32 bits of its feature word (select 0 or 1). Ignored after FEATURES_OK. */
  writeDriverFeatures(select: number, value: number): void {
    if (this.status & V.VIRTIO_CONFIG_S_FEATURES_OK || select > 1) return;
    const shift = BigInt(select * 32);
    this.driverFeatures = (this.driverFeatures & ~(0xffffffffn << shift)) | (BigInt(value >>> 0) << shift);
  }

  readDeviceFeatures(select: number): number {
    if (select > 1) return 0;
    return Number((this.deviceFeatures >> BigInt(select * 32)) & 0xffffffffn);
  }

  private activate(): void {
    const features = { eventIdx: this.hasFeature(V.VIRTIO_RING_F_EVENT_IDX), indirect: this.hasFeature(V.VIRTIO_RING_F_INDIRECT_DESC) };
    for (const q of this.queues) {
      if (!q.ready) continue;
      const err = q.activate(this.memory, features);
      if (err) {
        this.markBroken(err);
        return;
      }
    }
    this.onActivate();
    this.startHandlers();
  }

  // --- activation: one handler per queue (activation.ts) -------------------------------

  /** Activated: one handler per enabled queue; undefined while inactive (before DRIVER_OK, after a reset). */
  private handlers: (QueueHandler | undefined)[] | undefined;

  /** Builds the activation context and takes the device's queue handlers. */
  private startHandlers(): void {
    const queues = this.queues.map((q, i): QueueResources | undefined =>
      q.active
        ? {
            queue: q,
            interrupt: () => this.interrupt?.signalQueue(i),
            interruptFd: () => this.interrupt?.queueInterruptFd?.(i),
            notifierFd: () => this.interrupt?.queueNotifierFd?.(i),
          }
        : undefined,
    );
    const handlers = this.activateQueues({ memory: this.memory, queues });
    this.handlers = this.queues.map((_, i) => (queues[i] ? handlers[i] : undefined));
  }

  /** Disposes of the handlers (device reset): nothing they started completes into the new driver. */
  private stopHandlers(): void {
    const hs = this.handlers;
    this.handlers = undefined;
    for (const h of hs ?? []) h?.dispose();
  }

  /**
   * DRIVER_OK: the device's handler for each enabled queue (indexed as
   * ctx.queues). The default handles every queue in-process, on the thread
   * that owns the device (inProcessHandler).
   */
  protected activateQueues(ctx: ActivationContext): (QueueHandler | undefined)[] {
    return ctx.queues.map((r) => r && this.inProcessHandler(r.queue));
  }

  /** A handler that runs processQueue on this thread, inside the fault boundary and the chain budget. */
  protected inProcessHandler(q: SplitVirtqueue): QueueHandler {
    let live = true;
    return {
      placement: { kind: 'in-process' },
      kick: (entry) => {
        if (live && this.canProcess && q.active) this.service(q, entry, () => this.processQueue(q));
      },
      drain: () => this.drainRequests(),
      dispose: () => void (live = false),
    };
  }

  /** The handler of a queue while the device is activated. */
  queueHandler(queue: number): QueueHandler | undefined {
    return this.handlers?.[queue];
  }

  reset(): void {
    this.stopHandlers();
    this.onReset();
    for (const q of this.queues) q.reset();
    this.status = 0;
    this.driverFeatures = 0n;
    this.broken = false;
    this.brokenReason = undefined;
    this.deferred.length = 0;
    this.deferredWrites.length = 0;
    this.kickedWhileDisabled.clear();
    this.epoch++;
    for (const h of this.inFlightHeads) h.clear();
    this.signalScheduled.clear();
  }

  // --- queues ----------------------------------------------------------------

  /** May the device process queues and touch guest memory now? */
  get canProcess(): boolean {
    return this.driverOk && !this.broken && !this.disabled;
  }

  /**
   * A kick for `queue` (from its ioeventfd, the notify exit path, or the debug monitor).
   * `operator`: an x-debug-device-event kick, counted on the path it stands for but never
   * taken by a pending x-debug-virtqueue-drop (only guest kicks are dropped).
   */
  notify(queue: number, source: KickSource = 'exit', operator = false): void {
    const q = this.queues[queue];
    if (!q) return;
    const f = this.faults[queue];
    if (source !== 'debug' && !operator && takeFault(f, 'dropKicks')) {
      this.counters[queue].kicksDropped++;
      return;
    }
    if (f.dropKicks > 0 && source === 'restore') return;
    if (source === 'ioeventfd') this.counters[queue].kicksEventfd++;
    else if (source === 'exit') this.counters[queue].kicksExit++;
    q.stall.kicked(Date.now(), q.availIndex());
    this.kickRecorded?.(queue);
    if (this.disabled) {
      this.kickedWhileDisabled.add(queue);
      return;
    }
    if (!this.canProcess || !q.active) return;
    this.kickHandler(q, `kick (${source}) on queue ${queue}`);
  }

  /**
   * Buffers an iothread's poll found on `queue` without a kick (poll.ts):
   * handled as a kick is, but neither counted nor recorded as one (the
   * device had suppressed notifications: the driver was not asked to kick).
   */
  pollQueue(queue: number): void {
    const q = this.queues[queue];
    if (!q || this.disabled || !this.canProcess || !q.active) return;
    this.kickHandler(q, `poll of queue ${queue}`);
  }

  /**
   * Set by whoever publishes the stall detector's kick records elsewhere (an
   * iothread's shared memory): called after each kick the device took.
   */
  kickRecorded: ((queue: number) => void) | undefined;

  /**
   * Set by whoever pauses processing without bus mastering off (an
   * iothread's migration drain): a kick it answers true for is counted and
   * recorded, then held (the caller keeps it and kicks again later).
   */
  kickHeld: ((queue: number) => boolean) | undefined;

  /**
   * Hands a kick to the queue's handler. A queue started without a DRIVER_OK
   * transition (a vhost-user back-end starts rings one by one) has none: it
   * is processed in-process, as the default handler would.
   */
  private kickHandler(q: SplitVirtqueue, entry: string): void {
    if (this.kickHeld?.(q.index)) return;
    const h = this.handlers?.[q.index];
    if (h) h.kick(entry);
    else this.service(q, entry, () => this.processQueue(q));
  }

  // --- the fault boundary ---------------------------------------------------------

  /** Runs `fn` inside the device fault boundary; undefined when it threw (the device is then broken). */
  runGuarded<T>(entry: string, fn: () => T): T | undefined {
    try {
      return fn();
    } catch (e) {
      this.deviceFault(entry, e);
      return undefined;
    }
  }

  /** `fn` wrapped in the fault boundary, for callbacks (watchers, promise handlers, worker messages). */
  guarded<A extends unknown[]>(entry: string, fn: (...args: A) => void): (...args: A) => void {
    return (...args: A) => {
      this.runGuarded(entry, () => fn(...args));
    };
  }

  /** setImmediate inside the fault boundary. */
  later(entry: string, fn: () => void): void {
    setImmediate(() => this.runGuarded(entry, fn));
  }

  /** A promise's rejection handled by the fault boundary (for fire-and-forget device work). */
  guardPromise(entry: string, p: Promise<unknown>): void {
    p.catch((e: unknown) => this.deviceFault(entry, e));
  }

  /**
   * Device work on one queue, inside the boundary and with a budget of
   * CHAIN_BUDGET chains (popChain stops handing out chains past it). When the
   * budget ran out with chains left, the queue is processed again in a later
   * turn of the event loop. A nested call runs inside the caller's budget.
   */
  protected service(q: SplitVirtqueue, entry: string, fn: () => void): void {
    if (q.inBatch) {
      fn();
      return;
    }
    q.beginBatch(CHAIN_BUDGET);
    let more = false;
    try {
      this.runGuarded(entry, fn);
    } finally {
      more = q.endBatch();
    }
    if (!more || this.budgetRescheduled.has(q.index)) return;
    this.budgetRescheduled.add(q.index);
    setImmediate(() => {
      this.budgetRescheduled.delete(q.index);
      if (this.disabled)
        this.kickedWhileDisabled.add(q.index); // taken up when bus mastering is back
      else if (this.canProcess && q.active) this.service(q, `queue ${q.index} (continued after its budget)`, () => this.processQueue(q));
    });
  }

  /** A queue pass that ran out of budget is still to be continued (drains wait for it). */
  get budgetPending(): boolean {
    return this.budgetRescheduled.size > 0;
  }

  /**
   * What the boundary does with an exception: a guest error breaks the device
   * with one rate-limited line; anything else is a VMM bug, which breaks the
   * device too and logs the stack.
   */
  deviceFault(entry: string, e: unknown): void {
    try {
      if (e instanceof GuestMemoryError || e instanceof GuestError) {
        this.faultCounters.guestErrors++;
        this.markBroken(`${e.message} (in ${entry})`);
        return;
      }
      this.faultCounters.internalErrors++;
      const err = e instanceof Error ? e : new Error(String(e));
      this.guestLog.log(
        'internal-error',
        `${this.id}: internal error in ${entry} (a VMM bug; the device needs a reset): ${err.stack ?? err.message}`,
      );
      this.markBroken(`internal error in ${entry}: ${err.message}`, true);
    } catch (inner) {
      // markBroken itself failed (the transport's interrupt path): the device stays broken, the VMM runs on.
      try {
        this.log(`${this.id}: fault boundary: ${(inner as Error)?.message ?? inner}`);
      } catch {
        /* nothing left to do */
      }
    }
  }

  /**
   * Takes the next chain, marking the device broken on a ring error. Returns
   * null when the queue is empty or the device stopped.
   */
  protected popChain(q: SplitVirtqueue) {
    if (!this.canProcess) return null;
    const r = q.pop();
    if (r === null) return null;
    if ('error' in r) {
      this.markBroken(r.error);
      return null;
    }
    this.counters[q.index].chains++;
    return r.chain;
  }

  /** Returns popped-but-unused chains to the ring (their counting is undone too). */
  protected unpopChains(q: SplitVirtqueue, count: number): void {
    q.unpop(count);
    this.counters[q.index].chains -= count;
  }

  // --- the completion path -----------------------------------------------------------

  /**
   * Takes the next chain as a request in flight (popChain, and the head
   * recorded until completeRequest or abandonRequest). A head the driver
   * makes available again while the device still holds it is a guest error:
   * needs-reset, as for a corrupt ring.
   */
  protected popRequest(q: SplitVirtqueue): { chain: DescriptorChain; request: InFlightRequest } | null {
    const chain = this.popChain(q);
    if (!chain) return null;
    const heads = this.inFlightHeads[q.index];
    if (heads.has(chain.head)) {
      this.markBroken({ kind: 'head-in-flight', head: chain.head });
      return null;
    }
    heads.add(chain.head);
    this.outstanding++;
    return { chain, request: { queue: q.index, head: chain.head, epoch: this.epoch, settled: false } };
  }

  /** Whether a request was taken since the last reset (its completion would not be dropped for its age). */
  protected isCurrent(r: InFlightRequest): boolean {
    return r.epoch === this.epoch;
  }

  /** Requests taken and not yet settled (older epochs included). */
  get inFlightCount(): number {
    return this.outstanding;
  }

  /** Forgets a request without answering it (the device broke while handling it). Settling twice is a no-op. */
  protected abandonRequest(r: InFlightRequest): void {
    if (r.settled) return;
    r.settled = true;
    if (r.epoch === this.epoch) this.inFlightHeads[r.queue].delete(r.head);
    if (--this.outstanding === 0) for (const w of this.idleWaiters.splice(0)) w();
  }

  /**
   * Completes a request: writes `write` into its buffers, puts it on the
   * used ring with `len` bytes written, and schedules the queue's interrupt
   * for the end of this turn (one per queue per batch of completions; the
   * driver's EVENT_IDX / NO_INTERRUPT decide whether it is sent). While bus
   * mastering is off the write and the used entry are held back together.
   * Returns false when the completion was dropped: a reset came in between,
   * or the device stopped (broken, driver gone).
   */
  protected completeRequest(r: InFlightRequest, len: number, write?: GuestWrite): boolean {
    if (r.settled) throw new Error(`${this.id}: request ${r.head} of queue ${r.queue} completed twice`);
    this.abandonRequest(r);
    if (r.epoch !== this.epoch || (!this.disabled && !this.canProcess)) return false;
    const q = this.queues[r.queue];
    if (write) {
      if (this.disabled) this.deferredWrites.push(write);
      else
        scatter(
          this.memory,
          write.bufs.map((b) => ({ ...b, writable: true })),
          write.bytes,
        );
    }
    this.pushUsed(q, r.head, len);
    this.scheduleSignal(q);
    return true;
  }

  /** Sends the queue's used-buffer interrupt (if the driver wants it) at the end of this turn, once. */
  protected scheduleSignal(q: SplitVirtqueue): void {
    if (this.signalScheduled.has(q.index)) return;
    this.signalScheduled.add(q.index);
    const epoch = this.epoch;
    this.later('used-buffer interrupt', () => {
      if (epoch !== this.epoch) return;
      this.signalScheduled.delete(q.index);
      this.signalUsed(q);
    });
  }

  /**
   * Resolves once no request is in flight (older epochs included: their I/O
   * may still write guest memory), every scheduled interrupt went out and no
   * queue pass waits for its budget. Migration and an orderly stop call it.
   */
  async drainRequests(): Promise<void> {
    while (this.outstanding > 0 || this.signalScheduled.size > 0 || this.budgetPending) {
      if (this.outstanding > 0) await new Promise<void>((r) => this.idleWaiters.push(r));
      else await new Promise((r) => setImmediate(r));
    }
  }

  /** Guest writes held back while bus mastering is off (a device's migration state carries them in its own format). */
  protected get heldWrites(): readonly GuestWrite[] {
    return this.deferredWrites;
  }

  /** Migration: replaces the held-back guest writes (checked by the caller). */
  protected setHeldWrites(writes: GuestWrite[]): void {
    this.deferredWrites.length = 0;
    this.deferredWrites.push(...writes);
  }

  /** Puts a chain on the used ring (deferred while bus mastering is off). Call signalUsed after a batch. */
  protected pushUsed(q: SplitVirtqueue, head: number, len: number): void {
    if (this.disabled) {
      this.deferred.push({ queue: q.index, head, len });
      return;
    }
    if (!this.driverOk || this.broken || !q.active) return;
    q.pushUsed(head, len);
  }

  /** Interrupts the driver for a queue if it asked for it. */
  protected signalUsed(q: SplitVirtqueue): void {
    if (!this.canProcess || !q.active) return;
    const i = q.index;
    if (q.needsInterrupt()) {
      if (takeFault(this.faults[i], 'dropInterrupts')) {
        this.counters[i].interruptsDropped++;
        if (q.driverAsked) QueueStallState.interruptDropped(q.stall.interrupt, Date.now(), q.usedIdx, q.availIndex());
        this.interruptRecorded?.(i);
        return;
      }
      this.counters[i].interrupts++;
      this.sendInterrupt(i, q.driverAsked);
    } else {
      this.counters[i].suppressed++;
      this.interruptRecorded?.(i);
    }
  }

  /**
   * Set by whoever publishes the stall detector's interrupt records elsewhere
   * (an iothread's shared memory): called after each interrupt decision of a
   * queue (sent, dropped or suppressed), once its record is up to date.
   */
  interruptRecorded: ((queue: number) => void) | undefined;

  /** Sends a queue's interrupt and records it (and what the transport did with it) for the stall detector. */
  private sendInterrupt(i: number, asked: boolean): void {
    this.interrupt?.signalQueue(i);
    const q = this.queues[i];
    if (!asked) QueueStallState.interruptUnasked(q.stall.interrupt, Date.now());
    else QueueStallState.interruptSent(q.stall.interrupt, Date.now(), q.usedIdx, this.interrupt?.queueDeliveryBlock?.(i), q.availIndex());
    this.interruptRecorded?.(i);
  }

  /** DeviceEvent call: the queue's interrupt, exactly as the device would send it (masking honoured by the transport). */
  debugCall(queue: number): void {
    this.counters[queue].debugEvents++;
    this.counters[queue].interrupts++;
    // The operator's call: owed like any interrupt the driver has not acted on yet.
    this.sendInterrupt(queue, true);
  }

  // --- the stall detector (stall.ts) ------------------------------------------------

  /**
   * Whether the device keeps the queue's available buffers on purpose (RX
   * buffers waiting for frames, event buffers waiting for events): its
   * kick side is never a stall.
   */
  holdsBuffers(_queue: number): boolean {
    return false;
  }

  /**
   * The queue as the copy that processes it has it: next avail index to
   * take, interrupts sent, its interrupt record, and its last kick (when,
   * and the avail index then). This object's own queue unless the device
   * hands processing elsewhere (virtio-blk's iothread).
   */
  stallView(queue: number): {
    lastAvailIdx: number;
    interrupts: number;
    interrupt: InterruptRecord;
    lastKickAt: number | undefined;
    availIdxAtLastKick: number | undefined;
  } {
    const q = this.queues[queue];
    return {
      lastAvailIdx: q.lastAvailIdx,
      interrupts: this.counters[queue].interrupts,
      interrupt: q.stall.interrupt,
      lastKickAt: q.stall.lastKickAt,
      availIdxAtLastKick: q.stall.availIdxAtLastKick,
    };
  }

  /**
   * One stall detector pass over every queue (run on the monitor's timer,
   * inside the fault boundary). `running` is false while the VM is stopped
   * or migrating: nothing accumulates then. `runNow`: the VM run clock
   * (RunClock), on which the stall time is counted. Returns each new episode
   * and each end of one, with the indices for the event.
   */
  checkStalls(now: number, running: boolean, stallMs: number, runNow = now): StallReport[] {
    const out: StallReport[] = [];
    this.queues.forEach((q, i) => {
      const view = this.stallView(i);
      const c = this.counters[i];
      const counts = { kicks: c.kicksEventfd + c.kicksExit, interrupts: view.interrupts };
      const ring = q.active && this.canProcess ? q.ringSnapshot() : undefined;
      const verdicts: Partial<Record<StallSide, StallCause>> = {};
      if (ring) {
        if (kickStalled(ring, view.lastAvailIdx, view.availIdxAtLastKick, this.holdsBuffers(i))) verdicts.kick = 'no-notify';
        const cause = interruptStalled(ring, view.interrupt, this.interrupt?.queueDeliveryBlock?.(i));
        if (cause) verdicts.interrupt = cause;
      }
      const owedMark = (o: typeof view.interrupt.owed) => (o ? `${o.since}/${o.dropped ? 'dropped' : o.usedIdx}` : '-');
      // A side's clock restarts when the queue moved since the last check: the kick side when a kick was
      // recorded or buffers were taken, the interrupt side when a new debt replaced the old one (a busy
      // queue owes a fresh interrupt at most checks; a dropped one keeps its start while drops go on).
      const marks = {
        kick: `${view.lastKickAt ?? '-'}/${view.availIdxAtLastKick ?? '-'}/${view.lastAvailIdx}`,
        interrupt: owedMark(view.interrupt.owed),
      };
      for (const t of q.stall.check(now, running, stallMs, verdicts, counts, runNow, marks)) {
        const indices: Record<string, number> = {
          'avail-idx': ring?.availIdx ?? 0,
          'last-avail-idx': view.lastAvailIdx,
          'used-idx': ring?.usedIdx ?? 0,
        };
        if (ring?.eventIdx) {
          if (t.side === 'interrupt') indices['used-event'] = ring.usedEvent!;
          else indices['avail-event'] = ring.availEvent!;
        }
        out.push({ queue: i, transition: t, indices });
      }
    });
    return out;
  }

  /** x-query-virtio-queue-status's timing fields (names agreed with HMP `info virtqueues`). */
  queueTiming(queue: number, now: number): Record<string, unknown> {
    const q = this.queues[queue];
    const view = this.stallView(queue);
    const rec = view.interrupt;
    const st = q.stall.current();
    return {
      'last-kick-ms-ago': view.lastKickAt === undefined ? null : Math.max(0, now - view.lastKickAt),
      'last-interrupt-ms-ago': rec.lastInterruptAt === undefined ? null : Math.max(0, now - rec.lastInterruptAt),
      'avail-idx-at-last-kick': view.availIdxAtLastKick ?? null,
      'kicks-per-sec': q.stall.kicksPerSec,
      'interrupts-per-sec': q.stall.interruptsPerSec,
      stall: st ? { side: st.side, cause: st.cause, 'stalled-ms': st.stalledMs } : null,
    };
  }

  /** The guest broke the queue protocol: needs-reset, config interrupt, stop. */
  markBroken(reason: QueueError | string, internal = false): void {
    if (this.broken) return;
    const text = typeof reason === 'string' ? reason : describeQueueError(reason);
    this.broken = true;
    this.brokenReason = text;
    this.status |= V.VIRTIO_CONFIG_S_NEEDS_RESET;
    this.configGeneration = (this.configGeneration + 1) & 0xff;
    this.guestLog.log('needs-reset', `${this.id}: ${internal ? 'device error' : 'guest error'}, device needs reset: ${text}`);
    this.interrupt?.signalConfig();
  }

  /** Bus mastering changed: `disabled` stops all memory access; re-enabling resumes. */
  setDisabled(disabled: boolean): void {
    if (this.disabled === disabled) return;
    this.disabled = disabled;
    if (disabled) return;
    // The held-back bytes first, so a used entry never reaches the driver before its status.
    for (const w of this.deferredWrites.splice(0))
      if (this.driverOk && !this.broken)
        scatter(
          this.memory,
          w.bufs.map((b) => ({ ...b, writable: true })),
          w.bytes,
        );
    const done = this.deferred.splice(0);
    const touched = new Set<number>();
    for (const d of done) {
      const q = this.queues[d.queue];
      if (this.driverOk && !this.broken && q.active) {
        q.pushUsed(d.head, d.len);
        touched.add(d.queue);
      }
    }
    for (const i of touched) this.signalUsed(this.queues[i]);
    const kicked = [...this.kickedWhileDisabled];
    this.kickedWhileDisabled.clear();
    for (const i of kicked) {
      const q = this.queues[i];
      if (this.canProcess && q.active) this.kickHandler(q, `queue ${i} kicked while bus mastering was off`);
    }
  }

  // --- state -----------------------------------------------------------------

  saveState(): VirtioDeviceState {
    const s: VirtioDeviceState = {
      deviceFeatures: this.deviceFeatures.toString(16),
      driverFeatures: this.driverFeatures.toString(16),
      status: this.status,
      configGeneration: this.configGeneration,
      broken: this.broken,
      queues: this.queues.map((q) => q.save()),
    };
    if (this.disabled) s.disabled = true;
    if (this.deferred.length) s.deferred = this.deferred.map((d) => ({ ...d }));
    if (this.kickedWhileDisabled.size) s.kickedWhileDisabled = [...this.kickedWhileDisabled];
    return s;
  }

  /** Migration: parses and checks a saved state against this device without applying it (StateError naming the field). */
  checkState(s: unknown, path = 'virtio'): CheckedVirtioState {
    return parseVirtioState(s, path, this);
  }

  /**
   * Restores what saveState returned, on a device created with the same
   * properties. The whole state is parsed and checked first (checkState);
   * fields added after the first stream version are optional: an absent
   * `disabled` means bus mastering was on. A ready queue of a live device
   * (DRIVER_OK, not broken) is re-activated; one that fails to activate is a
   * load error (StateError), not a device left half-restored.
   */
  loadState(raw: unknown): void {
    const s = this.checkState(raw);
    this.deferred.length = 0;
    this.deferred.push(...s.deferred);
    this.kickedWhileDisabled.clear();
    for (const q of s.kickedWhileDisabled) this.kickedWhileDisabled.add(q);
    this.driverFeatures = s.driverFeatures;
    this.status = s.status;
    this.configGeneration = s.configGeneration;
    this.broken = s.broken;
    this.disabled = s.disabled;
    s.queues.forEach((qs, i) => this.queues[i].load(qs));
    if (s.live) {
      const features = { eventIdx: this.hasFeature(V.VIRTIO_RING_F_EVENT_IDX), indirect: this.hasFeature(V.VIRTIO_RING_F_INDIRECT_DESC) };
      for (const q of this.queues) {
        if (!q.ready) continue;
        const err = q.activate(this.memory, features);
        if (err) throw new StateError(`virtio.queues[${q.index}]`, `cannot be re-activated: ${describeQueueError(err)}`);
      }
      this.stopHandlers();
      this.startHandlers();
    }
  }
}
