/**
 * Driver-side helpers for unit tests of devices and queues: a fake guest
 * memory and a mock driver that lays out split rings and adds chains.
 * (Imported by tests only, as '@tsvmm/virtio-core/testing'.)
 */
import * as V from './generated/virtio-uapi';
import type { VirtioDevice } from './device';
import { GuestMemory } from './guest-memory';
import { availEventAddr, splitRingSizes, SplitVirtqueue, usedEventAddr } from './virtqueue';

export function fakeMemory(size = 1 << 20, base = 0): GuestMemory {
  return new GuestMemory([{ guestPhysAddr: base, bytes: new Uint8Array(size) }]);
}

export interface MockBuffer {
  addr: number;
  len: number;
  write?: boolean;
}

export class MockDriverQueue {
  readonly desc: number;
  readonly avail: number;
  readonly used: number;
  private nextFree = 0;
  private availIdx = 0;
  lastUsedIdx = 0;

  constructor(
    readonly mem: GuestMemory,
    readonly size: number,
    base = 0x1000,
  ) {
    this.desc = base;
    const sizes = splitRingSizes(size);
    this.avail = base + sizes.descTable;
    this.used = (this.avail + sizes.availRing + 4095) & ~4095;
  }

  /** Programs a device queue with this layout (as the transport would). */
  program(q: SplitVirtqueue): void {
    q.size = this.size;
    q.descTable = this.desc;
    q.availRing = this.avail;
    q.usedRing = this.used;
    q.ready = true;
  }

  writeDesc(i: number, addr: number, len: number, flags: number, next: number, table = this.desc): void {
    const o = table + i * 16;
    this.mem.writeU64(o, BigInt(addr));
    this.mem.writeU32(o + 8, len);
    this.mem.writeU16(o + 12, flags);
    this.mem.writeU16(o + 14, next);
  }

  /** Adds a direct chain; returns its head. */
  addChain(bufs: MockBuffer[]): number {
    const head = this.nextFree;
    bufs.forEach((b, i) => {
      const idx = (head + i) % this.size;
      const last = i === bufs.length - 1;
      this.writeDesc(
        idx,
        b.addr,
        b.len,
        (b.write ? V.VRING_DESC_F_WRITE : 0) | (last ? 0 : V.VRING_DESC_F_NEXT),
        last ? 0 : (idx + 1) % this.size,
      );
    });
    this.nextFree = (head + bufs.length) % this.size;
    this.publish(head);
    return head;
  }

  /** Adds a chain through one indirect table at `tableAddr`. */
  addIndirect(tableAddr: number, bufs: MockBuffer[]): number {
    bufs.forEach((b, i) => {
      const last = i === bufs.length - 1;
      this.writeDesc(
        i,
        b.addr,
        b.len,
        (b.write ? V.VRING_DESC_F_WRITE : 0) | (last ? 0 : V.VRING_DESC_F_NEXT),
        last ? 0 : i + 1,
        tableAddr,
      );
    });
    const head = this.nextFree;
    this.writeDesc(head, tableAddr, bufs.length * 16, V.VRING_DESC_F_INDIRECT, 0);
    this.nextFree = (head + 1) % this.size;
    this.publish(head);
    return head;
  }

  /** Makes `head` available. */
  publish(head: number): void {
    this.mem.writeU16(this.avail + 4 + 2 * (this.availIdx % this.size), head);
    this.availIdx = (this.availIdx + 1) & 0xffff;
    this.mem.writeU16(this.avail + 2, this.availIdx);
  }

  setAvailIdx(v: number): void {
    this.availIdx = v & 0xffff;
    this.mem.writeU16(this.avail + 2, this.availIdx);
  }

  setUsedEvent(v: number): void {
    this.mem.writeU16(usedEventAddr(this.avail, this.size), v);
  }

  setNoInterrupt(on: boolean): void {
    this.mem.writeU16(this.avail, on ? V.VRING_AVAIL_F_NO_INTERRUPT : 0);
  }

  availEvent(): number {
    return this.mem.readU16(availEventAddr(this.used, this.size));
  }

  /** Used entries added since the last call. */
  takeUsed(): { id: number; len: number }[] {
    const idx = this.mem.readU16(this.used + 2);
    const out: { id: number; len: number }[] = [];
    while (this.lastUsedIdx !== idx) {
      const o = this.used + 4 + 8 * (this.lastUsedIdx % this.size);
      out.push({ id: this.mem.readU32(o), len: this.mem.readU32(o + 4) });
      this.lastUsedIdx = (this.lastUsedIdx + 1) & 0xffff;
    }
    return out;
  }
}

/**
 * A driver bringing `dev` up as virtio 1.2 3.1.1 describes: it accepts every
 * feature the device offers, programs queue q from `drivers[q]`, sets
 * DRIVER_OK and turns bus mastering on.
 */
export function driverInit(dev: VirtioDevice, drivers: MockDriverQueue | MockDriverQueue[]): void {
  const S = V.VIRTIO_CONFIG_S_ACKNOWLEDGE | V.VIRTIO_CONFIG_S_DRIVER;
  dev.writeStatus(S);
  dev.writeDriverFeatures(0, dev.readDeviceFeatures(0));
  dev.writeDriverFeatures(1, dev.readDeviceFeatures(1));
  dev.writeStatus(S | V.VIRTIO_CONFIG_S_FEATURES_OK);
  (Array.isArray(drivers) ? drivers : [drivers]).forEach((d, q) => d.program(dev.queues[q]));
  dev.writeStatus(S | V.VIRTIO_CONFIG_S_FEATURES_OK | V.VIRTIO_CONFIG_S_DRIVER_OK);
  dev.setDisabled(false);
}
