/**
 * virtio-blk request handling against guest memory built from the input
 * (layout: tools/fuzz/src/virtio-input.ts) and a 64 KiB in-memory disk. A
 * guest mistake may break the device (needs-reset) or earn an error status;
 * a throw, an unhandled rejection, or the device asking the backend for
 * bytes beyond the disk (logged as a host I/O error) is a crash.
 *
 * Input byte 0 bits 3-7: bit 3 read-only disk, bit 4 kick twice, bit 5 reset
 * the device while requests are in flight, bit 6 turn bus mastering off and on.
 */
import type { BlockBackend } from '@tsvmm/block';
import { GuestMemoryError } from '@tsvmm/virtio-core';
import { VirtioBlkDevice } from '../src/device';
import { bringUp, guestFromInput, settle, strictLog } from '../../../tools/fuzz/src/virtio-input';

export const maxLen = 0x3000;
const DISK = 64 * 1024;

class MemBackend implements BlockBackend {
  readonly size = DISK;
  private readonly bytes = new Uint8Array(DISK);
  constructor(readonly readonly: boolean) {}
  private check(offset: number, len: number): void {
    if (!Number.isSafeInteger(offset) || offset < 0 || len < 0 || offset + len > this.size) throw new Error(`backend asked for [${offset}, +${len}) of a ${this.size}-byte disk`);
  }
  async readv(bufs: Uint8Array[], offset: number): Promise<number> {
    let n = 0;
    for (const b of bufs) {
      this.check(offset + n, b.length);
      b.set(this.bytes.subarray(offset + n, offset + n + b.length));
      n += b.length;
    }
    return n;
  }
  async writev(bufs: Uint8Array[], offset: number): Promise<number> {
    if (this.readonly) throw new Error('write to a read-only backend');
    let n = 0;
    for (const b of bufs) {
      this.check(offset + n, b.length);
      this.bytes.set(b, offset + n);
      n += b.length;
    }
    return n;
  }
  async flush(): Promise<void> {}
  async discard(offset: number, len: number): Promise<void> {
    this.check(offset, len);
    this.bytes.fill(0, offset, offset + len);
  }
  async writeZeroes(offset: number, len: number): Promise<void> {
    this.check(offset, len);
    this.bytes.fill(0, offset, offset + len);
  }
  close(): void {}
}

export async function fuzz(data: Buffer): Promise<void> {
  const g = guestFromInput(data);
  const problems: string[] = [];
  const dev = new VirtioBlkDevice(g.mem, { id: 'fuzz-blk', backend: new MemBackend((g.extra & 1) !== 0), numQueues: 1, serial: 'FUZZ-SERIAL', log: strictLog(problems) });
  dev.interrupt = { signalQueue: () => undefined, signalConfig: () => undefined };
  bringUp(dev, g);
  dev.notify(0);
  if (g.extra & 2) dev.notify(0);
  if (g.extra & 4) dev.reset();
  if (g.extra & 8) {
    dev.setDisabled(true);
    dev.notify(0);
    dev.setDisabled(false);
  }
  await settle();
  await dev.drain();
  if (problems.length) throw new Error(`device reported a host-side failure: ${problems.join('; ')}`);
}

export function isExpected(e: unknown): boolean {
  return e instanceof GuestMemoryError;
}
