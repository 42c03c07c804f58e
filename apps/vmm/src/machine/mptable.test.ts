import { GuestMemory } from '@tsvmm/virtio-core';
import { writeMpTable } from './mptable';

const sum = (b: Uint8Array) => b.reduce((s, x) => (s + x) & 0xff, 0);

describe('MP table', () => {
  it('has a valid floating pointer and table with one processor entry per vCPU', () => {
    const mem = new GuestMemory([{ guestPhysAddr: 0, bytes: new Uint8Array(0x100000) }]);
    writeMpTable(mem, 3);
    const fp = mem.read(0xf0000, 16);
    expect(Buffer.from(fp.subarray(0, 4)).toString()).toBe('_MP_');
    expect(sum(fp)).toBe(0);
    const tableAddr = mem.readU32(0xf0004);
    const len = mem.readU16(tableAddr + 4);
    const table = mem.read(tableAddr, len);
    expect(Buffer.from(table.subarray(0, 4)).toString()).toBe('PCMP');
    expect(sum(table)).toBe(0);
    expect(mem.readU32(tableAddr + 36)).toBe(0xfee00000);
    // Walk the entries: processors are 20 bytes, everything else 8.
    let p = tableAddr + 44;
    const cpus: number[] = [];
    let ioapics = 0;
    let intsrc = 0;
    for (let i = 0; i < mem.readU16(tableAddr + 34); i++) {
      const t = mem.readU8(p);
      if (t === 0) cpus.push(mem.readU8(p + 1));
      if (t === 2) ioapics++;
      if (t === 3) intsrc++;
      p += t === 0 ? 20 : 8;
    }
    expect(p).toBe(tableAddr + len);
    expect(cpus).toEqual([0, 1, 2]);
    expect(ioapics).toBe(1);
    expect(intsrc).toBe(16);
    expect(mem.readU8(tableAddr + 44 + 3) & 2).toBe(2); // vCPU 0 is the BSP
  });
});
