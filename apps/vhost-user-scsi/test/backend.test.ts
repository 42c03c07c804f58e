// The back-end process spoken to with the project's vhost-user front-end (libs/vhost-user),
// without a VM: negotiation, refusals with REPLY_ACK, ring state, reconnects, the control socket.
import { ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import { VhostUserError, VhostUserFrontend, VHOST_USER_F_PROTOCOL_FEATURES } from '@tsvmm/vhost-user';
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
    proc = spawn(process.execPath, [BIN, '--socket', sock, '--control', control, '--lun', `0:file=${img}`, '--num-queues', '2'], { stdio: ['ignore', 'ignore', 'pipe'] });
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

  it('negotiates: protocol features MQ and REPLY_ACK, 4 rings for 2 request queues, SET_OWNER', () => {
    const fe = VhostUserFrontend.connect(sock);
    fe.negotiate();
    expect(fe.backendFeatures & (1n << BigInt(VHOST_USER_F_PROTOCOL_FEATURES))).not.toBe(0n);
    expect(fe.backendFeatures & (1n << 32n)).not.toBe(0n); // VERSION_1
    expect(fe.protocolFeatures).toBe(0b1001n);
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
      socket: 's', control: undefined, numQueues: 1, verbose: false, luns: [{ lun: 3, file: 'a.img', readonly: true, serial: 'X1', blockSize: 4096 }],
    });
    expect(() => parseArgs(['--lun', '0:file=a'])).toThrow('--socket PATH is required');
    expect(() => parseArgs(['--socket', 's', '--lun', '0:readonly=on'])).toThrow('--lun 0:readonly=on: file=PATH is required');
    expect(() => parseArgs(['--socket', 's', '--lun', '0:file=a,cache=none'])).toThrow("unknown property 'cache'");
    expect(() => parseArgs(['--socket', 's', '--lun', '0:file=a', '--lun', '0:file=b'])).toThrow('--lun 0 given twice');
  });
});
