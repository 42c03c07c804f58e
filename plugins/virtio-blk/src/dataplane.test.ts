// The iothread's migration exchange (drain / state / restore / resume / dirty log), with the
// main-thread device and the worker's plane in one process: messages go through a structured
// clone on a later turn, as between threads. Fake guest memory, a real temp image file.
import * as fs from 'fs';
import { EventFd } from '@tsvmm/kvm-native';
import { GuestMemory, SharedQueueStats, VirtioDeviceState } from '@tsvmm/virtio-core';
import { MockDriverQueue, driverInit, fakeMemory } from '@tsvmm/virtio-core/testing';
import { FileIo, RawFileBackend } from '@tsvmm/block';
import { BlkExtraState, VirtioBlkDevice } from './device';
import { BlkWorkerPlane } from './dataplane';
import { BlkIoThread, FromWorker, ToWorker } from './iothread';
import * as B from './generated/virtio-blk-uapi';
import { DATA, STATUS, SIZE, image, request, settle } from './test-fixtures';

const later = (f: () => void) => setImmediate(f);

/** A main-thread device with its data plane "in a worker" over the same memory. */
function side(file: string, mem: GuestMemory, planeIo?: FileIo) {
  let plane: BlkWorkerPlane | undefined;
  const irqs: string[] = [];
  const sent: ToWorker['type'][] = [];
  const main = new VirtioBlkDevice(mem, { id: 'd0', backend: new RawFileBackend(file, false, false), numQueues: 1, serial: 'S' });
  main.interrupt = { signalQueue: (q) => irqs.push(`main-q${q}`), signalConfig: () => irqs.push('config') };
  const stats = SharedQueueStats.create(1);
  const thread = new BlkIoThread(
    'io0',
    (m) => main.onDataPlaneMessage(m),
    (deliver) => {
      const init: Extract<ToWorker, { type: 'init' }> = {
        type: 'init',
        plane: 'virtio-blk',
        id: 'd0',
        regions: [],
        file,
        readonly: false,
        direct: false,
        numQueues: 1,
        serial: 'S',
        eventIdx: true,
        stats: stats.buffer,
      };
      plane = new BlkWorkerPlane(
        mem,
        new RawFileBackend(file, false, false, planeIo),
        init,
        (m: FromWorker) => later(() => deliver(structuredClone(m))),
        () => {
          irqs.push('worker-q0');
        },
      );
      return {
        postMessage: (m) => {
          sent.push(m.type);
          later(() => plane!.handle(structuredClone(m)));
        },
        close: async () => undefined,
      };
    },
  );
  main.attachDataPlane({ thread, vectorFd: () => 7, stats });
  return { main, plane: plane!, irqs, sent };
}

/** What the migration stream carries for the device: the plugin's saveState without the transport. */
function migrate(src: VirtioBlkDevice): { virtio: VirtioDeviceState; extra: BlkExtraState } {
  return structuredClone({ virtio: src.saveState(), extra: src.saveBlkState() });
}

function copyMemory(from: GuestMemory): GuestMemory {
  const m = fakeMemory(1 << 20);
  m.write(0, from.read(0, 1 << 20));
  return m;
}

describe('virtio-blk iothread: shared-memory queue figures', () => {
  it("the monitor and the stall detector read the worker's indices and counters as they are; interrupts= drops reach the worker", async () => {
    const file = image('blk-dp-');
    const mem = fakeMemory(1 << 20);
    const { main, plane, irqs } = side(file, mem);
    const drv = new MockDriverQueue(mem, SIZE);
    driverInit(main, drv);
    main.faults[0].dropInterrupts = 1; // as x-debug-virtqueue-drop interrupts=1 sets it on the main thread
    request(mem, drv, 0);
    main.notify(0, 'ioeventfd');
    await settle();
    // The worker completed the request: its figures, read on this side without any message in between.
    const q = plane.dev.queues[0];
    expect(main.queueInfo(0)).toMatchObject({
      'last-avail-idx': q.lastAvailIdx,
      'used-idx': q.usedIdx,
      chains: plane.dev.counters[0].chains,
      'interrupts-dropped': 1,
      'data-plane': 'iothread io0',
    });
    expect(q.usedIdx).toBe(1);
    expect(irqs.filter((i) => i === 'worker-q0')).toEqual([]); // dropped by the worker
    expect(main.faults[0].dropInterrupts).toBe(0);
    expect(main.stallView(0).interrupt.owed).toMatchObject({ dropped: true, usedIdx: 1 });
    drv.setUsedEvent(1); // EVENT_IDX: interrupt me once used idx passes 1
    request(mem, drv, 1);
    main.notify(0, 'ioeventfd');
    await settle();
    expect(irqs.filter((i) => i === 'worker-q0')).toHaveLength(1);
    expect(main.queueInfo(0)).toMatchObject({ 'used-idx': 2, 'interrupts-injected': 1 });
    expect(main.stallView(0)).toMatchObject({ lastAvailIdx: 2, interrupts: 1 });
    expect(main.stallView(0).interrupt.lastInterruptAt).toBeGreaterThan(0);
  });
});

describe('virtio-blk iothread: migration state exchange', () => {
  it('drain finishes the requests in flight, stops taking new ones and reports the exact indices; the destination resumes from them', async () => {
    const file = image('blk-dp-');
    const mem = fakeMemory(1 << 20);
    const src = side(file, mem);
    const drv = new MockDriverQueue(mem, SIZE);
    driverInit(src.main, drv);
    for (let n = 0; n < 3; n++) request(mem, drv, n);
    src.main.notify(0, 'ioeventfd');
    // The drain goes out right behind the kick: the writes are still in flight in the worker.
    await src.main.drain();
    expect(src.plane.dev.inFlightCount).toBe(0);
    // The monitor's counters are the worker's, final once drained.
    expect(src.main.deviceInfo()).toMatchObject({ writes: 3, 'in-flight': 0, iothread: 'io0' });
    expect([0, 1, 2].map((n) => mem.readU8(STATUS + n))).toEqual([0, 0, 0]);
    expect(
      drv
        .takeUsed()
        .map((u) => u.id)
        .sort((a, b) => a - b),
    ).toEqual([0, 3, 6]); // completion order is the host's

    // A request the guest published after the drain is not taken (kick remembered, nothing popped).
    request(mem, drv, 3);
    src.main.notify(0, 'ioeventfd');
    await settle();
    expect(mem.readU8(STATUS + 3)).toBe(0xee);
    const state = migrate(src.main);
    expect(state.virtio.queues[0]).toMatchObject({ lastAvailIdx: 3, usedIdx: 3, ready: true });
    // The main thread's own copy of the queue never moved: the state is the worker's.
    expect(src.main.queues[0].save()).toMatchObject({ lastAvailIdx: 0, usedIdx: 0 });

    // Destination: RAM copied, state loaded; the restore reaches its worker, one kick resumes it.
    const dmem = copyMemory(mem);
    const dst = side(file, dmem);
    dst.main.loadBlkState(state.extra);
    dst.main.loadState(state.virtio);
    expect(dst.sent).toEqual(['restore']);
    dst.main.resumeDataPlane();
    dst.main.notify(0, 'restore');
    await settle();
    expect(dmem.readU8(STATUS + 3)).toBe(0);
    expect(dst.plane.dev.queues[0].save()).toMatchObject({ lastAvailIdx: 4, usedIdx: 4 });
    const ddrv = new MockDriverQueue(dmem, SIZE);
    ddrv.lastUsedIdx = 3;
    expect(ddrv.takeUsed()).toEqual([{ id: 9, len: 1 }]);
    expect(dst.irqs).toContain('worker-q0');
    expect(dst.plane.dev.blk.writes).toBe(1); // only request 3: nothing done twice
    const img = fs.readFileSync(file);
    for (let n = 0; n < 4; n++) expect(img.subarray(n * 512, n * 512 + 512).every((b) => b === n + 1)).toBe(true);
  });

  it('a source that resumes (migration failed) processes the requests kicked while it was drained', async () => {
    const mem = fakeMemory(1 << 20);
    const src = side(image('blk-dp-'), mem);
    const drv = new MockDriverQueue(mem, SIZE);
    driverInit(src.main, drv);
    await src.main.drain();
    request(mem, drv, 0);
    src.main.notify(0, 'ioeventfd');
    await settle();
    expect(mem.readU8(STATUS)).toBe(0xee);
    src.main.resumeDataPlane();
    await settle();
    expect(mem.readU8(STATUS)).toBe(0);
    expect(drv.takeUsed()).toEqual([{ id: 0, len: 1 }]);
    // The state of the drain is no longer final once the VM runs again.
    expect(() => src.main.saveState()).toThrow(/d0: the iothread io0 was not drained/);
  });

  it('completions held back while bus mastering is off travel with the worker state and are pushed once on the destination', async () => {
    const file = image('blk-dp-');
    const mem = fakeMemory(1 << 20);
    // The worker's write is held until bus mastering is off (an engine may complete a page-cache write at once).
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const held: FileIo = {
      readv: (fd, bufs, pos, cb) => fs.readv(fd, bufs, pos, cb),
      writev: (fd, bufs, pos, cb) => void gate.then(() => fs.writev(fd, bufs, pos, cb)),
      fdatasync: (fd, cb) => fs.fdatasync(fd, cb),
    };
    const src = side(file, mem, held);
    const drv = new MockDriverQueue(mem, SIZE);
    driverInit(src.main, drv);
    request(mem, drv, 0);
    src.main.notify(0, 'ioeventfd');
    src.main.setDisabled(true); // right behind the kick: the write completes while disabled
    await settle();
    release();
    await src.main.drain();
    const state = migrate(src.main);
    expect(state.virtio.disabled).toBe(true);
    expect(state.virtio.deferred).toEqual([{ queue: 0, head: 0, len: 1 }]);
    expect(state.extra).toEqual({ pendingStatus: [{ addr: STATUS, status: 0 }] });
    expect(mem.readU8(STATUS)).toBe(0xee);

    const dmem = copyMemory(mem);
    const dst = side(file, dmem);
    dst.main.loadBlkState(state.extra);
    dst.main.loadState(state.virtio);
    dst.main.resumeDataPlane();
    await settle();
    dst.main.setDisabled(false);
    await settle();
    expect(dmem.readU8(STATUS)).toBe(0);
    const ddrv = new MockDriverQueue(dmem, SIZE);
    expect(ddrv.takeUsed()).toEqual([{ id: 0, len: 1 }]);
    // The main thread's copy held nothing back: it pushed nothing (the worker did, once).
    expect(dst.main.queues[0].save().usedIdx).toBe(0);
    expect(dst.plane.dev.queues[0].save().usedIdx).toBe(1);
    await dst.main.drain();
    expect(dst.main.saveState().deferred).toBeUndefined();
    expect(dst.main.saveState().queues[0].usedIdx).toBe(1);
  });

  it('the dirty log has the pages the worker wrote: read data, status bytes and the used ring', async () => {
    const file = image('blk-dp-');
    fs.writeFileSync(file, Buffer.alloc(64 * 512, 0x5a));
    const mem = fakeMemory(1 << 20);
    const src = side(file, mem);
    const drv = new MockDriverQueue(mem, SIZE);
    driverInit(src.main, drv);
    expect(await src.main.dataPlaneDirtyLog('start')).toEqual([]);
    request(mem, drv, 2, true);
    src.main.notify(0, 'ioeventfd');
    await settle();
    expect(mem.readU8(DATA + 0x2000)).toBe(0x5a);
    const pages = new Set(await src.main.dataPlaneDirtyLog('sync'));
    const usedPage = drv.used / 4096;
    for (const p of [(DATA + 0x2000) / 4096, STATUS / 4096, usedPage]) expect(pages).toContain(p);
    // Cleared by the sync: only the (always included) used ring remains.
    expect(await src.main.dataPlaneDirtyLog('sync')).toEqual([usedPage]);
    await src.main.dataPlaneDirtyLog('stop');
    expect(await src.main.dataPlaneDirtyLog('sync')).toEqual([]);
  });
});

/** Waits (a bounded number of event-loop turns) until `cond` holds; the assertion after it says what was expected. */
async function waitFor(cond: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
}

describe('virtio-blk iothread: the worker watches the queue notifier itself', () => {
  it("guest kicks are read, dropped (kicks=), counted and recorded on the worker; the main thread's notify never runs", async () => {
    const file = image('blk-dp-');
    const mem = fakeMemory(1 << 20);
    const { main, plane, sent } = side(file, mem);
    const drv = new MockDriverQueue(mem, SIZE);
    driverInit(main, drv);
    await settle();
    const mainNotify = jest.spyOn(main, 'notify');
    // The transport registered the queue's ioeventfd and hands it to the handler (VirtioPciDevice.syncHostNotifiers).
    const efd = EventFd.create();
    const handler = main.queueHandler(0)!;
    expect(handler.placement).toEqual({ kind: 'iothread', iothread: 'io0' });
    expect(handler.attachNotifier!(efd.fd)).toBe(true);
    await settle();
    main.faults[0].dropKicks = 1; // x-debug-virtqueue-drop kicks=1, set on the main thread
    request(mem, drv, 0);
    efd.write(1); // what KVM does for the guest's doorbell write
    await waitFor(() => main.counters[0].kicksDropped === 1);
    expect(main.counters[0].kicksDropped).toBe(1);
    expect(main.faults[0].dropKicks).toBe(0);
    expect(plane.dev.queues[0].usedIdx).toBe(0); // the dropped kick processed nothing
    efd.write(1);
    await waitFor(() => plane.dev.queues[0].usedIdx === 1);
    expect(plane.dev.queues[0].usedIdx).toBe(1);
    expect(mem.readU8(STATUS)).toBe(B.VIRTIO_BLK_S_OK);
    expect(main.queueInfo(0)).toMatchObject({ 'kicks-iothread': 2, 'used-idx': 1, chains: 1 });
    expect(main.counters[0]).toMatchObject({ kicksEventfd: 1, kicksDropped: 1, kicksExit: 0 });
    // The stall detector's kick record is the worker's (main thread's own queue never saw a kick).
    expect(main.queues[0].stall.lastKickAt).toBeUndefined();
    expect(main.queueTiming(0, Date.now())['avail-idx-at-last-kick']).toBe(1);
    expect(mainNotify).not.toHaveBeenCalled();
    expect(sent).not.toContain('kick');

    // Removal (VM stop, reset, BAR move): the worker stops reading; a kick that arrives later is the
    // transport's to read (its test-and-clear), and the worker's count stands still.
    handler.detachNotifier!();
    await settle();
    request(mem, drv, 1);
    efd.write(1);
    await settle();
    expect(efd.read()).toBe(1n);
    expect(main.queueInfo(0)['kicks-iothread']).toBe(2);
    expect(plane.dev.queues[0].usedIdx).toBe(1);
    // The transport hands the raced kick to the device: forwarded, processed on the worker.
    main.notify(0, 'ioeventfd');
    await waitFor(() => plane.dev.queues[0].usedIdx === 2);
    expect(plane.dev.queues[0].usedIdx).toBe(2);
    expect(main.counters[0].kicksEventfd).toBe(2);
    efd.close();
  });

  it('a worker drained for migration counts and holds the kicks it reads, and processes them on resume', async () => {
    const file = image('blk-dp-');
    const mem = fakeMemory(1 << 20);
    const { main, plane } = side(file, mem);
    const drv = new MockDriverQueue(mem, SIZE);
    driverInit(main, drv);
    await settle();
    const efd = EventFd.create();
    expect(main.queueHandler(0)!.attachNotifier!(efd.fd)).toBe(true);
    await main.drain();
    request(mem, drv, 0);
    efd.write(1);
    await waitFor(() => main.counters[0].kicksEventfd === 1);
    expect(main.counters[0].kicksEventfd).toBe(1);
    await settle();
    expect(plane.dev.queues[0].usedIdx).toBe(0);
    main.resumeDataPlane();
    await waitFor(() => plane.dev.queues[0].usedIdx === 1);
    expect(plane.dev.queues[0].usedIdx).toBe(1);
    main.reset(); // the handler detaches: the worker closes its duplicate, the transport's eventfd stays usable
    await settle();
    efd.write(1);
    await settle();
    expect(efd.read()).toBe(1n);
    efd.close();
  });
});
