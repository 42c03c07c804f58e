import * as V from './generated/virtio-uapi';
import { PollSettings, POLL_START_NS, PollTarget, PollWindow, QueuePoller } from './poll';
import { kickStalled, vringNeedEvent } from './stall';
import { fakeMemory, MockDriverQueue } from './testing';
import { SplitVirtqueue } from './virtqueue';

function setup(eventIdx: boolean) {
  const mem = fakeMemory(1 << 20);
  const drv = new MockDriverQueue(mem, 8);
  const q = new SplitVirtqueue(0, 256);
  drv.program(q);
  expect(q.activate(mem, { eventIdx, indirect: false })).toBeUndefined();
  const usedFlags = () => mem.readU16(drv.used);
  return { mem, drv, q, usedFlags };
}

const settings = (maxNs: number, grow = 0, shrink = 0): PollSettings => ({ maxNs, grow, shrink });
/** Two turns of the event loop: a poll is scheduled behind the immediates of the turn that asked for it. */
const nextTurn = async () => {
  for (let i = 0; i < 2; i++) await new Promise((r) => setImmediate(r));
};

describe('PollWindow', () => {
  it('grows from POLL_START_NS by poll-grow while wake-ups come within poll-max-ns, up to it', () => {
    const w = new PollWindow(settings(32768));
    expect(w.ns).toBe(0);
    const seen: number[] = [];
    for (let i = 0; i < 6; i++) {
      w.woke(20000);
      seen.push(w.ns);
    }
    expect(seen).toEqual([POLL_START_NS, 2 * POLL_START_NS, 4 * POLL_START_NS, 32768, 32768, 32768]);
    const w4 = new PollWindow(settings(1_000_000, 4));
    w4.woke(500_000);
    w4.woke(500_000);
    expect(w4.ns).toBe(4 * POLL_START_NS);
  });

  it('a wake-up the window would have caught changes nothing', () => {
    const w = new PollWindow(settings(32768));
    w.woke(10); // off: the first window
    w.woke(POLL_START_NS + 1);
    expect(w.ns).toBe(2 * POLL_START_NS);
    w.woke(100);
    expect(w.ns).toBe(2 * POLL_START_NS);
  });

  it('shrinks after idle longer than poll-max-ns: halves with poll-shrink=2, back to 0 with the default 0', () => {
    const halving = new PollWindow(settings(65536, 2, 2));
    for (let i = 0; i < 6; i++) halving.woke(60000);
    expect(halving.ns).toBe(65536);
    halving.woke(1e9);
    expect(halving.ns).toBe(32768);
    for (let i = 0; i < 3; i++) halving.woke(1e9);
    expect(halving.ns).toBe(POLL_START_NS);
    halving.woke(1e9);
    expect(halving.ns).toBe(0); // below the first window: off until the next busy spell
    const reset = new PollWindow(settings(65536));
    for (let i = 0; i < 6; i++) reset.woke(60000);
    reset.woke(65537);
    expect(reset.ns).toBe(0);
  });

  it('poll-max-ns=0 never polls', () => {
    const w = new PollWindow(settings(0));
    for (let i = 0; i < 4; i++) w.woke(1);
    expect(w.ns).toBe(0);
  });
});

describe('SplitVirtqueue.suppressNotification', () => {
  it('without EVENT_IDX sets VRING_USED_F_NO_NOTIFY; enableNotification clears it and re-checks', () => {
    const { drv, q, usedFlags } = setup(false);
    q.suppressNotification();
    expect(usedFlags()).toBe(V.VRING_USED_F_NO_NOTIFY);
    drv.addChain([{ addr: 0x10000, len: 16 }]);
    expect(q.enableNotification()).toBe(true); // published while suppressed: the caller must take it
    expect(usedFlags()).toBe(0);
  });

  it('with EVENT_IDX puts avail_event half the index space ahead: no publish of the driver needs a kick', () => {
    const { drv, q } = setup(true);
    for (let i = 0; i < 3; i++) drv.addChain([{ addr: 0x10000, len: 16 }]);
    while (q.pop());
    q.suppressNotification();
    expect(drv.availEvent()).toBe(3 + 0x8000);
    // The driver publishes from its index 3 on (one at a time, then several at once): never a kick.
    expect(vringNeedEvent(drv.availEvent(), 4, 3)).toBe(false);
    expect(vringNeedEvent(drv.availEvent(), 9, 3)).toBe(false);
    // Nor when its `old` is its index at its last kick, long before (the guest kit's and, per batch, Linux's rule).
    expect(vringNeedEvent(drv.availEvent(), 4, 0)).toBe(false);
    expect(vringNeedEvent(drv.availEvent(), 3 + 8, 0)).toBe(false);
    expect(q.enableNotification()).toBe(false);
    expect(drv.availEvent()).toBe(3);
    expect(vringNeedEvent(drv.availEvent(), 4, 3)).toBe(true);
  });

  it('the stall detector sees no missing kick while the device suppresses notifications, and one after re-enabling', () => {
    for (const eventIdx of [false, true]) {
      const { drv, q } = setup(eventIdx);
      q.suppressNotification();
      drv.addChain([{ addr: 0x10000, len: 16 }]); // published, not kicked (the driver was told not to)
      expect(kickStalled(q.ringSnapshot()!, q.lastAvailIdx, undefined, false)).toBe(false);
      q.enableNotification();
      drv.addChain([{ addr: 0x10000, len: 16 }]); // published again, still no kick: now one was owed
      expect(kickStalled(q.ringSnapshot()!, q.lastAvailIdx, undefined, false)).toBe(true);
    }
  });
});

describe('QueuePoller', () => {
  /** A target over one queue; `onReap` runs at each look at the completion ring (the test's hook into the loop). */
  function poller(eventIdx: boolean, maxNs: number, onReap: (n: number) => number = () => 0) {
    const s = setup(eventIdx);
    let clock = 0;
    let looks = 0;
    const processed: number[] = [];
    const state = { canPoll: true, memoryAccess: true };
    const target: PollTarget = {
      canPoll: () => state.canPoll,
      memoryAccess: () => state.memoryAccess,
      queues: () => [s.q],
      reapCompletions: () => onReap(++looks),
      process: (q) => {
        processed.push(q.index);
        while (q.pop());
      },
      fault: (e) => {
        throw e;
      },
    };
    const p = new QueuePoller(settings(maxNs), target, () => (clock += 1000));
    return { ...s, p, processed, state, looks: () => looks };
  }

  it('finds a buffer published during the window, with the driver told not to kick meanwhile; notifications are back on once a poll times out', async () => {
    let flagsWhilePolling = -1;
    const t = poller(false, 32768, (n) => {
      if (n === 3) {
        flagsWhilePolling = t.usedFlags();
        t.drv.addChain([{ addr: 0x10000, len: 16 }]);
      }
      return 0;
    });
    t.p.window.ns = 16384;
    t.p.poll();
    expect(flagsWhilePolling).toBe(V.VRING_USED_F_NO_NOTIFY);
    expect(t.processed).toEqual([0]);
    expect(t.p.counters).toEqual({ polls: 1, hits: 1, timeouts: 0 });
    // Still off until the next poll (right after this turn): the driver's next buffer needs no kick either.
    expect(t.usedFlags()).toBe(V.VRING_USED_F_NO_NOTIFY);
    await nextTurn();
    expect(t.p.counters).toEqual({ polls: 2, hits: 1, timeouts: 1 });
    expect(t.usedFlags()).toBe(0);
  });

  it('release() turns suppressed notifications back on (drain, reset), but not while the device may not write guest memory', async () => {
    const t = poller(false, 32768, (n) => {
      if (n === 1) t.drv.addChain([{ addr: 0x10000, len: 16 }]);
      return 0;
    });
    t.p.window.ns = 16384;
    t.p.poll();
    expect(t.usedFlags()).toBe(V.VRING_USED_F_NO_NOTIFY);
    t.state.memoryAccess = false; // bus mastering off
    expect(t.p.release()).toBe(false);
    expect(t.usedFlags()).toBe(V.VRING_USED_F_NO_NOTIFY);
    t.state.memoryAccess = true;
    expect(t.p.release()).toBe(false);
    expect(t.usedFlags()).toBe(0);
    t.p.close();
  });

  it('completions found by the poll count as work', () => {
    const t = poller(true, 32768, (n) => (n === 2 ? 1 : 0));
    t.p.window.ns = 16384;
    t.p.poll();
    expect(t.p.counters.hits).toBe(1);
    expect(t.processed).toEqual([]);
  });

  it('times out after the window, then sleeps: no further poll until a kick or completion, and the window adapts on it', async () => {
    const t = poller(true, 32768);
    t.p.window.ns = 8192;
    t.p.poll();
    expect(t.p.counters).toEqual({ polls: 1, hits: 0, timeouts: 1 });
    expect(t.looks()).toBeGreaterThanOrEqual(8); // the clock advances 1000 ns per look
    expect(t.drv.availEvent()).toBe(0); // re-enabled (avail_event at lastAvailIdx)
    const looks = t.looks();
    await nextTurn();
    await nextTurn();
    expect(t.looks()).toBe(looks); // idle: not a single look
    t.p.activity(); // woke 1000 ns after the timed-out poll's start + the clock's own steps: within poll-max-ns
    expect(t.p.window.ns).toBe(16384);
    await nextTurn();
    expect(t.p.counters.polls).toBe(2);
  });

  it('stops at once when a control message waits (canPoll false) and leaves what it found for the next poll', async () => {
    const t = poller(false, 1e9, (n) => {
      if (n === 2) {
        t.drv.addChain([{ addr: 0x10000, len: 16 }]);
        t.state.canPoll = false; // e.g. bus mastering off was posted
      }
      return 0;
    });
    t.p.window.ns = 1e9;
    t.p.poll();
    expect(t.looks()).toBe(2);
    expect(t.processed).toEqual([]);
    expect(t.usedFlags()).toBe(0); // never left suppressed
    await nextTurn();
    expect(t.processed).toEqual([]); // still not allowed
    t.state.canPoll = true;
    t.p.activity(); // bus mastering back on: the plane says so
    await nextTurn();
    expect(t.processed).toEqual([0]);
  });

  it('does nothing while it may not poll, and never with poll-max-ns=0', async () => {
    const t = poller(false, 32768);
    t.state.canPoll = false;
    t.p.window.ns = 8192;
    t.p.poll();
    expect(t.looks()).toBe(0);
    expect(t.usedFlags()).toBe(0);
    const off = poller(false, 0);
    off.p.activity();
    await nextTurn();
    expect(off.looks()).toBe(0);
    expect(off.p.enabled).toBe(false);
  });
});
