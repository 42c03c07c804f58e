/**
 * Activation (activation.ts): at DRIVER_OK the device gets memory and, per
 * enabled queue, the queue and its interrupt, and returns one handler per
 * queue; kicks go to the handler; a reset disposes of the handlers.
 */
import * as V from './generated/virtio-uapi';
import { ActivationContext, QueueHandler } from './activation';
import { VirtioDevice, VIRTIO_F_VERSION_1 } from './device';
import { fakeMemory, MockDriverQueue } from './testing';
import { SplitVirtqueue } from './virtqueue';

const OK = V.VIRTIO_CONFIG_S_ACKNOWLEDGE | V.VIRTIO_CONFIG_S_DRIVER | V.VIRTIO_CONFIG_S_FEATURES_OK | V.VIRTIO_CONFIG_S_DRIVER_OK;

class RecordingDevice extends VirtioDevice {
  contexts: ActivationContext[] = [];
  events: string[] = [];
  processed = 0;
  constructor(private readonly own: boolean) {
    super(fakeMemory(), { id: 'act0', deviceId: 42, numQueues: 3, queueMaxSize: 16, features: 0n });
  }
  readConfig(): number {
    return 0;
  }
  protected processQueue(q: SplitVirtqueue): void {
    for (let c = this.popChain(q); c; c = this.popChain(q)) {
      this.processed++;
      this.pushUsed(q, c.head, 0);
    }
  }
  protected override activateQueues(ctx: ActivationContext): (QueueHandler | undefined)[] {
    this.contexts.push(ctx);
    if (!this.own) return super.activateQueues(ctx);
    return ctx.queues.map(
      (r, i) =>
        r && {
          placement: { kind: 'iothread', iothread: 'io-test' },
          kick: (entry: string) => this.events.push(`kick ${i}: ${entry}`),
          drain: async () => void this.events.push(`drain ${i}`),
          dispose: () => this.events.push(`dispose ${i}`),
        },
    );
  }
}

function bringUp(dev: RecordingDevice, ready: number[]) {
  const interrupts: number[] = [];
  dev.interrupt = { signalQueue: (q) => interrupts.push(q), signalConfig: () => undefined, queueInterruptFd: (q) => 100 + q };
  dev.writeStatus(V.VIRTIO_CONFIG_S_ACKNOWLEDGE | V.VIRTIO_CONFIG_S_DRIVER);
  dev.writeDriverFeatures(1, Number(VIRTIO_F_VERSION_1 >> 32n));
  dev.writeStatus(V.VIRTIO_CONFIG_S_ACKNOWLEDGE | V.VIRTIO_CONFIG_S_DRIVER | V.VIRTIO_CONFIG_S_FEATURES_OK);
  const drivers = ready.map((i) => {
    const d = new MockDriverQueue(dev.memory, 8, 0x10000 * (i + 1));
    d.program(dev.queues[i]);
    return d;
  });
  dev.writeStatus(OK);
  return { interrupts, drivers };
}

describe('activation', () => {
  it('hands the handlers memory and the enabled queues with their interrupts, at DRIVER_OK only', () => {
    const dev = new RecordingDevice(true);
    dev.writeStatus(V.VIRTIO_CONFIG_S_ACKNOWLEDGE);
    expect(dev.contexts).toHaveLength(0);
    const { interrupts } = bringUp(dev, [0, 2]);
    expect(dev.contexts).toHaveLength(1);
    const ctx = dev.contexts[0];
    expect(ctx.memory).toBe(dev.memory);
    expect(ctx.queues.map((r) => r?.queue.index)).toEqual([0, undefined, 2]);
    ctx.queues[2]!.interrupt();
    expect(interrupts).toEqual([2]);
    expect(ctx.queues[0]!.interruptFd()).toBe(100);
    expect(ctx.queues[0]!.notifierFd()).toBeUndefined();
    expect(dev.queueHandler(0)?.placement).toEqual({ kind: 'iothread', iothread: 'io-test' });
    expect(dev.queueHandler(1)).toBeUndefined();
  });

  it('sends kicks to the queue handler, counted first; a reset disposes of the handlers and drops later kicks', () => {
    const dev = new RecordingDevice(true);
    bringUp(dev, [0, 2]);
    dev.notify(2, 'ioeventfd');
    expect(dev.events).toEqual(['kick 2: kick (ioeventfd) on queue 2']);
    expect(dev.counters[2].kicksEventfd).toBe(1);
    dev.faults[0].dropKicks = 1;
    dev.notify(0, 'ioeventfd');
    expect(dev.counters[0].kicksDropped).toBe(1);
    expect(dev.events).toHaveLength(1);
    dev.writeStatus(0);
    expect(dev.events.slice(1)).toEqual(['dispose 0', 'dispose 2']);
    dev.notify(2, 'ioeventfd');
    expect(dev.events).toHaveLength(3);
    expect(dev.queueHandler(2)).toBeUndefined();
  });

  it('the default handler processes the queue in-process', () => {
    const dev = new RecordingDevice(false);
    const { drivers } = bringUp(dev, [1]);
    expect(dev.queueHandler(1)?.placement).toEqual({ kind: 'in-process' });
    drivers[0].addChain([{ addr: 0x40000, len: 8 }]);
    dev.notify(1, 'exit');
    expect(dev.processed).toBe(1);
    expect(drivers[0].takeUsed()).toHaveLength(1);
  });
});
