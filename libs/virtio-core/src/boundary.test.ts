/**
 * The virtqueue rules (zero-length buffers, indirect table size, the chain
 * budget) and the device fault boundary.
 */
import * as V from './generated/virtio-uapi';
import { CHAIN_BUDGET, GuestError, VirtioDevice } from './device';
import { GuestMemoryError } from './guest-memory';
import { LogRateLimiter } from './rate-limit';
import { fakeMemory, MockDriverQueue } from './testing';
import { MAX_INDIRECT_ENTRIES, SplitVirtqueue } from './virtqueue';

const MEM = 1 << 20;

function setup(size = 8) {
  const mem = fakeMemory(MEM);
  const drv = new MockDriverQueue(mem, size);
  const q = new SplitVirtqueue(0, 256);
  drv.program(q);
  expect(q.activate(mem, { eventIdx: false, indirect: true })).toBeUndefined();
  return { mem, drv, q };
}

const kindOf = (r: ReturnType<SplitVirtqueue['pop']>) => (r && 'error' in r ? r.error.kind : r ? 'chain' : null);

describe('virtqueue rules', () => {
  it('range-checks a zero-length buffer (outside RAM: address-out-of-range) and refuses one in RAM too', () => {
    const a = setup();
    a.drv.addChain([
      { addr: 0x10000, len: 16 },
      { addr: 0x7fff00000000, len: 0, write: true },
    ]);
    expect(a.q.pop()).toEqual({ error: { kind: 'address-out-of-range', addr: 0x7fff00000000, len: 0 } });
    const b = setup();
    b.drv.addChain([
      { addr: 0x10000, len: 16 },
      { addr: 0, len: 0, write: true },
    ]);
    expect(b.q.pop()).toEqual({ error: { kind: 'zero-length-buffer', index: 1 } });
    const c = setup();
    c.drv.addIndirect(0x20000, [
      { addr: 0x10000, len: 16 },
      { addr: 0, len: 0, write: true },
    ]);
    expect(c.q.pop()).toEqual({ error: { kind: 'zero-length-buffer', index: 1 } });
  });

  it('takes an indirect table of exactly queue-size entries (the indirect descriptor does not count)', () => {
    const size = 8;
    const { drv, q } = setup(size);
    // As Linux builds it with seg_max = size - 2: header, size - 2 data segments, status.
    const bufs = [
      { addr: 0x10000, len: 16 },
      ...Array.from({ length: size - 2 }, (_, i) => ({ addr: 0x40000 + i * 512, len: 512, write: true })),
      { addr: 0x12000, len: 1, write: true },
    ];
    expect(bufs.length).toBe(size);
    drv.addIndirect(0x20000, bufs);
    const r = q.pop();
    expect(r && 'chain' in r && r.chain.writable.length).toBe(size - 1);
  });

  it('takes an indirect table longer than the queue (bounded by its own length), refuses one beyond the cap', () => {
    const { drv, q } = setup(8);
    drv.addIndirect(
      0x20000,
      Array.from({ length: 20 }, (_, i) => ({ addr: 0x40000 + i * 16, len: 16 })),
    );
    expect(kindOf(q.pop())).toBe('chain');
    const b = setup(8);
    b.drv.writeDesc(0, 0x20000, (MAX_INDIRECT_ENTRIES + 1) * 16, V.VRING_DESC_F_INDIRECT, 0);
    b.drv.publish(0);
    expect(kindOf(b.q.pop())).toBe('indirect-too-large');
  });

  it('still refuses a direct chain longer than the queue (a loop through every descriptor)', () => {
    const { drv, q } = setup(4);
    for (let i = 0; i < 4; i++) drv.writeDesc(i, 0x10000, 8, V.VRING_DESC_F_NEXT, (i + 1) % 4);
    drv.publish(0);
    expect(kindOf(q.pop())).toBe('descriptor-loop');
  });

  it('a batch hands out at most its budget; enableNotification says "no more now" and endBatch "come back"', () => {
    const { drv, q } = setup(8);
    for (let i = 0; i < 5; i++) drv.addChain([{ addr: 0x10000, len: 8 }]);
    q.beginBatch(3);
    expect([q.pop(), q.pop(), q.pop()].every((r) => kindOf(r) === 'chain')).toBe(true);
    expect(q.pop()).toBeNull();
    expect(q.enableNotification()).toBe(false);
    expect(q.endBatch()).toBe(true);
    expect(kindOf(q.pop())).toBe('chain');
  });

  it('a budget that runs out just as the ring empties turns notifications (avail_event) on again', () => {
    const mem = fakeMemory(MEM);
    const drv = new MockDriverQueue(mem, 8);
    const q = new SplitVirtqueue(0, 256);
    drv.program(q);
    q.activate(mem, { eventIdx: true, indirect: true });
    for (let i = 0; i < 3; i++) drv.addChain([{ addr: 0x10000, len: 8 }]);
    q.beginBatch(3);
    for (let i = 0; i < 3; i++) expect(kindOf(q.pop())).toBe('chain');
    expect(q.enableNotification()).toBe(false); // refused: budget spent
    expect(drv.availEvent()).toBe(0);
    expect(q.endBatch()).toBe(false); // nothing left, nothing to come back for...
    expect(drv.availEvent()).toBe(3); // ...but the driver is asked to kick for the next chain
  });
});

class Dev extends VirtioDevice {
  /** What processQueue does with each chain. */
  onChain: (head: number) => void = () => undefined;
  taken: number[] = [];
  logs: string[] = [];
  configInterrupts = 0;
  constructor(mem = fakeMemory(MEM)) {
    const logs: string[] = [];
    super(mem, { id: 'dev0', deviceId: 99, numQueues: 2, queueMaxSize: 256, features: 0n, log: (m) => logs.push(m) });
    this.logs = logs;
    this.interrupt = { signalQueue: () => undefined, signalConfig: () => this.configInterrupts++ };
  }
  readConfig(): number {
    throw new TypeError('a VMM bug in readConfig');
  }
  protected processQueue(q: SplitVirtqueue): void {
    do {
      q.disableNotification();
      for (let c = this.popChain(q); c; c = this.popChain(q)) {
        this.taken.push(c.head);
        this.onChain(c.head);
        this.pushUsed(q, c.head, 0);
      }
    } while (this.canProcess && q.enableNotification());
  }
  /** Brings the device to DRIVER_OK with queue 0 laid out by `drv`. */
  start(drv: MockDriverQueue): void {
    this.writeStatus(V.VIRTIO_CONFIG_S_ACKNOWLEDGE | V.VIRTIO_CONFIG_S_DRIVER);
    this.writeDriverFeatures(1, 1);
    this.writeStatus(V.VIRTIO_CONFIG_S_ACKNOWLEDGE | V.VIRTIO_CONFIG_S_DRIVER | V.VIRTIO_CONFIG_S_FEATURES_OK);
    drv.program(this.queues[0]);
    this.writeStatus(
      V.VIRTIO_CONFIG_S_ACKNOWLEDGE | V.VIRTIO_CONFIG_S_DRIVER | V.VIRTIO_CONFIG_S_FEATURES_OK | V.VIRTIO_CONFIG_S_DRIVER_OK,
    );
  }
}

function started(size = 256) {
  const mem = fakeMemory(MEM);
  const dev = new Dev(mem);
  const drv = new MockDriverQueue(mem, size);
  dev.start(drv);
  expect(dev.driverOk).toBe(true);
  return { dev, drv, mem };
}

const tick = () => new Promise((r) => setImmediate(r));

describe('device fault boundary', () => {
  it('a guest memory error thrown while processing a kick: needs-reset, config interrupt, one log line, the kick returns', () => {
    const { dev, drv } = started();
    dev.onChain = () => {
      throw new GuestMemoryError(0xffffffff, 1);
    };
    drv.addChain([{ addr: 0x10000, len: 8 }]);
    expect(() => dev.notify(0, 'ioeventfd')).not.toThrow();
    expect(dev.broken).toBe(true);
    expect(dev.status & V.VIRTIO_CONFIG_S_NEEDS_RESET).toBeTruthy();
    expect(dev.configInterrupts).toBe(1);
    expect(dev.faultCounters).toEqual({ guestErrors: 1, internalErrors: 0 });
    expect(dev.logs).toHaveLength(1);
    expect(dev.logs[0]).toMatch(
      /^dev0: guest error, device needs reset: guest address range \[0xffffffff, \+0x1\) is not guest RAM \(in kick \(ioeventfd\) on queue 0\)$/,
    );
  });

  it('an unexpected exception (a VMM bug) breaks the device too and logs its stack', () => {
    const { dev } = started();
    expect(dev.runGuarded('BAR4 read', () => dev.readConfig())).toBeUndefined();
    expect(dev.broken).toBe(true);
    expect(dev.faultCounters.internalErrors).toBe(1);
    expect(
      dev.logs.some(
        (l) => l.includes('internal error in BAR4 read') && l.includes('TypeError: a VMM bug in readConfig') && /\n\s+at /.test(l),
      ),
    ).toBe(true);
    expect(dev.brokenReason).toBe('internal error in BAR4 read: a VMM bug in readConfig');
  });

  it('a reset after a fault brings the device back', () => {
    const { dev, drv } = started();
    dev.onChain = () => {
      throw new GuestError('bad request');
    };
    drv.addChain([{ addr: 0x10000, len: 8 }]);
    dev.notify(0);
    expect(dev.broken).toBe(true);
    dev.writeStatus(0);
    const drv2 = new MockDriverQueue(dev.memory, 8, 0x80000);
    dev.start(drv2);
    dev.onChain = () => undefined;
    drv2.addChain([{ addr: 0x10000, len: 8 }]);
    dev.notify(0);
    expect(dev.broken).toBe(false);
    expect(drv2.takeUsed()).toHaveLength(1);
  });

  it('guarded callbacks, later() and guardPromise() keep exceptions and rejections inside the device', async () => {
    const { dev } = started();
    const cb = dev.guarded('watcher', () => {
      throw new Error('boom');
    });
    expect(() => cb()).not.toThrow();
    expect(dev.broken).toBe(true);
    dev.writeStatus(0);
    dev.later('timer', () => {
      throw new GuestError('late');
    });
    await tick();
    expect(dev.brokenReason).toBe('late (in timer)');
    dev.writeStatus(0);
    dev.guardPromise('completion', Promise.reject(new GuestError('rejected')));
    await tick();
    expect(dev.brokenReason).toBe('rejected (in completion)');
  });

  it('a kick takes at most CHAIN_BUDGET chains, yields, and takes the rest in a later turn', async () => {
    const { dev, drv } = started(256);
    const n = CHAIN_BUDGET * 2 + 5;
    for (let i = 0; i < n; i++) drv.addChain([{ addr: 0x10000, len: 8 }]);
    dev.notify(0);
    expect(dev.taken).toHaveLength(CHAIN_BUDGET);
    let otherWork = 0;
    setImmediate(() => otherWork++); // another device's work, queued behind the first yield
    await tick();
    expect(otherWork).toBe(1);
    while (dev.taken.length < n) await tick();
    expect(dev.taken).toHaveLength(n);
    expect(drv.takeUsed()).toHaveLength(n);
  });
});

describe('LogRateLimiter', () => {
  it('writes the first lines of a kind, counts the rest, and reports them in the next interval', () => {
    let now = 0;
    const out: string[] = [];
    const l = new LogRateLimiter((m) => out.push(m), { burst: 3, intervalMs: 1000, now: () => now });
    for (let i = 0; i < 10; i++) l.log('needs-reset', `line ${i}`);
    l.log('io-error', 'other kind');
    expect(out).toEqual(['line 0', 'line 1', 'line 2 (further needs-reset messages suppressed for 1 s)', 'other kind']);
    expect(l.suppressed('needs-reset')).toBe(7);
    now = 1000;
    l.log('needs-reset', 'line 10');
    expect(out[4]).toBe('line 10 (7 more needs-reset messages suppressed)');
    expect(l.suppressed('needs-reset')).toBe(0);
  });
});

describe('LogRateLimiter: one limiter for every guest-triggered log', () => {
  it('without refill: one burst, then at most one summary per interval, and the rest on flush', () => {
    let now = 0;
    const out: string[] = [];
    const l = new LogRateLimiter((m) => out.push(m), {
      burst: 2,
      intervalMs: 1000,
      refill: false,
      summary: (kind, n) => `${kind}: ${n} more`,
      now: () => now,
    });
    const built: number[] = [];
    const line = (i: number) => () => {
      built.push(i);
      return `access ${i}`;
    };
    for (let i = 0; i < 100; i++) l.log('unclaimed', line(i));
    expect(out).toEqual(['access 0', 'access 1 (further unclaimed messages are counted and summarised at most every 1 s)']);
    expect(built).toEqual([0, 1]); // a suppressed line is never even formatted
    now = 999;
    l.log('unclaimed', line(100));
    expect(out).toHaveLength(2);
    now = 1000;
    l.log('unclaimed', line(101));
    expect(out[2]).toBe('unclaimed: 100 more');
    for (let i = 0; i < 5; i++) l.log('unclaimed', line(200 + i));
    expect(out).toHaveLength(3); // no new burst: summaries only
    l.flush();
    expect(out[3]).toBe('unclaimed: 5 more');
    l.flush();
    expect(out).toHaveLength(4); // nothing new to report
  });

  it('keeps at most maxKinds kinds, however many distinct kinds a guest provokes; the rest share one', () => {
    const out: string[] = [];
    const l = new LogRateLimiter((m) => out.push(m), { burst: 1, refill: false, maxKinds: 4, now: () => 0 });
    for (let i = 0; i < 10_000; i++) l.log(`device error ${i}`, `device error ${i}`);
    expect(l.kindCount).toBe(4);
    expect(out.slice(0, 3)).toEqual(
      [0, 1, 2].map((i) => `device error ${i} (further device error ${i} messages are counted and summarised at most every 10 s)`),
    );
    expect(out[3]).toMatch(/^device error 3 \(further other messages/);
    expect(out).toHaveLength(4);
    expect(l.suppressed(LogRateLimiter.OVERFLOW_KIND)).toBe(10_000 - 4);
    l.flush();
    expect(out[4]).toBe(`${10_000 - 4} more other messages suppressed`);
  });

  it('with refill, flush() also reports what was suppressed', () => {
    const out: string[] = [];
    const l = new LogRateLimiter((m) => out.push(m), { burst: 1, now: () => 0 });
    l.log('io-error', 'a');
    l.log('io-error', 'b');
    l.log('io-error', 'c');
    l.flush();
    expect(out).toEqual(['a (further io-error messages suppressed for 10 s)', '2 more io-error messages suppressed']);
    expect(l.suppressed('io-error')).toBe(0);
  });
});
