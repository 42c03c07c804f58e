// virtio-scsi on an iothread, the migration exchange and the adapter's own messages, with the
// main-thread device and the worker's plane in one process: messages go through a structured clone
// on a later turn, as between threads. Fake guest memory, a real temp image file.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { FileIo, RawFileBackend } from '@tsvmm/block';
import { ScsiDisk, ScsiTarget } from '@tsvmm/scsi';
import { GuestMemory, IoThreadChannel, IoThreadFromWorker, SharedQueueStats, WorkerPlane } from '@tsvmm/virtio-core';
import { driverInit, fakeMemory, MockDriverQueue } from '@tsvmm/virtio-core/testing';
import { VirtioScsiDevice, virtioScsiUapi as S } from '@tsvmm/virtio-scsi-core';
import { createScsiPlane, SCSI_PLANE, ScsiInit, scsiPlane } from './dataplane';

const REQ = 0x40000;
const RESP = 0x48000;
const DATA = 0x50000;
const REQ_LEN = S.SIZEOF_virtio_scsi_cmd_req;
/** The response with the 32-byte sense area the driver sets below (sense_size=32). */
const RESP_LEN = S.OFF_virtio_scsi_cmd_resp_sense + 32;
const WRITE10 = (lba: number) => [0x2a, 0, 0, 0, 0, lba & 0xff, 0, 0, 1, 0];
const later = (f: () => void) => setImmediate(f);

function image(): string {
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'iotscsi-dp-')), 'lun.img');
  fs.writeFileSync(file, Buffer.alloc(64 * 512));
  return file;
}

/** A main-thread adapter with LUN 0 and its plane "in a worker" over the same memory. */
function side(file: string, mem: GuestMemory, planeIo?: FileIo) {
  let plane: WorkerPlane<VirtioScsiDevice> | undefined;
  const irqs: string[] = [];
  const sent: string[] = [];
  const main = new VirtioScsiDevice(mem, { id: 's0', numQueues: 1 });
  main.target.attach(0, new ScsiDisk({ backend: new RawFileBackend(file, false, false), readonly: false, serial: 'S0' }));
  main.interrupt = { signalQueue: (q) => irqs.push(`main-q${q}`), signalConfig: () => irqs.push('config') };
  const stats = SharedQueueStats.create(main.queues.length);
  const thread = new IoThreadChannel(
    'iotscsi0',
    (m) => main.onDataPlaneMessage(m),
    (deliver) => {
      const lunBackend = new RawFileBackend(file, false, false);
      const init: ScsiInit = {
        type: 'init',
        plane: SCSI_PLANE,
        id: 's0',
        regions: [],
        eventIdx: true,
        stats: stats.buffer,
        numQueues: 1,
        luns: [{ lun: 0, file, fds: lunBackend.dupFds(), readonly: false, direct: false, serial: 'S0', logicalBlockSize: 512 }],
      };
      lunBackend.close();
      const post = (m: IoThreadFromWorker) => later(() => deliver(structuredClone(m)));
      if (planeIo) {
        // The plane's LUN over an I/O engine the test holds (commands stay in flight until it lets go).
        fs.closeSync(init.luns[0].fds.fd);
        const target = new ScsiTarget();
        target.attach(0, new ScsiDisk({ backend: new RawFileBackend(file, false, false, planeIo), readonly: false, serial: 'S0' }));
        plane = scsiPlane(mem, init, target, post, () => irqs.push('worker-irq'));
      } else plane = createScsiPlane(mem, init, post, () => irqs.push('worker-irq')) as WorkerPlane<VirtioScsiDevice>;
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
  return { main, plane: plane!, irqs, sent, thread };
}

/** Command n: WRITE(10) of LBA n with bytes n+1, its own header, response and data buffers. */
function write(mem: GuestMemory, reqq: MockDriverQueue, n: number): void {
  const at = REQ + n * 0x100;
  mem.fill(at, REQ_LEN, 0);
  mem.write(at, [1, 0, 0x40, 0]);
  mem.writeU64(at + S.OFF_virtio_scsi_cmd_req_tag, BigInt(n + 1));
  mem.write(at + S.OFF_virtio_scsi_cmd_req_cdb, WRITE10(n));
  mem.fill(RESP + n * 0x100, RESP_LEN, 0xee);
  mem.fill(DATA + n * 0x1000, 512, n + 1);
  reqq.addChain([
    { addr: at, len: REQ_LEN },
    { addr: DATA + n * 0x1000, len: 512 },
    { addr: RESP + n * 0x100, len: RESP_LEN, write: true },
  ]);
}

const response = (mem: GuestMemory, n: number) => mem.readU8(RESP + n * 0x100 + S.OFF_virtio_scsi_cmd_resp_response);

async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
  await new Promise((r) => setTimeout(r, 20));
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
}

function queues(mem: GuestMemory) {
  return [new MockDriverQueue(mem, 16, 0x10000), new MockDriverQueue(mem, 16, 0x14000), new MockDriverQueue(mem, 16, 0x20000)];
}

describe('virtio-scsi on an iothread: migration state exchange', () => {
  it('drains commands in flight with bus mastering off: their responses are held, travel in the state, and reach the guest once on the destination', async () => {
    const file = image();
    const mem = fakeMemory(1 << 20);
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const held: FileIo = {
      readv: (fd, bufs, pos, cb) => void gate.then(() => fs.readv(fd, bufs, pos, cb)),
      writev: (fd, bufs, pos, cb) => void gate.then(() => fs.writev(fd, bufs, pos, cb)),
      fdatasync: (fd, cb) => void gate.then(() => fs.fdatasync(fd, cb)),
    };
    const src = side(file, mem, held);
    const [ctrl, evt, reqq] = queues(mem);
    driverInit(src.main, [ctrl, evt, reqq]);
    // The driver's sense size reaches the plane, which parses the requests.
    src.main.writeConfig(S.OFF_virtio_scsi_config_sense_size, 4, 32);
    for (let n = 0; n < 3; n++) write(mem, reqq, n);
    src.main.notify(2, 'ioeventfd');
    await settle();
    expect(src.plane.dev.inFlightCount).toBe(3);
    src.main.setDisabled(true); // the commands are in flight when bus mastering goes off
    const drained = src.main.drain();
    await settle();
    release();
    await drained;
    expect(src.plane.dev.readConfig(S.OFF_virtio_scsi_config_sense_size, 4)).toBe(32);
    expect(src.plane.dev.inFlightCount).toBe(0);
    expect(src.main.deviceInfo()).toMatchObject({ commands: 3, 'in-flight': 0, iothread: 'iotscsi0' });
    // Written to the image, but nothing reached the guest: no response byte, no used entry.
    const img = fs.readFileSync(file);
    for (let n = 0; n < 3; n++) expect(img.subarray(n * 512, n * 512 + 512).every((b) => b === n + 1)).toBe(true);
    expect([0, 1, 2].map((n) => response(mem, n))).toEqual([0xee, 0xee, 0xee]);
    expect(reqq.takeUsed()).toEqual([]);
    const state = structuredClone({ virtio: src.main.saveState(), extra: src.main.saveScsiState() });
    expect(state.extra?.pendingWrites).toHaveLength(3);
    expect(state.virtio.deferred).toHaveLength(3);
    expect(state.virtio.queues[2]).toMatchObject({ lastAvailIdx: 3, usedIdx: 0, ready: true });
    // The main thread's own copy of the queue never moved: the state is the worker's.
    expect(src.main.queues[2].save()).toMatchObject({ lastAvailIdx: 0, usedIdx: 0 });

    // Destination: RAM copied, state loaded; bus mastering on delivers the held responses, once.
    const dmem = fakeMemory(1 << 20);
    dmem.write(0, mem.read(0, 1 << 20));
    const dst = side(file, dmem);
    dst.main.loadScsiState(state.extra);
    dst.main.loadState(state.virtio);
    expect(dst.sent).toEqual(['restore']);
    dst.main.resumeDataPlane();
    dst.main.setDisabled(false);
    await settle();
    expect([0, 1, 2].map((n) => response(dmem, n))).toEqual([0, 0, 0]);
    const drv = new MockDriverQueue(dmem, 16, 0x20000);
    expect(drv.takeUsed().map((u) => u.id)).toHaveLength(3);
    expect(dst.plane.dev.queues[2].save()).toMatchObject({ lastAvailIdx: 3, usedIdx: 3 });
    expect(dst.plane.dev.scsi.commands).toBe(0); // nothing executed twice
    expect(dst.irqs).toContain('worker-irq');
    expect(dst.plane.dev.readConfig(S.OFF_virtio_scsi_config_sense_size, 4)).toBe(32);
  });

  it("a system reset gives the plane's LUNs their power-on unit attention; the monitor shows the plane's LUN facts", async () => {
    const mem = fakeMemory(1 << 20);
    const { main, plane, thread } = side(image(), mem);
    driverInit(main, queues(mem));
    await settle();
    expect(plane.dev.target.lun(0)!.info().pendingUnitAttention).toBeNull();
    main.reset();
    main.powerOnReset();
    await settle();
    expect(plane.dev.target.lun(0)!.info().pendingUnitAttention).not.toBeNull();
    thread.send({ type: 'stats' });
    await settle();
    const info = main.deviceInfo() as { luns: Record<string, { pendingUnitAttention: string | null }> };
    expect(info.luns['0'].pendingUnitAttention).toBe(plane.dev.target.lun(0)!.info().pendingUnitAttention);
  });
});
