/**
 * The split virtqueue walker against guest memory built from the input
 * (layout: libs/testing/src/fuzz/virtio-input.ts). A QueueError is the expected
 * answer to a malformed ring; anything thrown is a crash, and so is a chain
 * that breaks what readChain promises (every buffer in RAM, readable before
 * writable, lengths adding up, no more descriptors than the table holds).
 * Then the stall detector's rules over the same guest-written rings (indices,
 * flags, used_event, avail_event): answers, never a throw.
 */
import { describeQueueError, GuestMemoryError, interruptStalled, kickStalled, QueueStallState, SplitVirtqueue } from '@tsvmm/virtio-core';
import { guestFromInput, programQueue } from '@tsvmm/testing/fuzz';

export const maxLen = 0x3000;

export function fuzz(data: Buffer): void {
  const g = guestFromInput(data);
  const q = new SplitVirtqueue(0, 128);
  programQueue(q, g.queueSize);
  const err = q.activate(g.mem, { eventIdx: g.eventIdx, indirect: g.indirect });
  if (err) {
    describeQueueError(err);
    return;
  }
  // extra (byte 0 bits 3-7): also walk from that head directly (readChain on any index).
  if (g.extra) {
    const r = q.readChain(g.extra);
    if ('error' in r) describeQueueError(r.error);
  }
  for (let i = 0; i < 2 * g.queueSize + 2; i++) {
    const r = q.pop();
    if (r === null) break;
    if ('error' in r) {
      if (typeof describeQueueError(r.error) !== 'string') throw new Error(`QueueError ${JSON.stringify(r.error)} has no description`);
      break;
    }
    const c = r.chain;
    if (c.head >= g.queueSize) throw new Error(`head ${c.head} outside the table of ${g.queueSize}`);
    let rl = 0;
    let wl = 0;
    for (const d of c.readable) {
      if (d.writable) throw new Error('writable descriptor in the readable list');
      if (d.len > 0 && !g.mem.checkRange(d.addr, d.len)) throw new Error(`readable buffer 0x${d.addr.toString(16)}+${d.len} outside RAM`);
      rl += d.len;
    }
    for (const d of c.writable) {
      if (!d.writable) throw new Error('readable descriptor in the writable list');
      if (d.len > 0 && !g.mem.checkRange(d.addr, d.len)) throw new Error(`writable buffer 0x${d.addr.toString(16)}+${d.len} outside RAM`);
      wl += d.len;
    }
    if (rl !== c.readableLength || wl !== c.writableLength) throw new Error('chain lengths do not add up');
    const descs = c.readable.length + c.writable.length;
    // At most the queue size, or one indirect table (len/16 entries, each from RAM of the image).
    if (descs > Math.max(g.queueSize, g.mem.size / 16)) throw new Error(`chain of ${descs} descriptors`);
    q.pushUsed(c.head, wl);
  }
  const asked = q.needsInterrupt() && q.driverAsked;
  q.enableNotification();
  stallRules(q, asked, data[2] ?? 0);
}

const CAUSES = new Set(['no-notify', 'dropped', 'driver-silent', 'vector-masked', 'no-vector', 'msix-disabled', 'no-irqfd']);

/** The detector over whatever the guest left in the rings, with the kick and interrupt records from the input. */
function stallRules(q: SplitVirtqueue, asked: boolean, b: number): void {
  const ring = q.ringSnapshot();
  if (!ring) throw new Error('an active queue has no ring snapshot');
  q.stall.kicked(0, b & 1 ? ring.availIdx ^ b : undefined);
  if (asked)
    QueueStallState.interruptSent(
      q.stall.interrupt,
      0,
      q.usedIdx,
      b & 2 ? 'vector-masked' : undefined,
      b & 4 ? (ring.availIdx + b) & 0xffff : undefined,
    );
  if (b & 8) QueueStallState.interruptDropped(q.stall.interrupt, 0, q.usedIdx, ring.availIdx);
  const kick = kickStalled(ring, q.lastAvailIdx, q.stall.availIdxAtLastKick, (b & 16) !== 0);
  const irq = interruptStalled(ring, q.stall.interrupt, b & 32 ? 'no-vector' : undefined);
  if (typeof kick !== 'boolean' || (irq !== undefined && !CAUSES.has(irq))) throw new Error(`bad verdicts ${kick} ${irq}`);
  for (let t = 0; t < 3; t++) {
    for (const tr of q.stall.check(
      t * 100,
      true,
      150,
      { kick: kick ? 'no-notify' : undefined, interrupt: irq },
      { kicks: t, interrupts: t },
    ))
      if (tr.stalledMs < 0 || !CAUSES.has(tr.cause)) throw new Error(`bad transition ${JSON.stringify(tr)}`);
  }
}

export function isExpected(e: unknown): boolean {
  return e instanceof GuestMemoryError;
}
