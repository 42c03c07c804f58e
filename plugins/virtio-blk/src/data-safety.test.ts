// Data safety of virtio-blk completions (docs/block-data-safety.md), on the main thread and in
// the iothread's data plane (in-process, messages cloned on a later turn as between threads):
// a write cut short by a full disk is IOERR, never OK, and the next FLUSH fails; a failed
// fdatasync keeps failing every FLUSH until the device is reset; a driver without
// VIRTIO_BLK_F_FLUSH gets write-through. Fake guest memory, a real temp image file whose
// file operations are wrapped to run out of space or fail a sync.
import * as fs from 'fs';
import * as path from 'path';
import { GuestMemory, virtioUapi as V } from '@tsvmm/virtio-core';
import { fakeMemory, MockDriverQueue } from '@tsvmm/virtio-core/testing';
import { FileIo, RawFileBackend } from '@tsvmm/block';
import { VirtioBlkDevice } from './device';
import { BlkWorkerPlane } from './dataplane';
import { BlkIoThread, FromWorker, ToWorker } from './iothread';
import * as B from './generated/virtio-blk-uapi';
import { HDR, DATA, STATUS, image } from './test-fixtures';

const PENDING = 0xee;

/** The real file operations; writes stop after `spaceLeft` bytes (ENOSPC), `failSync` fails the next fdatasync once. */
function faultyIo() {
  const t = {
    syncs: 0,
    spaceLeft: Infinity,
    failSync: false,
    io: {
      readv: (fd, bufs, pos, cb) => fs.readv(fd, bufs, pos, cb),
      writev: (fd, bufs, pos, cb) => {
        const want = bufs.reduce((n, b) => n + b.length, 0);
        if (t.spaceLeft === 0) return cb(Object.assign(new Error('ENOSPC: no space left on device'), { code: 'ENOSPC' }), 0);
        // As libuv does on a full disk: the bytes that fitted, the error dropped.
        const n = Math.min(want, t.spaceLeft);
        t.spaceLeft -= n;
        fs.write(fd, Buffer.concat(bufs).subarray(0, n), 0, n, pos, cb);
      },
      fdatasync: (fd, cb) => {
        t.syncs++;
        if (t.failSync) {
          t.failSync = false;
          return cb(Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' }));
        }
        fs.fdatasync(fd, cb);
      },
    } as FileIo,
  };
  return t;
}

type Mode = 'main thread' | 'iothread';

/** A device whose I/O goes through `io`: the main-thread device itself, or its data plane. */
function device(mode: Mode, file: string, mem: GuestMemory, io: FileIo): VirtioBlkDevice {
  if (mode === 'main thread') {
    const dev = new VirtioBlkDevice(mem, { id: 'd0', backend: new RawFileBackend(file, false, false, io), numQueues: 1, serial: 'S' });
    dev.interrupt = { signalQueue: () => undefined, signalConfig: () => undefined };
    return dev;
  }
  const main = new VirtioBlkDevice(mem, { id: 'd0', backend: new RawFileBackend(file, false, false), numQueues: 1, serial: 'S' });
  main.interrupt = { signalQueue: () => undefined, signalConfig: () => undefined };
  const later = (f: () => void) => setImmediate(f);
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
      };
      const plane = new BlkWorkerPlane(
        mem,
        new RawFileBackend(file, false, false, io),
        init,
        (m: FromWorker) => later(() => deliver(structuredClone(m))),
        () => undefined,
      );
      return { postMessage: (m) => later(() => plane.handle(structuredClone(m))), close: async () => undefined };
    },
  );
  main.attachDataPlane({ thread, vectorFd: () => -1 });
  return main;
}

/** Reset (status 0) and initialise as a driver that accepts every offered feature but those in `without`. */
function driverInit(dev: VirtioBlkDevice, mem: GuestMemory, without: number[] = []): MockDriverQueue {
  dev.writeStatus(0);
  const drv = new MockDriverQueue(mem, 16);
  dev.writeStatus(V.VIRTIO_CONFIG_S_ACKNOWLEDGE | V.VIRTIO_CONFIG_S_DRIVER);
  let lo = dev.readDeviceFeatures(0);
  for (const b of without) lo &= ~(1 << b);
  dev.writeDriverFeatures(0, lo);
  dev.writeDriverFeatures(1, dev.readDeviceFeatures(1));
  dev.writeStatus(V.VIRTIO_CONFIG_S_ACKNOWLEDGE | V.VIRTIO_CONFIG_S_DRIVER | V.VIRTIO_CONFIG_S_FEATURES_OK);
  drv.program(dev.queues[0]);
  dev.writeStatus(V.VIRTIO_CONFIG_S_ACKNOWLEDGE | V.VIRTIO_CONFIG_S_DRIVER | V.VIRTIO_CONFIG_S_FEATURES_OK | V.VIRTIO_CONFIG_S_DRIVER_OK);
  dev.setDisabled(false);
  return drv;
}

/** Submits request n (a 1 KiB write of bytes n+1 at sector 2n, or a FLUSH) and waits for its status byte. */
async function run(dev: VirtioBlkDevice, mem: GuestMemory, drv: MockDriverQueue, n: number, type = B.VIRTIO_BLK_T_OUT): Promise<number> {
  const hdr = HDR + n * 0x20;
  mem.writeU32(hdr, type);
  mem.writeU32(hdr + 4, 0);
  mem.writeU64(hdr + 8, BigInt(type === B.VIRTIO_BLK_T_OUT ? 2 * n : 0));
  mem.writeU8(STATUS + n, PENDING);
  if (type === B.VIRTIO_BLK_T_OUT) {
    mem.fill(DATA + n * 0x1000, 1024, n + 1);
    drv.addChain([
      { addr: hdr, len: 16 },
      { addr: DATA + n * 0x1000, len: 512 },
      { addr: DATA + n * 0x1000 + 512, len: 512 },
      { addr: STATUS + n, len: 1, write: true },
    ]);
  } else {
    drv.addChain([
      { addr: hdr, len: 16 },
      { addr: STATUS + n, len: 1, write: true },
    ]);
  }
  dev.notify(0, 'ioeventfd');
  for (let i = 0; i < 5000 && mem.readU8(STATUS + n) === PENDING; i++) await new Promise((r) => setTimeout(r, 2));
  return mem.readU8(STATUS + n);
}

const { VIRTIO_BLK_S_OK: OK, VIRTIO_BLK_S_IOERR: IOERR, VIRTIO_BLK_T_FLUSH: FLUSH } = B;

describe.each<Mode>(['main thread', 'iothread'])('virtio-blk data safety (%s)', (mode) => {
  let file: string;
  let dev: VirtioBlkDevice | undefined;
  beforeEach(() => {
    file = image('blkdata-vblk-');
  });
  afterEach(async () => {
    await dev?.destroy();
    dev = undefined;
    fs.rmSync(path.dirname(file), { recursive: true, force: true });
  });

  it('a write the disk has no room for is IOERR, never OK; the next FLUSH fails; what was OK is in the image', async () => {
    const mem = fakeMemory(1 << 20);
    const t = faultyIo();
    dev = device(mode, file, mem, t.io);
    const drv = driverInit(dev, mem);
    t.spaceLeft = 2 * 1024 + 700; // requests 0 and 1 fit, request 2 is cut short after 700 bytes
    expect(await run(dev, mem, drv, 0)).toBe(OK);
    expect(await run(dev, mem, drv, 1)).toBe(OK);
    expect(await run(dev, mem, drv, 2)).toBe(IOERR);
    expect(await run(dev, mem, drv, 3)).toBe(IOERR);
    expect(await run(dev, mem, drv, 4, FLUSH)).toBe(IOERR);
    // Reported once: a FLUSH now says the OK writes are in the file (they are).
    expect(await run(dev, mem, drv, 5, FLUSH)).toBe(OK);
    const img = fs.readFileSync(file);
    for (const n of [0, 1]) expect(img.subarray(n * 1024, n * 1024 + 1024).every((b) => b === n + 1)).toBe(true);
    await dev.drain();
    expect(dev.deviceInfo()).toMatchObject({ writes: 4, flushes: 2, ioErrors: 3, bytesWritten: 2048 });
  });

  it('after a failed fdatasync every FLUSH fails until the driver resets the device', async () => {
    const mem = fakeMemory(1 << 20);
    const t = faultyIo();
    dev = device(mode, file, mem, t.io);
    let drv = driverInit(dev, mem);
    expect(await run(dev, mem, drv, 0)).toBe(OK);
    t.failSync = true;
    expect(await run(dev, mem, drv, 1, FLUSH)).toBe(IOERR);
    // The kernel would now say "fine" (it reported the error once): the device does not.
    expect(await run(dev, mem, drv, 2)).toBe(OK);
    expect(await run(dev, mem, drv, 3, FLUSH)).toBe(IOERR);
    expect(await run(dev, mem, drv, 4, FLUSH)).toBe(IOERR);
    drv = driverInit(dev, mem);
    expect(await run(dev, mem, drv, 5, FLUSH)).toBe(OK);
  });

  it('a driver without VIRTIO_BLK_F_FLUSH gets write-through: each write synced before it completes', async () => {
    const mem = fakeMemory(1 << 20);
    const t = faultyIo();
    dev = device(mode, file, mem, t.io);
    let drv = driverInit(dev, mem);
    expect(dev.deviceInfo()['write-cache']).toBe('writeback');
    expect(await run(dev, mem, drv, 0)).toBe(OK);
    expect(t.syncs).toBe(0);

    drv = driverInit(dev, mem, [B.VIRTIO_BLK_F_FLUSH]);
    expect(dev.deviceInfo()['write-cache']).toBe('writethrough');
    expect(await run(dev, mem, drv, 1)).toBe(OK);
    expect(t.syncs).toBe(1);
    expect(
      fs
        .readFileSync(file)
        .subarray(1024, 2048)
        .every((b) => b === 2),
    ).toBe(true);
    // The sync fails: the write is IOERR (the guest has no FLUSH to hear it from), and so is every later one.
    t.failSync = true;
    expect(await run(dev, mem, drv, 2)).toBe(IOERR);
    expect(await run(dev, mem, drv, 3)).toBe(IOERR);
    drv = driverInit(dev, mem, [B.VIRTIO_BLK_F_FLUSH]);
    expect(await run(dev, mem, drv, 4)).toBe(OK);
  });
});
