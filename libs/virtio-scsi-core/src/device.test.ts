// VirtioScsiDevice against a fake guest memory, a driver-side mock queue and real SCSI disks on temp files.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { BlockBackend, RawFileBackend } from '@tsvmm/block';
import { decodeSense, ScsiDisk } from '@tsvmm/scsi';
import { virtioUapi as V } from '@tsvmm/virtio-core';
import { fakeMemory, MockDriverQueue } from '@tsvmm/virtio-core/testing';
import { VirtioScsiDevice } from './device';
import * as S from './generated/virtio-scsi-uapi';

const REQ = 0x40000;
const RESP = 0x48000;
const DATA = 0x50000;
const REQ_LEN = S.SIZEOF_virtio_scsi_cmd_req;
const RESP_LEN = S.SIZEOF_virtio_scsi_cmd_resp;

type Mem = ReturnType<typeof fakeMemory>;

function setup(opts: { backend?: BlockBackend } = {}) {
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'scsi-')), 'disk.img');
  fs.writeFileSync(file, Buffer.alloc(64 * 512));
  const mem = fakeMemory(1 << 20);
  const dev = new VirtioScsiDevice(mem, { id: 'scsi0', numQueues: 1 });
  current = dev;
  dev.target.attach(0, new ScsiDisk({ backend: opts.backend ?? new RawFileBackend(file, false, false), readonly: false, serial: 'SER0' }));
  const irqs: string[] = [];
  dev.interrupt = { signalQueue: (q) => irqs.push(`q${q}`), signalConfig: () => irqs.push('config') };
  const ctrl = new MockDriverQueue(mem, 16, 0x10000);
  const reqq = new MockDriverQueue(mem, 16, 0x20000);
  dev.writeStatus(V.VIRTIO_CONFIG_S_ACKNOWLEDGE | V.VIRTIO_CONFIG_S_DRIVER);
  dev.writeDriverFeatures(0, dev.readDeviceFeatures(0));
  dev.writeDriverFeatures(1, dev.readDeviceFeatures(1));
  dev.writeStatus(V.VIRTIO_CONFIG_S_ACKNOWLEDGE | V.VIRTIO_CONFIG_S_DRIVER | V.VIRTIO_CONFIG_S_FEATURES_OK);
  ctrl.program(dev.queues[0]);
  reqq.program(dev.queues[2]);
  dev.writeStatus(V.VIRTIO_CONFIG_S_ACKNOWLEDGE | V.VIRTIO_CONFIG_S_DRIVER | V.VIRTIO_CONFIG_S_FEATURES_OK | V.VIRTIO_CONFIG_S_DRIVER_OK);
  return { file, mem, dev, ctrl, reqq, irqs };
}

/** Writes a command request header: LUN in flat addressing, a tag, the CDB. */
function cmdReq(mem: Mem, at: number, cdb: number[], o: { lun?: number; target?: number; tag?: number; lun0?: number } = {}): void {
  mem.fill(at, REQ_LEN, 0);
  const lun = o.lun ?? 0;
  mem.write(at, [o.lun0 ?? 1, o.target ?? 0, 0x40 | (lun >> 8), lun & 0xff]);
  mem.writeU64(at + S.OFF_virtio_scsi_cmd_req_tag, BigInt(o.tag ?? 1));
  mem.write(at + S.OFF_virtio_scsi_cmd_req_cdb, cdb);
}

function resp(mem: Mem, at: number) {
  return {
    senseLen: mem.readU32(at + S.OFF_virtio_scsi_cmd_resp_sense_len),
    resid: mem.readU32(at + S.OFF_virtio_scsi_cmd_resp_resid),
    status: mem.readU8(at + S.OFF_virtio_scsi_cmd_resp_status),
    response: mem.readU8(at + S.OFF_virtio_scsi_cmd_resp_response),
    sense: mem.read(at + S.OFF_virtio_scsi_cmd_resp_sense, mem.readU32(at + S.OFF_virtio_scsi_cmd_resp_sense_len)),
  };
}

function tmfReq(mem: Mem, at: number, subtype: number, tag: number, lun = 0): void {
  mem.fill(at, S.SIZEOF_virtio_scsi_ctrl_tmf_req, 0);
  mem.writeU32(at + S.OFF_virtio_scsi_ctrl_tmf_req_type, S.VIRTIO_SCSI_T_TMF);
  mem.writeU32(at + S.OFF_virtio_scsi_ctrl_tmf_req_subtype, subtype);
  mem.write(at + S.OFF_virtio_scsi_ctrl_tmf_req_lun, [1, 0, 0x40 | (lun >> 8), lun & 0xff]);
  mem.writeU64(at + S.OFF_virtio_scsi_ctrl_tmf_req_tag, BigInt(tag));
}

/** The device of the running test: settle() waits for its commands in flight (file I/O on a busy host can be slow). */
let current: VirtioScsiDevice | undefined;

async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
  // Bounded: some tests hold a command in flight on purpose.
  const drained = () => Promise.race([current?.drain(), new Promise((r) => setTimeout(r, 500))]);
  await drained();
  await new Promise((r) => setTimeout(r, 20));
  await drained();
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
}

const INQUIRY = (alloc: number) => [0x12, 0, 0, 0, alloc, 0];
const READ10 = (lba: number, n: number) => [0x28, 0, 0, 0, (lba >> 8) & 0xff, lba & 0xff, 0, 0, n, 0];
const WRITE10 = (lba: number, n: number) => [0x2a, 0, 0, 0, (lba >> 8) & 0xff, lba & 0xff, 0, 0, n, 0];

describe('VirtioScsiDevice', () => {
  it('exposes the virtio-scsi config space with the default sense and CDB sizes', () => {
    const { dev } = setup();
    expect(dev.readConfig(S.OFF_virtio_scsi_config_num_queues, 4)).toBe(1);
    expect(dev.readConfig(S.OFF_virtio_scsi_config_sense_size, 4)).toBe(96);
    expect(dev.readConfig(S.OFF_virtio_scsi_config_cdb_size, 4)).toBe(32);
    expect(dev.readConfig(S.OFF_virtio_scsi_config_max_lun, 4)).toBe(16383);
    dev.writeConfig(S.OFF_virtio_scsi_config_sense_size, 4, 32);
    expect(dev.readConfig(S.OFF_virtio_scsi_config_sense_size, 4)).toBe(32);
    dev.writeConfig(S.OFF_virtio_scsi_config_num_queues, 4, 9); // read-only
    expect(dev.readConfig(S.OFF_virtio_scsi_config_num_queues, 4)).toBe(1);
    dev.reset();
    expect(dev.readConfig(S.OFF_virtio_scsi_config_sense_size, 4)).toBe(96);
  });

  it('answers INQUIRY into the data-in buffers and counts them in the used length', async () => {
    const { mem, dev, reqq, irqs } = setup();
    cmdReq(mem, REQ, INQUIRY(96));
    reqq.addChain([
      { addr: REQ, len: REQ_LEN },
      { addr: RESP, len: RESP_LEN, write: true },
      { addr: DATA, len: 96, write: true },
    ]);
    dev.notify(2);
    await settle();
    const r = resp(mem, RESP);
    expect(r).toMatchObject({ response: S.VIRTIO_SCSI_S_OK, status: 0, senseLen: 0 });
    expect(
      Buffer.from(mem.read(DATA + 8, 8))
        .toString('latin1')
        .trim(),
    ).toBe('TSVMM');
    const used = reqq.takeUsed();
    expect(used).toHaveLength(1);
    expect(used[0].len).toBe(RESP_LEN + 96 - r.resid);
    expect(irqs).toEqual(['q2']);
  });

  it('writes through WRITE(10) to the image and reads it back with READ(10) across two buffers', async () => {
    const { file, mem, dev, reqq } = setup();
    const pattern = Buffer.alloc(1024).map((_, i) => (i * 13 + 1) & 0xff);
    mem.write(DATA, pattern);
    cmdReq(mem, REQ, WRITE10(3, 2), { tag: 1 });
    reqq.addChain([
      { addr: REQ, len: REQ_LEN },
      { addr: DATA, len: 1024 },
      { addr: RESP, len: RESP_LEN, write: true },
    ]);
    dev.notify(2);
    await settle();
    expect(resp(mem, RESP)).toMatchObject({ response: S.VIRTIO_SCSI_S_OK, status: 0 });
    expect(fs.readFileSync(file).subarray(3 * 512, 5 * 512)).toEqual(Buffer.from(pattern));

    cmdReq(mem, REQ + 0x100, READ10(3, 2), { tag: 2 });
    reqq.addChain([
      { addr: REQ + 0x100, len: REQ_LEN },
      { addr: RESP + 0x100, len: RESP_LEN, write: true },
      { addr: DATA + 0x1000, len: 512, write: true },
      { addr: DATA + 0x2000, len: 512, write: true },
    ]);
    dev.notify(2);
    await settle();
    expect(resp(mem, RESP + 0x100)).toMatchObject({ response: S.VIRTIO_SCSI_S_OK, status: 0, resid: 0 });
    expect(Buffer.concat([mem.read(DATA + 0x1000, 512), mem.read(DATA + 0x2000, 512)])).toEqual(Buffer.from(pattern));
  });

  it('answers BAD_TARGET for another target or a malformed LUN field, and CHECK CONDITION 25/00 for an absent LUN', async () => {
    const { mem, dev, reqq } = setup();
    cmdReq(mem, REQ, [0, 0, 0, 0, 0, 0], { target: 1 });
    reqq.addChain([
      { addr: REQ, len: REQ_LEN },
      { addr: RESP, len: RESP_LEN, write: true },
    ]);
    cmdReq(mem, REQ + 0x100, [0, 0, 0, 0, 0, 0], { lun0: 2 });
    reqq.addChain([
      { addr: REQ + 0x100, len: REQ_LEN },
      { addr: RESP + 0x100, len: RESP_LEN, write: true },
    ]);
    cmdReq(mem, REQ + 0x200, [0, 0, 0, 0, 0, 0], { lun: 5 });
    reqq.addChain([
      { addr: REQ + 0x200, len: REQ_LEN },
      { addr: RESP + 0x200, len: RESP_LEN, write: true },
    ]);
    dev.notify(2);
    await settle();
    expect(resp(mem, RESP).response).toBe(S.VIRTIO_SCSI_S_BAD_TARGET);
    expect(resp(mem, RESP + 0x100).response).toBe(S.VIRTIO_SCSI_S_BAD_TARGET);
    const absent = resp(mem, RESP + 0x200);
    expect(absent).toMatchObject({ response: S.VIRTIO_SCSI_S_OK, status: 2 });
    expect(decodeSense(absent.sense)).toEqual({ key: 5, asc: 0x25, ascq: 0 });
    expect(dev.broken).toBe(false);
  });

  it('answers OVERRUN for a READ offered only device-readable data buffers; the device keeps working', async () => {
    const { mem, dev, reqq } = setup();
    cmdReq(mem, REQ, READ10(0, 1));
    reqq.addChain([
      { addr: REQ, len: REQ_LEN },
      { addr: DATA, len: 512 },
      { addr: RESP, len: RESP_LEN, write: true },
    ]);
    dev.notify(2);
    await settle();
    expect(resp(mem, RESP).response).toBe(S.VIRTIO_SCSI_S_OVERRUN);
    expect(dev.broken).toBe(false);
    cmdReq(mem, REQ + 0x100, INQUIRY(36));
    reqq.addChain([
      { addr: REQ + 0x100, len: REQ_LEN },
      { addr: RESP + 0x100, len: RESP_LEN, write: true },
      { addr: DATA, len: 36, write: true },
    ]);
    dev.notify(2);
    await settle();
    expect(resp(mem, RESP + 0x100)).toMatchObject({ response: S.VIRTIO_SCSI_S_OK, status: 0 });
  });

  it.each([
    [
      'a request header shorter than virtio_scsi_cmd_req',
      [
        { addr: REQ, len: 20 },
        { addr: RESP, len: RESP_LEN, write: true },
      ],
      /command request needs 51/,
    ],
    [
      'no room for the response',
      [
        { addr: REQ, len: REQ_LEN },
        { addr: RESP, len: 8, write: true },
      ],
      /command response needs 108/,
    ],
  ])('marks the device needs-reset for %s', async (_what, chain, reason) => {
    const { mem, dev, reqq, irqs } = setup();
    cmdReq(mem, REQ, INQUIRY(36));
    reqq.addChain(chain);
    dev.notify(2);
    await settle();
    expect(dev.broken).toBe(true);
    expect(dev.brokenReason).toMatch(reason);
    expect(dev.status & V.VIRTIO_CONFIG_S_NEEDS_RESET).toBeTruthy();
    expect(irqs).toContain('config');
    expect(reqq.takeUsed()).toEqual([]);
  });

  it('ABORT TASK completes only after the aborted READ has answered ABORTED', async () => {
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'scsi-')), 'disk.img');
    fs.writeFileSync(file, Buffer.alloc(64 * 512));
    const real = new RawFileBackend(file, false, false);
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const slow: BlockBackend = {
      size: real.size,
      readonly: false,
      readv: async (b, o) => {
        await gate;
        return real.readv(b, o);
      },
      writev: (b, o) => real.writev(b, o),
      flush: () => real.flush(),
      discard: (o, l) => real.discard(o, l),
      writeZeroes: (o, l, u) => real.writeZeroes(o, l, u),
      close: () => real.close(),
    };
    const { mem, dev, reqq, ctrl } = setup({ backend: slow });
    cmdReq(mem, REQ, READ10(0, 1), { tag: 77 });
    reqq.addChain([
      { addr: REQ, len: REQ_LEN },
      { addr: RESP, len: RESP_LEN, write: true },
      { addr: DATA, len: 512, write: true },
    ]);
    dev.notify(2);
    await settle();
    expect(dev.deviceInfo()['in-flight']).toBe(1);

    tmfReq(mem, REQ + 0x100, S.VIRTIO_SCSI_T_TMF_QUERY_TASK, 77);
    ctrl.addChain([
      { addr: REQ + 0x100, len: S.SIZEOF_virtio_scsi_ctrl_tmf_req },
      { addr: RESP + 0x100, len: 1, write: true },
    ]);
    dev.notify(0);
    await settle();
    expect(mem.readU8(RESP + 0x100)).toBe(S.VIRTIO_SCSI_S_FUNCTION_SUCCEEDED);
    ctrl.takeUsed();

    mem.writeU8(RESP + 0x200, 0xff);
    tmfReq(mem, REQ + 0x200, S.VIRTIO_SCSI_T_TMF_ABORT_TASK, 77);
    ctrl.addChain([
      { addr: REQ + 0x200, len: S.SIZEOF_virtio_scsi_ctrl_tmf_req },
      { addr: RESP + 0x200, len: 1, write: true },
    ]);
    dev.notify(0);
    await settle();
    expect(ctrl.takeUsed()).toEqual([]); // waits for the READ's I/O
    expect(reqq.takeUsed()).toEqual([]);
    release();
    await settle();
    expect(resp(mem, RESP).response).toBe(S.VIRTIO_SCSI_S_ABORTED);
    expect(reqq.takeUsed()).toHaveLength(1);
    expect(mem.readU8(RESP + 0x200)).toBe(0); // FUNCTION COMPLETE
    expect(ctrl.takeUsed()).toHaveLength(1);
  });

  it('LOGICAL UNIT RESET leaves a unit attention 29/03 for the next command; AN query reports no events', async () => {
    const { mem, dev, reqq, ctrl } = setup();
    tmfReq(mem, REQ, S.VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, 0);
    ctrl.addChain([
      { addr: REQ, len: S.SIZEOF_virtio_scsi_ctrl_tmf_req },
      { addr: RESP, len: 1, write: true },
    ]);
    tmfReq(mem, REQ + 0x40, S.VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, 0, 9);
    ctrl.addChain([
      { addr: REQ + 0x40, len: S.SIZEOF_virtio_scsi_ctrl_tmf_req },
      { addr: RESP + 0x40, len: 1, write: true },
    ]);
    mem.fill(REQ + 0x80, 16, 0);
    mem.writeU32(REQ + 0x80, S.VIRTIO_SCSI_T_AN_QUERY);
    mem.write(REQ + 0x84, [1, 0, 0x40, 0]);
    mem.writeU32(REQ + 0x8c, 0xffff);
    mem.fill(RESP + 0x80, 5, 0xff);
    ctrl.addChain([
      { addr: REQ + 0x80, len: 16 },
      { addr: RESP + 0x80, len: 5, write: true },
    ]);
    dev.notify(0);
    await settle();
    expect(mem.readU8(RESP)).toBe(0);
    expect(mem.readU8(RESP + 0x40)).toBe(S.VIRTIO_SCSI_S_INCORRECT_LUN);
    expect(mem.readU32(RESP + 0x80)).toBe(0);
    expect(mem.readU8(RESP + 0x84)).toBe(S.VIRTIO_SCSI_S_OK);

    cmdReq(mem, REQ + 0x100, [0, 0, 0, 0, 0, 0]); // TEST UNIT READY
    reqq.addChain([
      { addr: REQ + 0x100, len: REQ_LEN },
      { addr: RESP + 0x100, len: RESP_LEN, write: true },
    ]);
    dev.notify(2);
    await settle();
    const r = resp(mem, RESP + 0x100);
    expect(r.status).toBe(2);
    expect(decodeSense(r.sense)).toEqual({ key: 6, asc: 0x29, ascq: 3 });
  });

  it('holds responses while bus mastering is off and delivers them when it is back', async () => {
    const { mem, dev, reqq, irqs } = setup();
    cmdReq(mem, REQ, INQUIRY(36));
    mem.writeU8(RESP + S.OFF_virtio_scsi_cmd_resp_response, 0xee);
    reqq.addChain([
      { addr: REQ, len: REQ_LEN },
      { addr: RESP, len: RESP_LEN, write: true },
      { addr: DATA, len: 36, write: true },
    ]);
    dev.notify(2);
    dev.setDisabled(true);
    await settle();
    expect(mem.readU8(RESP + S.OFF_virtio_scsi_cmd_resp_response)).toBe(0xee);
    expect(reqq.takeUsed()).toEqual([]);
    dev.setDisabled(false);
    expect(resp(mem, RESP).response).toBe(S.VIRTIO_SCSI_S_OK);
    expect(reqq.takeUsed()).toHaveLength(1);
    expect(irqs).toContain('q2');
  });

  it('migration: drain waits for the command in flight; held-back responses and a unit attention move to a fresh adapter', async () => {
    const { mem, dev, reqq } = setup();
    cmdReq(mem, REQ, WRITE10(0, 1));
    reqq.addChain([
      { addr: REQ, len: REQ_LEN },
      { addr: DATA, len: 512 },
      { addr: RESP, len: RESP_LEN, write: true },
    ]);
    dev.notify(2);
    expect(dev.deviceInfo()['in-flight']).toBe(1);
    expect(() => dev.saveScsiState()).toThrow(/1 requests still in flight \(not drained\)/);
    await dev.drain();
    expect(dev.deviceInfo()['in-flight']).toBe(0);
    expect(dev.saveScsiState()).toBeUndefined(); // nothing beyond the virtio state: the field stays absent

    dev.target.lun(0)!.reset('lun-reset');
    cmdReq(mem, REQ + 0x100, INQUIRY(36), { tag: 2 });
    mem.writeU8(RESP + 0x100 + S.OFF_virtio_scsi_cmd_resp_response, 0xee);
    reqq.addChain([
      { addr: REQ + 0x100, len: REQ_LEN },
      { addr: RESP + 0x100, len: RESP_LEN, write: true },
      { addr: DATA + 0x100, len: 36, write: true },
    ]);
    dev.notify(2);
    dev.setDisabled(true);
    await dev.drain();
    const saved = JSON.parse(JSON.stringify(dev.saveScsiState()));
    expect(saved.luns).toEqual({ 0: { kind: 'disk', pendingUnitAttention: 0x2903 } });
    expect(saved.pendingWrites).toHaveLength(1);

    const other = setup();
    other.mem.writeU8(RESP + 0x100 + S.OFF_virtio_scsi_cmd_resp_response, 0xee);
    other.dev.setDisabled(true);
    other.dev.loadScsiState(saved);
    expect(other.mem.readU8(RESP + 0x100 + S.OFF_virtio_scsi_cmd_resp_response)).toBe(0xee);
    other.dev.setDisabled(false); // the held-back response lands on the destination
    expect(other.mem.readU8(RESP + 0x100 + S.OFF_virtio_scsi_cmd_resp_response)).toBe(S.VIRTIO_SCSI_S_OK);
    expect(other.dev.target.lun(0)!.info().pendingUnitAttention).toMatch(/29\/03|RESET/);
    expect(() => other.dev.loadScsiState({ pendingWrites: [{ bufs: [{ addr: 1 << 30, len: 8 }], bytes: '' }] })).toThrow(
      /^pendingWrites\[0\]\.bufs\[0\]: \[0x40000000, \+0x8\) is not guest RAM$/,
    );
    expect(() => other.dev.loadScsiState({ pendingWrites: [{ bufs: [{ addr: RESP, len: 2 }], bytes: 'AAAA' }] })).toThrow(
      /pendingWrites\[0\]\.bytes: 3 bytes is more than 2/,
    );
    expect(() => other.dev.loadScsiState({ pendingWrites: [{ bufs: [{ addr: RESP, len: -1 }], bytes: '' }] })).toThrow(
      /pendingWrites\[0\]\.bufs\[0\]\.len: -1 is out of range/,
    );
    expect(() => other.dev.loadScsiState({ luns: { 3: {} } })).toThrow(/luns: the migrated state has LUN 3, which is not attached here/);
    expect(() => other.dev.loadScsiState({ luns: { 0: { dSense: 1 as unknown as boolean } } })).toThrow(
      /luns: LUN 0: dSense 1 is not a boolean/,
    );
    await settle();
  });

  it('migrates the driver-written sense and CDB sizes (absent when the defaults); refuses sizes writeConfig would not take', () => {
    const { dev } = setup();
    expect(dev.saveScsiState()).toBeUndefined();
    dev.writeConfig(S.OFF_virtio_scsi_config_sense_size, 4, 32);
    dev.writeConfig(S.OFF_virtio_scsi_config_cdb_size, 4, 16);
    const saved = JSON.parse(JSON.stringify(dev.saveScsiState()));
    expect(saved).toEqual({ config: { senseSize: 32, cdbSize: 16 } });
    const { dev: dst } = setup();
    dst.loadScsiState(saved);
    expect(dst.readConfig(S.OFF_virtio_scsi_config_sense_size, 4)).toBe(32);
    expect(dst.readConfig(S.OFF_virtio_scsi_config_cdb_size, 4)).toBe(16);
    expect(() => dst.checkScsiState({ config: { senseSize: 253, cdbSize: 32 } })).toThrow(/config\.senseSize/);
    expect(() => dst.checkScsiState({ config: { senseSize: 96, cdbSize: 5 } })).toThrow(/config\.cdbSize/);
    expect(() => dst.checkScsiState({ config: 'big' })).toThrow(/config/);
    // A refused state changed nothing.
    expect(dst.readConfig(S.OFF_virtio_scsi_config_cdb_size, 4)).toBe(16);
  });
});
