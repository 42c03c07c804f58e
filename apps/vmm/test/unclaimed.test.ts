// A guest that touches thousands of distinct unclaimed addresses and ports: counted per hole, the log stays bounded.
import { describeKvm } from '@tsvmm/kvm-native/testing';
import { UnclaimedAccounting } from '@tsvmm/pci';
import { defaultConfig } from '../src/config';
import { Machine } from '../src/machine/machine';
import { runHmp } from '../src/monitor/hmp';
import { Monitor } from '../src/monitor/monitor';
import { GUEST_ELF, requireGuestKit } from './guest-kit';

describeKvm('unclaimed port I/O and MMIO', () => {
  it('counts 4096 distinct MMIO pages and 256 ports per hole, with a bounded log', async () => {
    requireGuestKit();
    const count = 4096;
    const ports = 256;
    const logged: string[] = [];
    let serial = '';
    const machine = new Machine({
      config: {
        ...defaultConfig(),
        kernel: GUEST_ELF,
        cmdline: `test=unclaimed count=${count} stride=0x1000 ports=${ports}`,
        memoryBytes: 64 * 2 ** 20,
        serial: { kind: 'none' },
      },
      serialOut: (b) => (serial += Buffer.from(b).toString('latin1')),
      log: (m) => logged.push(m),
    });
    const monitor = new Monitor(machine, (m) => logged.push(m));
    const started = Date.now();
    const timer = setTimeout(() => void machine.stop('test timeout'), 120_000);
    const exit = await machine.run();
    clearTimeout(timer);
    const elapsedMs = Date.now() - started;
    expect(serial).toContain(`unclaimed mmio=${count} pio=${ports}`);
    expect(serial).toContain('guest-kit: PASS test=unclaimed');
    expect(exit.code).toBe(0);

    const report = monitor.unclaimedReport() as Record<
      'pio' | 'mmio',
      { regions: { start: number; end: number; reads: number; writes: number }[]; other: { reads: number; writes: number } }
    >;
    const hole = (bus: 'pio' | 'mmio', addr: number) => report[bus].regions.find((r) => r.start <= addr && addr <= r.end);
    expect(hole('mmio', 0xe0000000)).toMatchObject({ reads: count, writes: count });
    expect(hole('pio', 0x5000)).toMatchObject({ reads: ports, writes: ports });
    // Per hole, not per address: a handful of entries whatever the guest touched.
    expect(report.mmio.regions.length).toBeLessThanOrEqual(UnclaimedAccounting.MAX_REGIONS);
    expect(report.pio.regions.length).toBeLessThanOrEqual(UnclaimedAccounting.MAX_REGIONS);
    // The per-address exit statistics are capped too.
    expect(machine.stats.perMmio.size).toBeLessThanOrEqual(4096);

    // The first few accesses one by one, then summaries (at most one per SUMMARY_MS, plus one at exit), per bus.
    const lines = logged.filter((m) => m.startsWith('unclaimed'));
    const summariesAllowed = 2 * (Math.floor(elapsedMs / UnclaimedAccounting.SUMMARY_MS) + 1);
    expect(lines.filter((m) => / (read|write) at 0x/.test(m)).length).toBe(2 * UnclaimedAccounting.LOG_FIRST);
    expect(lines.length).toBeGreaterThan(2 * UnclaimedAccounting.LOG_FIRST); // the exit summary says how many more
    expect(lines.length).toBeLessThanOrEqual(2 * UnclaimedAccounting.LOG_FIRST + summariesAllowed);
    expect(lines[0]).toBe('unclaimed MMIO write at 0xe0000000 size 4 value 0x0');

    const text = await runHmp(monitor, 'info unclaimed');
    expect(text).toMatch(
      new RegExp(
        `^  0x[0-9a-f]+-0x[0-9a-f]+: reads ${count}, writes ${count}, last 0x${(0xe0000000 + (count - 1) * 0x1000).toString(16)}$`,
        'm',
      ),
    );
    expect(text).toMatch(
      new RegExp(`^  0x[0-9a-f]+-0xffff: reads ${ports}, writes ${ports}, last 0x${(0x5000 + ports - 1).toString(16)}$`, 'm'),
    );
    monitor.close();
  }, 180_000);

  it('a device that throws on every exit: logged once with its stack, the rest counted and summarised at exit (the same limiter)', async () => {
    requireGuestKit();
    const ports = 64;
    const logged: string[] = [];
    let serial = '';
    const machine = new Machine({
      config: {
        ...defaultConfig(),
        kernel: GUEST_ELF,
        cmdline: `test=unclaimed count=4 stride=0x1000 ports=${ports}`,
        memoryBytes: 64 * 2 ** 20,
        serial: { kind: 'none' },
      },
      serialOut: (b) => (serial += Buffer.from(b).toString('latin1')),
      log: (m) => logged.push(m),
    });
    // A VMM bug in a port device: every write throws; reads answer as an empty bus would.
    machine.pio.register(0x5000, ports, 'hardening-broken', {
      read: () => 0xff,
      write: () => {
        throw new Error('hardening-broken device: write failed');
      },
    });
    const timer = setTimeout(() => void machine.stop('test timeout'), 120_000);
    const exit = await machine.run();
    clearTimeout(timer);
    expect(serial).toContain('guest-kit: PASS test=unclaimed'); // the guest went on
    expect(exit.code).toBe(0);
    const lines = logged.filter((m) => m.includes('hardening-broken device'));
    expect(lines[0]).toMatch(/^device error during exit handling: Error: hardening-broken device: write failed\n    at /);
    // Then only summaries (one at exit; one more per 10 s on a slow host), counting every other failure.
    const counts = lines.slice(1).map((m) => {
      const c = /^device error during exit handling: hardening-broken device: write failed: (\d+) more time\(s\)$/.exec(m);
      expect(c).not.toBeNull();
      return Number(c![1]);
    });
    expect(counts.length).toBeGreaterThanOrEqual(1);
    expect(counts.reduce((a, b) => a + b, 0)).toBe(ports - 1);
  }, 180_000);
});
