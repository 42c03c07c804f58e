/**
 * virtio-net's receive, transmit and control queues against guest memory
 * built from the input (layout: libs/testing/src/fuzz/virtio-input.ts) and a fake
 * TAP that does what the addon's readvFrames / writevFrames do with a batch
 * (a triple outside its buffer is a crash). A guest mistake may break the
 * device (needs-reset) or drop a frame; a throw or unhandled rejection is a
 * crash, and so is a transmitted frame shorter than the virtio-net header.
 *
 * Input byte 0 bits 3-7: bits 3-4 the queue on the layout (0 receive, 1 transmit,
 * 2 control, 3 receive and transmit on the same rings); bit 5 offer no
 * MRG_RXBUF; bit 6 reset the device afterwards.
 * Receive frames waiting on the TAP: up to 4 little-endian u16 lengths at
 * guest address FRAMES (0 ends the list), frame bytes a pattern.
 */
import { GuestMemoryError } from '@tsvmm/virtio-core';
import type { Tap } from '../src/backend/tap';
import type { FrameBatch } from '../src/frame-batch';
import { VirtioNetDevice } from '../src/device';
import * as N from '../src/generated/virtio-net-uapi';
import { bringUp, guestFromInput, programQueue, settle, strictLog } from '@tsvmm/testing/fuzz';

export const maxLen = 0x3000;
export const FRAMES = 0x3f00;

class FakeTap {
  readonly name = 'fuzz-tap';
  readonly sent: number[] = [];
  constructor(readonly frames: Uint8Array[]) {}
  setOffloads(): boolean {
    return true;
  }
  read(_queue: number, buf: Uint8Array): number {
    const f = this.frames.shift();
    if (!f) return 0;
    const n = Math.min(f.length, buf.length);
    buf.set(f.subarray(0, n));
    return n;
  }
  write(_queue: number, bufs: Uint8Array[]): number {
    const n = bufs.reduce((n, b) => n + b.length, 0);
    this.sent.push(n);
    return n;
  }
  /** As the addon's writevFrames on a TAP: one frame per group of (base, offset, length) triples. */
  writeFrames(_queue: number, b: FrameBatch): void {
    let t = 0;
    for (let i = 0; i < b.count; i++) {
      let n = 0;
      for (let k = 0; k < b.groups[i]; k++, t++) {
        const [base, off, len] = [b.bases[b.iov[3 * t]], b.iov[3 * t + 1], b.iov[3 * t + 2]];
        if (off + len > base.length) throw new Error(`triple [${off}, +${len}) outside its base of ${base.length}`);
        n += len;
      }
      b.results[i] = n;
      this.sent.push(n);
    }
  }
  /** As the addon's readvFrames on a TAP: one frame per group, the rest of a longer one into `spill`, which ends the batch. */
  readFrames(_queue: number, b: FrameBatch, spill: Uint8Array): number {
    let t = 0;
    for (let i = 0; i < b.count; i++) {
      const f = this.frames.shift();
      if (!f) return i;
      let pos = 0;
      for (let k = 0; k < b.groups[i]; k++, t++) {
        const [base, off, len] = [b.bases[b.iov[3 * t]], b.iov[3 * t + 1], b.iov[3 * t + 2]];
        if (off + len > base.length) throw new Error(`triple [${off}, +${len}) outside its base of ${base.length}`);
        const c = Math.min(len, f.length - pos);
        base.set(f.subarray(pos, pos + c), off);
        pos += c;
      }
      if (pos < f.length) {
        const c = Math.min(spill.length, f.length - pos);
        spill.set(f.subarray(pos, pos + c));
        b.results[i] = pos + c;
        return i + 1;
      }
      b.results[i] = f.length;
    }
    return b.count;
  }
  watch(): { start(): void; stop(): void; close(): void } {
    return { start: () => undefined, stop: () => undefined, close: () => undefined };
  }
  close(): void {}
}

export async function fuzz(data: Buffer): Promise<void> {
  const g = guestFromInput(data);
  const frames: Uint8Array[] = [];
  for (let i = 0; i < 4; i++) {
    const len = g.bytes[FRAMES + 2 * i] | (g.bytes[FRAMES + 2 * i + 1] << 8);
    if (!len) break;
    frames.push(Uint8Array.from({ length: len }, (_, j) => (j * 13 + i) & 0xff));
  }
  const tap = new FakeTap(frames);
  const problems: string[] = [];
  const dev = new VirtioNetDevice(g.mem, {
    id: 'fuzz-net',
    tap: tap as unknown as Tap,
    mac: Uint8Array.of(0x52, 0x54, 0, 0x12, 0x34, 0x56),
    pairs: 1,
    mtu: 1500,
    log: strictLog(problems),
  });
  dev.interrupt = { signalQueue: () => undefined, signalConfig: () => undefined };
  if (g.extra & 4) dev.deviceFeatures &= ~(1n << BigInt(N.VIRTIO_NET_F_MRG_RXBUF));
  const which = g.extra & 3;
  const queue = which === 3 ? 0 : which;
  bringUp(dev, g, queue);
  if (which === 3) {
    // Both rings on the same memory: what one queue writes, the other reads.
    programQueue(dev.queues[1], g.queueSize);
  }
  dev.notify(queue);
  if (which === 3) dev.notify(1);
  await settle();
  if (which === 1 || which === 3) {
    for (const n of tap.sent) if (n < 12) throw new Error(`a ${n}-byte frame went to the TAP, shorter than the virtio-net header`);
  }
  if (g.extra & 8) dev.reset();
  await dev.destroy();
  if (problems.length) throw new Error(`device reported a host-side failure: ${problems.join('; ')}`);
}

export function isExpected(e: unknown): boolean {
  return e instanceof GuestMemoryError;
}
