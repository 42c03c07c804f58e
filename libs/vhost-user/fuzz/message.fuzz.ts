/**
 * The vhost-user message codec, both ways:
 * - the input as a stream of front-end messages (12-byte header, payload)
 *   through the decoders the back-end uses; re-encoding what decoded must give
 *   the same bytes;
 * - the input as a hostile back-end's replies: the VMM's front-end negotiates,
 *   asks GET_VRING_BASE and sets the dirty log against them (over a real unix
 *   socket; the replies wait in the socket before each call).
 * Expected: VhostUserProtocolError, VhostUserError (closed, timeout,
 * refused, protocol); anything else thrown is a crash.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { createSharedMemory, UnixListener } from '@tsvmm/kvm-native';
import { splitRingSizes } from '@tsvmm/virtio-core';
import {
  decodeHeader,
  decodeLogDescription,
  decodeMemTable,
  decodeVringAddr,
  decodeVringState,
  DirtyLogWriter,
  encodeMemTable,
  encodeVringAddr,
  encodeVringState,
  HEADER_SIZE,
  readU64,
  requestName,
  VhostUserError,
  VhostUserFrontend,
  VhostUserProtocolError,
  VhostUserRequest as R,
} from '@tsvmm/vhost-user';

export const maxLen = 2048;

function same(a: Uint8Array, b: Uint8Array, what: string): void {
  if (Buffer.compare(Buffer.from(a), Buffer.from(b)) !== 0) throw new Error(`${what}: re-encoding changed the bytes`);
}

function decodeStream(data: Uint8Array, log: DirtyLogWriter): void {
  let o = 0;
  while (o + HEADER_SIZE <= data.length) {
    const h = decodeHeader(data.subarray(o, o + HEADER_SIZE));
    o += HEADER_SIZE;
    const p = data.subarray(o, o + Math.min(h.size, 4096));
    o += p.length;
    requestName(h.request);
    try {
      switch (h.request) {
        case R.SET_FEATURES:
        case R.SET_PROTOCOL_FEATURES:
        case R.SET_VRING_KICK:
        case R.SET_VRING_CALL:
        case R.SET_VRING_ERR:
          readU64(p);
          break;
        case R.SET_VRING_NUM:
        case R.SET_VRING_BASE:
        case R.GET_VRING_BASE:
        case R.SET_VRING_ENABLE: {
          const s = decodeVringState(p);
          same(encodeVringState(s), p.subarray(0, 8), 'vring state');
          break;
        }
        case R.SET_VRING_ADDR: {
          const a = decodeVringAddr(p);
          same(encodeVringAddr(a), p.subarray(0, 40), 'vring address');
          log.mark(Number(a.used), splitRingSizes(256).usedRing);
          break;
        }
        case R.SET_MEM_TABLE: {
          const t = decodeMemTable(p);
          same(encodeMemTable(t).subarray(8), p.subarray(8, 8 + 32 * t.length), 'memory table');
          for (const r of t) log.mark(Number(r.guestPhysAddr), Number(r.size));
          break;
        }
        case R.SET_LOG_BASE: {
          const d = decodeLogDescription(p);
          log.mark(Number(d.mmapOffset), Number(d.mmapSize));
          break;
        }
        default:
          break;
      }
    } catch (e) {
      if (!(e instanceof VhostUserProtocolError)) throw e;
    }
  }
}

const sockPath = path.join(
  process.env.FUZZ_TMPDIR ?? os.tmpdir(),
  `tsvmm-fuzz-vhost-user-${process.pid}-${Math.random().toString(36).slice(2)}.sock`,
);
let listener: UnixListener | undefined;
let logFd: number | undefined;

function frontendAgainst(replies: Uint8Array): void {
  if (!listener) {
    fs.rmSync(sockPath, { force: true });
    listener = UnixListener.listen(sockPath);
    process.on('exit', () => fs.rmSync(sockPath, { force: true }));
    logFd = createSharedMemory('tsvmm-fuzz-log', 4096).fd;
  }
  const fe = VhostUserFrontend.connect(sockPath, { timeoutMs: 1 });
  const be = listener.accept();
  if (!be) throw new Error('no connection to accept');
  try {
    be.send(replies);
    fe.negotiate();
    fe.getVringBase(0);
    fe.setLogBase(logFd!, 4096);
  } catch (e) {
    if (!(e instanceof VhostUserError || e instanceof VhostUserProtocolError)) throw e;
  } finally {
    fe.close();
    be.close();
  }
}

export function fuzz(data: Buffer): void {
  decodeStream(data, new DirtyLogWriter(new Uint8Array(64), { or64: () => undefined, fetchClear64: () => 0 }));
  frontendAgainst(data);
}
