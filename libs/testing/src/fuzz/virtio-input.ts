/**
 * Fuzz inputs that are guest memory: a 2-byte header and a memory image laid
 * out like one split virtqueue (descriptor table, driver area, device area,
 * then buffers). Shared by the virtqueue and device fuzz targets.
 *
 *   byte 0: bits 0-2: log2 of the queue size (1..128); bits 3-7: target-specific
 *   byte 1: flags (bit 0 INDIRECT_DESC negotiated, bit 1 EVENT_IDX, others target-specific)
 *   bytes 2..: guest memory from address 0 (the rest of MEM_SIZE is zero)
 */
import { GuestMemory, SplitVirtqueue, VirtioDevice, virtioUapi } from '@tsvmm/virtio-core';
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
export function seedInput(
  queueSize: number,
  flags: number,
  build: (drv: MockDriverQueue, mem: GuestMemory) => void,
  extra = 0,
): Uint8Array {
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

/**
 * Drives a device to DRIVER_OK as a driver would: all offered features
 * except INDIRECT_DESC and EVENT_IDX unless the input's flags ask for them;
 * queue `queue` on the fixed layout (the others stay unready).
 */
export function bringUp(dev: VirtioDevice, g: GuestInput, queue = 0): void {
  const S = virtioUapi;
  dev.writeStatus(S.VIRTIO_CONFIG_S_ACKNOWLEDGE | S.VIRTIO_CONFIG_S_DRIVER);
  let lo = dev.readDeviceFeatures(0);
  if (!g.indirect) lo &= ~(1 << S.VIRTIO_RING_F_INDIRECT_DESC);
  if (!g.eventIdx) lo &= ~(1 << S.VIRTIO_RING_F_EVENT_IDX);
  dev.writeDriverFeatures(0, lo >>> 0);
  dev.writeDriverFeatures(1, dev.readDeviceFeatures(1));
  dev.writeStatus(S.VIRTIO_CONFIG_S_ACKNOWLEDGE | S.VIRTIO_CONFIG_S_DRIVER | S.VIRTIO_CONFIG_S_FEATURES_OK);
  programQueue(dev.queues[queue], g.queueSize);
  dev.writeStatus(S.VIRTIO_CONFIG_S_ACKNOWLEDGE | S.VIRTIO_CONFIG_S_DRIVER | S.VIRTIO_CONFIG_S_FEATURES_OK | S.VIRTIO_CONFIG_S_DRIVER_OK);
}

/**
 * A device log that turns host-side failures into crashes: the fuzz targets'
 * backends never fail, so "host I/O error" or an internal error means the
 * device handed them something it should have refused.
 */
export function strictLog(problems: string[]): (m: string) => void {
  return (m: string) => {
    if (/host I\/O error|internal error|TypeError|RangeError|ReferenceError/i.test(m)) problems.push(m);
  };
}
