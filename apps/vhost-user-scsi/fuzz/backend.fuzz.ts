/**
 * The vhost-user-scsi back-end (VhostUserScsiServer, a real unix socket) fed
 * the input as a front-end's message stream. Before the messages, guest
 * memory: a u16 length L and L bytes copied to the start of a 64 KiB memfd
 * (ring layout of libs/testing/src/fuzz/virtio-input.ts). SET_MEM_TABLE and
 * SET_LOG_BASE messages carry that memfd (once per region claimed), and
 * SET_VRING_KICK/CALL/ERR without the no-fd bit carry a fresh eventfd; the
 * kick eventfds are kicked after the last message. Then the front-end reads
 * the replies (unless bit 15 of the length is set) and hangs up, and the
 * server must get back to listening.
 * Expected: a refused request, a connection the back-end ends with a reason
 * (bad sizes, protocol errors), a device broken by a guest error. Crashes:
 * an uncaught exception or rejection, the back-end ending a connection
 * because of a JavaScript engine error (TypeError and the like: the message
 * is what V8 says), or a back-end that never notices the hang-up (hang).
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { closeFd, createSharedMemory, dupFd, EventFd, UnixSocket } from '@tsvmm/kvm-native';
import { ScsiDisk, ScsiTarget } from '@tsvmm/scsi';
import { HEADER_SIZE, VhostUserRequest as R, VRING_NOFD_MASK } from '@tsvmm/vhost-user';
import { MemBackend } from '@tsvmm/testing/fuzz';
import { VhostUserScsiServer } from '../src/server';

export const maxLen = 8192;
/** Runs in a child process: the back-end's fd watchers are native code (see docs/fuzzing.md). */
export const isolation = 'process';
export const MEM_SIZE = 0x10000;

/** What V8 says when a JavaScript mistake (not a validation) ended the connection. */
const ENGINE =
  /Cannot read propert|Cannot set propert|is not a function|is not iterable|is not defined|Invalid array length|Invalid typed array length|out of range|outside the bounds|Maximum call stack|Cannot convert|Cannot mix BigInt|Invalid (string|code point)|Array buffer allocation failed|Unexpected token|undefined|NaN/;

const problems: string[] = [];
const sockPath = path.join(
  process.env.FUZZ_TMPDIR ?? os.tmpdir(),
  `tsvmm-fuzz-vus-${process.pid}-${Math.random().toString(36).slice(2)}.sock`,
);
let server: VhostUserScsiServer | undefined;
let mem: { fd: number; bytes: Uint8Array } | undefined;

function setup(): VhostUserScsiServer {
  if (server) return server;
  fs.rmSync(sockPath, { force: true });
  const target = new ScsiTarget();
  target.attach(0, new ScsiDisk({ backend: new MemBackend(64 * 1024, false), readonly: false, serial: 'FUZZ0' }));
  server = new VhostUserScsiServer({
    socketPath: sockPath,
    target,
    numQueues: 1,
    log: (m) => {
      const why = /^connection ended: (.*)$/s.exec(m)?.[1] ?? /refused: (.*)$/s.exec(m)?.[1];
      if (why !== undefined && ENGINE.test(why)) problems.push(m);
    },
  });
  server.listen();
  process.on('exit', () => fs.rmSync(sockPath, { force: true }));
  const m = createSharedMemory('tsvmm-fuzz-vus-mem', MEM_SIZE);
  mem = { fd: m.fd, bytes: new Uint8Array(m.buffer) };
  return server;
}

/** Called by the harness before it ends the worker: no fd watcher may outlive it. */
export async function teardown(): Promise<void> {
  server?.close();
  server = undefined;
  for (let i = 0; i < 5; i++) await tick();
}

const tick = () => new Promise((r) => setImmediate(r));

export async function fuzz(data: Buffer): Promise<void> {
  const srv = setup();
  problems.length = 0;
  // Bit 15 of the length: hang up without reading the back-end's replies (as a crashed front-end would).
  const rude = data.length >= 2 && (data.readUInt16LE(0) & 0x8000) !== 0;
  const memLen = data.length >= 2 ? Math.min(data.readUInt16LE(0) & 0x7fff, data.length - 2, MEM_SIZE) : 0;
  mem!.bytes.fill(0);
  mem!.bytes.set(data.subarray(2, 2 + memLen));
  const stream = data.subarray(2 + memLen);

  const conn = UnixSocket.connect(sockPath);
  const kicks: EventFd[] = [];
  const fds: number[] = [];
  for (let i = 0; i < 100 && !srv.connected; i++) await tick();
  try {
    let o = 0;
    while (o < stream.length) {
      const h = stream.subarray(o, o + HEADER_SIZE);
      const req = h.length >= 4 ? h.readUInt32LE(0) : 0;
      const size = h.length >= 12 ? h.readUInt32LE(8) : 0;
      const end = Math.min(stream.length, o + HEADER_SIZE + Math.min(size, 4096));
      const msg = stream.subarray(o, end);
      const payload = msg.subarray(HEADER_SIZE);
      const send: number[] = [];
      if (req === R.SET_MEM_TABLE && payload.length >= 4) {
        for (let i = 0; i < Math.min(payload.readUInt32LE(0), 8); i++) send.push(dupFd(mem!.fd));
      } else if (req === R.SET_LOG_BASE) {
        send.push(dupFd(mem!.fd));
      } else if (
        (req === R.SET_VRING_KICK || req === R.SET_VRING_CALL || req === R.SET_VRING_ERR) &&
        payload.length >= 8 &&
        !(payload.readUInt32LE(0) & VRING_NOFD_MASK)
      ) {
        const e = EventFd.create();
        if (req === R.SET_VRING_KICK) kicks.push(e);
        send.push(e.fd);
      }
      fds.push(...send);
      try {
        conn.send(msg, send);
      } catch {
        break; // the back-end ended the connection
      }
      o = end;
      await tick();
    }
    for (const k of kicks) {
      try {
        k.write(1);
      } catch {
        // closed by the back-end
      }
    }
    for (let i = 0; i < 10; i++) await tick();
    if (!rude) {
      try {
        while (conn.waitReadable(0)) conn.recvExact(1, 0);
      } catch {
        // the back-end hung up
      }
    }
  } finally {
    conn.close();
    for (const f of process.env.FUZZ_DEBUG_NOCLOSE ? [] : fds) {
      try {
        closeFd(f);
      } catch {
        // adopted and closed by the back-end, or never sent
      }
    }
  }
  while (srv.connected) await tick();
  if (problems.length) throw new Error(`the back-end failed on a JavaScript error: ${problems.join('; ')}`);
}
