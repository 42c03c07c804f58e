/**
 * x-query-virtio-queue-element's chain reader (queueElement) against guest
 * memory built from the input (layout: libs/testing/src/fuzz/virtio-input.ts;
 * byte 0 bits 3-7: 0 = no index argument, N = index N - 1, so indices past
 * the queue size are tried too). The expected answers are a reply or a
 * CommandError. Crashes: anything else thrown; a reply that changed guest
 * memory or the queue (the command is read-only); more descriptors than the
 * table or indirect table can hold; a descriptor flag without a name.
 */
import type { VirtioPciDevice } from '@tsvmm/pci';
import { MAX_INDIRECT_ENTRIES, SplitVirtqueue } from '@tsvmm/virtio-core';
import { guestFromInput, programQueue } from '@tsvmm/testing/fuzz';
import { CommandError } from '../src/monitor/commands';
import { queueElement } from '../src/monitor/virtio-info';

export const maxLen = 0x3000;

export function fuzz(data: Buffer): void {
  const g = guestFromInput(data);
  const q = new SplitVirtqueue(0, 128);
  programQueue(q, g.queueSize);
  if (q.activate(g.mem, { eventIdx: g.eventIdx, indirect: g.indirect })) return;
  const device = { id: 'f0', queues: [q], memory: g.mem, disabled: false };
  const before = g.bytes.slice();
  const lastAvail = q.lastAvailIdx;
  let r: Record<string, unknown>;
  try {
    r = queueElement({ device } as unknown as VirtioPciDevice, 0, g.extra ? g.extra - 1 : undefined);
  } catch (e) {
    if (e instanceof CommandError) return;
    throw e;
  }
  if (q.lastAvailIdx !== lastAvail || q.usedIdx !== 0) throw new Error('the queue moved');
  if (Buffer.compare(Buffer.from(before), Buffer.from(g.bytes)) !== 0) throw new Error('guest memory changed');
  const descs = r.descs as { addr: number; len: number; flags: string[] }[];
  if (descs.length > Math.max(g.queueSize, MAX_INDIRECT_ENTRIES)) throw new Error(`${descs.length} descriptors`);
  for (const d of descs) {
    if (d.flags.some((f) => !['next', 'write', 'indirect'].includes(f))) throw new Error(`flags ${d.flags.join(',')}`);
  }
  JSON.stringify(r);
}
