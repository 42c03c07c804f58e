/**
 * The stall detector's rules (stall.ts) on a device with real rings in fake
 * guest memory: each side, each cause, what is never a stall, one event per
 * episode, and time counted only while the VM runs.
 */
import * as V from './generated/virtio-uapi';
import { StallReport, VirtioDevice } from './device';
import {
  DeliveryBlock,
  kickStalled,
  parseProcStatSteal,
  parseSchedstat,
  parseStatState,
  RunClock,
  ThreadSched,
  vringNeedEvent,
} from './stall';
import { fakeMemory, MockDriverQueue } from './testing';
import { availEventAddr, SplitVirtqueue } from './virtqueue';

const STALL_MS = 500;
const STEP = STALL_MS / 4;

class Dev extends VirtioDevice {
  /** The device keeps buffers of this queue on purpose (as virtio-net RX). */
  held = -1;
  /** Take chains but do not complete them yet. */
  complete = true;
  /** What the transport would answer (InterruptDeliveryView). */
  block: DeliveryBlock | undefined;
  signalled = 0;
  constructor(eventIdx: boolean) {
    super(fakeMemory(1 << 20), { id: 'd0', deviceId: 99, numQueues: 2, queueMaxSize: 256, features: 0n, eventIdx });
    this.interrupt = {
      signalQueue: () => this.signalled++,
      signalConfig: () => undefined,
      queueDeliveryBlock: () => this.block,
    };
  }
  readConfig(): number {
    return 0;
  }
  override holdsBuffers(queue: number): boolean {
    return queue === this.held;
  }
  protected processQueue(q: SplitVirtqueue): void {
    if (q.index === this.held) return;
    do {
      q.disableNotification();
      for (let c = this.popChain(q); c; c = this.popChain(q)) if (this.complete) this.pushUsed(q, c.head, 0);
    } while (this.canProcess && q.enableNotification());
    if (this.complete) this.signalUsed(q);
  }
  start(drv: MockDriverQueue, eventIdx: boolean): void {
    this.writeStatus(V.VIRTIO_CONFIG_S_ACKNOWLEDGE | V.VIRTIO_CONFIG_S_DRIVER);
    this.writeDriverFeatures(0, eventIdx ? 1 << V.VIRTIO_RING_F_EVENT_IDX : 0);
    this.writeDriverFeatures(1, 1);
    this.writeStatus(V.VIRTIO_CONFIG_S_ACKNOWLEDGE | V.VIRTIO_CONFIG_S_DRIVER | V.VIRTIO_CONFIG_S_FEATURES_OK);
    drv.program(this.queues[0]);
    this.writeStatus(
      V.VIRTIO_CONFIG_S_ACKNOWLEDGE | V.VIRTIO_CONFIG_S_DRIVER | V.VIRTIO_CONFIG_S_FEATURES_OK | V.VIRTIO_CONFIG_S_DRIVER_OK,
    );
    this.setDisabled(false);
  }
}

function setup(eventIdx = false) {
  const dev = new Dev(eventIdx);
  const drv = new MockDriverQueue(dev.memory, 16);
  dev.start(drv, eventIdx);
  let now = 1_000_000;
  const reports: StallReport[] = [];
  /** Runs the detector for `ms` in steps of STEP (the monitor's period); returns what it reported. */
  const run = (ms: number, running = true): StallReport[] => {
    const out: StallReport[] = [];
    for (let t = 0; t <= ms; t += STEP) {
      out.push(...dev.checkStalls(now, running, STALL_MS));
      now += STEP;
    }
    reports.push(...out);
    return out;
  };
  /** A one-buffer chain made available, as a driver does before its kick. */
  const publish = () => drv.addChain([{ addr: 0x40000, len: 16, write: true }]);
  return { dev, drv, run, publish, reports, now: () => now };
}

const kinds = (rs: StallReport[]) => rs.map((r) => `${r.transition.kind} ${r.transition.side} ${r.transition.cause}`);

describe('stall detector: kick side', () => {
  it('buffers published with no kick while notifications were on: one no-notify stall after stall-ms, cleared by the kick', () => {
    const s = setup();
    s.publish();
    expect(s.run(STALL_MS - 2 * STEP)).toEqual([]);
    const r = s.run(4 * STEP);
    expect(kinds(r)).toEqual(['stall kick no-notify']);
    expect(r[0].indices).toEqual({ 'avail-idx': 1, 'last-avail-idx': 0, 'used-idx': 0 });
    expect(r[0].transition.stalledMs).toBeGreaterThanOrEqual(STALL_MS);
    expect(s.run(10 * STALL_MS)).toEqual([]); // one event per episode
    expect(s.dev.queueTiming(0, s.now()).stall).toMatchObject({ side: 'kick', cause: 'no-notify' });
    s.dev.notify(0, 'ioeventfd');
    expect(kinds(s.run(0))).toEqual(['cleared kick no-notify']);
    expect(s.dev.queueTiming(0, s.now()).stall).toBeNull();
  });

  it('a busy queue that shows a kick still in flight at every check is not stalled: each kick restarts the clock', () => {
    // A polling driver: at every check one buffer is published and its kick not yet processed (the
    // ioeventfd is readable, the event loop has not run it), but the kick does come before the next check.
    const s = setup();
    for (let t = 0; t < 8 * STALL_MS; t += STEP) {
      s.publish();
      expect(s.run(0)).toEqual([]);
      s.dev.notify(0, 'ioeventfd');
    }
    // The same state held with no kick for stall-ms is still a stall.
    s.publish();
    expect(kinds(s.run(STALL_MS + STEP))).toEqual(['stall kick no-notify']);
  });

  it('a kick that arrived is never a kick-side stall, even while the device keeps the buffers on purpose', () => {
    const s = setup();
    s.dev.held = 0;
    s.publish();
    s.dev.notify(0, 'ioeventfd');
    s.publish(); // and more, without a kick: held on purpose, so not required either
    expect(s.run(4 * STALL_MS)).toEqual([]);
    expect(s.dev.queues[0].pending()).toBe(2);
  });

  it('buffers published while the device had set VRING_USED_F_NO_NOTIFY need no kick', () => {
    const s = setup();
    s.dev.queues[0].disableNotification();
    s.publish();
    expect(s.run(4 * STALL_MS)).toEqual([]);
  });

  it('EVENT_IDX: no stall until the avail index crosses avail_event, then no-notify with avail-event in the event', () => {
    const s = setup(true);
    s.dev.queues[0].beginBatch(0); // hold processing: avail_event stays where the device left it
    s.dev.queues[0].endBatch();
    s.drv.mem.writeU16(availEventAddr(s.drv.used, s.drv.size), 5); // avail_event = 5: kick when idx passes 5
    for (let i = 0; i < 5; i++) s.publish();
    expect(s.run(4 * STALL_MS)).toEqual([]); // idx 5 has not crossed 5
    s.publish(); // idx 6 crosses it
    const r = s.run(STALL_MS + STEP);
    expect(kinds(r)).toEqual(['stall kick no-notify']);
    expect(r[0].indices).toMatchObject({ 'avail-idx': 6, 'avail-event': 5 });
  });

  it('buffers the device took without a kick (its own re-check) are not owed a kick', () => {
    const ring = { availIdx: 7, availFlags: 0, usedIdx: 7, usedFlags: 0, eventIdx: false };
    expect(kickStalled(ring, 7, 3, false)).toBe(false);
    expect(kickStalled({ ...ring, availIdx: 8 }, 7, 3, false)).toBe(true);
    expect(kickStalled({ ...ring, availIdx: 8 }, 7, 8, false)).toBe(false);
    expect(vringNeedEvent(0xffff, 0, 0xfffe)).toBe(true); // wraps
  });

  it('counts only VM run time: a stopped VM never stalls, and resumes counting where it was', () => {
    const s = setup();
    s.publish();
    expect(s.run(STALL_MS - STEP)).toEqual([]); // 2 * STEP short of stall-ms... (steps 0..STALL_MS-STEP)
    expect(s.run(20 * STALL_MS, false)).toEqual([]);
    expect(kinds(s.run(2 * STEP))).toEqual(['stall kick no-notify']);
  });

  it('stall-ms 0 never reports, but the rates and timing fields are kept', () => {
    const s = setup();
    let now = 5_000;
    s.dev.checkStalls(now, true, 0);
    for (let i = 0; i < 4; i++) {
      s.publish();
      s.dev.notify(0, 'ioeventfd');
    }
    now += 500;
    s.publish();
    expect(s.dev.checkStalls(now, true, 0)).toEqual([]);
    const t = s.dev.queueTiming(0, now + 10);
    expect(t['kicks-per-sec']).toBe(8);
    expect(t['interrupts-per-sec']).toBe(8);
    expect(t['avail-idx-at-last-kick']).toBe(4);
    expect(typeof t['last-kick-ms-ago']).toBe('number');
  });
});

describe('stall detector: interrupt side', () => {
  it('an interrupt dropped by fault injection: dropped, cleared by the call that delivers it', () => {
    const s = setup();
    s.dev.faults[0].dropInterrupts = 1;
    s.publish();
    s.dev.notify(0, 'ioeventfd');
    expect(s.dev.signalled).toBe(0);
    const r = s.run(STALL_MS + STEP);
    expect(kinds(r)).toEqual(['stall interrupt dropped']);
    expect(r[0].indices).toEqual({ 'avail-idx': 1, 'last-avail-idx': 1, 'used-idx': 1 });
    s.dev.debugCall(0);
    expect(s.dev.signalled).toBe(1);
    expect(kinds(s.run(0))).toEqual(['cleared interrupt dropped']);
  });

  it.each(['no-vector', 'msix-disabled', 'no-irqfd'] as const)(
    'an interrupt the transport sent nowhere (%s) stays lost until one is delivered',
    (block) => {
      const s = setup();
      s.dev.block = block;
      s.publish();
      s.dev.notify(0, 'ioeventfd');
      expect(kinds(s.run(STALL_MS + STEP))).toEqual([`stall interrupt ${block}`]);
      s.dev.block = undefined; // the driver fixed its vector: the interrupt already sent is still lost
      expect(s.run(STALL_MS)).toEqual([]);
      s.dev.debugCall(0);
      expect(kinds(s.run(0))).toEqual([`cleared interrupt ${block}`]);
    },
  );

  it('a vector left masked with its PBA bit set: vector-masked; once unmasked and delivered, cleared when the driver consumes', () => {
    const s = setup(true);
    s.drv.setUsedEvent(0);
    s.dev.block = 'vector-masked';
    s.publish();
    s.dev.notify(0, 'ioeventfd');
    expect(s.dev.signalled).toBe(1);
    expect(kinds(s.run(STALL_MS + STEP))).toEqual(['stall interrupt vector-masked']);
    s.dev.block = undefined; // unmasked: the pending interrupt is delivered
    s.drv.takeUsed();
    s.drv.setUsedEvent(1); // what a driver that consumed the entry writes
    expect(kinds(s.run(0))).toEqual(['cleared interrupt vector-masked']);
  });

  it('EVENT_IDX: an interrupt delivered and the used entries never consumed is driver-silent, with used-event in the event', () => {
    const s = setup(true);
    s.drv.setUsedEvent(0);
    s.publish();
    s.dev.notify(0, 'ioeventfd');
    expect(s.dev.signalled).toBe(1);
    const r = s.run(STALL_MS + STEP);
    expect(kinds(r)).toEqual(['stall interrupt driver-silent']);
    expect(r[0].indices).toMatchObject({ 'used-idx': 1, 'used-event': 0 });
    s.drv.setUsedEvent(1);
    expect(kinds(s.run(0))).toEqual(['cleared interrupt driver-silent']);
  });

  it('a driver that consumes its used entries (used_event follows) is never driver-silent', () => {
    const s = setup(true);
    for (let i = 0; i < 5; i++) {
      s.drv.setUsedEvent(s.drv.lastUsedIdx);
      s.publish();
      s.dev.notify(0, 'ioeventfd');
      s.drv.takeUsed();
      s.drv.setUsedEvent(s.drv.lastUsedIdx);
      s.run(STEP);
    }
    expect(s.dev.signalled).toBe(5);
    expect(s.run(4 * STALL_MS)).toEqual([]);
  });

  it('a busy driver that has a fresh interrupt outstanding at every check is not driver-silent: each new debt restarts the clock', () => {
    const s = setup(true);
    for (let t = 0; t < 8 * STALL_MS; t += STEP) {
      s.drv.setUsedEvent(s.drv.lastUsedIdx);
      s.publish();
      s.dev.notify(0, 'ioeventfd');
      expect(s.run(0)).toEqual([]); // the check comes before the driver ran its interrupt handler
      s.drv.takeUsed();
    }
    // A debt nobody consumes is still reported after stall-ms.
    s.drv.setUsedEvent(s.drv.lastUsedIdx);
    s.publish();
    s.dev.notify(0, 'ioeventfd');
    expect(kinds(s.run(STALL_MS + STEP))).toEqual(['stall interrupt driver-silent']);
  });

  it('a driver that polls with interrupts suppressed (used_event one behind, or NO_INTERRUPT) is owed nothing', () => {
    for (const eventIdx of [true, false]) {
      const s = setup(eventIdx);
      if (eventIdx) s.drv.setUsedEvent(0xffff);
      else s.drv.setNoInterrupt(true);
      // the first completion with EVENT_IDX is always signalled (nothing signalled before): one consumed round first
      s.publish();
      s.dev.notify(0, 'ioeventfd');
      s.drv.takeUsed();
      if (eventIdx) s.drv.setUsedEvent(0);
      const before = s.dev.signalled;
      for (let i = 0; i < 10; i++) {
        s.publish();
        s.dev.notify(0, 'ioeventfd');
      }
      expect(s.dev.signalled).toBe(before);
      expect(s.run(4 * STALL_MS)).toEqual([]);
    }
  });

  it("without EVENT_IDX a delivered interrupt settles the debt (the driver's progress is invisible)", () => {
    const s = setup(false);
    s.publish();
    s.dev.notify(0, 'ioeventfd');
    expect(s.dev.signalled).toBe(1);
    expect(s.run(4 * STALL_MS)).toEqual([]);
  });

  it('a device reset ends everything owed', () => {
    const s = setup();
    s.dev.faults[0].dropInterrupts = 1;
    s.publish();
    s.dev.notify(0, 'ioeventfd');
    s.dev.reset();
    expect(s.run(4 * STALL_MS)).toEqual([]);
    expect(s.dev.queueTiming(0, s.now())).toMatchObject({ 'last-kick-ms-ago': null, 'last-interrupt-ms-ago': null, stall: null });
  });
});

describe('stall detector: VM run time under host CPU starvation (RunClock)', () => {
  /** A RunClock over fake threads whose figures (ns; runnable now) the test sets. */
  function clock() {
    const threads = new Map<number, ThreadSched | undefined>();
    const set = (tid: number, runNs: number, waitNs: number, runnable = false) => threads.set(tid, { runNs, waitNs, runnable });
    return { c: new RunClock((tid) => threads.get(tid)), threads, set };
  }
  const MS = 1e6;

  it("wall time less the most-starved thread's credited run-queue wait over each interval", () => {
    const { c, set } = clock();
    set(1, 0, 5000 * MS);
    set(2, 0, 7000 * MS);
    expect(c.tick(1000, [1, 2])).toBe(0); // the first reading only sets the baselines
    set(1, 0, 5030 * MS);
    set(2, 0, 7080 * MS); // 30 ms and 80 ms waited in a 100 ms interval
    expect(c.tick(1100, [1, 2])).toBe(20);
    expect(c.tick(1200, [1, 2])).toBe(120); // nobody waited
    set(2, 0, 7380 * MS); // waited the whole interval and more (a wait is credited when it ends)
    expect(c.tick(1400, [1, 2])).toBe(120);
    expect(c.schedstat).toBe(true);
  });

  it('a thread runnable at a reading counts what it neither ran nor had credited as waiting; the credit that follows is not counted twice', () => {
    const { c, set } = clock();
    set(1, 0, 0);
    c.tick(0, [1]);
    set(1, 10 * MS, 0, true); // ran 10 ms of 100, runnable now: 90 ms waiting, not yet credited
    expect(c.tick(100, [1])).toBe(10);
    set(1, 10 * MS, 0, true); // still waiting the whole next interval
    expect(c.tick(200, [1])).toBe(10);
    set(1, 60 * MS, 200 * MS, false); // the wait ended (190 ms counted in advance, 200 credited), ran 50 ms, now asleep
    expect(c.tick(300, [1])).toBe(100); // 100 ms interval - 10 ms of the credit not counted yet
    set(1, 60 * MS, 200 * MS, false); // asleep the whole interval: the guest could run
    expect(c.tick(400, [1])).toBe(200);
  });

  it('a thread that appears starts from its own baseline; one that cannot be read counts as never starved (wall time)', () => {
    const { c, set, threads } = clock();
    set(1, 0, 0);
    c.tick(0, [1]);
    set(3, 0, 9000 * MS); // a vCPU thread that started meanwhile: its past wait is not this interval's
    expect(c.tick(100, [1, 3])).toBe(100);
    set(3, 0, 9050 * MS);
    expect(c.tick(200, [1, 3])).toBe(150);
    threads.set(3, undefined); // no schedstat (no /proc, a kernel without it)
    expect(c.tick(300, [1, 3])).toBe(250);
    expect(c.schedstat).toBe(false);
  });

  it('on a host that is itself a VM, the most any CPU had stolen in the interval is added to the run-queue wait', () => {
    let steal: number[] | undefined = [100 * MS, 500 * MS];
    const threads = new Map<number, ThreadSched>();
    const c = new RunClock(
      (tid) => threads.get(tid),
      () => steal,
    );
    threads.set(1, { runNs: 0, waitNs: 0, runnable: false });
    c.tick(0, [1]);
    steal = [130 * MS, 510 * MS]; // 30 ms and 10 ms stolen
    threads.set(1, { runNs: 0, waitNs: 20 * MS, runnable: false }); // and 20 ms on the run queue
    expect(c.tick(100, [1])).toBe(50);
    steal = undefined; // gone: wall time less the wait
    expect(c.tick(200, [1])).toBe(150);
  });

  it('parseSchedstat takes the run and wait times (ns); parseStatState the state letter after the last parenthesis', () => {
    expect(parseSchedstat('81042 117910 2\n')).toEqual({ runNs: 81042, waitNs: 117910 });
    expect(parseSchedstat('1 2')).toBeUndefined();
    expect(parseSchedstat('1 x 2')).toBeUndefined();
    expect(parseSchedstat('')).toBeUndefined();
    expect(parseSchedstat('1 99999999999999999999 2')).toBeUndefined();
    expect(parseStatState('4711 (node) R 1 4711 ...')).toBe('R');
    expect(parseStatState('4711 (a) b) S 1 4711 ...')).toBe('S');
    expect(parseStatState('garbage')).toBeUndefined();
    const stat = 'cpu  9 0 9 9 0 0 0 25 0 0\ncpu0 1100177 0 1536244 1164748 2007 0 2252 8838 56899 0\ncpu1 1 0 1 1 0 0 0 12 0 0\nintr 5\n';
    expect(parseProcStatSteal(stat)).toEqual([8838e7, 12e7]); // USER_HZ ticks to ns, the total line left out
    expect(parseProcStatSteal('cpu0 1 2 3\n')).toBeUndefined();
  });

  /** checkStalls every STEP of wall time, the guest's thread starved `starvedMs` of each step (credited at once). */
  function runStarved(s: ReturnType<typeof setup>, ms: number, starvedMs: number, k: ReturnType<typeof clock>, startAt: number) {
    const out: StallReport[] = [];
    let wait = k.threads.get(1)?.waitNs ?? 0;
    for (let t = 0; t <= ms; t += STEP) {
      const now = startAt + t;
      out.push(...s.dev.checkStalls(now, true, STALL_MS, k.c.tick(now, [1])));
      wait += starvedMs * MS;
      k.set(1, 0, wait);
    }
    return out;
  }

  it('EVENT_IDX: a driver starved of CPU for 90% of the time is not driver-silent until it has had stall-ms of run time', () => {
    const s = setup(true);
    const k = clock();
    k.set(1, 0, 0);
    s.drv.setUsedEvent(0);
    s.publish();
    s.dev.notify(0, 'ioeventfd');
    expect(s.dev.signalled).toBe(1);
    // 4 x stall-ms of wall time, but only 0.4 x stall-ms of run time: no alarm.
    expect(runStarved(s, 4 * STALL_MS, STEP * 0.9 + 0.3, k, s.now())).toEqual([]);
    expect(s.dev.queueTiming(0, s.now()).stall).toBeNull();
    // The same queue with the host giving the VM its CPU: reported after stall-ms of run time.
    const r = runStarved(s, STALL_MS + STEP, 0, k, s.now() + 4 * STALL_MS + STEP);
    expect(kinds(r)).toEqual(['stall interrupt driver-silent']);
    expect(r[0].transition.stalledMs).toBeGreaterThanOrEqual(STALL_MS);
    expect(r[0].transition.stalledMs).toBeLessThan(STALL_MS + 2 * STEP);
    expect(Number.isInteger(r[0].transition.stalledMs)).toBe(true); // whole ms in the event and the log line
  });

  it('a lost interrupt under the same starvation is still reported, after stall-ms of run time', () => {
    const s = setup(true);
    const k = clock();
    k.set(1, 0, 0);
    s.dev.faults[0].dropInterrupts = 1;
    s.drv.setUsedEvent(0);
    s.publish();
    s.dev.notify(0, 'ioeventfd');
    // Half of each step starved: stall-ms of run time takes 2 x stall-ms of wall time.
    expect(runStarved(s, STALL_MS, STEP / 2, k, s.now())).toEqual([]);
    const r = runStarved(s, STALL_MS + 2 * STEP, STEP / 2, k, s.now() + STALL_MS + STEP);
    expect(kinds(r)).toEqual(['stall interrupt dropped']);
  });

  it('the rates stay per wall-clock second under starvation', () => {
    const s = setup(true);
    const k = clock();
    k.set(1, 0, 0);
    const t0 = s.now();
    s.dev.checkStalls(t0, true, STALL_MS, k.c.tick(t0, [1]));
    for (let i = 0; i < 5; i++) {
      s.publish();
      s.dev.notify(0, 'ioeventfd');
    }
    k.set(1, 0, 900 * MS); // starved 900 ms of the next second
    s.dev.checkStalls(t0 + 1000, true, STALL_MS, k.c.tick(t0 + 1000, [1]));
    expect(s.dev.queueTiming(0, t0 + 1000)['kicks-per-sec']).toBe(5);
  });
});
