import { VirtioDevice } from './device';
import { fakeMemory } from './testing';
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
    expect(() => new Dev().loadState({ ...s, deviceFeatures: '1' })).toThrow(/device features differ/);
  });
});
