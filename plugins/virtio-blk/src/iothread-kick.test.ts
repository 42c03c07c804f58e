// A real iothread worker (the bundled apps/vmm/dist/iothread.js) over guest RAM in a
// memfd, as the VMM sets it up: the queue's ioeventfd is handed to the worker, and a guest kick
// is served while the main thread (this one, which owns the device model) is busy in a loop that
// never returns to the event loop. Before the worker watched its own notifiers the kick waited
// for the main thread, and the request could not complete during the loop.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { EventFd, loadNative, mapGuestRam } from '@tsvmm/kvm-native';
import { GuestMemory, SharedQueueStats } from '@tsvmm/virtio-core';
import { MockDriverQueue, driverInit } from '@tsvmm/virtio-core/testing';
import { RawFileBackend } from '@tsvmm/block';
import { VirtioBlkDevice } from './device';
import { BlkIoThread, ioThreadHost } from './iothread';
import * as B from './generated/virtio-blk-uapi';

const WORKER = path.resolve(__dirname, '../../../apps/vmm/dist/iothread.js');
const RAM = 1 << 20;
const STATUS = 0x60000;

/** A read of sector `sector` into 0x50000, status byte at STATUS. */
function readRequest(mem: GuestMemory, drv: MockDriverQueue, sector: number): void {
  mem.writeU32(0x40000, B.VIRTIO_BLK_T_IN);
  mem.writeU32(0x40004, 0);
  mem.writeU64(0x40008, BigInt(sector));
  mem.writeU8(STATUS, 0xee);
  drv.addChain([
    { addr: 0x40000, len: 16 },
    { addr: 0x50000, len: 512, write: true },
    { addr: STATUS, len: 1, write: true },
  ]);
}

describe('virtio-blk iothread: kicks reach the worker without the main thread', () => {
  const saved = process.env.VMM_IOTHREAD_WORKER;
  beforeAll(() => {
    if (!fs.existsSync(WORKER)) throw new Error(`${WORKER} is missing: build the VMM bundle first (npx nx run vmm:build)`);
    process.env.VMM_IOTHREAD_WORKER = WORKER;
    // The worker loads the bundle's own copy of the addon (next to it), a second copy beside this
    // thread's: ending the worker unloads it, and the handles it closed must not call back into it.
  });
  afterAll(() => {
    if (saved === undefined) delete process.env.VMM_IOTHREAD_WORKER;
    else process.env.VMM_IOTHREAD_WORKER = saved;
  });

  it('a guest kick on the ioeventfd completes its request while the main thread never yields', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blk-iotkick-'));
    const file = path.join(dir, 'disk.img');
    const image = Buffer.alloc(64 * 512);
    image.fill(0x5a, 7 * 512, 8 * 512);
    fs.writeFileSync(file, image);
    const ram = loadNative().memfdMap('blk-iotkick-test', RAM);
    const mem = new GuestMemory(mapGuestRam(ram.fd, 0, RAM).pieces);
    const backend = new RawFileBackend(file, false, false);
    const main = new VirtioBlkDevice(mem, { id: 'd0', backend, numQueues: 1, serial: 'S' });
    main.interrupt = { signalQueue: () => undefined, signalConfig: () => undefined };
    const stats = SharedQueueStats.create(1);
    const host = ioThreadHost({}, 'iotkick0');
    const thread = new BlkIoThread('iotkick0', (m) => main.onDataPlaneMessage(m), host.connect('d0'));
    thread.send({
      type: 'init',
      plane: 'virtio-blk',
      id: 'd0',
      regions: [{ fd: ram.fd, gpa: 0, size: RAM }],
      file,
      fds: backend.dupFds(),
      readonly: false,
      direct: false,
      aio: backend.aio as 'io_uring' | 'threads',
      numQueues: 1,
      serial: 'S',
      eventIdx: true,
      stats: stats.buffer,
    });
    main.attachDataPlane({ thread, vectorFd: () => -1, stats });
    const efd = EventFd.create();
    try {
      const drv = new MockDriverQueue(mem, 16);
      driverInit(main, drv);
      // The transport registered the queue's ioeventfd and hands it over (VirtioPciDevice.syncHostNotifiers).
      expect(main.queueHandler(0)!.attachNotifier!(efd.fd)).toBe(true);
      // A drain answered means the worker handled every message before it (activate, watch-notifier).
      await main.drain();
      main.resumeDataPlane();
      const mainNotify = jest.spyOn(main, 'notify');

      readRequest(mem, drv, 7);
      efd.write(1); // what KVM does for the guest's 16-bit write to the queue's notify address
      // Busy: no event-loop turn on this thread until the used ring moves (or 20 s pass).
      const usedIdx = () => mem.readU16(main.queues[0].usedRing + 2);
      const giveUp = Date.now() + 20_000;
      while (usedIdx() === 0 && Date.now() < giveUp) {
        /* spin */
      }
      expect(usedIdx()).toBe(1);
      expect(mem.readU8(STATUS)).toBe(B.VIRTIO_BLK_S_OK);
      expect(mem.read(0x50000, 512).every((b) => b === 0x5a)).toBe(true);
      expect(stats.ownerKicks(0)).toBe(1);
      expect(main.counters[0]).toMatchObject({ kicksEventfd: 1, kicksExit: 0, chains: 1 });
      expect(main.queueTiming(0, Date.now())['avail-idx-at-last-kick']).toBe(1);
      expect(mainNotify).not.toHaveBeenCalled();
    } finally {
      efd.close();
      await main.destroy();
      loadNative().close(ram.fd);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);
});
