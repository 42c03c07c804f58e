/**
 * The split virtqueue (virtio 1.2 section 2.7), device side.
 *
 * Every index and address read from the guest is checked: a malformed ring or
 * chain is reported as a QueueError (a guest mistake), never thrown as a host
 * error, so the device can mark itself needs-reset and the VMM keeps running.
 */
import * as V from './generated/virtio-uapi';
import { GuestAddress, GuestMemory, GuestMemoryError, u16View } from './guest-memory';
import { QueueStallState, RingSnapshot, vringNeedEvent } from './stall';

export const DESC_SIZE = 16;
export const MAX_QUEUE_SIZE = 32768;
/**
 * Largest indirect table (entries). The spec bounds an indirect table only by
 * its own length; this keeps one descriptor from making the device walk
 * (and allocate for) an arbitrary amount of guest memory.
 */
export const MAX_INDIRECT_ENTRIES = MAX_QUEUE_SIZE;

/**
 * Byte sizes of the three areas of a split queue of `size` entries (virtio 1.2
 * 2.7): the descriptor table, the driver area (flags, idx, ring[size],
 * used_event) and the device area (flags, idx, ring[size] of 8-byte
 * elements, avail_event). The only place this arithmetic is done.
 */
export function splitRingSizes(size: number): { descTable: number; availRing: number; usedRing: number } {
  return { descTable: DESC_SIZE * size, availRing: 6 + 2 * size, usedRing: 6 + 8 * size };
}

/** Guest-physical address of the driver area's used_event field (EVENT_IDX). */
export function usedEventAddr(availRing: number, size: number): number {
  return availRing + 4 + 2 * size;
}

/** Guest-physical address of the device area's avail_event field (EVENT_IDX). */
export function availEventAddr(usedRing: number, size: number): number {
  return usedRing + 4 + 8 * size;
}

/** The page numbers `[addr, addr + len)` touches. */
export function pagesOf(addr: number, len: number, pageSize = 4096): number[] {
  const out: number[] = [];
  for (let p = Math.floor(addr / pageSize); p <= Math.floor((addr + len - 1) / pageSize); p++) out.push(p);
  return out;
}

/** One guest buffer of a chain, already range-checked. */
export interface Descriptor {
  addr: GuestAddress;
  len: number;
  writable: boolean;
}

export interface DescriptorChain {
  /** Head index, returned to the driver in the used ring. */
  head: number;
  /** Device-readable buffers, in order. */
  readable: Descriptor[];
  /** Device-writable buffers, in order (they all follow the readable ones). */
  writable: Descriptor[];
  readableLength: number;
  writableLength: number;
}

/** A guest mistake in the rings or a chain: one member per rule. */
export type QueueError =
  | { kind: 'bad-queue-layout'; detail: string }
  | { kind: 'avail-index-jump'; availIdx: number; lastAvailIdx: number }
  | { kind: 'head-out-of-range'; head: number }
  | { kind: 'next-out-of-range'; next: number; size: number }
  | { kind: 'descriptor-loop'; index: number }
  | { kind: 'chain-too-long'; limit: number }
  | { kind: 'address-out-of-range'; addr: number; len: number }
  | { kind: 'zero-length-buffer'; index: number }
  | { kind: 'indirect-not-negotiated' }
  | { kind: 'nested-indirect' }
  | { kind: 'indirect-with-next' }
  | { kind: 'bad-indirect-table'; len: number }
  | { kind: 'indirect-too-large'; entries: number; limit: number }
  | { kind: 'readable-after-writable'; index: number }
  | { kind: 'chain-length-overflow' }
  | { kind: 'head-in-flight'; head: number };

export function describeQueueError(e: QueueError): string {
  switch (e.kind) {
    case 'bad-queue-layout':
      return `bad queue layout: ${e.detail}`;
    case 'avail-index-jump':
      return `available index ${e.availIdx} is more than a queue ahead of ${e.lastAvailIdx}`;
    case 'head-out-of-range':
      return `chain head ${e.head} is outside the descriptor table`;
    case 'next-out-of-range':
      return `descriptor next ${e.next} is outside the table of ${e.size}`;
    case 'descriptor-loop':
      return `descriptor chain loops (descriptor ${e.index} seen twice)`;
    case 'chain-too-long':
      return `descriptor chain longer than ${e.limit}`;
    case 'address-out-of-range':
      return `buffer [0x${e.addr.toString(16)}, +0x${e.len.toString(16)}) is not guest RAM`;
    case 'zero-length-buffer':
      return `descriptor ${e.index} has length 0 (zero-sized buffers are not allowed)`;
    case 'indirect-not-negotiated':
      return 'indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC';
    case 'nested-indirect':
      return 'indirect descriptor inside an indirect table';
    case 'indirect-with-next':
      return 'descriptor has both INDIRECT and NEXT';
    case 'bad-indirect-table':
      return `indirect table length ${e.len} is not a non-zero multiple of 16`;
    case 'indirect-too-large':
      return `indirect table of ${e.entries} descriptors is larger than ${e.limit}`;
    case 'readable-after-writable':
      return `device-readable descriptor ${e.index} after a device-writable one`;
    case 'chain-length-overflow':
      return 'total chain length is 4 GiB or more';
    case 'head-in-flight':
      return `chain head ${e.head} made available again while the device still holds it`;
  }
}

export type PopResult = { chain: DescriptorChain } | { error: QueueError } | null;

export interface QueueConfig {
  size: number;
  descTable: number;
  availRing: number;
  usedRing: number;
}

/** What a queue remembers across save/restore. */
export interface QueueState extends QueueConfig {
  ready: boolean;
  lastAvailIdx: number;
  usedIdx: number;
}

export class SplitVirtqueue {
  /** Driver-programmed layout (valid once `ready`). */
  size: number;
  descTable = 0;
  availRing = 0;
  usedRing = 0;
  ready = false;

  eventIdx = false;
  indirect = false;

  /** [lastAvailIdx, usedIdx]: this queue's own, or shared memory another thread reads (shareIndices). */
  private idx = new Int32Array(2);
  /** Next available ring slot to take (the device's shadow of the driver's index). */
  get lastAvailIdx(): number {
    return this.idx[0];
  }
  set lastAvailIdx(v: number) {
    Atomics.store(this.idx, 0, v);
  }
  /** The used index the device last published. */
  get usedIdx(): number {
    return this.idx[1];
  }
  set usedIdx(v: number) {
    Atomics.store(this.idx, 1, v);
  }

  /** Keeps the two indices in `view` (2 int32, e.g. SharedQueueStats.indexView) from now on, starting from their current values. */
  shareIndices(view: Int32Array): void {
    Atomics.store(view, 0, this.idx[0]);
    Atomics.store(view, 1, this.idx[1]);
    this.idx = view;
  }
  /** The stall detector's record of this queue (kept with the queue, whichever thread runs it). */
  readonly stall = new QueueStallState();
  /** Chains pop() may still hand out in the current batch (VirtioDevice.service); Infinity outside one. */
  private budgetLeft = Infinity;
  private signalledUsed = 0;
  private signalledUsedValid = false;
  private usedIdxAtActivation = 0;
  /**
   * Set by needsInterrupt: whether the driver itself asked for this
   * interrupt (used_event crossed, or NO_INTERRUPT clear). The first
   * interrupt after activation is sent regardless; it is owed only if asked.
   */
  driverAsked = false;

  private mem: GuestMemory | undefined;
  private availIdxView: Uint16Array | undefined;
  private availFlagsView: Uint16Array | undefined;
  private usedEventView: Uint16Array | undefined;
  private usedIdxView: Uint16Array | undefined;
  private usedFlagsView: Uint16Array | undefined;
  private availEventView: Uint16Array | undefined;
  private ringView: Uint16Array | undefined;
  private usedRingBytes: DataView | undefined;
  private descBytes: DataView | undefined;

  constructor(
    readonly index: number,
    readonly maxSize: number,
  ) {
    this.size = maxSize;
  }

  /**
   * Checks the layout (power-of-two size, alignments 16/2/4, every ring in
   * RAM) and maps the rings. Called when the driver sets DRIVER_OK.
   */
  activate(mem: GuestMemory, features: { eventIdx: boolean; indirect: boolean }): QueueError | undefined {
    const n = this.size;
    const bad = (detail: string): QueueError => ({ kind: 'bad-queue-layout', detail: `queue ${this.index}: ${detail}` });
    if (n === 0 || n > this.maxSize || (n & (n - 1)) !== 0) return bad(`size ${n} is not a power of two up to ${this.maxSize}`);
    if (this.descTable % 16) return bad(`descriptor table 0x${this.descTable.toString(16)} is not 16-byte aligned`);
    if (this.availRing % 2) return bad(`driver area 0x${this.availRing.toString(16)} is not 2-byte aligned`);
    if (this.usedRing % 4) return bad(`device area 0x${this.usedRing.toString(16)} is not 4-byte aligned`);
    const sizes = splitRingSizes(n);
    try {
      const desc = mem.slice(this.descTable, sizes.descTable);
      this.descBytes = new DataView(desc.buffer, desc.byteOffset, desc.byteLength);
      const avail = u16View(mem, this.availRing, sizes.availRing / 2);
      this.availFlagsView = avail.subarray(0, 1);
      this.availIdxView = avail.subarray(1, 2);
      this.ringView = avail.subarray(2, 2 + n);
      this.usedEventView = avail.subarray(2 + n, 3 + n);
      const usedBytes = mem.slice(this.usedRing, sizes.usedRing);
      const used = u16View(mem, this.usedRing, 2);
      this.usedFlagsView = used.subarray(0, 1);
      this.usedIdxView = used.subarray(1, 2);
      this.usedRingBytes = new DataView(usedBytes.buffer, usedBytes.byteOffset + 4, sizes.usedRing - 6);
      this.availEventView = u16View(mem, availEventAddr(this.usedRing, n), 1);
    } catch (e) {
      if (e instanceof GuestMemoryError) return bad(e.message);
      throw e;
    }
    this.mem = mem;
    this.eventIdx = features.eventIdx;
    this.indirect = features.indirect;
    this.signalledUsedValid = false;
    this.usedIdxAtActivation = this.usedIdx;
    // Kicks wanted from the start: no suppression left in the device area by an earlier activation (a poll, poll.ts).
    if (this.eventIdx) Atomics.store(this.availEventView!, 0, this.lastAvailIdx);
    else Atomics.store(this.usedFlagsView!, 0, 0);
    return undefined;
  }

  get active(): boolean {
    return this.mem !== undefined;
  }

  /** The three areas of the programmed layout, as guest-physical [address, length] (see splitRingSizes). */
  areas(): { descTable: [number, number]; availRing: [number, number]; usedRing: [number, number] } {
    const s = splitRingSizes(this.size);
    return { descTable: [this.descTable, s.descTable], availRing: [this.availRing, s.availRing], usedRing: [this.usedRing, s.usedRing] };
  }

  /**
   * The pages of the device area (used ring), which the device writes through
   * views made at activation that GuestMemory tracking does not see: a dirty
   * log adds them itself. Empty for a queue that is not ready.
   */
  usedRingPages(pageSize = 4096): number[] {
    if (!this.ready) return [];
    return pagesOf(this.usedRing, splitRingSizes(this.size).usedRing, pageSize);
  }

  /** The pages of all three areas (migration sends the rings whatever the logs say). */
  ringPages(pageSize = 4096): number[] {
    if (!this.ready) return [];
    const a = this.areas();
    return [...pagesOf(...a.descTable, pageSize), ...pagesOf(...a.availRing, pageSize), ...pagesOf(...a.usedRing, pageSize)];
  }

  /** Forgets the layout and indices (device reset). */
  reset(): void {
    this.size = this.maxSize;
    this.descTable = this.availRing = this.usedRing = 0;
    this.ready = false;
    this.lastAvailIdx = this.usedIdx = 0;
    this.signalledUsedValid = false;
    this.mem = undefined;
    this.availIdxView = this.availFlagsView = this.usedEventView = this.usedIdxView = undefined;
    this.usedFlagsView = this.availEventView = this.ringView = undefined;
    this.usedRingBytes = this.descBytes = undefined;
    this.stall.reset();
  }

  /** The driver's avail index now (undefined before activation). */
  availIndex(): number | undefined {
    return this.mem ? this.availIdx() : undefined;
  }

  /** The ring fields the stall detector reads, as the driver sees them in guest memory. */
  ringSnapshot(): RingSnapshot | undefined {
    if (!this.mem) return undefined;
    return {
      availIdx: this.availIdx(),
      availFlags: Atomics.load(this.availFlagsView!, 0),
      usedIdx: Atomics.load(this.usedIdxView!, 0),
      usedFlags: Atomics.load(this.usedFlagsView!, 0),
      eventIdx: this.eventIdx,
      usedEvent: this.eventIdx ? Atomics.load(this.usedEventView!, 0) : undefined,
      availEvent: this.eventIdx ? Atomics.load(this.availEventView!, 0) : undefined,
    };
  }

  /** The driver's available index (acquire: the ring entries before it are visible). */
  private availIdx(): number {
    return Atomics.load(this.availIdxView!, 0);
  }

  /** Number of chains the driver has made available that we have not taken. */
  pending(): number {
    if (!this.mem) return 0;
    return (this.availIdx() - this.lastAvailIdx) & 0xffff;
  }

  /** Starts a batch: pop() hands out at most `budget` chains until endBatch. */
  beginBatch(budget: number): void {
    this.budgetLeft = budget;
  }

  get inBatch(): boolean {
    return this.budgetLeft !== Infinity;
  }

  /** The budget ran out in this batch: pop() returns null, enableNotification() false. */
  get budgetExhausted(): boolean {
    return this.budgetLeft <= 0;
  }

  /**
   * Ends a batch; returns true when its budget ran out with chains still
   * available (the caller must come back). A budget that ran out just as the
   * ring emptied left notifications off (enableNotification refused):
   * they are turned on again here, with the usual re-check.
   */
  endBatch(): boolean {
    const exhausted = this.budgetLeft <= 0;
    this.budgetLeft = Infinity;
    if (!exhausted) return false;
    if (this.pending() > 0) return true;
    return this.enableNotification();
  }

  /** Takes the next available chain, or null when there is none (or the batch's budget is spent). */
  pop(): PopResult {
    if (!this.mem || this.budgetLeft <= 0) return null;
    const availIdx = this.availIdx();
    const pending = (availIdx - this.lastAvailIdx) & 0xffff;
    if (pending === 0) return null;
    if (pending > this.size) return { error: { kind: 'avail-index-jump', availIdx, lastAvailIdx: this.lastAvailIdx } };
    const head = Atomics.load(this.ringView!, this.lastAvailIdx % this.size);
    const r = this.readChain(head);
    if ('error' in r) return r;
    this.lastAvailIdx = (this.lastAvailIdx + 1) & 0xffff;
    this.budgetLeft--;
    return r;
  }

  /** Gives back the last `count` popped chains (not yet used), e.g. when a received frame did not fit. */
  unpop(count: number): void {
    this.lastAvailIdx = (this.lastAvailIdx - count) & 0xffff;
    // Chains given back were not handed out: they do not count against the batch's budget
    // (virtio-net pops a batch of receive buffers before it knows how many frames the TAP has).
    if (this.budgetLeft !== Infinity) this.budgetLeft += count;
  }

  /**
   * Walks a chain from `head` with vm-virtio's rules (see QueueError). Every
   * buffer is range-checked whatever its length, and a zero-length buffer is
   * a guest error (the device needs a reset). A chain holds at most `size` descriptors; an
   * indirect table holds up to its own length / 16 (at most
   * MAX_INDIRECT_ENTRIES), and the descriptor that points at it does not
   * count against the table (Linux fills a queue-size table: header,
   * seg_max = size - 2 segments, status).
   */
  readChain(head: number): { chain: DescriptorChain } | { error: QueueError } {
    const n = this.size;
    if (head >= n) return { error: { kind: 'head-out-of-range', head } };
    const chain: DescriptorChain = { head, readable: [], writable: [], readableLength: 0, writableLength: 0 };
    const mem = this.mem!;
    let table = this.descBytes!;
    let tableSize = n;
    let inIndirect = false;
    let seen = this.seenFor(n);
    let stamp = this.nextStamp();
    let index = head;
    let total = 0;
    let count = 0;
    let limit = n;
    for (;;) {
      if (seen[index] === stamp) return { error: { kind: 'descriptor-loop', index } };
      seen[index] = stamp;
      if (++count > limit) return { error: { kind: 'chain-too-long', limit } };
      const o = index * DESC_SIZE;
      const addr = Number(table.getBigUint64(o, true));
      const len = table.getUint32(o + 8, true);
      const flags = table.getUint16(o + 12, true);
      const next = table.getUint16(o + 14, true);
      if (flags & V.VRING_DESC_F_INDIRECT) {
        if (!this.indirect) return { error: { kind: 'indirect-not-negotiated' } };
        if (inIndirect) return { error: { kind: 'nested-indirect' } };
        if (flags & V.VRING_DESC_F_NEXT) return { error: { kind: 'indirect-with-next' } };
        if (len === 0 || len % DESC_SIZE) return { error: { kind: 'bad-indirect-table', len } };
        if (len / DESC_SIZE > MAX_INDIRECT_ENTRIES)
          return { error: { kind: 'indirect-too-large', entries: len / DESC_SIZE, limit: MAX_INDIRECT_ENTRIES } };
        let t: Uint8Array;
        try {
          t = mem.slice(addr, len);
        } catch {
          return { error: { kind: 'address-out-of-range', addr, len } };
        }
        table = new DataView(t.buffer, t.byteOffset, t.byteLength);
        tableSize = len / DESC_SIZE;
        inIndirect = true;
        seen = this.seenFor(tableSize);
        stamp = this.nextStamp();
        index = 0;
        // The table's own entries are what counts from here (the descriptors before it were direct ones, at most size - 1).
        limit = tableSize;
        count = 0;
        continue;
      }
      if (!mem.checkRange(addr, len)) return { error: { kind: 'address-out-of-range', addr, len } };
      // No driver sends an empty buffer (QEMU refuses them too); taking one would leave devices deriving
      // addresses such as "last byte of the last buffer" from nothing.
      if (len === 0) return { error: { kind: 'zero-length-buffer', index } };
      total += len;
      if (total >= 2 ** 32) return { error: { kind: 'chain-length-overflow' } };
      const writable = (flags & V.VRING_DESC_F_WRITE) !== 0;
      if (writable) {
        chain.writable.push({ addr, len, writable });
        chain.writableLength += len;
      } else {
        if (chain.writable.length) return { error: { kind: 'readable-after-writable', index } };
        chain.readable.push({ addr, len, writable });
        chain.readableLength += len;
      }
      if (!(flags & V.VRING_DESC_F_NEXT)) break;
      if (next >= tableSize) return { error: { kind: 'next-out-of-range', next, size: tableSize } };
      index = next;
    }
    return { chain };
  }

  /**
   * readChain's loop detection: descriptor i was visited in this walk when
   * seen[i] holds the walk's stamp. Reused, because a fresh typed array per
   * chain costs microseconds (V8 puts typed arrays over 64 bytes off its
   * heap, and the garbage collector tracks each one).
   */
  private seen = new Uint32Array(0);
  private stamp = 0;

  private seenFor(size: number): Uint32Array {
    if (this.seen.length < size) {
      this.seen = new Uint32Array(size);
      this.stamp = 0;
    }
    return this.seen;
  }

  private nextStamp(): number {
    if (this.stamp === 0xffffffff) {
      this.seen.fill(0);
      this.stamp = 0;
    }
    return ++this.stamp;
  }

  /** Returns a chain to the driver with `len` bytes written (release: the element before the index). */
  pushUsed(head: number, len: number): void {
    if (!this.mem) return;
    const slot = this.usedIdx % this.size;
    this.usedRingBytes!.setUint32(slot * 8, head, true);
    this.usedRingBytes!.setUint32(slot * 8 + 4, len >>> 0, true);
    this.usedIdx = (this.usedIdx + 1) & 0xffff;
    Atomics.store(this.usedIdxView!, 0, this.usedIdx);
  }

  /**
   * Whether the driver wants an interrupt for the used entries added since the
   * last call (VIRTIO_F_EVENT_IDX's used_event, or VRING_AVAIL_F_NO_INTERRUPT).
   */
  needsInterrupt(): boolean {
    if (!this.mem) return false;
    if (!this.eventIdx) return (this.driverAsked = (Atomics.load(this.availFlagsView!, 0) & V.VRING_AVAIL_F_NO_INTERRUPT) === 0);
    const newIdx = this.usedIdx;
    const valid = this.signalledUsedValid;
    const old = valid ? this.signalledUsed : this.usedIdxAtActivation;
    this.signalledUsed = newIdx;
    this.signalledUsedValid = true;
    const usedEvent = Atomics.load(this.usedEventView!, 0);
    this.driverAsked = vringNeedEvent(usedEvent, newIdx, old);
    return !valid || this.driverAsked;
  }

  /** Asks the driver not to kick (while the device is already processing). */
  disableNotification(): void {
    if (!this.mem || this.eventIdx) return;
    Atomics.store(this.usedFlagsView!, 0, V.VRING_USED_F_NO_NOTIFY);
  }

  /**
   * Asks the driver not to kick at all while the device polls the ring (an
   * iothread's poll window, libs/virtio-core/src/poll.ts). Without EVENT_IDX
   * this is VRING_USED_F_NO_NOTIFY; with it, avail_event is put half the index
   * space (0x8000) ahead of the entries already taken. The driver kicks when
   * avail_event lies in [old, new) of its publish (vring_need_event, virtio
   * 1.2 2.7.10), where `old` is its index at its last kick decision (Linux's
   * kick_prepare, the guest kit's vq_kick): a driver that publishes several
   * buffers per decision has `old` behind buffers a polling device already
   * took, so one behind lastAvailIdx would be crossed.
   * `new` is at most a queue size (<= 0x8000) past lastAvailIdx, so
   * lastAvailIdx + 0x8000 is crossed by no publish while the device keeps
   * up. enableNotification undoes either, then the caller re-checks.
   */
  suppressNotification(): void {
    if (!this.mem) return;
    if (this.eventIdx) Atomics.store(this.availEventView!, 0, (this.lastAvailIdx + 0x8000) & 0xffff);
    else Atomics.store(this.usedFlagsView!, 0, V.VRING_USED_F_NO_NOTIFY);
  }

  /**
   * Asks the driver to kick for the next buffer, then re-checks the ring:
   * returns true when buffers arrived meanwhile (the caller must process them).
   */
  enableNotification(): boolean {
    // Budget spent: notifications stay off, the device comes back in a later turn (VirtioDevice.service).
    if (!this.mem || this.budgetLeft <= 0) return false;
    if (this.eventIdx) Atomics.store(this.availEventView!, 0, this.lastAvailIdx);
    else Atomics.store(this.usedFlagsView!, 0, 0);
    return this.pending() > 0;
  }

  save(): QueueState {
    return {
      size: this.size,
      descTable: this.descTable,
      availRing: this.availRing,
      usedRing: this.usedRing,
      ready: this.ready,
      lastAvailIdx: this.lastAvailIdx,
      usedIdx: this.usedIdx,
    };
  }

  load(s: QueueState): void {
    this.size = s.size;
    this.descTable = s.descTable;
    this.availRing = s.availRing;
    this.usedRing = s.usedRing;
    this.ready = s.ready;
    this.lastAvailIdx = s.lastAvailIdx;
    this.usedIdx = s.usedIdx;
  }
}
