/**
 * The completion path every device shares (VirtioDevice.popRequest /
 * completeRequest / drainRequests): duplicate heads, one interrupt per queue
 * per batch, bus-master deferral of used entries and their guest writes,
 * resets dropping old completions, drain.
 */
import * as V from './generated/virtio-uapi';
import { GuestWrite, InFlightRequest, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX } from './device';
import { fakeMemory, MockDriverQueue } from './testing';
import { availEventAddr, DescriptorChain, pagesOf, splitRingSizes, SplitVirtqueue, usedEventAddr } from './virtqueue';

/** Holds every request until the test completes it. */
class HoldingDevice extends VirtioDevice {
  readonly held: { chain: DescriptorChain; request: InFlightRequest }[] = [];
  constructor(mem = fakeMemory()) {
    super(mem, { id: 'hold0', deviceId: 42, numQueues: 2, queueMaxSize: 16, features: 0n });
  }
  readConfig(): number {
    return 0;
  }
  protected processQueue(q: SplitVirtqueue): void {
    for (let t = this.popRequest(q); t; t = this.popRequest(q)) this.held.push(t);
  }
  complete(i: number, len: number, write?: GuestWrite): boolean {
    return this.completeRequest(this.held[i].request, len, write);
  }
}

function setup(opts: { eventIdx?: boolean } = {}) {
  const mem = fakeMemory();
  const dev = new HoldingDevice(mem);
  const interrupts: number[] = [];
  dev.interrupt = { signalQueue: (q) => interrupts.push(q), signalConfig: () => interrupts.push(-1) };
  const drv = new MockDriverQueue(mem, 8);
  dev.writeStatus(V.VIRTIO_CONFIG_S_ACKNOWLEDGE | V.VIRTIO_CONFIG_S_DRIVER);
  const features = VIRTIO_F_VERSION_1 | (opts.eventIdx ? VIRTIO_RING_F_EVENT_IDX : 0n);
  dev.writeDriverFeatures(0, Number(features & 0xffffffffn));
  dev.writeDriverFeatures(1, Number(features >> 32n));
  dev.writeStatus(V.VIRTIO_CONFIG_S_ACKNOWLEDGE | V.VIRTIO_CONFIG_S_DRIVER | V.VIRTIO_CONFIG_S_FEATURES_OK);
  drv.program(dev.queues[0]);
  dev.writeStatus(V.VIRTIO_CONFIG_S_ACKNOWLEDGE | V.VIRTIO_CONFIG_S_DRIVER | V.VIRTIO_CONFIG_S_FEATURES_OK | V.VIRTIO_CONFIG_S_DRIVER_OK);
  expect(dev.queues[0].active).toBe(true);
  return { mem, dev, drv, interrupts };
}

const turn = () => new Promise((r) => setImmediate(r));
const STATUS = 0x30000;

describe('the completion path', () => {
  it('a head made available again while the device holds it breaks the device (needs-reset, config interrupt)', () => {
    const { dev, drv, interrupts } = setup();
    const head = drv.addChain([{ addr: 0x20000, len: 16 }]);
    dev.notify(0);
    expect(dev.held).toHaveLength(1);
    drv.publish(head); // the same head again, not yet used
    dev.notify(0);
    expect(dev.broken).toBe(true);
    expect(dev.brokenReason).toBe(`chain head ${head} made available again while the device still holds it`);
    expect(dev.status & V.VIRTIO_CONFIG_S_NEEDS_RESET).toBeTruthy();
    expect(interrupts).toContain(-1);
  });

  it('a head used and made available again is a new request', async () => {
    const { dev, drv } = setup();
    const head = drv.addChain([{ addr: 0x20000, len: 16 }]);
    dev.notify(0);
    expect(dev.complete(0, 0)).toBe(true);
    expect(drv.takeUsed()).toEqual([{ id: head, len: 0 }]);
    drv.publish(head);
    dev.notify(0);
    expect(dev.broken).toBe(false);
    expect(dev.held).toHaveLength(2);
    expect(dev.inFlightCount).toBe(1);
  });

  it('completions of one turn share one interrupt per queue', async () => {
    const { dev, drv, interrupts } = setup();
    for (let i = 0; i < 3; i++) drv.addChain([{ addr: 0x20000 + i * 64, len: 16, write: true }]);
    dev.notify(0);
    for (let i = 0; i < 3; i++) dev.complete(i, 4);
    expect(interrupts).toEqual([]); // at the end of the turn
    await turn();
    expect(interrupts).toEqual([0]);
    expect(drv.takeUsed().map((u) => u.len)).toEqual([4, 4, 4]);
    expect(dev.counters[0].interrupts).toBe(1);
  });

  it('honours EVENT_IDX: no interrupt until used_event is crossed', async () => {
    const { dev, drv, interrupts } = setup({ eventIdx: true });
    for (let i = 0; i < 3; i++) drv.addChain([{ addr: 0x20000 + i * 64, len: 16, write: true }]);
    dev.notify(0);
    dev.complete(0, 1);
    await turn();
    expect(interrupts).toEqual([0]); // the first interrupt after activation is always sent
    drv.setUsedEvent(2); // wake me when used idx passes 2 (the third completion)
    dev.complete(1, 1);
    await turn();
    expect(interrupts).toEqual([0]);
    expect(dev.counters[0].suppressed).toBe(1);
    dev.complete(2, 1);
    await turn();
    expect(interrupts).toEqual([0, 0]);
  });

  it('holds used entries and their guest writes while bus mastering is off, and writes the bytes before the entry', async () => {
    const { dev, drv, mem, interrupts } = setup();
    const head = drv.addChain([
      { addr: 0x20000, len: 16 },
      { addr: STATUS, len: 1, write: true },
    ]);
    dev.notify(0);
    mem.writeU8(STATUS, 0xaa);
    dev.setDisabled(true);
    expect(dev.complete(0, 1, { bufs: [{ addr: STATUS, len: 1 }], bytes: Uint8Array.of(0) })).toBe(true);
    await turn();
    expect(mem.readU8(STATUS)).toBe(0xaa);
    expect(drv.takeUsed()).toEqual([]);
    expect(interrupts).toEqual([]);
    expect(dev.saveState().deferred).toEqual([{ queue: 0, head, len: 1 }]);
    dev.setDisabled(false);
    expect(mem.readU8(STATUS)).toBe(0);
    expect(drv.takeUsed()).toEqual([{ id: head, len: 1 }]);
    expect(interrupts).toEqual([0]);
  });

  it('drops a completion from before a reset, and drain waits for it all the same', async () => {
    const { dev, drv, mem, interrupts } = setup();
    drv.addChain([{ addr: STATUS, len: 1, write: true }]);
    dev.notify(0);
    const old = dev.held[0];
    dev.writeStatus(0); // reset
    let drained = false;
    void dev.drainRequests().then(() => (drained = true));
    await turn();
    expect(drained).toBe(false); // its I/O may still write guest memory
    mem.writeU8(STATUS, 0x55);
    expect(dev.complete(0, 1, { bufs: [{ addr: STATUS, len: 1 }], bytes: Uint8Array.of(0) })).toBe(false);
    await turn();
    await turn();
    expect(drained).toBe(true);
    expect(mem.readU8(STATUS)).toBe(0x55);
    expect(interrupts).toEqual([]);
    expect(dev.inFlightCount).toBe(0);
    expect(() => dev.complete(0, 1)).toThrow(/completed twice/);
    expect(old.request.settled).toBe(true);
  });

  it('drain resolves after the last completion and its interrupt', async () => {
    const { dev, drv, interrupts } = setup();
    drv.addChain([{ addr: 0x20000, len: 16 }]);
    drv.addChain([{ addr: 0x20100, len: 16 }]);
    dev.notify(0);
    const order: string[] = [];
    const drained = dev.drainRequests().then(() => order.push(`drained after ${interrupts.length} interrupt(s)`));
    dev.complete(0, 0);
    await turn();
    setImmediate(() => {
      order.push('second completion');
      dev.complete(1, 0);
    });
    await drained;
    expect(order).toEqual(['second completion', 'drained after 2 interrupt(s)']);
  });
});

describe('split ring layout', () => {
  it('gives the areas of virtio 1.2 2.7 and the queue reports the pages its used ring covers', () => {
    expect(splitRingSizes(256)).toEqual({ descTable: 4096, availRing: 518, usedRing: 2054 });
    expect(usedEventAddr(0x1000, 8)).toBe(0x1000 + 4 + 16);
    expect(availEventAddr(0x2000, 8)).toBe(0x2000 + 4 + 64);
    const q = new SplitVirtqueue(0, 256);
    expect(q.usedRingPages()).toEqual([]); // not ready
    q.size = 256;
    q.usedRing = 0x3ffc; // a used ring across a page boundary
    q.descTable = 0x1000;
    q.availRing = 0x2000;
    q.ready = true;
    expect(q.usedRingPages()).toEqual([3, 4]);
    expect(q.ringPages()).toEqual([1, 2, 3, 4]);
    expect(pagesOf(0x1fff, 2)).toEqual([1, 2]);
  });
});
