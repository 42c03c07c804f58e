// SocketSource over a real unix socket: what an incoming migration holds while the stream is
// faster or slower than the destination, and the inactivity timeout for a source that hangs.
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import { SOCKET_SOURCE_HIGH_WATER, SocketSource } from './stream';

let dir: string;
let server: net.Server;
const open: net.Socket[] = [];

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmm-hardening-src-'));
});
afterEach(async () => {
  for (const s of open.splice(0)) s.destroy();
  await new Promise<void>((r) => server.close(() => r()));
  fs.rmSync(dir, { recursive: true, force: true });
});

/** A connected pair: the writer (the migration source) and the destination's SocketSource. */
async function pair(idleTimeoutMs?: number): Promise<{ writer: net.Socket; src: SocketSource }> {
  const sock = path.join(dir, 's.sock');
  server = net.createServer();
  await new Promise<void>((r) => server.listen(sock, r));
  const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
  const writer = net.createConnection(sock);
  writer.on('error', () => undefined);
  const conn = await accepted;
  open.push(writer, conn);
  return { writer, src: new SocketSource(conn, { idleTimeoutMs }) };
}

const settle = () => new Promise((r) => setTimeout(r, 50));

describe('SocketSource', () => {
  it('holds a bounded amount from a source that writes faster than the destination takes it, and loses nothing', async () => {
    const { writer, src } = await pair();
    const chunk = 1 << 20;
    const limit = 4 * SOCKET_SOURCE_HIGH_WATER;
    let written = 0;
    let blocked = false;
    // Write until the socket pushes back for good (the destination stopped reading), at most `limit`.
    const pump = async () => {
      while (written < limit) {
        const b = Buffer.alloc(chunk, (written / chunk) & 0xff);
        written += chunk;
        if (!writer.write(b)) {
          const drained = await Promise.race([
            new Promise((r) => writer.once('drain', () => r(true))),
            settle()
              .then(() => settle())
              .then(() => false),
          ]);
          if (!drained) {
            blocked = true;
            return;
          }
        }
      }
    };
    await pump();
    // Let whatever is in flight arrive.
    let last = -1;
    while (src.buffered !== last) {
      last = src.buffered;
      await settle();
    }
    expect(blocked).toBe(true);
    expect(written).toBeLessThan(limit);
    expect(src.buffered).toBeGreaterThan(0);
    expect(src.buffered).toBeLessThanOrEqual(SOCKET_SOURCE_HIGH_WATER + chunk);
    // Reading on lets the writer go on; every byte arrives in order.
    const pumping = (async () => {
      await new Promise((r) => writer.once('drain', r));
      writer.end();
    })();
    for (let off = 0; off < written; off += chunk) {
      const b = await src.read(chunk);
      const v = (off / chunk) & 0xff;
      expect(b[0] === v && b[chunk - 1] === v).toBe(true);
    }
    await pumping;
    await expect(src.read(1)).rejects.toThrow(/stream truncated/);
  }, 60_000);

  it('fails a read when the source sends nothing for the idle timeout, naming it and how far the stream got', async () => {
    const { writer, src } = await pair(300);
    writer.write(Buffer.alloc(10, 7));
    expect((await src.read(10)).equals(Buffer.alloc(10, 7))).toBe(true);
    await expect(src.read(1)).rejects.toThrow('the source sent nothing for 0.3 s (stream stalled after 10 bytes; --incoming timeout=0.3)');
  });

  it('counts only time spent waiting for the source, not time the destination spends on what it has', async () => {
    const { writer, src } = await pair(1000);
    writer.write(Buffer.alloc(20, 1));
    await src.read(1);
    await new Promise((r) => setTimeout(r, 1500)); // the destination is busy applying a section
    expect((await src.read(19)).length).toBe(19);
    // and a source that keeps sending, if slowly, is never cut off
    const slow = setInterval(() => writer.write(Buffer.alloc(1)), 50);
    try {
      for (let i = 0; i < 20; i++) await src.read(1);
    } finally {
      clearInterval(slow);
    }
  });
});
