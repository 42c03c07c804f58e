// SharedQueueStats: two threads (here two views over one buffer, interleaved as threads can be)
// counting into the same slots and spending the same fault counts.
import { takeFault } from './device';
import { SharedQueueStats } from './shared-stats';

describe('SharedQueueStats', () => {
  it("an increment split around another thread's keeps both (atomic add of the difference, not a store)", () => {
    const stats = SharedQueueStats.create(2);
    const mainThread = stats.counters(1);
    const worker = new SharedQueueStats(stats.buffer, 2).counters(1);
    // mainThread.kicksEventfd++ is a read, then a write; the worker counts a kick in between.
    const seen = mainThread.kicksEventfd;
    worker.kicksEventfd++;
    mainThread.kicksEventfd = seen + 1;
    expect(stats.counters(1).kicksEventfd).toBe(2);
    mainThread.chains += 3;
    worker.chains -= 1;
    expect(stats.counters(1)).toMatchObject({ kicksEventfd: 2, chains: 2 });
    expect(stats.counters(0).kicksEventfd).toBe(0); // queues do not share slots
  });

  it('a fault count set on one side is spent once per kick, whichever side takes it', () => {
    const stats = SharedQueueStats.create(1);
    const monitor = stats.faults(0, { dropKicks: 0, dropInterrupts: 0 });
    const worker = new SharedQueueStats(stats.buffer, 1).faults(0);
    monitor.dropKicks = 2;
    expect(takeFault(worker, 'dropKicks')).toBe(true);
    expect(takeFault(monitor, 'dropKicks')).toBe(true);
    expect(takeFault(worker, 'dropKicks')).toBe(false);
    expect(monitor.dropKicks).toBe(0);
    expect(takeFault(worker, 'dropInterrupts')).toBe(false);
    // A worker attaching later does not reset what the monitor set.
    monitor.dropInterrupts = 1;
    const restarted = new SharedQueueStats(stats.buffer, 1).faults(0);
    expect(restarted.dropInterrupts).toBe(1);
  });

  it("the owner's kick record reaches the reader: time and avail index, or nothing before the first kick", () => {
    const stats = SharedQueueStats.create(1);
    expect(stats.kickRecord(0)).toEqual({});
    stats.setKickRecord(0, 1_765_000_000_123, 7);
    expect(stats.kickRecord(0)).toEqual({ lastKickAt: 1_765_000_000_123, availIdxAtLastKick: 7 });
    stats.setKickRecord(0, 1_765_000_000_200, undefined);
    expect(stats.kickRecord(0)).toEqual({ lastKickAt: 1_765_000_000_200 });
    stats.noteOwnerKick(0);
    stats.noteOwnerKick(0);
    expect(stats.ownerKicks(0)).toBe(2);
  });
});
