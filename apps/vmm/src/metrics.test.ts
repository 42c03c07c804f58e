import { metricsRegistry, parseMetricsFlag } from './metrics';
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
