/**
 * A batch of frames for one writevFrames / readvFrames call (kvm-native's
 * frame-io): each frame's guest buffers as (RAM buffer, offset, length)
 * triples in preallocated arrays, so building a batch allocates nothing (no
 * views, no per-frame objects).
 */
import { Descriptor, GuestMemory, GuestMemoryError } from '@tsvmm/virtio-core';

/**
 * Frames per batch. Small enough that the driver sees used entries while the
 * device is still at work on the rest of a kick's chains (a guest with few
 * transmit slots refills them without waiting for the whole pass, and need
 * not kick again), large enough that the call into the addon is a small
 * share of a frame's cost.
 */
export const BATCH_FRAMES = 16;
/** Buffers one frame may take in a batch; a chain with more goes the one-at-a-time way. */
export const FRAME_MAX_BUFFERS = 32;

export class FrameBatch {
  /** Guest RAM's buffers (then, for receive, the spill buffer): the `bases` of the triples. */
  bases: Uint8Array[] = [];
  readonly iov = new Float64Array(3 * BATCH_FRAMES * FRAME_MAX_BUFFERS);
  readonly groups = new Uint32Array(BATCH_FRAMES);
  readonly results = new Int32Array(BATCH_FRAMES);
  /** Per frame: the chain's head, and the bytes its own buffers hold. */
  readonly heads = new Uint16Array(BATCH_FRAMES);
  readonly capacity = new Float64Array(BATCH_FRAMES);
  count = 0;
  private triples = 0;
  private mem: GuestMemory | undefined;
  private starts: number[] = [];
  private ends: number[] = [];

  constructor(private readonly spill?: Uint8Array) {}

  /** Starts an empty batch over `mem` (its buffers are looked up again when the memory map changed). */
  begin(mem: GuestMemory): void {
    if (mem !== this.mem) {
      this.mem = mem;
      const regions = mem.regionList;
      this.bases = regions.map((r) => r.bytes);
      if (this.spill) this.bases.push(this.spill);
      this.starts = regions.map((r) => r.guestPhysAddr);
      this.ends = regions.map((r) => r.guestPhysAddr + r.bytes.byteLength);
    }
    this.count = 0;
    this.triples = 0;
  }

  get full(): boolean {
    return this.count === BATCH_FRAMES;
  }

  /**
   * Adds a frame: the chain `head` with buffers `bufs` (already checked to
   * be RAM by the queue). False, and nothing added, when the batch is full
   * or the chain has more than FRAME_MAX_BUFFERS buffers.
   */
  add(head: number, bufs: readonly Descriptor[]): boolean {
    if (this.count === BATCH_FRAMES || bufs.length > FRAME_MAX_BUFFERS) return false;
    const first = this.triples;
    let cap = 0;
    for (let k = 0; k < bufs.length; k++) {
      const b = bufs[k];
      let addr = b.addr;
      let len = b.len;
      // A buffer across a split between two RAM buffers is two triples (they touch: one range to the guest).
      while (len > 0) {
        const i = this.region(addr);
        if (i < 0 || 3 * this.triples === this.iov.length) {
          this.triples = first;
          if (i < 0) throw new GuestMemoryError(addr, len);
          return false;
        }
        const n = Math.min(len, this.ends[i] - addr);
        const t = 3 * this.triples++;
        this.iov[t] = i;
        this.iov[t + 1] = addr - this.starts[i];
        this.iov[t + 2] = n;
        addr += n;
        len -= n;
      }
      cap += b.len;
    }
    this.groups[this.count] = this.triples - first;
    this.heads[this.count] = head;
    this.capacity[this.count] = cap;
    this.count++;
    return true;
  }

  private last = 0;

  private region(addr: number): number {
    const { starts, ends } = this;
    if (this.last < starts.length && addr >= starts[this.last] && addr < ends[this.last]) return this.last;
    for (let i = 0; i < starts.length; i++) if (addr >= starts[i] && addr < ends[i]) return (this.last = i);
    return -1;
  }
}
