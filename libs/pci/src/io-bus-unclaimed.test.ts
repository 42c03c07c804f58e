import { IoBus, UnclaimedAccounting } from './io-bus';

describe('unclaimed accesses', () => {
  const sink = { read: () => 0, write: () => undefined };

  it('counts per hole, not per address, and logs only the first few', () => {
    const bus = new IoBus('mmio');
    bus.register(0x1000, 0x1000, 'a', sink);
    bus.register(0x4000, 0x1000, 'b', sink);
    const lines: string[] = [];
    bus.unclaimed.log = (m) => lines.push(m);
    for (let i = 0; i < 10_000; i++) bus.write(0x2000 + (i % 0x2000), 4, i);
    for (let i = 0; i < 500; i++) expect(bus.read(0x5000 + i * 0x1000, 4)).toBe(0xffffffff);
    bus.write(0x1800, 4, 1); // claimed: not counted
    const r = bus.unclaimed.report();
    expect(r.writes).toBe(10_000);
    expect(r.reads).toBe(500);
    expect(r.regions).toEqual([
      { start: 0x2000, end: 0x3fff, reads: 0, writes: 10_000, lastAddress: 0x2000 + (9_999 % 0x2000) },
      { start: 0x5000, end: Number.MAX_SAFE_INTEGER, reads: 500, writes: 0, lastAddress: 0x5000 + 499 * 0x1000 },
    ]);
    expect(lines.length).toBe(UnclaimedAccounting.LOG_FIRST);
    expect(lines[0]).toBe('unclaimed MMIO write at 0x2000 size 4 value 0x0');
    bus.unclaimed.flush();
    expect(lines.length).toBe(UnclaimedAccounting.LOG_FIRST + 1);
    expect(lines[lines.length - 1]).toMatch(
      /^unclaimed MMIO: 10492 more access\(es\) since the last report; totals reads=500 writes=10000 in 2 hole\(s\)/,
    );
  });

  it('keeps at most MAX_REGIONS holes however the guest moves things around', () => {
    const bus = new IoBus('pio');
    for (let i = 0; i < 200; i++) bus.register(i * 0x100, 0x10, `d${i}`, sink);
    for (let i = 0; i < 200; i++) bus.read(i * 0x100 + 0x20, 1);
    const r = bus.unclaimed.report();
    expect(r.regions.length).toBe(UnclaimedAccounting.MAX_REGIONS);
    expect(r.other.reads).toBe(200 - UnclaimedAccounting.MAX_REGIONS);
    expect(r.reads).toBe(200);
  });

  it('a device registered inside a hole that was hit splits it: later accesses above it count in a new hole', () => {
    const bus = new IoBus('pio');
    bus.register(0x100, 0x10, 'low', sink);
    bus.write(0x200, 1, 0); // hole 0x110-0xffff
    bus.write(0x200, 1, 0); // the same hole again (the last-hit shortcut)
    bus.register(0x180, 0x10, 'mid', sink);
    bus.write(0x200, 1, 0); // now in 0x190-0xffff
    bus.write(0x120, 1, 0); // still in the first hole as recorded
    bus.unregister(0x180);
    bus.write(0x200, 1, 0); // 0x110-0xffff again
    expect(bus.unclaimed.report().regions).toEqual([
      { start: 0x110, end: 0xffff, reads: 0, writes: 4, lastAddress: 0x200 },
      { start: 0x190, end: 0xffff, reads: 0, writes: 1, lastAddress: 0x200 },
    ]);
  });
});
