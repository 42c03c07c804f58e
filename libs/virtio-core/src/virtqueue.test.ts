import fc from 'fast-check';
import * as V from './generated/virtio-uapi';
import { fakeMemory, MockDriverQueue } from './testing';
import { QueueError, SplitVirtqueue } from './virtqueue';

const MEM = 1 << 20;

function setup(size = 8, features = { eventIdx: false, indirect: true }) {
  const mem = fakeMemory(MEM);
  const drv = new MockDriverQueue(mem, size);
  const q = new SplitVirtqueue(0, 256);
  drv.program(q);
  expect(q.activate(mem, features)).toBeUndefined();
  return { mem, drv, q };
}

function errorOf(r: ReturnType<SplitVirtqueue['pop']>): QueueError['kind'] | undefined {
  return r && 'error' in r ? r.error.kind : undefined;
}

describe('SplitVirtqueue', () => {
  it('pops a chain with readable then writable buffers and returns it used', () => {
    const { drv, q } = setup();
    const head = drv.addChain([
      { addr: 0x10000, len: 16 },
      { addr: 0x11000, len: 512, write: true },
      { addr: 0x12000, len: 1, write: true },
    ]);
    const r = q.pop();
    expect(r && 'chain' in r).toBe(true);
    if (!r || !('chain' in r)) return;
    expect(r.chain.head).toBe(head);
    expect(r.chain.readable).toEqual([{ addr: 0x10000, len: 16, writable: false }]);
    expect(r.chain.writableLength).toBe(513);
    expect(q.pop()).toBeNull();
    q.pushUsed(head, 513);
    expect(drv.takeUsed()).toEqual([{ id: head, len: 513 }]);
  });

  it('follows one level of indirect descriptors', () => {
    const { drv, q } = setup();
    drv.addIndirect(0x20000, [
      { addr: 0x10000, len: 16 },
      { addr: 0x11000, len: 4096, write: true },
    ]);
    const r = q.pop();
    expect(r && 'chain' in r && r.chain.writable[0]).toEqual({ addr: 0x11000, len: 4096, writable: true });
  });

  it.each<[string, (d: MockDriverQueue) => void, QueueError['kind']]>([
    [
      'a descriptor loop',
      (d) => {
        d.writeDesc(0, 0x10000, 8, V.VRING_DESC_F_NEXT, 1);
        d.writeDesc(1, 0x10000, 8, V.VRING_DESC_F_NEXT, 0);
        d.publish(0);
      },
      'descriptor-loop',
    ],
    [
      'next beyond the table',
      (d) => {
        d.writeDesc(0, 0x10000, 8, V.VRING_DESC_F_NEXT, 9);
        d.publish(0);
      },
      'next-out-of-range',
    ],
    ['a head beyond the table', (d) => d.publish(8), 'head-out-of-range'],
    ['a buffer outside RAM', (d) => void d.addChain([{ addr: MEM - 4, len: 8 }]), 'address-out-of-range'],
    [
      'a readable buffer after a writable one',
      (d) =>
        void d.addChain([
          { addr: 0x10000, len: 8, write: true },
          { addr: 0x11000, len: 8 },
        ]),
      'readable-after-writable',
    ],
    [
      'an indirect table inside an indirect table',
      (d) => {
        d.writeDesc(0, 0x30000, 16, V.VRING_DESC_F_INDIRECT, 0, 0x20000);
        d.writeDesc(0, 0x20000, 16, V.VRING_DESC_F_INDIRECT, 0);
        d.publish(0);
      },
      'nested-indirect',
    ],
    [
      'an indirect table of odd length',
      (d) => {
        d.writeDesc(0, 0x20000, 24, V.VRING_DESC_F_INDIRECT, 0);
        d.publish(0);
      },
      'bad-indirect-table',
    ],
    [
      'INDIRECT with NEXT',
      (d) => {
        d.writeDesc(0, 0x20000, 16, V.VRING_DESC_F_INDIRECT | V.VRING_DESC_F_NEXT, 1);
        d.publish(0);
      },
      'indirect-with-next',
    ],
    // An indirect table may be longer than the queue (its own length bounds it), but its chain may not leave it.
    [
      'an indirect chain running past its table',
      (d) => {
        for (let i = 0; i < 12; i++) d.writeDesc(i, 0x10000, 8, V.VRING_DESC_F_NEXT, i + 1, 0x20000);
        d.writeDesc(0, 0x20000, 12 * 16, V.VRING_DESC_F_INDIRECT, 0);
        d.publish(0);
      },
      'next-out-of-range',
    ],
    ['an available index a whole queue ahead', (d) => d.setAvailIdx(9), 'avail-index-jump'],
  ])('rejects %s', (_name, build, kind) => {
    const { drv, q } = setup();
    build(drv);
    expect(errorOf(q.pop())).toBe(kind);
  });

  it('rejects indirect descriptors when the feature was not negotiated', () => {
    const { drv, q } = setup(8, { eventIdx: false, indirect: false });
    drv.addIndirect(0x20000, [{ addr: 0x10000, len: 16 }]);
    expect(errorOf(q.pop())).toBe('indirect-not-negotiated');
  });

  it('rejects a bad layout at activation', () => {
    const mem = fakeMemory(MEM);
    const q = new SplitVirtqueue(0, 256);
    Object.assign(q, { size: 6, descTable: 0x1000, availRing: 0x2000, usedRing: 0x3000, ready: true });
    expect(q.activate(mem, { eventIdx: false, indirect: false })?.kind).toBe('bad-queue-layout');
    Object.assign(q, { size: 8, usedRing: 0x3002 });
    expect(q.activate(mem, { eventIdx: false, indirect: false })?.kind).toBe('bad-queue-layout');
    Object.assign(q, { usedRing: MEM - 8 });
    expect(q.activate(mem, { eventIdx: false, indirect: false })?.kind).toBe('bad-queue-layout');
  });

  it('honours VRING_AVAIL_F_NO_INTERRUPT without EVENT_IDX', () => {
    const { drv, q } = setup();
    drv.setNoInterrupt(true);
    expect(q.needsInterrupt()).toBe(false);
    drv.setNoInterrupt(false);
    expect(q.needsInterrupt()).toBe(true);
  });

  it('with EVENT_IDX interrupts only when used_event is crossed, and publishes avail_event', () => {
    const { drv, q } = setup(8, { eventIdx: true, indirect: true });
    for (let i = 0; i < 4; i++) drv.addChain([{ addr: 0x10000, len: 8 }]);
    drv.setUsedEvent(2); // interrupt when the used index passes 2
    const heads: number[] = [];
    for (let i = 0; i < 4; i++) {
      const r = q.pop();
      if (r && 'chain' in r) heads.push(r.chain.head);
    }
    expect(q.needsInterrupt()).toBe(true); // first decision is always true
    q.pushUsed(heads[0], 0);
    q.pushUsed(heads[1], 0);
    expect(q.needsInterrupt()).toBe(false); // used 1..2: event 2 not crossed (needs idx > 2)
    q.pushUsed(heads[2], 0);
    expect(q.needsInterrupt()).toBe(true); // crossed used_event
    expect(q.enableNotification()).toBe(false);
    expect(drv.availEvent()).toBe(4);
  });

  it('never throws on random descriptor tables: every outcome is a chain, nothing, or a QueueError', () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            addr: fc.integer({ min: 0, max: MEM + 0x1000 }),
            len: fc.integer({ min: 0, max: 0x3000 }),
            flags: fc.integer({ min: 0, max: 7 }),
            next: fc.integer({ min: 0, max: 12 }),
          }),
          { minLength: 8, maxLength: 8 },
        ),
        fc.array(fc.integer({ min: 0, max: 10 }), { minLength: 1, maxLength: 8 }),
        (descs, heads) => {
          const { drv, q } = setup();
          descs.forEach((d, i) => drv.writeDesc(i, d.addr, d.len, d.flags, d.next));
          heads.forEach((h) => drv.publish(h));
          for (let i = 0; i < heads.length + 1; i++) {
            const r = q.pop();
            if (r === null) break;
            if ('error' in r) break;
            const all = [...r.chain.readable, ...r.chain.writable];
            for (const b of all) expect(b.len === 0 || drv.mem.checkRange(b.addr, b.len)).toBe(true);
            expect(all.length).toBeLessThanOrEqual(8 * 2);
          }
        },
      ),
      { numRuns: 500 },
    );
  });

  it('parses mostly valid chains exactly, and flags the one flipped field', () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ len: fc.integer({ min: 1, max: 4096 }), write: fc.boolean() }), { minLength: 1, maxLength: 6 }),
        fc.option(fc.constantFrom('addr', 'next'), { nil: undefined }),
        (bufs, flip) => {
          const { drv, q } = setup();
          const sorted = [...bufs].sort((a, b) => Number(a.write) - Number(b.write));
          const head = drv.addChain(sorted.map((b, i) => ({ addr: 0x10000 + i * 0x1000, len: b.len, write: b.write })));
          if (flip === 'addr') drv.writeDesc(head, MEM, 16, sorted.length > 1 ? V.VRING_DESC_F_NEXT : 0, head + 1);
          if (flip === 'next' && sorted.length > 1)
            drv.writeDesc(head, 0x10000, sorted[0].len, V.VRING_DESC_F_NEXT | (sorted[0].write ? V.VRING_DESC_F_WRITE : 0), 200);
          const r = q.pop();
          if (flip === 'addr') expect(errorOf(r)).toBe('address-out-of-range');
          else if (flip === 'next' && sorted.length > 1) expect(errorOf(r)).toBe('next-out-of-range');
          else {
            expect(r && 'chain' in r).toBe(true);
            if (r && 'chain' in r) {
              expect(r.chain.readable.length + r.chain.writable.length).toBe(sorted.length);
              expect(r.chain.writableLength).toBe(sorted.filter((b) => b.write).reduce((n, b) => n + b.len, 0));
            }
          }
        },
      ),
      { numRuns: 300 },
    );
  });
});
