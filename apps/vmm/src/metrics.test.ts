import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { metricsRegistry, parseMetricsFlag, writeMetrics } from './metrics';
import type { MigrationInfo } from './migration/migration';

test('migration progress and exits by reason, as a scrape reads them', async () => {
  let info: MigrationInfo = {
    status: 'none',
    ram: { transferred: 0, normal: 0, duplicate: 0, total: 0, remaining: 0, dirtySyncCount: 0, mbps: 0, dirtyPagesRate: 0 },
  };
  const exits = new Map([['io', 7]]);
  const registry = metricsRegistry({ devices: () => [], exits: () => exits, migration: () => info });
  let text = await registry.metrics();
  expect(text).toContain('tsvmm_migration_status{status="none"} 1');
  expect(text).toContain('tsvmm_migration_ram_transferred_bytes 0');
  expect(text).toContain('tsvmm_vcpu_exits_total{reason="io"} 7');

  info = { status: 'active', ram: { ...info.ram, transferred: 4096 * 300, total: 2 ** 28, remaining: 4096 * 20, dirtySyncCount: 2 } };
  exits.set('io', 9).set('mmio', 1);
  text = await registry.metrics();
  expect(text).toContain('tsvmm_migration_status{status="active"} 1');
  expect(text).toContain('tsvmm_migration_status{status="none"} 0');
  expect(text).toContain('tsvmm_migration_ram_transferred_bytes 1228800');
  expect(text).toContain('tsvmm_migration_ram_remaining_bytes 81920');
  expect(text).toContain('tsvmm_migration_ram_total_bytes 268435456');
  expect(text).toContain('tsvmm_migration_dirty_sync_count 2');
  expect(text).toContain('tsvmm_vcpu_exits_total{reason="io"} 9');
  expect(text).toContain('tsvmm_vcpu_exits_total{reason="mmio"} 1');
  expect(text).toContain('# TYPE tsvmm_vcpu_exits_total counter');
});

test('parseMetricsFlag: the file and the interval', () => {
  expect(parseMetricsFlag('--metrics', 'file:/run/vmm.prom')).toEqual({ file: '/run/vmm.prom', interval: 5 });
  expect(parseMetricsFlag('--metrics', 'file:m.prom,interval=0.5')).toEqual({ file: 'm.prom', interval: 0.5 });
});

test('writeMetrics: 0600 under umask 000, never through a symbolic link placed at the path or at a temporary name', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'metrics-file-'));
  const old = process.umask(0);
  try {
    const registry = metricsRegistry({
      devices: () => [],
      exits: () => new Map([['io', 3]]),
      migration: () => ({
        status: 'none',
        ram: { transferred: 0, normal: 0, duplicate: 0, total: 0, remaining: 0, dirtySyncCount: 0, mbps: 0, dirtyPagesRate: 0 },
      }),
    });
    const file = path.join(dir, 'vmm.prom');
    await writeMetrics(registry, file);
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    expect(fs.readFileSync(file, 'utf8')).toContain('tsvmm_vcpu_exits_total{reason="io"} 3');

    // The old temporary name was `.vmm.prom.PID.tmp`: a link there must not be written through.
    const victim = path.join(dir, 'victim');
    fs.writeFileSync(victim, 'untouched');
    fs.symlinkSync(victim, path.join(dir, `.vmm.prom.${process.pid}.tmp`));
    await writeMetrics(registry, file);
    expect(fs.readFileSync(victim, 'utf8')).toBe('untouched');

    const link = path.join(dir, 'link.prom');
    fs.symlinkSync(victim, link);
    await expect(writeMetrics(registry, link)).rejects.toThrow(/symbolic link|refusing/);
    expect(fs.readFileSync(victim, 'utf8')).toBe('untouched');
    expect(fs.readdirSync(dir).filter((n) => n.includes('tmp-'))).toEqual([]);
  } finally {
    process.umask(old);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
