// VirtioBlkDevice against a fake guest memory, a driver-side mock queue and a real temp file.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { virtioUapi as V } from '@tsvmm/virtio-core';
import { fakeMemory, MockDriverQueue } from '@tsvmm/virtio-core/testing';
import { RawFileBackend } from '@tsvmm/block';
import { VirtioBlkDevice } from './device';
import * as B from './generated/virtio-blk-uapi';

const HDR = 0x40000;
const DATA = 0x50000;
const STATUS = 0x60000;

function setup(opts: { readonly?: boolean; sizeSectors?: number } = {}) {
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'blk-')), 'disk.img');
  fs.writeFileSync(file, Buffer.alloc((opts.sizeSectors ?? 64) * 512));
  const mem = fakeMemory(1 << 20);
  const backend = new RawFileBackend(file, opts.readonly ?? false, false);
  const dev = new VirtioBlkDevice(mem, { id: 'd0', backend, numQueues: 1, serial: 'SERIAL-1' });
  const irqs: string[] = [];
  dev.interrupt = { signalQueue: (q) => irqs.push(`q${q}`), signalConfig: () => irqs.push('config') };
  const drv = new MockDriverQueue(mem, 16);
  // Driver initialisation: features, queue, DRIVER_OK; bus mastering on.
  dev.writeStatus(V.VIRTIO_CONFIG_S_ACKNOWLEDGE | V.VIRTIO_CONFIG_S_DRIVER);
  dev.writeDriverFeatures(0, dev.readDeviceFeatures(0));
  dev.writeDriverFeatures(1, dev.readDeviceFeatures(1));
  dev.writeStatus(V.VIRTIO_CONFIG_S_ACKNOWLEDGE | V.VIRTIO_CONFIG_S_DRIVER | V.VIRTIO_CONFIG_S_FEATURES_OK);
  drv.program(dev.queues[0]);
  dev.writeStatus(V.VIRTIO_CONFIG_S_ACKNOWLEDGE | V.VIRTIO_CONFIG_S_DRIVER | V.VIRTIO_CONFIG_S_FEATURES_OK | V.VIRTIO_CONFIG_S_DRIVER_OK);
  return { file, mem, dev, drv, irqs };
}

function header(mem: ReturnType<typeof fakeMemory>, type: number, sector: number, at = HDR) {
  mem.writeU32(at, type);
  mem.writeU32(at + 4, 0);
  mem.writeU64(at + 8, BigInt(sector));
}

async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
  await new Promise((r) => setTimeout(r, 20));
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
}

describe('VirtioBlkDevice', () => {
  it('writes to the image file and reads it back, zero-copy, with one interrupt per batch', async () => {
    const { file, mem, dev, drv, irqs } = setup();
    const pattern = Buffer.alloc(1024, 0).map((_, i) => (i * 7 + 3) & 0xff);
    mem.write(DATA, pattern);
    header(mem, B.VIRTIO_BLK_T_OUT, 4);
    drv.addChain([
      { addr: HDR, len: 16 },
      { addr: DATA, len: 1024 },
      { addr: STATUS, len: 1, write: true },
    ]);
    dev.notify(0);
    await settle();
    expect(mem.readU8(STATUS)).toBe(B.VIRTIO_BLK_S_OK);
    expect(fs.readFileSync(file).subarray(4 * 512, 6 * 512)).toEqual(Buffer.from(pattern));
    expect(drv.takeUsed()).toEqual([{ id: 0, len: 1 }]);
    expect(irqs).toEqual(['q0']);

    header(mem, B.VIRTIO_BLK_T_IN, 4, HDR + 0x100);
    mem.fill(DATA + 0x1000, 1024, 0);
    drv.addChain([
      { addr: HDR + 0x100, len: 16 },
      { addr: DATA + 0x1000, len: 512, write: true },
      { addr: DATA + 0x1200, len: 512, write: true },
      { addr: STATUS + 1, len: 1, write: true },
    ]);
    dev.notify(0);
    await settle();
    expect(Buffer.from(mem.read(DATA + 0x1000, 1024))).toEqual(Buffer.from(pattern));
    expect(drv.takeUsed()).toEqual([{ id: 3, len: 1025 }]);
  });

  it('answers GET_ID, FLUSH, unknown types and out-of-range requests with the right status', async () => {
    const { mem, dev, drv } = setup({ sizeSectors: 8 });
    header(mem, B.VIRTIO_BLK_T_GET_ID, 0);
    drv.addChain([
      { addr: HDR, len: 16 },
      { addr: DATA, len: 20, write: true },
      { addr: STATUS, len: 1, write: true },
    ]);
    header(mem, B.VIRTIO_BLK_T_FLUSH, 0, HDR + 0x20);
    drv.addChain([
      { addr: HDR + 0x20, len: 16 },
      { addr: STATUS + 1, len: 1, write: true },
    ]);
    header(mem, 0x1234, 0, HDR + 0x40);
    drv.addChain([
      { addr: HDR + 0x40, len: 16 },
      { addr: STATUS + 2, len: 1, write: true },
    ]);
    header(mem, B.VIRTIO_BLK_T_IN, 7, HDR + 0x60); // 2 sectors from sector 7 of 8: beyond capacity
    drv.addChain([
      { addr: HDR + 0x60, len: 16 },
      { addr: DATA + 0x100, len: 1024, write: true },
      { addr: STATUS + 3, len: 1, write: true },
    ]);
    dev.notify(0);
    await settle();
    expect(Buffer.from(mem.read(DATA, 9)).toString()).toBe('SERIAL-1\0');
    expect([0, 1, 2, 3].map((i) => mem.readU8(STATUS + i))).toEqual([
      B.VIRTIO_BLK_S_OK,
      B.VIRTIO_BLK_S_OK,
      B.VIRTIO_BLK_S_UNSUPP,
      B.VIRTIO_BLK_S_IOERR,
    ]);
    expect(dev.blk.unsupported).toBe(1);
  });

  it('refuses writes on a read-only image with IOERR and offers VIRTIO_BLK_F_RO', async () => {
    const { mem, dev, drv, file } = setup({ readonly: true });
    expect(dev.readDeviceFeatures(0) & (1 << B.VIRTIO_BLK_F_RO)).toBeTruthy();
    mem.fill(DATA, 512, 0xaa);
    header(mem, B.VIRTIO_BLK_T_OUT, 0);
    drv.addChain([
      { addr: HDR, len: 16 },
      { addr: DATA, len: 512 },
      { addr: STATUS, len: 1, write: true },
    ]);
    dev.notify(0);
    await settle();
    expect(mem.readU8(STATUS)).toBe(B.VIRTIO_BLK_S_IOERR);
    expect(
      fs
        .readFileSync(file)
        .subarray(0, 512)
        .every((b) => b === 0),
    ).toBe(true);
  });

  it('a status byte in a device-readable buffer marks the device needs-reset', async () => {
    const { mem, dev, drv, irqs } = setup();
    header(mem, B.VIRTIO_BLK_T_IN, 0);
    drv.addChain([
      { addr: HDR, len: 16 },
      { addr: STATUS, len: 1 },
    ]);
    dev.notify(0);
    expect(dev.broken).toBe(true);
    expect(dev.status & V.VIRTIO_CONFIG_S_NEEDS_RESET).toBeTruthy();
    expect(irqs).toEqual(['config']);
    dev.writeStatus(0);
    expect(dev.broken).toBe(false);
    expect(dev.status).toBe(0);
  });

  it('does not touch guest memory while disabled, and completes the kicked request when re-enabled', async () => {
    const { mem, dev, drv } = setup();
    dev.setDisabled(true);
    header(mem, B.VIRTIO_BLK_T_GET_ID, 0);
    mem.writeU8(STATUS, 0xee);
    drv.addChain([
      { addr: HDR, len: 16 },
      { addr: DATA, len: 20, write: true },
      { addr: STATUS, len: 1, write: true },
    ]);
    dev.notify(0);
    await settle();
    expect(mem.readU8(STATUS)).toBe(0xee);
    expect(drv.takeUsed()).toEqual([]);
    expect(dev.counters[0].chains).toBe(0);
    dev.setDisabled(false);
    await settle();
    expect(mem.readU8(STATUS)).toBe(B.VIRTIO_BLK_S_OK);
    expect(drv.takeUsed().length).toBe(1);
  });

  it('punches holes for DISCARD and zeroes for WRITE_ZEROES', async () => {
    const { mem, dev, drv, file } = setup();
    fs.writeFileSync(file, Buffer.alloc(64 * 512, 0x5a));
    for (const [i, type] of [B.VIRTIO_BLK_T_DISCARD, B.VIRTIO_BLK_T_WRITE_ZEROES].entries()) {
      const seg = DATA + i * 0x100;
      mem.writeU64(seg, BigInt(8 + 16 * i));
      mem.writeU32(seg + 8, 8);
      mem.writeU32(seg + 12, type === B.VIRTIO_BLK_T_WRITE_ZEROES ? B.VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP : 0);
      header(mem, type, 0, HDR + i * 0x20);
      drv.addChain([
        { addr: HDR + i * 0x20, len: 16 },
        { addr: seg, len: 16 },
        { addr: STATUS + i, len: 1, write: true },
      ]);
    }
    dev.notify(0);
    await settle();
    expect([mem.readU8(STATUS), mem.readU8(STATUS + 1)]).toEqual([0, 0]);
    const img = fs.readFileSync(file);
    expect(img.subarray(8 * 512, 16 * 512).every((b) => b === 0)).toBe(true);
    expect(img.subarray(24 * 512, 32 * 512).every((b) => b === 0)).toBe(true);
    expect(img[16 * 512]).toBe(0x5a);
    expect(img.length).toBe(64 * 512);
  });
});
