import { VirtioDevice } from './device';
import { fakeMemory, MockDriverQueue } from './testing';
import { StateError } from './state-check';
import * as V from './generated/virtio-uapi';
import { SplitVirtqueue } from './virtqueue';

class Dev extends VirtioDevice {
  processed = 0;
  constructor() {
    super(fakeMemory(), { id: 'x', deviceId: 99, numQueues: 2, queueMaxSize: 16, features: 0n });
  }
  readConfig(): number {
    return 0;
  }
  protected processQueue(_q: SplitVirtqueue): void {
    this.processed++;
  }
}

describe('VirtioDevice state (migration)', () => {
  it('saves `disabled` only when set, and a state without it loads as enabled', () => {
    const a = new Dev();
    expect('disabled' in a.saveState()).toBe(false);
    a.setDisabled(true);
    a.notify(1);
    const s = a.saveState();
    expect(s.disabled).toBe(true);
    expect(s.kickedWhileDisabled).toEqual([1]);

    const b = new Dev();
    b.setDisabled(true);
    const old = JSON.parse(JSON.stringify(new Dev().saveState()));
    delete old.disabled;
    b.loadState(old);
    expect(b.disabled).toBe(false);

    const c = new Dev();
    c.loadState(JSON.parse(JSON.stringify(s)));
    expect(c.disabled).toBe(true);
    expect(c.saveState().kickedWhileDisabled).toEqual([1]);
  });

  it('refuses a state for another queue count or other offered features', () => {
    const s = new Dev().saveState();
    expect(() => new Dev().loadState({ ...s, queues: s.queues.slice(0, 1) })).toThrow(/the stream has 1 queues, this device has 2/);
    expect(() => new Dev().loadState({ ...s, deviceFeatures: '1' })).toThrow(
      /virtio.deviceFeatures: 0x1 differs from what this device offers/,
    );
  });
});

/** A live device (DRIVER_OK, queue 0 ready in RAM) and its saved state as JSON would carry it. */
function liveState() {
  const d = new Dev();
  const drv = new MockDriverQueue(d.memory, 16, 0x1000);
  drv.program(d.queues[0]);
  d.writeDriverFeatures(0, Number(d.deviceFeatures & 0xffffffffn));
  d.writeDriverFeatures(1, Number(d.deviceFeatures >> 32n));
  d.writeStatus(V.VIRTIO_CONFIG_S_ACKNOWLEDGE | V.VIRTIO_CONFIG_S_DRIVER | V.VIRTIO_CONFIG_S_FEATURES_OK);
  d.writeStatus(V.VIRTIO_CONFIG_S_ACKNOWLEDGE | V.VIRTIO_CONFIG_S_DRIVER | V.VIRTIO_CONFIG_S_FEATURES_OK | V.VIRTIO_CONFIG_S_DRIVER_OK);
  expect(d.broken).toBe(false);
  expect(d.queues[0].active).toBe(true);
  return JSON.parse(JSON.stringify(d.saveState()));
}

describe('VirtioDevice state from an untrusted stream', () => {
  it('loads a live state and re-activates its ready queue', () => {
    const s = liveState();
    s.queues[0].lastAvailIdx = 0xfffe;
    s.queues[0].usedIdx = 0xfffe;
    const d = new Dev();
    d.loadState(s);
    expect(d.queues[0].active).toBe(true);
    expect(d.queues[0].lastAvailIdx).toBe(0xfffe);
  });

  // [what, how the state is broken, the field and problem the error names]
  const bad: [string, (s: any) => void, RegExp][] = [
    [
      'a negative ring index',
      (s) => (s.queues[0].lastAvailIdx = -1),
      /^virtio\.queues\[0\]\.lastAvailIdx: -1 is out of range \(0\.\.65535\)$/,
    ],
    ['a ring index above 0xffff', (s) => (s.queues[0].usedIdx = 0x10000), /virtio\.queues\[0\]\.usedIdx: 65536 is out of range/],
    [
      'a fractional ring index',
      (s) => (s.queues[0].lastAvailIdx = 1.5),
      /virtio\.queues\[0\]\.lastAvailIdx: expected an integer, got 1\.5/,
    ],
    ['a ring index as a string', (s) => (s.queues[0].usedIdx = '3'), /virtio\.queues\[0\]\.usedIdx: expected an integer, got "3"/],
    ['a missing ring index', (s) => delete s.queues[0].usedIdx, /virtio\.queues\[0\]\.usedIdx: expected an integer, got missing/],
    ['a huge queue size', (s) => (s.queues[0].size = 2 ** 31 - 1), /virtio\.queues\[0\]\.size: 2147483647 is out of range \(0\.\.65535\)/],
    [
      'a non-power-of-two queue size',
      (s) => (s.queues[0].size = 12),
      /virtio\.queues\[0\]\.size: 12 is not a power of two up to the queue's maximum 16/,
    ],
    [
      'a queue size above the maximum',
      (s) => (s.queues[0].size = 32),
      /virtio\.queues\[0\]\.size: 32 is not a power of two up to the queue's maximum 16/,
    ],
    [
      'a descriptor table outside RAM',
      (s) => (s.queues[0].descTable = 0x40000000),
      /virtio\.queues\[0\]\.descTable: \[0x40000000, \+0x100\) is not guest RAM/,
    ],
    [
      'a used ring straddling the end of RAM',
      (s) => (s.queues[0].usedRing = (1 << 20) - 4),
      /virtio\.queues\[0\]\.usedRing: .* is not guest RAM/,
    ],
    [
      'a misaligned available ring',
      (s) => (s.queues[0].availRing = 0x2001),
      /virtio\.queues\[0\]\.availRing: 0x2001 is not 2-byte aligned/,
    ],
    ['ready as a number', (s) => (s.queues[0].ready = 1), /virtio\.queues\[0\]\.ready: expected true or false, got 1/],
    ['a fractional status', (s) => (s.status = 15.5), /virtio\.status: expected an integer, got 15\.5/],
    ['a status above 0xff', (s) => (s.status = 0x10f), /virtio\.status: 271 is out of range/],
    [
      'driver features the device does not offer',
      (s) => (s.driverFeatures = 'ffffffffffffffff'),
      /virtio\.driverFeatures: 0xffffffffffffffff has bits the device does not offer/,
    ],
    ['features that are not hex', (s) => (s.driverFeatures = 'zz'), /virtio\.driverFeatures: expected a hexadecimal number, got "zz"/],
    [
      'features wider than 64 bits',
      (s) => (s.deviceFeatures = '1' + '0'.repeat(16)),
      /virtio\.deviceFeatures: expected a hexadecimal number/,
    ],
    ['a queue list that is not an array', (s) => (s.queues = {}), /virtio\.queues: expected an array, got \{\}/],
    ['a queue that is not an object', (s) => (s.queues[1] = null), /virtio\.queues\[1\]: expected an object, got null/],
    [
      'a held-back completion for a queue that does not exist',
      (s) => (s.deferred = [{ queue: 2, head: 0, len: 0 }]),
      /virtio\.deferred\[0\]\.queue: 2 is out of range \(0\.\.1\)/,
    ],
    [
      'a held-back completion outside the descriptor table',
      (s) => (s.deferred = [{ queue: 0, head: 16, len: 0 }]),
      /virtio\.deferred\[0\]\.head: 16 is out of range \(0\.\.15\)/,
    ],
    [
      'a kick for a queue that does not exist',
      (s) => (s.kickedWhileDisabled = [7]),
      /virtio\.kickedWhileDisabled\[0\]: 7 is out of range \(0\.\.1\)/,
    ],
    ['a state that is not an object', (s) => Object.assign(s, { __replace: 'x' }), /virtio: expected an object, got "x"/],
  ];
  it.each(bad)('refuses %s, naming the field, and applies nothing', (_what, breakIt, msg) => {
    let s = liveState();
    breakIt(s);
    if (s.__replace) s = s.__replace;
    const d = new Dev();
    const before = JSON.stringify(d.saveState());
    let err: unknown;
    try {
      d.loadState(s);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(StateError);
    expect((err as Error).message).toMatch(msg);
    expect(JSON.stringify(d.saveState())).toBe(before);
  });

  it('takes a not-yet-live queue as the driver left it (any 16-bit size, any address), as the transport stores it', () => {
    const s = liveState();
    s.status = V.VIRTIO_CONFIG_S_ACKNOWLEDGE | V.VIRTIO_CONFIG_S_DRIVER;
    s.queues[0].size = 12;
    s.queues[0].descTable = 0x40000000;
    const d = new Dev();
    d.loadState(s);
    expect(d.queues[0].active).toBe(false);
    expect(d.queues[0].size).toBe(12);
  });

  it('a restored queue that does not activate is a load error, not an ignored result', () => {
    const s = liveState();
    const d = new Dev();
    // The checks pass; activation itself fails (as if RAM changed between check and apply).
    const q = d.queues[0];
    q.activate = () => ({ kind: 'bad-queue-layout', detail: 'queue 0: gone' });
    expect(() => d.loadState(s)).toThrow(/virtio\.queues\[0\]: cannot be re-activated: bad queue layout: queue 0: gone/);
  });
});
