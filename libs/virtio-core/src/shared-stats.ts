/**
 * A queue's indices, counters and interrupt record in shared memory: the
 * thread that owns the queue (an iothread) writes them as it works, and any
 * other thread (the monitor's x-query-virtio-queue-status, HMP `info
 * virtqueues`, the stall detector) reads the owner's exact values, without a
 * message. One SharedArrayBuffer per device; per queue 20 int32 slots
 * (Atomics) and 3 float64 slots (millisecond timestamps, above int32's range;
 * written by the owner only).
 *
 * Both threads may count into the same slots (the owner its notifier's
 * kicks, the main thread exit-path and operator kicks): a counter moves only
 * by atomic additions (see `counters`), and a fault count is spent with a
 * compare-and-swap (`take`), so neither thread loses the other's update.
 */
import type { QueueCounters, QueueFaults } from './device';
import type { DeliveryBlock, InterruptRecord } from './stall';

const INTS = 20;
const FLOATS = 3;
const QUEUE_BYTES = INTS * 4 + FLOATS * 8;

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
  /** x-debug-virtqueue-drop kicks=: set by the monitor's thread, spent by whichever thread takes the kick. */
  dropKicks: 16,
  /** The driver's avail index at the owner's last kick; -1: unknown. */
  kickAvailIdx: 17,
  /** 1 when lastKickAt is set. */
  hasLastKick: 18,
  /** Kicks the owner read from the queue's notifier eventfd itself (never seen by the main thread). */
  kicksOwner: 19,
} as const;
const F = { lastInterruptAt: 0, owedSince: 1, lastKickAt: 2 } as const;
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
    this.floats = Array.from({ length: numQueues }, (_, q) => new Float64Array(buffer, q * QUEUE_BYTES + INTS * 4, FLOATS));
  }

  /** The two indices of a queue as a 2-element view (SplitVirtqueue.shareIndices). */
  indexView(q: number): Int32Array {
    return this.ints[q].subarray(I.lastAvailIdx, I.usedIdx + 1);
  }

  indices(q: number): { lastAvailIdx: number; usedIdx: number } {
    return { lastAvailIdx: Atomics.load(this.ints[q], I.lastAvailIdx), usedIdx: Atomics.load(this.ints[q], I.usedIdx) };
  }

  /**
   * Counters backed by the shared memory, starting from `from` when given
   * (otherwise from what the memory holds: a restarted owner keeps the
   * counts). A counter only moves by increments (`c.k++`, `c.k -= n`): the
   * setter adds the difference to the value its own getter last returned,
   * atomically, so two threads counting into one slot lose nothing.
   */
  counters(q: number, from?: QueueCounters): QueueCounters {
    const a = this.ints[q];
    const c = {} as QueueCounters;
    for (const k of COUNTERS) {
      const slot = I[k];
      let seen: number | undefined;
      Object.defineProperty(c, k, {
        enumerable: true,
        get: () => (seen = Atomics.load(a, slot)),
        set: (v: number) => {
          if (seen === undefined) Atomics.store(a, slot, v);
          else Atomics.add(a, slot, v - seen);
          seen = undefined;
        },
      });
      if (from) Atomics.store(a, slot, from[k]);
    }
    return c;
  }

  /** Kicks the owner read from the queue's notifier eventfd (x-query-virtio-queue-status `kicks-iothread`). */
  ownerKicks(q: number): number {
    return Atomics.load(this.ints[q], I.kicksOwner);
  }

  /** The owner read a kick from the queue's notifier eventfd. */
  noteOwnerKick(q: number): void {
    Atomics.add(this.ints[q], I.kicksOwner, 1);
  }

  /**
   * The queue's fault injection in shared memory: the monitor sets the
   * counts, whichever thread takes the kick or sends the interrupt spends
   * them (`take`, a compare-and-swap). `own`, when given, sets the starting
   * values (otherwise those in the memory stand).
   */
  faults(q: number, own?: QueueFaults): QueueFaults {
    const a = this.ints[q];
    if (own) {
      Atomics.store(a, I.dropKicks, own.dropKicks);
      Atomics.store(a, I.dropInterrupts, own.dropInterrupts);
    }
    return {
      get dropKicks() {
        return Atomics.load(a, I.dropKicks);
      },
      set dropKicks(v: number) {
        Atomics.store(a, I.dropKicks, v);
      },
      get dropInterrupts() {
        return Atomics.load(a, I.dropInterrupts);
      },
      set dropInterrupts(v: number) {
        Atomics.store(a, I.dropInterrupts, v);
      },
      take(kind) {
        const slot = I[kind];
        for (;;) {
          const n = Atomics.load(a, slot);
          if (n <= 0) return false;
          if (Atomics.compareExchange(a, slot, n, n - 1) === n) return true;
        }
      },
    };
  }

  /** The owner's kick record (the stall detector's kick side), published after each kick it took. */
  setKickRecord(q: number, lastKickAt: number | undefined, availIdx: number | undefined): void {
    const a = this.ints[q];
    if (lastKickAt !== undefined) this.floats[q][F.lastKickAt] = lastKickAt;
    Atomics.store(a, I.kickAvailIdx, availIdx ?? -1);
    Atomics.store(a, I.hasLastKick, lastKickAt === undefined ? 0 : 1);
  }

  kickRecord(q: number): { lastKickAt?: number; availIdxAtLastKick?: number } {
    const a = this.ints[q];
    if (!Atomics.load(a, I.hasLastKick)) return {};
    const availIdx = Atomics.load(a, I.kickAvailIdx);
    return { lastKickAt: this.floats[q][F.lastKickAt], ...(availIdx >= 0 ? { availIdxAtLastKick: availIdx } : {}) };
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
