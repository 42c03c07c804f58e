// A JS exception thrown by a callback that native code runs from libuv (an fd watcher) must never
// abort the process: the addon catches it and hands it to the registered reporter.
import { EventFd, loadNative } from '../src';

const until = async (pred: () => boolean) => {
  while (!pred()) await new Promise((r) => setTimeout(r, 5));
};

describe('native callback exceptions', () => {
  afterEach(() => loadNative().setCallbackErrorReporter(undefined));

  it('an eventfd watcher that throws is reported, the process and the watcher go on', async () => {
    const seen: [string, string][] = [];
    loadNative().setCallbackErrorReporter((where, e) => seen.push([where, (e as Error).message]));
    const efd = EventFd.create();
    let calls = 0;
    efd.watch(() => {
      calls++;
      throw new Error(`device bug ${calls}`);
    });
    try {
      efd.write(1);
      await until(() => seen.length === 1);
      efd.write(1);
      await until(() => seen.length === 2);
      expect(seen).toEqual([
        ['fd watcher', 'device bug 1'],
        ['fd watcher', 'device bug 2'],
      ]);
    } finally {
      efd.close();
    }
  });
});
