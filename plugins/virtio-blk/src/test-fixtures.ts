// Shared by the iothread plane unit tests (dataplane, poll-dataplane, vq-mapping-dataplane,
// data-safety): guest-memory layout of the requests, a temp image, a request writer, the
// wait for the cross-"thread" messages to settle. Test-only: nothing in the plugin imports it.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import type { GuestMemory } from '@tsvmm/virtio-core';
import type { MockDriverQueue } from '@tsvmm/virtio-core/testing';
import * as B from './generated/virtio-blk-uapi';

/** Request n's header at HDR + n*0x20, its data at DATA + n*0x1000, its status byte at STATUS + n. */
export const HDR = 0x40000;
export const DATA = 0x50000;
export const STATUS = 0x60000;
export const SIZE = 16;

/** A zeroed 64-sector image in a new temp directory named after `prefix`. */
export function image(prefix: string): string {
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), prefix)), 'disk.img');
  fs.writeFileSync(file, Buffer.alloc(64 * 512));
  return file;
}

/** Request n: write sector n with bytes n+1 (or read it back with read=true), its own header and status byte. */
export function request(mem: GuestMemory, drv: MockDriverQueue, n: number, read = false): void {
  const hdr = HDR + n * 0x20;
  mem.writeU32(hdr, read ? B.VIRTIO_BLK_T_IN : B.VIRTIO_BLK_T_OUT);
  mem.writeU32(hdr + 4, 0);
  mem.writeU64(hdr + 8, BigInt(n));
  mem.writeU8(STATUS + n, 0xee);
  if (!read) mem.fill(DATA + n * 0x1000, 512, n + 1);
  drv.addChain([
    { addr: hdr, len: 16 },
    { addr: DATA + n * 0x1000, len: 512, write: read },
    { addr: STATUS + n, len: 1, write: true },
  ]);
}

/** Lets the structured-clone messages between the main device and its planes, and their I/O, run out. */
export async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
  await new Promise((r) => setTimeout(r, 20));
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
}
