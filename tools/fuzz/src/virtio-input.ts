/**
 * Fuzz inputs that are guest memory: a 2-byte header and a memory image laid
 * out like one split virtqueue (descriptor table, driver area, device area,
 * then buffers). Shared by the virtqueue and device fuzz targets.
 *
 *   byte 0: bits 0-2: log2 of the queue size (1..128); bits 3-7: target-specific
 *   byte 1: flags (bit 0 INDIRECT_DESC negotiated, bit 1 EVENT_IDX, others target-specific)
 *   bytes 2..: guest memory from address 0 (the rest of MEM_SIZE is zero)
 */
import { GuestMemory, SplitVirtqueue } from '@tsvmm/virtio-core';
import { MockDriverQueue } from '@tsvmm/virtio-core/testing';

export const DESC = 0x0000;
export const AVAIL = 0x0800;
export const USED = 0x1000;
export const DATA = 0x1800;
export const MEM_SIZE = 0x4000;
export const HEADER = 2;

export interface GuestInput {
  mem: GuestMemory;
  bytes: Uint8Array;
  queueSize: number;
  indirect: boolean;
  eventIdx: boolean;
  extra: number;
  flags: number;
}

export function guestFromInput(data: Uint8Array, memSize = MEM_SIZE): GuestInput {
  const bytes = new Uint8Array(memSize);
  bytes.set(data.subarray(HEADER, HEADER + memSize));
  const b0 = data[0] ?? 0;
  const flags = data[1] ?? 0;
  return {
    mem: new GuestMemory([{ guestPhysAddr: 0, bytes }]),
    bytes,
    queueSize: 1 << (b0 & 7),
    extra: b0 >> 3,
    indirect: (flags & 1) !== 0,
    eventIdx: (flags & 2) !== 0,
    flags,
  };
}

/** Programs a queue with the fixed layout, as the transport would. */
export function programQueue(q: SplitVirtqueue, size: number): void {
  q.size = size;
  q.descTable = DESC;
  q.availRing = AVAIL;
  q.usedRing = USED;
  q.ready = true;
}

/** A seed: a driver (MockDriverQueue on the fixed layout) fills memory; returns header + image without trailing zeros. */
export function seedInput(queueSize: number, flags: number, build: (drv: MockDriverQueue, mem: GuestMemory) => void, extra = 0): Uint8Array {
  const bytes = new Uint8Array(MEM_SIZE);
  const mem = new GuestMemory([{ guestPhysAddr: 0, bytes }]);
  const drv = new MockDriverQueue(mem, queueSize, DESC);
  // MockDriverQueue derives the rings from its base; move them to the fixed layout.
  Object.assign(drv, { avail: AVAIL, used: USED });
  build(drv, mem);
  let end = bytes.length;
  while (end > 0 && bytes[end - 1] === 0) end--;
  const out = new Uint8Array(HEADER + end);
  out[0] = (Math.log2(queueSize) & 7) | (extra << 3);
  out[1] = flags;
  out.set(bytes.subarray(0, end), HEADER);
  return out;
}

/** Lets promise callbacks, immediates and short timers of a device run. */
export async function settle(rounds = 4): Promise<void> {
  for (let i = 0; i < rounds; i++) await new Promise((r) => setImmediate(r));
}
