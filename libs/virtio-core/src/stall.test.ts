/**
 * The stall detector's rules (stall.ts) on a device with real rings in fake
 * guest memory: each side, each cause, what is never a stall, one event per
 * episode, and time counted only while the VM runs.
 */
import * as V from './generated/virtio-uapi';
import { StallReport, VirtioDevice } from './device';
import { DeliveryBlock, kickStalled, vringNeedEvent } from './stall';
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
