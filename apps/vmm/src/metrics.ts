/**
 * --metrics file:PATH[,interval=SECONDS]: the VMM's counters in Prometheus'
 * text exposition format (prom-client), written to PATH every SECONDS
 * (default 5) and once more when the VM ends, through a temporary file and a
 * rename, so a reader (node_exporter's textfile collector, a script) never
 * sees half a file. The values are read from the devices and the machine at
 * each write: nothing is counted twice.
 */
import * as fs from 'fs';
import type { Counter, Registry } from 'prom-client';
import type { Device } from '@tsvmm/pci';
import type { QueueCounters, VirtioDevice } from '@tsvmm/virtio-core';
import { ConfigError } from './config-error';
import { createPrivateFile } from './host-files';
import type { MigrationInfo } from './migration/migration';

export interface MetricsOptions {
  file: string;
  /** Seconds between writes. */
  interval: number;
}

export function parseMetricsFlag(flag: string, value: string): MetricsOptions {
  const [target, ...opts] = value.split(',');
  if (!target.startsWith('file:') || target.length === 5) throw new ConfigError(`${flag}: '${value}' must be file:PATH[,interval=SECONDS]`);
  let interval = 5;
  for (const o of opts) {
    const m = /^interval=(\d+(?:\.\d+)?)$/.exec(o);
    if (!m) throw new ConfigError(`${flag}: unknown option '${o}' (it takes interval=SECONDS)`);
    interval = Number(m[1]);
    if (!(interval >= 0.1 && interval <= 3600)) throw new ConfigError(`${flag}: interval=${m[1]} must be from 0.1 to 3600 seconds`);
  }
  return { file: target.slice(5), interval };
}

/** What the metrics read from the running VMM. */
export interface MetricsSource {
  devices(): readonly Device[];
  /** vCPU exits handled so far, by KVM exit reason name (io, mmio, ...). */
  exits(): ReadonlyMap<string, number>;
  /** The outgoing migration's figures (query-migrate), status 'none' when there was none. */
  migration(): MigrationInfo;
}

const MIGRATION_STATUSES = ['none', 'setup', 'active', 'device', 'completed', 'failed', 'cancelled'];

/** Sets a counter's labelled values to the totals read now (prom-client counters only go up by inc). */
function setTotals<L extends string>(c: Counter<L>, rows: [Partial<Record<L, string | number>>, number][]): void {
  c.reset();
  for (const [labels, v] of rows) c.inc(labels, v);
}

/**
 * prom-client, loaded only when metrics are asked for (--metrics): loading it
 * costs tens of milliseconds, which every VMM start would pay otherwise.
 */
function promClient(): typeof import('prom-client') {
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- loaded lazily on purpose (see above)
  return require('prom-client') as typeof import('prom-client');
}

/** QueueCounters' fields by their x-query-virtio-queue-status names. */
const STATUS_NAMES: Record<keyof QueueCounters, string> = {
  kicksEventfd: 'kicks-eventfd',
  kicksExit: 'kicks-exit',
  kicksDropped: 'kicks-dropped',
  chains: 'chains',
  interrupts: 'interrupts-injected',
  suppressed: 'interrupts-suppressed',
  interruptsDropped: 'interrupts-dropped',
  debugEvents: 'debug-events',
};

/**
 * A queue's counters as x-query-virtio-queue-status shows them: a device that
 * processes the queue elsewhere (virtio-blk with iothread=) reports the
 * processing copy's values through queueInfo, and those win over this
 * object's own (which stand still).
 */
export function queueCounters(device: VirtioDevice, queue: number): QueueCounters {
  const own = device.counters[queue];
  const info = device.queueInfo(queue);
  const out = { ...own };
  for (const k of Object.keys(STATUS_NAMES) as (keyof QueueCounters)[]) {
    const v = info[STATUS_NAMES[k]];
    if (typeof v === 'number') out[k] = v;
  }
  return out;
}

export function metricsRegistry(src: MetricsSource): Registry {
  const { Counter, Gauge, Registry } = promClient();
  const registry = new Registry();
  const virtio = () => src.devices().filter((d) => d.virtio);
  const perQueue = (f: (c: QueueCounters) => number, extra: Record<string, string> = {}) =>
    virtio().flatMap((d) =>
      d.virtio!.device.counters.map((_, q): [Record<string, string | number>, number] => [
        { device: d.id, queue: q, ...extra },
        f(queueCounters(d.virtio!.device, q)),
      ]),
    );
  new Counter({
    name: 'tsvmm_virtqueue_chains_total',
    help: 'Descriptor chains the device took from the available ring',
    labelNames: ['device', 'queue'],
    registers: [registry],
    collect() {
      setTotals(
        this,
        perQueue((c) => c.chains),
      );
    },
  });
  new Counter({
    name: 'tsvmm_virtqueue_kicks_total',
    help: 'Driver notifications, by path: eventfd (ioeventfd), exit (notify exit), dropped (fault injection)',
    labelNames: ['device', 'queue', 'path'],
    registers: [registry],
    collect() {
      setTotals(this, [
        ...perQueue((c) => c.kicksEventfd, { path: 'eventfd' }),
        ...perQueue((c) => c.kicksExit, { path: 'exit' }),
        ...perQueue((c) => c.kicksDropped, { path: 'dropped' }),
      ]);
    },
  });
  new Counter({
    name: 'tsvmm_virtqueue_interrupts_total',
    help: 'Used-buffer interrupts, by outcome: injected, suppressed (by the driver), dropped (fault injection)',
    labelNames: ['device', 'queue', 'outcome'],
    registers: [registry],
    collect() {
      setTotals(this, [
        ...perQueue((c) => c.interrupts, { outcome: 'injected' }),
        ...perQueue((c) => c.suppressed, { outcome: 'suppressed' }),
        ...perQueue((c) => c.interruptsDropped, { outcome: 'dropped' }),
      ]);
    },
  });
  new Gauge({
    name: 'tsvmm_virtio_device_needs_reset',
    help: '1 while the device is broken (DEVICE_NEEDS_RESET) until the driver resets it',
    labelNames: ['device'],
    registers: [registry],
    collect() {
      this.reset();
      for (const d of virtio()) this.set({ device: d.id }, d.virtio!.device.broken ? 1 : 0);
    },
  });
  new Counter({
    name: 'tsvmm_vcpu_exits_total',
    help: 'vCPU exits to the VMM, by KVM exit reason',
    labelNames: ['reason'],
    registers: [registry],
    collect() {
      setTotals(
        this,
        [...src.exits()].map(([reason, n]): [Record<string, string>, number] => [{ reason }, n]),
      );
    },
  });
  new Gauge({
    name: 'tsvmm_migration_status',
    help: "The outgoing migration's state: 1 for the current one (none, setup, active, device, completed, failed, cancelled)",
    labelNames: ['status'],
    registers: [registry],
    collect() {
      const now = src.migration().status;
      this.reset();
      for (const st of new Set([...MIGRATION_STATUSES, now])) this.set({ status: st }, st === now ? 1 : 0);
    },
  });
  const ram = (name: string, help: string, f: (r: MigrationInfo['ram']) => number) =>
    new Gauge({
      name,
      help,
      registers: [registry],
      collect() {
        const i = src.migration();
        this.set(i.status === 'none' ? 0 : f(i.ram));
      },
    });
  ram('tsvmm_migration_ram_transferred_bytes', 'Bytes of RAM sent by the current or last outgoing migration', (r) => r.transferred);
  ram('tsvmm_migration_ram_remaining_bytes', 'Bytes of RAM still to send (dirty) in the current migration', (r) => r.remaining);
  ram('tsvmm_migration_ram_total_bytes', "The guest's RAM size as the migration counts it", (r) => r.total);
  ram('tsvmm_migration_dirty_sync_count', 'Dirty-log passes of the current or last migration', (r) => r.dirtySyncCount);
  return registry;
}

/** Writes the registry to the file now, atomically. */
export async function writeMetrics(registry: Registry, file: string): Promise<void> {
  const text = await registry.metrics();
  // 0600 through an unpredictable O_EXCL|O_NOFOLLOW temporary, never through a link placed at the path (docs/security.md).
  const f = createPrivateFile(file);
  try {
    fs.writeSync(f.fd, text);
    f.commit();
  } catch (e) {
    f.discard();
    throw e;
  }
}

/**
 * Starts the periodic writes; the first one happens at once, so a bad path
 * fails here (with the path and the reason) before the VM runs. The returned
 * function writes the final values and stops.
 */
export async function startMetrics(opts: MetricsOptions, src: MetricsSource, log: (m: string) => void): Promise<() => Promise<void>> {
  const registry = metricsRegistry(src);
  try {
    await writeMetrics(registry, opts.file);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new Error(`--metrics file:${opts.file}: ${code === 'ENOENT' ? 'no such directory' : (e as Error).message}`);
  }
  let failed = false;
  // One write at a time (they share the temporary name): a tick that finds one in flight is skipped.
  let inFlight: Promise<void> | undefined;
  const write = () =>
    (inFlight = writeMetrics(registry, opts.file)
      .catch((e: Error) => {
        if (!failed) log(`metrics: writing ${opts.file} failed: ${e.message}`);
        failed = true;
      })
      .finally(() => (inFlight = undefined)));
  const timer = setInterval(() => {
    if (!inFlight) void write();
  }, opts.interval * 1000);
  timer.unref();
  return async () => {
    clearInterval(timer);
    await inFlight;
    failed = false;
    await write();
  };
}
