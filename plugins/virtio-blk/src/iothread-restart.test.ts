// A dead iothread: the device goes needs-reset (config interrupt), and the guest's reset starts a
// new worker that serves the re-initialised queue. Main thread and "workers" in one process, as
// in dataplane.test.ts; fake guest memory, a real temp image file.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { GuestMemory, virtioUapi as V } from '@tsvmm/virtio-core';
import { MockDriverQueue, driverInit, fakeMemory } from '@tsvmm/virtio-core/testing';
import { RawFileBackend } from '@tsvmm/block';
import { VirtioBlkDevice } from './device';
import { BlkWorkerPlane } from './dataplane';
import { BlkIoThread, FromWorker, ToWorker } from './iothread';
import * as B from './generated/virtio-blk-uapi';

const later = (f: () => void) => setImmediate(f);

async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
  await new Promise((r) => setTimeout(r, 20));
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
}

/** A write of sector 0 (bytes `fill`), status byte at 0x60000. */
function writeRequest(mem: GuestMemory, drv: MockDriverQueue, fill: number): void {
  mem.writeU32(0x40000, B.VIRTIO_BLK_T_OUT);
  mem.writeU32(0x40004, 0);
  mem.writeU64(0x40008, 0n);
  mem.fill(0x50000, 512, fill);
  mem.writeU8(0x60000, 0xee);
  drv.addChain([
    { addr: 0x40000, len: 16 },
    { addr: 0x50000, len: 512 },
    { addr: 0x60000, len: 1, write: true },
  ]);
}

describe('virtio-blk iothread: a dead worker', () => {
  it('marks the device needs-reset; the guest reset starts a new worker that serves requests', async () => {
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'blk-restart-boundary-')), 'disk.img');
    fs.writeFileSync(file, Buffer.alloc(64 * 512));
    const mem = fakeMemory(1 << 20);
    const irqs: string[] = [];
    const main = new VirtioBlkDevice(mem, { id: 'd0', backend: new RawFileBackend(file, false, false), numQueues: 1, serial: 'S' });
    main.interrupt = { signalQueue: (q) => irqs.push(`q${q}`), signalConfig: () => irqs.push('config') };
    const started: { deliver: (m: FromWorker) => void; plane: BlkWorkerPlane; received: ToWorker['type'][] }[] = [];
    const start = () =>
      new BlkIoThread(
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
          };
          const plane = new BlkWorkerPlane(
            mem,
            new RawFileBackend(file, false, false),
            init,
            (m) => later(() => deliver(structuredClone(m))),
            () => irqs.push('worker-q0'),
          );
          const w = { deliver, plane, received: [] as ToWorker['type'][] };
          started.push(w);
          return {
            postMessage: (m) => {
              w.received.push(m.type);
              later(() => plane.handle(structuredClone(m)));
            },
            close: async () => undefined,
          };
        },
      );
    main.attachDataPlane({ thread: start(), restart: start, vectorFd: () => 7 });

    const drv = new MockDriverQueue(mem, 16);
    driverInit(main, drv);
    writeRequest(mem, drv, 0x11);
    main.notify(0, 'ioeventfd');
    await settle();
    expect(mem.readU8(0x60000)).toBe(B.VIRTIO_BLK_S_OK);

    // The worker dies (as a Worker's 'exit' reports it).
    started[0].deliver({ type: 'dead', reason: 'iothread io0 exited (code 1)' });
    expect(main.status & V.VIRTIO_CONFIG_S_NEEDS_RESET).toBeTruthy();
    expect(irqs).toContain('config');
    expect(main.brokenReason).toMatch(/iothread io0 exited/);

    // The guest resets and initialises the device again: a second worker takes the queue.
    main.writeStatus(0);
    expect(started).toHaveLength(2);
    const drv2 = new MockDriverQueue(mem, 16, 0x80000);
    driverInit(main, drv2);
    expect(main.status & V.VIRTIO_CONFIG_S_NEEDS_RESET).toBe(0);
    writeRequest(mem, drv2, 0x22);
    main.notify(0, 'ioeventfd');
    await settle();
    expect(started[1].received).toEqual(expect.arrayContaining(['reset', 'activate', 'kick']));
    expect(mem.readU8(0x60000)).toBe(B.VIRTIO_BLK_S_OK);
    expect(fs.readFileSync(file)[100]).toBe(0x22);
    expect(drv2.takeUsed()).toHaveLength(1);
  });
});
