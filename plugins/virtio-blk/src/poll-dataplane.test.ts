// The iothread plane with polling on (poll-max-ns), the main-thread device and the worker's plane in one
// process as in dataplane.test.ts. A single thread cannot publish a buffer while the plane spins, so the
// back-end's completion poll (FileIo.poll, called on every look of the poll loop) is where the "guest"
// acts: it publishes a request without kicking, or turns bus mastering off, mid-poll.
import * as fs from 'fs';
import { GuestMemory, SharedQueueStats } from '@tsvmm/virtio-core';
import { MockDriverQueue, driverInit, fakeMemory } from '@tsvmm/virtio-core/testing';
import { FileIo, ioUringFileIo, RawFileBackend } from '@tsvmm/block';
import { VirtioBlkDevice } from './device';
import { BlkWorkerPlane } from './dataplane';
import { BLK_PLANE, BlkIoThread, FromWorker, ToWorker } from './iothread';
import * as B from './generated/virtio-blk-uapi';
import { STATUS, SIZE, image, request, settle } from './test-fixtures';

/** A device whose plane polls; `onLook` runs at each look of the poll loop at the back-end's completion ring. */
function side(file: string, mem: GuestMemory, onLook: () => void) {
  let plane: BlkWorkerPlane | undefined;
  const uring = ioUringFileIo();
  const io: FileIo = {
    ...uring,
    poll: () => {
      onLook();
      return uring.poll!();
    },
  };
  const main = new VirtioBlkDevice(mem, { id: 'd0', backend: new RawFileBackend(file, false, false), numQueues: 1, serial: 'S' });
  main.interrupt = { signalQueue: () => undefined, signalConfig: () => undefined };
  const stats = SharedQueueStats.create(1);
  let thread: BlkIoThread | undefined = undefined;
  const deliverTo: { f?: (m: FromWorker) => void } = {};
  // The plane is made on the first message (after the BlkIoThread exists: init carries its `sent` counter).
  const planeFor = () => {
    if (plane) return plane;
    Atomics.add(thread!.sent, 0, 1); // the init message, which BlkIoThread.send would have counted
    return (plane = new BlkWorkerPlane(
      mem,
      new RawFileBackend(file, false, false, io),
      {
        type: 'init',
        plane: BLK_PLANE,
        id: 'd0',
        regions: [],
        file,
        readonly: false,
        direct: false,
        numQueues: 1,
        serial: 'S',
        eventIdx: true,
        stats: stats.buffer,
        poll: { maxNs: 1e9, grow: 0, shrink: 0 },
        sent: thread!.sent.buffer as SharedArrayBuffer,
      },
      (m: FromWorker) => setImmediate(() => deliverTo.f!(structuredClone(m))),
      () => undefined,
    ));
  };
  thread = new BlkIoThread(
    'io0',
    (m) => main.onDataPlaneMessage(m),
    (deliver) => {
      deliverTo.f = deliver;
      return {
        postMessage: (m: ToWorker) => setImmediate(() => planeFor().handle(structuredClone(m))),
        close: async () => undefined,
      };
    },
  );
  main.attachDataPlane({ thread, vectorFd: () => -1, stats });
  return { main, plane: () => plane!, thread };
}

describe('virtio-blk iothread polling', () => {
  it('a buffer published during the poll is processed without a kick, the driver told not to kick meanwhile', async () => {
    const file = image('blk-iopoll-');
    const mem = fakeMemory(1 << 20);
    const drv = new MockDriverQueue(mem, SIZE);
    let looks = 0;
    let availEventWhilePolling = -1;
    const { main, plane, thread } = side(file, mem, () => {
      // The guest, mid-poll: request 1 published, no kick (the device asked for none).
      if (++looks === 3) {
        availEventWhilePolling = drv.availEvent();
        request(mem, drv, 1);
      }
    });
    driverInit(main, drv);
    request(mem, drv, 0);
    main.notify(0, 'ioeventfd');
    await settle();
    plane().poller!.window.ns = 1e9; // as grown after earlier wake-ups (the arithmetic: virtio-core poll.test.ts)
    request(mem, drv, 2);
    main.notify(0, 'ioeventfd'); // request 2's kick; the poll after it finds request 1
    await settle();
    expect([0, 1, 2].map((n) => mem.readU8(STATUS + n))).toEqual([B.VIRTIO_BLK_S_OK, B.VIRTIO_BLK_S_OK, B.VIRTIO_BLK_S_OK]);
    expect(fs.readFileSync(file)[1 * 512]).toBe(2);
    // EVENT_IDX suppression: avail_event half the index space past what the device had taken (requests 0 and 2: last_avail_idx 2).
    expect(availEventWhilePolling).toBe(2 + 0x8000);
    // Two kicks for three requests: the polled one was not counted as a kick.
    expect(main.queueInfo(0)).toMatchObject({ chains: 3, 'used-idx': 3 });
    expect(main.counters[0].kicksEventfd).toBe(2);
    expect(plane().poller!.counters.hits).toBeGreaterThanOrEqual(1);
    // The monitor's view of the poller (x-query-virtio-queue-status), as the worker reports it.
    thread.send({ type: 'stats' });
    await settle();
    const polled = main.queueInfo(0)['iothread-poll'] as Record<string, number>;
    expect(polled).toMatchObject({ hits: plane().poller!.counters.hits, 'window-ns': 1e9 });
    expect(polled.polls).toBeGreaterThanOrEqual(polled.hits);
    // Idle again: the last poll timed out and turned notifications back on (avail_event at last_avail_idx).
    plane().poller!.window.ns = 1000;
    await settle();
    expect(drv.availEvent()).toBe(3);
    main.reset();
    await settle();
  });

  it('bus mastering off mid-poll: the poll stops for the message and takes nothing until it is back on', async () => {
    const file = image('blk-iopoll-');
    const mem = fakeMemory(1 << 20);
    const drv = new MockDriverQueue(mem, SIZE);
    let looks = 0;
    let armed = false;
    const { main, plane } = side(file, mem, () => {
      if (!armed || ++looks !== 2) return;
      main.setDisabled(true); // the guest clears bus mastering (the message is on its way to the worker) ...
      request(mem, drv, 1); // ... then publishes a buffer: no device may take it now
    });
    driverInit(main, drv);
    request(mem, drv, 0);
    main.notify(0, 'ioeventfd');
    await settle();
    plane().poller!.window.ns = 1e9;
    armed = true;
    request(mem, drv, 2);
    main.notify(0, 'ioeventfd');
    await settle();
    expect(looks).toBeGreaterThanOrEqual(2);
    expect(mem.readU8(STATUS + 1)).toBe(0xee); // not taken: the poll saw the waiting message and stopped
    expect(main.queueInfo(0)).toMatchObject({ 'last-avail-idx': 2 });
    main.setDisabled(false);
    await settle();
    expect(mem.readU8(STATUS + 1)).toBe(B.VIRTIO_BLK_S_OK);
    expect(main.queueInfo(0)).toMatchObject({ chains: 3, 'used-idx': 3 });
    main.reset();
    await settle();
  });
});
