/**
 * A queue's indices, counters and interrupt record in shared memory: the
 * thread that owns the queue (an iothread) writes them as it works, and any
 * other thread (the monitor's x-query-virtio-queue-status, HMP `info
 * virtqueues`, the stall detector) reads the owner's exact values, without a
 * message. One SharedArrayBuffer per device; per queue 16 int32 slots
 * (Atomics) and 2 float64 slots (millisecond timestamps, above int32's range;
 * written by the owner only).
 */
import type { QueueCounters, QueueFaults } from './device';
import type { DeliveryBlock, InterruptRecord } from './stall';

const INTS = 16;
const QUEUE_BYTES = INTS * 4 + 2 * 8;

const I = {
  lastAvailIdx: 0,
  usedIdx: 1,
  kicksEventfd: 2,
  kicksExit: 3,
  kicksDropped: 4,
  chains: 5,
  interrupts: 6,
  suppressed: 7,
  interruptsDropped: 8,
  debugEvents: 9,
  /** 0: nothing owed; 1: owed; 2: owed and dropped. */
  owed: 10,
  owedUsedIdx: 11,
  /** -1: none. */
  owedAvailIdx: 12,
  /** Index in BLOCKS, -1: none. */
  owedBlock: 13,
  /** 1 when lastInterruptAt is set. */
  hasLastInterrupt: 14,
  /** x-debug-virtqueue-drop interrupts=: set by the monitor's thread, spent by the owner's. */
  dropInterrupts: 15,
} as const;
const F = { lastInterruptAt: 0, owedSince: 1 } as const;
const BLOCKS: readonly DeliveryBlock[] = ['vector-masked', 'no-vector', 'msix-disabled', 'no-irqfd'];
const COUNTERS: readonly (keyof QueueCounters)[] = [
  'kicksEventfd',
  'kicksExit',
  'kicksDropped',
  'chains',
  'interrupts',
  'suppressed',
  'interruptsDropped',
  'debugEvents',
];

export class SharedQueueStats {
  private readonly ints: Int32Array[];
  private readonly floats: Float64Array[];

  static byteLength(numQueues: number): number {
    return numQueues * QUEUE_BYTES;
  }

  /** Allocates the shared memory for a device of `numQueues` queues. */
  static create(numQueues: number): SharedQueueStats {
    return new SharedQueueStats(new SharedArrayBuffer(SharedQueueStats.byteLength(numQueues)), numQueues);
  }

  constructor(
    readonly buffer: SharedArrayBuffer,
    readonly numQueues: number,
  ) {
    if (buffer.byteLength < SharedQueueStats.byteLength(numQueues))
      throw new Error(`shared queue stats: ${buffer.byteLength} bytes hold fewer than ${numQueues} queues`);
    this.ints = Array.from({ length: numQueues }, (_, q) => new Int32Array(buffer, q * QUEUE_BYTES, INTS));
    this.floats = Array.from({ length: numQueues }, (_, q) => new Float64Array(buffer, q * QUEUE_BYTES + INTS * 4, 2));
  }

  /** The two indices of a queue as a 2-element view (SplitVirtqueue.shareIndices). */
  indexView(q: number): Int32Array {
    return this.ints[q].subarray(I.lastAvailIdx, I.usedIdx + 1);
  }

  indices(q: number): { lastAvailIdx: number; usedIdx: number } {
    return { lastAvailIdx: Atomics.load(this.ints[q], I.lastAvailIdx), usedIdx: Atomics.load(this.ints[q], I.usedIdx) };
  }

  /** Counters backed by the shared memory, starting from `from` (the owner replaces its own with these). */
  counters(q: number, from?: QueueCounters): QueueCounters {
    const a = this.ints[q];
    const c = {} as QueueCounters;
    for (const k of COUNTERS) {
      const slot = I[k];
      Object.defineProperty(c, k, {
        enumerable: true,
        get: () => Atomics.load(a, slot),
        set: (v: number) => void Atomics.store(a, slot, v),
      });
      if (from) c[k] = from[k];
    }
    return c;
  }

  /**
   * The queue's fault injection with `dropInterrupts` in shared memory (the
   * monitor sets it, the owner spends it); `dropKicks` stays `own`'s (kicks
   * are counted where they arrive).
   */
  faults(q: number, own: QueueFaults): QueueFaults {
    const a = this.ints[q];
    Atomics.store(a, I.dropInterrupts, own.dropInterrupts);
    return {
      get dropKicks() {
        return own.dropKicks;
      },
      set dropKicks(v: number) {
        own.dropKicks = v;
      },
      get dropInterrupts() {
        return Atomics.load(a, I.dropInterrupts);
      },
      set dropInterrupts(v: number) {
        Atomics.store(a, I.dropInterrupts, v);
      },
    };
  }

  /** The owner's interrupt record, published (after each interrupt decision). */
  setInterruptRecord(q: number, rec: InterruptRecord): void {
    const a = this.ints[q];
    const f = this.floats[q];
    if (rec.lastInterruptAt !== undefined) f[F.lastInterruptAt] = rec.lastInterruptAt;
    Atomics.store(a, I.hasLastInterrupt, rec.lastInterruptAt === undefined ? 0 : 1);
    const o = rec.owed;
    if (o) {
      f[F.owedSince] = o.since;
      Atomics.store(a, I.owedUsedIdx, o.usedIdx);
      Atomics.store(a, I.owedAvailIdx, o.availIdx ?? -1);
      Atomics.store(a, I.owedBlock, o.block ? BLOCKS.indexOf(o.block) : -1);
    }
    Atomics.store(a, I.owed, o ? (o.dropped ? 2 : 1) : 0);
  }

  interruptRecord(q: number): InterruptRecord {
    const a = this.ints[q];
    const f = this.floats[q];
    const rec: InterruptRecord = {};
    if (Atomics.load(a, I.hasLastInterrupt)) rec.lastInterruptAt = f[F.lastInterruptAt];
    const owed = Atomics.load(a, I.owed);
    if (owed) {
      const availIdx = Atomics.load(a, I.owedAvailIdx);
      const block = Atomics.load(a, I.owedBlock);
      rec.owed = {
        usedIdx: Atomics.load(a, I.owedUsedIdx),
        since: f[F.owedSince],
        dropped: owed === 2,
        ...(block >= 0 ? { block: BLOCKS[block] } : {}),
        ...(availIdx >= 0 ? { availIdx } : {}),
      };
    }
    return rec;
  }
}
