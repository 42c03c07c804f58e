// iothread-vq-mapping with the main-thread device and two workers' planes in one process
// (messages through a structured clone on a later turn, as between threads): each plane
// processes only its queue; drain, migration state, restore and reset cover both.
import * as fs from 'fs';
import { GuestMemory, SharedQueueStats, VirtioDeviceState } from '@tsvmm/virtio-core';
import { MockDriverQueue, driverInit, fakeMemory } from '@tsvmm/virtio-core/testing';
import { FileIo, RawFileBackend } from '@tsvmm/block';
import { BlkDataPlane, BlkExtraState, VirtioBlkDevice } from './device';
import { BlkWorkerPlane } from './dataplane';
import { BlkIoThread, FromWorker, ToWorker } from './iothread';
import { STATUS, SIZE, image, request, settle } from './test-fixtures';

const RINGS = [0x1000, 0x8000];

const later = (f: () => void) => setImmediate(f);

/** The device with queue q on iothread io<q>: both planes over the same memory and shared queue figures. */
function side(file: string, mem: GuestMemory, planeIo?: FileIo) {
  const planes: BlkWorkerPlane[] = [];
  const irqs: string[] = [];
  const sent: string[] = [];
  const main = new VirtioBlkDevice(mem, { id: 'd0', backend: new RawFileBackend(file, false, false), numQueues: 2, serial: 'S' });
  main.interrupt = { signalQueue: (q) => irqs.push(`main-q${q}`), signalConfig: () => irqs.push('config') };
  const stats = SharedQueueStats.create(2);
  const dps = [0, 1].map((k): BlkDataPlane => {
    const thread = new BlkIoThread(
      `io${k}`,
      (m) => main.onDataPlaneMessage(m, k),
      (deliver) => {
        const init: Extract<ToWorker, { type: 'init' }> = {
          type: 'init',
          plane: 'virtio-blk',
          id: 'd0',
          regions: [],
          file,
          readonly: false,
          direct: false,
          numQueues: 2,
          serial: 'S',
          eventIdx: true,
          stats: stats.buffer,
          queues: [k],
        };
        const plane = new BlkWorkerPlane(
          mem,
          new RawFileBackend(file, false, false, planeIo),
          init,
          (m: FromWorker) => later(() => deliver(structuredClone(m))),
          (fd) => irqs.push(`io${k}-fd${fd}`),
        );
        planes[k] = plane;
        return {
          postMessage: (m) => {
            sent.push(`io${k}:${m.type}`);
            later(() => plane.handle(structuredClone(m)));
          },
          close: async () => undefined, // BlkIoThread.close sent 'close' already
        };
      },
    );
    return { thread, vectorFd: (q) => 10 + q, stats, queues: [k] };
  });
  main.attachDataPlane(dps);
  return { main, planes, irqs, sent };
}

function migrate(src: VirtioBlkDevice): { virtio: VirtioDeviceState; extra: BlkExtraState } {
  return structuredClone({ virtio: src.saveState(), extra: src.saveBlkState() });
}

describe('virtio-blk iothread-vq-mapping: one plane per iothread', () => {
  it('each worker processes only its queue; the monitor shows each queue from its worker', async () => {
    const mem = fakeMemory(1 << 20);
    const { main, planes, irqs, sent } = side(image('blk-vqmap-dp-'), mem);
    const drvs = RINGS.map((base) => new MockDriverQueue(mem, SIZE, base));
    driverInit(main, drvs);
    request(mem, drvs[0], 0);
    request(mem, drvs[1], 1);
    request(mem, drvs[1], 2);
    main.notify(0, 'ioeventfd');
    main.notify(1, 'ioeventfd');
    await settle();
    // The kicks went to the queue's own worker.
    expect(sent.filter((m) => m.endsWith(':kick'))).toEqual(['io0:kick', 'io1:kick']);
    expect([0, 1, 2].map((n) => mem.readU8(STATUS + n))).toEqual([0, 0, 0]);
    expect(drvs[0].takeUsed().map((u) => u.id)).toEqual([0]);
    expect(drvs[1].takeUsed().map((u) => u.id)).toEqual([0, 3]);
    // io0's copy never popped from queue 1, nor io1's from queue 0.
    expect(planes[0].dev.queues[1].lastAvailIdx).toBe(0);
    expect(planes[1].dev.queues[0].lastAvailIdx).toBe(0);
    expect(planes[0].dev.blk.writes).toBe(1);
    expect(planes[1].dev.blk.writes).toBe(2);
    // Each worker wrote its own queue's irqfd.
    expect(irqs.filter((i) => i.startsWith('io'))).toEqual(expect.arrayContaining(['io0-fd10', 'io1-fd11']));
    expect(irqs.filter((i) => i === 'io0-fd11' || i === 'io1-fd10')).toEqual([]);
    expect(main.queueInfo(0)).toMatchObject({ 'data-plane': 'iothread io0', chains: 1, 'used-idx': 1, 'last-avail-idx': 1 });
    expect(main.queueInfo(1)).toMatchObject({ 'data-plane': 'iothread io1', chains: 2, 'used-idx': 2, 'last-avail-idx': 2 });
    expect(main.queueHandler(1)!.placement).toEqual({ kind: 'iothread', iothread: 'io1' });
    // A kick for another worker's queue reaching a plane takes nothing from it (only the owner pops).
    request(mem, drvs[1], 3);
    planes[0].handle({ type: 'kick', queue: 1 });
    await settle();
    expect(mem.readU8(STATUS + 3)).toBe(0xee);
    expect(planes[0].dev.queues[1].lastAvailIdx).toBe(0);
    main.notify(1, 'ioeventfd');
    await settle();
    expect(mem.readU8(STATUS + 3)).toBe(0);
    await main.drain(); // every worker reports its counters ahead of the answer
    expect(main.deviceInfo()).toMatchObject({ iothread: 'io0,io1', writes: 4, 'in-flight': 0 });
    main.resumeDataPlane();
    await main.destroy();
  });

  it("migration: the drain takes each queue's indices and held-back completions from its worker; the destination pushes each once", async () => {
    const file = image('blk-vqmap-dp-');
    const mem = fakeMemory(1 << 20);
    // The writes are held until bus mastering is off: their completions are held back by the workers.
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const held: FileIo = {
      readv: (fd, bufs, pos, cb) => fs.readv(fd, bufs, pos, cb),
      writev: (fd, bufs, pos, cb) => void gate.then(() => fs.writev(fd, bufs, pos, cb)),
      fdatasync: (fd, cb) => fs.fdatasync(fd, cb),
    };
    const src = side(file, mem, held);
    const drvs = RINGS.map((base) => new MockDriverQueue(mem, SIZE, base));
    driverInit(src.main, drvs);
    request(mem, drvs[0], 0);
    request(mem, drvs[1], 1);
    src.main.notify(0, 'ioeventfd');
    src.main.notify(1, 'ioeventfd');
    src.main.setDisabled(true);
    await settle();
    release();
    await src.main.drain();
    expect(src.sent.filter((m) => m.endsWith(':drain'))).toEqual(['io0:drain', 'io1:drain']);
    const state = migrate(src.main);
    expect(state.virtio.queues.map((q) => [q.lastAvailIdx, q.usedIdx])).toEqual([
      [1, 0],
      [1, 0],
    ]);
    expect(state.virtio.deferred).toEqual(
      expect.arrayContaining([
        { queue: 0, head: 0, len: 1 },
        { queue: 1, head: 0, len: 1 },
      ]),
    );
    expect(state.virtio.deferred).toHaveLength(2);
    expect(state.extra?.pendingStatus).toEqual(
      expect.arrayContaining([
        { addr: STATUS, status: 0 },
        { addr: STATUS + 1, status: 0 },
      ]),
    );
    expect(state.extra?.pendingStatus).toHaveLength(2);

    const dmem = fakeMemory(1 << 20);
    dmem.write(0, mem.read(0, 1 << 20));
    const dst = side(file, dmem);
    dst.main.loadBlkState(state.extra);
    dst.main.loadState(state.virtio);
    expect(dst.sent).toEqual(['io0:restore', 'io1:restore']);
    dst.main.resumeDataPlane();
    await settle();
    dst.main.setDisabled(false);
    await settle();
    expect([dmem.readU8(STATUS), dmem.readU8(STATUS + 1)]).toEqual([0, 0]);
    const ddrvs = RINGS.map((base) => new MockDriverQueue(dmem, SIZE, base));
    expect(ddrvs[0].takeUsed()).toEqual([{ id: 0, len: 1 }]);
    expect(ddrvs[1].takeUsed()).toEqual([{ id: 0, len: 1 }]);
    // Each worker pushed its own queue's entry, once.
    expect(dst.planes[0].dev.queues.map((q) => q.usedIdx)).toEqual([1, 0]);
    expect(dst.planes[1].dev.queues.map((q) => q.usedIdx)).toEqual([0, 1]);
    await dst.main.drain();
    expect(dst.main.saveState().queues.map((q) => q.usedIdx)).toEqual([1, 1]);
    expect(dst.main.saveState().deferred).toBeUndefined();
    dst.main.resumeDataPlane();
    await src.main.destroy();
    await dst.main.destroy();
  });

  it('a driver reset resets every worker', async () => {
    const mem = fakeMemory(1 << 20);
    const { main, planes, sent } = side(image('blk-vqmap-dp-'), mem);
    const drvs = RINGS.map((base) => new MockDriverQueue(mem, SIZE, base));
    driverInit(main, drvs);
    request(mem, drvs[1], 1);
    main.notify(1, 'ioeventfd');
    await settle();
    expect(main.queueInfo(1)).toMatchObject({ 'used-idx': 1 });
    main.reset();
    await settle();
    expect(sent.filter((m) => m.endsWith(':reset'))).toEqual(['io0:reset', 'io1:reset']);
    expect(planes.map((p) => p.dev.queues[1].usedIdx)).toEqual([0, 0]);
    expect(main.queueInfo(1)).toMatchObject({ 'used-idx': 0, 'last-avail-idx': 0 });
    await main.destroy();
  });
});
