/**
 * virtio-blk request handling against guest memory built from the input
 * (layout: libs/testing/src/fuzz/virtio-input.ts) and a 64 KiB in-memory disk. A
 * guest mistake may break the device (needs-reset) or earn an error status;
 * a throw, an unhandled rejection, or the device asking the backend for
 * bytes beyond the disk (logged as a host I/O error) is a crash.
 *
 * Input byte 0 bits 3-7: bit 3 read-only disk, bit 4 kick twice, bit 5 reset
 * the device while requests are in flight, bit 6 turn bus mastering off and on.
 */
import { GuestMemoryError } from '@tsvmm/virtio-core';
import { VirtioBlkDevice } from '../src/device';
import { bringUp, guestFromInput, settle, strictLog } from '@tsvmm/testing/fuzz';
import { MemBackend } from '@tsvmm/testing/fuzz';

export const maxLen = 0x3000;
const DISK = 64 * 1024;

export async function fuzz(data: Buffer): Promise<void> {
  const g = guestFromInput(data);
  const problems: string[] = [];
  const dev = new VirtioBlkDevice(g.mem, {
    id: 'fuzz-blk',
    backend: new MemBackend(DISK, (g.extra & 1) !== 0),
    numQueues: 1,
    serial: 'FUZZ-SERIAL',
    log: strictLog(problems),
  });
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
