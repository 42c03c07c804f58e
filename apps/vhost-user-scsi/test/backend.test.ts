// The back-end process spoken to with the project's vhost-user front-end (libs/vhost-user),
// without a VM: negotiation, refusals with REPLY_ACK, ring state, reconnects, the control socket.
import { ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import { createSharedMemory, EventFd } from '@tsvmm/kvm-native';
import { GuestMemory } from '@tsvmm/virtio-core';
import { MockDriverQueue } from '@tsvmm/virtio-core/testing';
import {
  DirtyLogReader,
  logSizeFor,
  VHOST_F_LOG_ALL,
  VHOST_VRING_F_LOG,
  VhostUserError,
  VhostUserFrontend,
  VHOST_USER_F_PROTOCOL_FEATURES,
} from '@tsvmm/vhost-user';
import { parseArgs } from '../src/main';

const BIN = path.resolve(__dirname, '../bin/vhost-user-scsi.js');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vus-'));

function stats(control: string): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const c = net.createConnection(control);
    let buf = '';
    c.on('data', (d) => {
      buf += d;
      if (buf.includes('\n')) {
        c.end();
        resolve(JSON.parse(buf));
      }
    });
    c.on('error', reject);
    c.write('stats\n');
  });
}

describe('vhost-user-scsi back-end process', () => {
  let proc: ChildProcess;
  let err = '';
  const sock = path.join(tmp, 'vu.sock');
  const control = path.join(tmp, 'ctl.sock');

  beforeAll(async () => {
    const img = path.join(tmp, 'd.img');
    fs.writeFileSync(img, Buffer.alloc(1 << 20));
    proc = spawn(process.execPath, [BIN, '--socket', sock, '--control', control, '--lun', `0:file=${img}`, '--num-queues', '2'], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    proc.stderr!.on('data', (d) => (err += d));
    const deadline = Date.now() + 15_000;
    while (!fs.existsSync(control)) {
      if (Date.now() > deadline) throw new Error(`back-end did not start: ${err}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  });
  afterAll(async () => {
    proc.kill('SIGTERM');
    await new Promise((r) => proc.on('close', r));
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('negotiates: protocol features MQ, LOG_SHMFD and REPLY_ACK, 4 rings for 2 request queues, SET_OWNER', () => {
    const fe = VhostUserFrontend.connect(sock);
    fe.negotiate();
    expect(fe.backendFeatures & (1n << BigInt(VHOST_USER_F_PROTOCOL_FEATURES))).not.toBe(0n);
    expect(fe.backendFeatures & (1n << 32n)).not.toBe(0n); // VERSION_1
    expect(fe.protocolFeatures).toBe(0b1011n);
    expect(fe.logShmfd).toBe(true);
    expect(fe.backendFeatures & (1n << BigInt(VHOST_F_LOG_ALL))).not.toBe(0n);
    expect(fe.queueNum).toBe(4);
    fe.close();
  });

  it('refuses bad requests by REPLY_ACK with a reason in its log, and keeps the connection', async () => {
    const fe = VhostUserFrontend.connect(sock);
    fe.negotiate();
    expect(() => fe.setVringNum(0, 100)).toThrow(VhostUserError);
    expect(() => fe.setVringNum(9, 64)).toThrow(/refused SET_VRING_NUM/);
    expect(() => fe.setFeatures(1n << 60n)).toThrow(/refused SET_FEATURES/);
    fe.setVringNum(0, 64);
    fe.setVringBase(0, 5);
    expect(fe.getVringBase(0)).toBe(5); // a ring that never started keeps its base
    fe.close();
    const deadline = Date.now() + 5000;
    while (!err.includes('ring 9') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    expect(err).toMatch(/SET_VRING_NUM refused: ring 0 size 100 is not a power of two/);
    expect(err).toMatch(/SET_VRING_NUM refused: ring 9 does not exist \(this back-end has 4\)/);
  });

  it('dirty logging: SET_LOG_BASE maps the log; with VHOST_F_LOG_ALL a READ marks its data-in and response pages and the used ring (VHOST_VRING_F_LOG)', async () => {
    const RAM = 1 << 20;
    const ram = createSharedMemory('guest-ram', RAM);
    const mem = new GuestMemory([{ guestPhysAddr: 0, bytes: new Uint8Array(ram.buffer) }]);
    const log = createSharedMemory('dirty-log', logSizeFor(RAM));
    const reader = new DirtyLogReader(new Uint8Array(log.buffer));
    const q = new MockDriverQueue(mem, 16, 0x20000);
    const kick = EventFd.create();
    const call = EventFd.create();
    const fe = VhostUserFrontend.connect(sock);
    try {
      fe.negotiate();
      fe.setFeatures((1n << 32n) | (1n << BigInt(VHOST_F_LOG_ALL)));
      fe.setMemTable([{ guestPhysAddr: 0n, size: BigInt(RAM), userAddr: ram.address, mmapOffset: 0n, fd: ram.fd }]);
      fe.setLogBase(log.fd, logSizeFor(RAM));
      const ua = (gpa: number) => ram.address + BigInt(gpa);
      fe.setVringNum(2, 16);
      fe.setVringBase(2, 0);
      fe.setVringAddr({
        index: 2,
        flags: 1 << VHOST_VRING_F_LOG,
        desc: ua(q.desc),
        avail: ua(q.avail),
        used: ua(q.used),
        log: BigInt(q.used),
      });
      fe.setVringCall(2, call.fd);
      fe.setVringKick(2, kick.fd);
      fe.setVringEnable(2, true);
      reader.take(); // the ring's start looked at (and may have marked) the ring pages
      // READ(10) of LBA 0, one block, into a buffer at 0x50000; the response at 0x48000.
      const REQ = 0x40000,
        RESP = 0x48000,
        DATA = 0x50000;
      mem.fill(REQ, 51, 0);
      mem.write(REQ, [1, 0, 0x40, 0]);
      mem.write(REQ + 19, [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
      q.addChain([
        { addr: REQ, len: 51 },
        { addr: RESP, len: 108, write: true },
        { addr: DATA, len: 512, write: true },
      ]);
      kick.write(1);
      const deadline = Date.now() + 10_000;
      let used: { id: number; len: number }[] = [];
      while (!used.length && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 20));
        used = q.takeUsed();
      }
      expect(used).toEqual([{ id: 0, len: 108 + 512 }]);
      const pages = reader.take();
      expect(pages).toEqual(expect.arrayContaining([DATA / 4096, RESP / 4096, q.used / 4096]));
      expect(pages).not.toContain(0x30); // nothing it did not write
      expect(fe.getVringBase(2)).toBe(1);
      const st = await stats(control);
      expect(st['dirty-log']).toMatchObject({ offered: true, logBases: (st['dirty-log'] as { logBases: number }).logBases });
    } finally {
      fe.close();
      for (const e of [kick, call]) e.close();
    }
  });

  it('a SET_LOG_BASE it cannot use is refused (u64 1 in its reply, a reason in its log) and the connection stays', async () => {
    const log = createSharedMemory('bad-log', 4096);
    const fe = VhostUserFrontend.connect(sock);
    try {
      fe.negotiate();
      expect(() => fe.setLogBase(log.fd, 12)).toThrow(/refused SET_LOG_BASE/);
      expect(() => fe.setLogBase(log.fd, 64, 100)).toThrow(/refused SET_LOG_BASE/);
      expect(fe.getVringBase(0)).toBe(0); // still answering
    } finally {
      fe.close();
    }
    const deadline = Date.now() + 5000;
    while (!err.includes('log offset 100') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    expect(err).toMatch(/SET_LOG_BASE refused: log size 12 is not a multiple of 8/);
    expect(err).toMatch(/SET_LOG_BASE refused: log offset 100 is not page-aligned/);
  });

  it('serves one front-end at a time, the next as soon as the previous goes away; stats are JSON on the control socket', async () => {
    const before = (await stats(control)).connections as number;
    for (let i = 0; i < 2; i++) {
      const fe = VhostUserFrontend.connect(sock);
      fe.negotiate();
      fe.close();
    }
    const deadline = Date.now() + 5000;
    let s = await stats(control);
    while ((s.connected || (s.connections as number) < before + 2) && Date.now() < deadline) s = await stats(control);
    expect(s).toMatchObject({ connected: false, connections: before + 2 });
    expect((s.rings as unknown[]).length).toBe(4);
  });

  it('command line: LUN specs are parsed and wrong ones are named', () => {
    expect(parseArgs(['--socket', 's', '--lun', '3:file=a.img,readonly=on,serial=X1,logical-block-size=4096'])).toEqual({
      socket: 's',
      control: undefined,
      numQueues: 1,
      verbose: false,
      logShmfd: true,
      luns: [{ lun: 3, file: 'a.img', readonly: true, serial: 'X1', blockSize: 4096 }],
    });
    expect(() => parseArgs(['--lun', '0:file=a'])).toThrow('--socket PATH is required');
    expect(() => parseArgs(['--socket', 's', '--lun', '0:readonly=on'])).toThrow('--lun 0:readonly=on: file=PATH is required');
    expect(() => parseArgs(['--socket', 's', '--lun', '0:file=a,cache=none'])).toThrow("unknown property 'cache'");
    expect(parseArgs(['--socket', 's', '--lun', '0:file=a,aio=threads']).luns[0]).toMatchObject({ aio: 'threads' });
    expect(parseArgs(['--socket', 's', '--lun', '0:file=a']).luns[0].aio).toBeUndefined(); // the default: io_uring where the kernel allows it
    expect(() => parseArgs(['--socket', 's', '--lun', '0:file=a,aio=native'])).toThrow(
      '--lun 0:file=a,aio=native: aio must be io_uring or threads',
    );
    expect(() => parseArgs(['--socket', 's', '--lun', '0:file=a', '--lun', '0:file=b'])).toThrow('--lun 0 given twice');
  });
});
