// Guest RAM larger than one V8 ArrayBuffer (4 GiB in Node 20): one memfd and one mapping per
// memory slot, handed to JS as 1 GiB pieces. memfd pages are allocated lazily, so the big
// regions here cost address space, not memory.
import * as fs from 'fs';
import * as v8 from 'v8';
import * as vm from 'vm';
import { KVM_MEM_MAX_BYTES, Kvm, KvmArgumentError, loadNative, mapGuestRam, RAM_PIECE_SIZE, ramPieceLengths } from '../src';
import { describeKvm } from '../src/testing';

const GiB = 2 ** 30;

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

/** Lines of /proc/self/maps for memfds named `name`. */
const mappingsOf = (name: string) =>
  fs
    .readFileSync('/proc/self/maps', 'utf8')
    .split('\n')
    .filter((l) => l.includes(`/memfd:${name} `)).length;

async function collect(): Promise<void> {
  // Node may run an external buffer's finalizer from an immediate: let it.
  for (let i = 0; i < 3; i++) {
    gc();
    await new Promise((r) => setImmediate(r));
  }
}

describe('guest RAM pieces', () => {
  it('cuts a range at every guest-physical GiB', () => {
    expect(RAM_PIECE_SIZE).toBe(GiB);
    expect(ramPieceLengths(0, 3 * GiB)).toEqual([GiB, GiB, GiB]);
    expect(ramPieceLengths(4 * GiB, 60 * GiB)).toHaveLength(60);
    expect(ramPieceLengths(GiB - 4096, 8192)).toEqual([4096, 4096]);
    expect(ramPieceLengths(0x1000, 0x2000)).toEqual([0x2000]);
    expect(() => ramPieceLengths(0, 0)).toThrow(KvmArgumentError);
  });

  it('a mapping too big for one ArrayBuffer is a clear error, not an abort; it is unmapped exactly once', async () => {
    const native = loadNative();
    const name = `bigmem-refused-${process.pid}`;
    for (let i = 0; i < 3; i++) {
      // One 5 GiB piece: Node refuses it (this used to free twice and abort the process).
      expect(() => native.memfdMap(name, 5 * GiB)).toThrow(/cannot create an ArrayBuffer of 5368709120 bytes.*larger than/);
      // The first piece is made, the second refused: the first one's buffer alone keeps the mapping.
      expect(() => native.memfdMap(name, 6 * GiB, [GiB, 5 * GiB])).toThrow(/cannot create an ArrayBuffer of 5368709120 bytes/);
    }
    await collect();
    expect(mappingsOf(name)).toBe(0);
    expect(() => native.memfdMap(name, 2 * GiB, [GiB, GiB - 4096])).toThrow(/add up to the mapping size/);
    expect(() => native.memfdMap(name, 2 * GiB, [GiB, GiB - 1, 1])).toThrow(/multiple of 4096/);
  });

  it('one mapping as pieces stays mapped while any piece lives and goes with the last one', async () => {
    const native = loadNative();
    const name = `bigmem-pieces-${process.pid}`;
    let m: ReturnType<typeof native.memfdMap> | undefined = native.memfdMap(name, 6 * GiB, ramPieceLengths(0, 6 * GiB));
    expect(m.buffers.map((b) => b.byteLength)).toEqual(Array(6).fill(GiB));
    expect(m.buffer).toBe(m.buffers[0]);
    let last: Uint8Array | undefined = new Uint8Array(m.buffers[5]);
    last[GiB - 1] = 0x5a;
    // The same pages through a second mapping of the memfd (what the iothread worker does).
    const again = mapGuestRam(m.fd, 4 * GiB, 6 * GiB);
    expect(again.pieces.map((p) => p.guestPhysAddr)).toEqual([4, 5, 6, 7, 8, 9].map((g) => g * GiB));
    expect(again.pieces[5].bytes[GiB - 1]).toBe(0x5a);
    native.close(m.fd);
    m = undefined;
    await collect();
    expect(mappingsOf(name)).toBe(2); // `last` keeps the first mapping, `again` the second
    expect(last[GiB - 1]).toBe(0x5a);
    last = undefined;
    await collect();
    expect(mappingsOf(name)).toBe(1);
  });
});

describeKvm('guest RAM above 4 GiB in KVM memory slots', () => {
  it('a 60 GiB slot above 4 GiB: 60 pieces at their guest addresses, one memfd; readPhysical across a split', () => {
    const kvm = Kvm.open();
    const v = kvm.createVm();
    const r = v.addMemoryRegion({ slot: 1, guestPhysAddr: 4 * GiB, size: 60 * GiB, name: `bigmem-slot-${process.pid}` });
    expect(r.pieces).toHaveLength(60);
    expect(r.pieces[59].guestPhysAddr).toBe(63 * GiB);
    r.pieces[0].bytes.set([1, 2], GiB - 2);
    r.pieces[1].bytes.set([3, 4], 0);
    expect([...v.readPhysical(BigInt(5 * GiB - 2), 4)!]).toEqual([1, 2, 3, 4]);
    expect(v.readPhysical(BigInt(64 * GiB - 2), 4)).toBeUndefined();
    expect(fs.fstatSync(r.fd).size).toBe(60 * GiB);
    v.close();
    kvm.close();
  });

  it('refuses a slot larger than KVM allows before allocating anything', () => {
    const kvm = Kvm.open();
    const v = kvm.createVm();
    expect(() => v.addMemoryRegion({ slot: 0, guestPhysAddr: 0, size: KVM_MEM_MAX_BYTES + 4096 })).toThrow(/size must be in/);
    v.close();
    kvm.close();
  });
});
