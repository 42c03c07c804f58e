/**
 * The monitor: QMP commands and their HMP twins over one machine, the
 * x-debug-device-event DeviceEvent path, fault injection, and the virtqueue
 * stall detector.
 */
import { PciBarFunction, showValue, VirtioPciDevice } from '@tsvmm/pci';
import { RunClock, type StallReport } from '@tsvmm/virtio-core';
import { readCpuSteal, readThreadSched } from './starvation';
import { Machine, MachineExit } from '../machine/machine';
import { MigrationManager } from '../migration/migration';
import { Command, CommandError, CommandRegistry, qmpSchema } from './commands';
import { QmpEventName } from './events';
import { RETURNS } from './returns';
import { runHmp } from './hmp';
import { QMP_VERSION, QmpServer } from './qmp-server';
import { findDevice, findVirtio, queueElement, queueStatus, VirtioDev, virtioDevices, virtioStatus } from './virtio-info';

/**
 * QEMU's run states, as far as this VMM has them: `inmigrate` while a
 * destination (or a restore) waits for its stream, `postmigrate` on a source
 * whose migration completed (paused; the guest runs on the destination).
 */
export type RunState = 'running' | 'paused' | 'shutdown' | 'inmigrate' | 'postmigrate';

export class Monitor {
  readonly commands = new CommandRegistry();
  private readonly servers: QmpServer[] = [];
  private readonly usedEvents = new Set<string>();
  private stallTimer: NodeJS.Timeout | undefined;
  /** Event listeners besides QMP clients (the stdio HMP monitor, tests). */
  readonly listeners: ((name: string, data?: Record<string, unknown>) => void)[] = [];
  readonly migration: MigrationManager;

  constructor(
    readonly machine: Machine,
    private readonly log: (m: string) => void,
  ) {
    this.migration = new MigrationManager(machine, log, (name, data) => this.event(name as QmpEventName, data));
    this.register();
  }

  get devices() {
    return this.machine.devices;
  }

  /** The tail of the VMM-wide queue of run-state commands (see serialize). */
  private runStateTail: Promise<unknown> = Promise.resolve();
  /** True while x-snapshot-save writes the VM: cont is refused meanwhile. */
  private saving = false;

  /**
   * Runs `fn` once every run-state command queued before it has finished
   * (stop, cont, system_reset, quit, x-snapshot-save, migrate, HMP lines),
   * whichever monitor sent it: QEMU runs monitor commands one at a time, and
   * a pause must never race a resume.
   */
  serialize<T>(fn: () => T | Promise<T>): Promise<T> {
    const p = this.runStateTail.then(fn);
    this.runStateTail = p.catch(() => undefined);
    return p;
  }

  /** Runs a command the way every monitor does: admission check, then its turn if it changes the run state. */
  async execute(cmd: Command, args: Record<string, unknown>): Promise<unknown> {
    const admitted = cmd.admit?.(args);
    if (admitted) return admitted.answer;
    return cmd.exclusive ? this.serialize(() => cmd.run(args)) : cmd.run(args);
  }

  /**
   * One HMP line from the stdio monitor, queued like human-monitor-command;
   * its output is written in its turn, so outputs and events keep the order
   * of the lines. A refusal is decided on arrival (as for QMP).
   */
  hmp(line: string, write: (out: string) => void): Promise<void> {
    const refused = this.commands.get('human-monitor-command')!.admit?.({ 'command-line': line })?.answer as string | undefined;
    return this.serialize(async () => {
      let out: string;
      try {
        out = refused ?? (await runHmp(this, line));
      } catch (e) {
        out = `Error: ${(e as Error).message}\n`;
      }
      write(out);
    });
  }

  /** Throws the refusal of `cont` while a snapshot or an outgoing migration is under way. */
  checkContAllowed(): void {
    if (this.saving)
      throw new CommandError(
        'cont refused: x-snapshot-save is writing the VM state; the VM stays stopped until it completes, then send cont again',
      );
    if (this.migration.active)
      throw new CommandError(
        'cont refused: an outgoing migration is in progress (it controls the run state until it completes; migrate_cancel stops it)',
      );
  }

  /** The QMP sockets listening. */
  get qmpPaths(): string[] {
    return this.servers.map((s) => s.path);
  }

  async listenQmp(path: string, mode?: number): Promise<void> {
    const s = new QmpServer(path, this.commands, this.log, (cmd, args) => this.execute(cmd, args), mode);
    await s.listen();
    this.servers.push(s);
  }

  event(name: QmpEventName, data?: Record<string, unknown>): void {
    for (const s of this.servers) s.event(name, data);
    for (const l of this.listeners) l(name, data);
  }

  /** The VMM-wide stall-ms for devices without their own (--stall-ms; 0: off). */
  stallDefaultMs = 0;

  /**
   * Starts the stall detector's clock. The rules and the per-queue state are
   * virtio-core's (VirtioDevice.checkStalls); this only schedules the checks
   * (every stall-ms / 4, at least once a second for the per-queue rates),
   * tells them whether the VM runs (nothing accumulates while it is stopped
   * or migrating), emits the events and applies stall-policy.
   */
  startStallDetector(defaultMs = 0): void {
    this.stallDefaultMs = defaultMs;
    const all = virtioDevices(this.devices);
    if (!all.length) return;
    const thresholds = all.map((v) => this.stallMs(v.pci)).filter((ms) => ms > 0);
    const period = Math.max(10, Math.min(1000, ...thresholds.map((ms) => ms / 4)));
    this.stallTimer = setInterval(() => this.checkStalls(), period);
    this.stallTimer.unref();
  }

  private stallMs(pci: VirtioPciDevice): number {
    return pci.stall.ms ?? this.stallDefaultMs;
  }

  /**
   * The detector's VM run clock: wall time less the run-queue wait of the
   * most-starved vCPU thread or of this (the device model's) thread, and the
   * CPUs' steal time, so a host that gives the VM no CPU raises no alarm
   * (docs/qmp.md "Stall detector").
   */
  private readonly runClock = new RunClock(readThreadSched, readCpuSteal);
  private runClockNoted = false;

  /** One detector pass over every virtio device, each inside its own fault boundary. */
  checkStalls(now = Date.now()): void {
    if (this.machine.exited) return;
    const running = !this.machine.isPaused && !this.migration.active && !this.incoming;
    const tids = [process.pid, ...this.machine.vcpus.map((v) => v.threadId ?? 0).filter((t) => t > 0)];
    const runNow = this.runClock.tick(now, tids);
    for (const v of virtioDevices(this.devices)) {
      const d = v.pci.device;
      const ms = this.stallMs(v.pci);
      if (ms > 0 && !this.runClock.schedstat && !this.runClockNoted) {
        this.runClockNoted = true;
        this.log('stall detector: no /proc/self/task/TID/schedstat here: stall time is wall time (a starved host may raise false alarms)');
      }
      d.runGuarded('stall detector', () => {
        for (const r of d.checkStalls(now, running, ms, runNow)) this.reportStall(v, r);
      });
    }
  }

  private reportStall(v: VirtioDev, r: StallReport): void {
    const t = r.transition;
    const base = { device: v.id, path: v.path, queue: r.queue, side: t.side, cause: t.cause };
    if (t.kind === 'cleared') {
      this.event('VIRTQUEUE_STALL_CLEARED', { ...base, 'stalled-ms': t.stalledMs });
      this.log(`${v.id}: queue ${r.queue} moves again (${t.side} side, ${t.cause}, stalled ${t.stalledMs} ms)`);
      return;
    }
    this.event('VIRTQUEUE_STALL', { ...base, ...r.indices, 'stalled-ms': t.stalledMs });
    const idx = Object.entries(r.indices)
      .map(([k, n]) => `${k} ${n}`)
      .join(', ');
    this.log(`${v.id}: queue ${r.queue} stalled on the ${t.side} side (${t.cause}) for ${t.stalledMs} ms: ${idx}`);
    const policy = v.pci.stall.policy;
    if (policy === 'kick' && t.side === 'kick') {
      this.log(`${v.id}: stall-policy=kick: kicking queue ${r.queue}`);
      v.pci.kick(r.queue);
    } else if (policy === 'call' && t.side === 'interrupt') {
      this.log(`${v.id}: stall-policy=call: sending the interrupt of queue ${r.queue}`);
      v.pci.call(r.queue);
    }
  }

  close(): void {
    if (this.stallTimer) clearInterval(this.stallTimer);
    for (const s of this.servers) s.close();
  }

  /** Set by main while --incoming / --restore loads the stream. */
  incoming = false;

  runState(): RunState {
    if (this.machine.exited) return 'shutdown';
    if (!this.machine.isPaused) return 'running';
    if (this.incoming) return 'inmigrate';
    return this.migration.info.status === 'completed' ? 'postmigrate' : 'paused';
  }

  async stop(): Promise<void> {
    if (this.runState() !== 'running') return;
    await this.machine.pause();
    this.event('STOP');
  }

  cont(): void {
    const state = this.runState();
    if (state === 'inmigrate')
      throw new CommandError('the VM is waiting for its incoming migration stream; it resumes by itself once loaded');
    this.checkContAllowed();
    if (state !== 'paused' && state !== 'postmigrate') return;
    // As QEMU, cont after a completed migration is allowed (e.g. the
    // destination died before it ran); the operator must make sure the
    // destination is not running the same guest on the same disks.
    if (state === 'postmigrate')
      this.log('cont after a completed migration: the guest runs here again (the destination must not be running it)');
    this.machine.resume();
    this.event('RESUME');
  }

  async reset(): Promise<void> {
    await this.machine.reset();
    this.event('RESET', { guest: false, reason: 'host-qmp-system-reset' });
  }

  quit(): Promise<MachineExit> {
    this.event('SHUTDOWN', { guest: false, reason: 'host-qmp-quit' });
    return this.machine.stop('quit from the monitor');
  }

  /** x-debug-device-event: kick a queue's doorbell or inject its interrupt, on purpose. */
  deviceEvent(dev: string, event: string, queue: number): void {
    const pci = findVirtio(this.devices, dev);
    const d = pci.device;
    if (event !== 'kick' && event !== 'call')
      throw new CommandError(`Parameter 'event' does not accept value ${showValue(event)} (expected one of: kick, call)`);
    if (!Number.isInteger(queue) || queue < 0 || queue >= d.queues.length)
      throw new CommandError(`Invalid queue ${queue}: device '${d.id}' has queues 0-${d.queues.length - 1}`);
    if (!d.driverOk) throw new CommandError(`Device '${d.id}' is not ready (driver status is not DRIVER_OK)`, 'DeviceNotActive');
    if (!d.queues[queue].ready) throw new CommandError(`Queue ${queue} of device '${d.id}' is not enabled by the driver`);
    refuseDebugAction(pci, event as 'kick' | 'call', queue);
    const key = `${d.id}/${event}/${queue}`;
    if (!this.usedEvents.has(key)) {
      this.usedEvents.add(key);
      this.log(`x-debug-device-event: ${event} on device ${d.id} queue ${queue}`);
    }
    if (event === 'kick') pci.kick(queue);
    else pci.call(queue);
  }

  private register(): void {
    const c = this.commands;
    c.add({
      name: 'query-version',
      returns: RETURNS['query-version'],
      args: {},
      help: 'the VMM version (QEMU-compatible shape)',
      run: () => QMP_VERSION,
    });
    c.add({
      name: 'query-commands',
      returns: RETURNS['query-commands'],
      args: {},
      help: 'the commands this monitor accepts',
      run: () => c.names().map((name) => ({ name })),
    });
    c.add({
      name: 'query-status',
      returns: RETURNS['query-status'],
      args: {},
      help: 'run state',
      run: () => ({ running: this.runState() === 'running', singlestep: false, status: this.runState() }),
    });
    c.add({
      name: 'query-cpus-fast',
      returns: RETURNS['query-cpus-fast'],
      args: {},
      help: "the vCPUs and their host thread ids (thread-id once the vCPU's thread runs: after cont under -S)",
      run: () =>
        this.machine.vcpus.map((v, i) => ({
          'cpu-index': i,
          'qom-path': `/machine/unattached/device[${i}]`,
          ...(v.threadId ? { 'thread-id': v.threadId } : {}),
          target: 'x86_64',
        })),
    });
    c.add({
      name: 'query-iothreads',
      returns: RETURNS['query-iothreads'],
      args: {},
      help: "the iothreads: id, the worker's thread-id (once a device started it), poll settings, the devices on it",
      run: () =>
        this.machine.iothreads().map((t) => ({
          id: t.id,
          ...(t.threadId ? { 'thread-id': t.threadId } : {}),
          'poll-max-ns': t.poll.maxNs,
          'poll-grow': t.poll.grow,
          'poll-shrink': t.poll.shrink,
          'aio-max-batch': 0,
          'x-devices': t.devices,
        })),
    });
    c.add({
      name: 'stop',
      returns: RETURNS['stop'],
      args: {},
      help: 'pause the vCPUs',
      exclusive: true,
      run: () => this.stop().then(() => ({})),
    });
    c.add({
      name: 'cont',
      returns: RETURNS['cont'],
      args: {},
      help: 'resume the vCPUs',
      exclusive: true,
      run: () => this.cont(),
      admit: () => (this.checkContAllowed(), undefined),
    });
    c.add({
      name: 'system_reset',
      returns: RETURNS['system_reset'],
      args: {},
      help: 'reset the machine',
      exclusive: true,
      run: () => this.reset().then(() => ({})),
    });
    c.add({
      name: 'quit',
      returns: RETURNS['quit'],
      args: {},
      help: 'end the VMM',
      exclusive: true,
      run: () => {
        setImmediate(() => void this.quit());
        return {};
      },
    });
    this.registerMigration();
    this.registerViews();
    c.add({
      name: 'query-pci',
      returns: RETURNS['query-pci'],
      args: {},
      help: 'PCI buses, devices, BARs, MSI-X',
      run: () => this.queryPci(),
    });
    c.add({
      name: 'human-monitor-command',
      returns: RETURNS['human-monitor-command'],
      args: { 'command-line': { type: 'str' }, 'cpu-index': { type: 'int', optional: true } },
      help: 'run an HMP command and return its text',
      exclusive: true,
      run: async (a) => runHmp(this, a['command-line'] as string),
      admit: (a) => {
        const word = String(a['command-line']).trim().split(/\s+/)[0];
        if (word !== 'cont' && word !== 'c') return undefined;
        try {
          this.checkContAllowed();
        } catch (e) {
          return { answer: `Error: ${(e as Error).message}\n` };
        }
        return undefined;
      },
    });
    c.add({
      name: 'x-query-unclaimed-io',
      returns: RETURNS['x-query-unclaimed-io'],
      args: {},
      help: 'guest accesses no device claimed: totals and counts per hole (port I/O and MMIO)',
      run: () => this.unclaimedReport(),
    });
    c.add({
      name: 'x-query-virtio',
      returns: RETURNS['x-query-virtio'],
      args: {},
      help: 'virtio devices and their QOM paths',
      run: () => virtioDevices(this.devices).map((v) => ({ path: v.path, name: v.type })),
    });
    c.add({
      name: 'x-query-virtio-status',
      returns: RETURNS['x-query-virtio-status'],
      args: { path: { type: 'str' } },
      help: 'a virtio device: features, status, broken, disabled, ISR',
      run: (a) => virtioStatus(findVirtio(this.devices, a.path as string)),
    });
    c.add({
      name: 'x-query-virtio-queue-status',
      returns: RETURNS['x-query-virtio-queue-status'],
      args: { path: { type: 'str' }, queue: { type: 'int' } },
      help: 'a virtqueue: indices, vector, counters',
      run: (a) => queueStatus(findVirtio(this.devices, a.path as string), a.queue as number),
    });
    c.add({
      name: 'x-debug-device-event',
      returns: RETURNS['x-debug-device-event'],
      args: { dev: { type: 'str' }, event: { type: 'enum', values: ['kick', 'call'] }, queue: { type: 'int' } },
      help: "kick a queue's doorbell or inject its interrupt",
      run: (a) => this.deviceEvent(a.dev as string, a.event as string, a.queue as number),
    });
    c.add({
      name: 'x-debug-virtqueue-drop',
      returns: RETURNS['x-debug-virtqueue-drop'],
      args: {
        dev: { type: 'str' },
        queue: { type: 'int' },
        kicks: { type: 'int', optional: true },
        interrupts: { type: 'int', optional: true },
      },
      help: 'drop the next N kicks and/or interrupts of a queue (fault injection)',
      run: (a) => {
        const pci = findVirtio(this.devices, a.dev as string);
        const q = a.queue as number;
        if (q < 0 || q >= pci.device.queues.length)
          throw new CommandError(`Invalid queue ${q}: device '${pci.device.id}' has queues 0-${pci.device.queues.length - 1}`);
        const f = pci.device.faults[q];
        for (const k of ['kicks', 'interrupts'] as const) {
          const n = a[k] as number | undefined;
          if (n !== undefined && (n < 0 || n > 1_000_000)) throw new CommandError(`Parameter '${k}' must be between 0 and 1000000`);
          if (n) refuseDebugAction(pci, k === 'kicks' ? 'drop-kicks' : 'drop-interrupts', q);
        }
        if (a.kicks !== undefined) f.dropKicks = a.kicks as number;
        if (a.interrupts !== undefined) f.dropInterrupts = a.interrupts as number;
        this.log(
          `x-debug-virtqueue-drop: device ${pci.device.id} queue ${q}: dropping the next ${f.dropKicks} kick(s) and ${f.dropInterrupts} interrupt(s)`,
        );
        return { 'drop-kicks': f.dropKicks, 'drop-interrupts': f.dropInterrupts };
      },
    });
  }

  /** The operator's views (docs/qmp.md "Diagnosing a hung queue"): schema and descriptor chains. */
  private registerViews(): void {
    const c = this.commands;
    c.add({
      name: 'query-qmp-schema',
      returns: RETURNS['query-qmp-schema'],
      args: {},
      help: "the commands and their arguments, as QEMU's SchemaInfo list",
      run: () => qmpSchema(c),
    });
    c.add({
      name: 'x-query-virtio-queue-element',
      returns: RETURNS['x-query-virtio-queue-element'],
      args: { path: { type: 'str' }, queue: { type: 'int' }, index: { type: 'int', optional: true } },
      help: 'the descriptor chain at an avail ring position (default: the next the device takes), read-only',
      run: (a) => queueElement(findVirtio(this.devices, a.path as string), a.queue as number, a.index as number | undefined),
    });
  }

  /** Snapshot and migration commands (docs/migration.md). */
  private registerMigration(): void {
    const c = this.commands;
    const mig = this.migration;
    c.add({
      name: 'x-snapshot-save',
      returns: RETURNS['x-snapshot-save'],
      args: { file: { type: 'str' } },
      help: 'stop the VM (it stays stopped) and write its memory and state to a file for --restore',
      exclusive: true,
      run: async (a) => {
        const wasRunning = this.runState() === 'running';
        this.saving = true;
        try {
          await mig.snapshot(a.file as string);
        } catch (e) {
          throw new CommandError(`snapshot failed: ${(e as Error).message}`);
        } finally {
          this.saving = false;
          if (wasRunning && this.machine.isPaused) this.event('STOP');
        }
        return {};
      },
    });
    c.add({
      name: 'migrate',
      returns: RETURNS['migrate'],
      args: { uri: { type: 'str' }, detach: { type: 'bool', optional: true }, resume: { type: 'bool', optional: true } },
      help: 'live-migrate to a VMM started with --incoming URI (unix:PATH)',
      exclusive: true,
      run: (a) => {
        if (this.machine.exited) throw new CommandError('the VM has ended');
        try {
          mig.start(a.uri as string);
        } catch (e) {
          throw new CommandError((e as Error).message);
        }
        return {};
      },
    });
    c.add({
      name: 'migrate_cancel',
      returns: RETURNS['migrate_cancel'],
      args: {},
      help: 'cancel an outgoing migration',
      exclusive: true,
      run: () => (mig.cancel(), {}),
    });
    c.add({
      name: 'query-migrate',
      returns: RETURNS['query-migrate'],
      args: {},
      help: 'migration status and figures',
      run: () => {
        const i = mig.info;
        if (i.status === 'none') return {};
        const r: Record<string, unknown> = { status: i.status };
        const now = Date.now();
        r['total-time'] = i.totalTime ?? (i.startedAt ? now - i.startedAt : 0);
        if (i.downtime !== undefined) r.downtime = i.downtime;
        if (i.status === 'completed' && i.sentAt !== undefined) r['x-downtime-sent'] = i.sentAt;
        if (i.setupTime !== undefined) r['setup-time'] = i.setupTime;
        r.ram = {
          transferred: i.ram.transferred,
          remaining: i.ram.remaining,
          total: i.ram.total,
          duplicate: i.ram.duplicate,
          normal: i.ram.normal,
          'normal-bytes': i.ram.normal * 4096,
          'dirty-sync-count': i.ram.dirtySyncCount,
          mbps: i.ram.mbps,
          'dirty-pages-rate': i.ram.dirtyPagesRate,
        };
        if (i.error) r['error-desc'] = i.error;
        return r;
      },
    });
    c.add({
      name: 'migrate-set-parameters',
      returns: RETURNS['migrate-set-parameters'],
      args: {
        'downtime-limit': { type: 'int', optional: true },
        'x-max-passes': { type: 'int', optional: true },
        'max-bandwidth': { type: 'int', optional: true },
      },
      help: 'migration parameters: downtime-limit (ms), x-max-passes, max-bandwidth (bytes/s, 0: no limit)',
      run: (a) => {
        const d = a['downtime-limit'] as number | undefined;
        const p = a['x-max-passes'] as number | undefined;
        const b = a['max-bandwidth'] as number | undefined;
        if (d !== undefined && (d < 0 || d > 2000000))
          throw new CommandError("Parameter 'downtime-limit' expects an integer in the range of 0 to 2000000 milliseconds");
        if (p !== undefined && (p < 1 || p > 1000)) throw new CommandError("Parameter 'x-max-passes' expects 1 to 1000");
        if (b !== undefined && (b < 0 || !Number.isSafeInteger(b)))
          throw new CommandError("Parameter 'max-bandwidth' expects bytes per second, 0 (no limit) or more");
        if (d !== undefined) mig.params.downtimeLimit = d;
        if (p !== undefined) mig.params.maxPasses = p;
        if (b !== undefined) mig.params.maxBandwidth = b;
        return {};
      },
    });
    c.add({
      name: 'query-migrate-parameters',
      returns: RETURNS['query-migrate-parameters'],
      args: {},
      help: 'the migration parameters',
      run: () => ({
        'downtime-limit': mig.params.downtimeLimit,
        'x-max-passes': mig.params.maxPasses,
        'max-bandwidth': mig.params.maxBandwidth,
      }),
    });
  }

  /** x-query-unclaimed-io / HMP info unclaimed: what the buses counted (docs/qmp.md). */
  unclaimedReport(): Record<string, unknown> {
    const one = (bus: 'pio' | 'mmio') => {
      const r = this.machine[bus].unclaimed.report();
      return {
        reads: r.reads,
        writes: r.writes,
        regions: r.regions.map((x) => ({ start: x.start, end: x.end, reads: x.reads, writes: x.writes, 'last-address': x.lastAddress })),
        other: r.other,
      };
    };
    return { pio: one('pio'), mmio: one('mmio') };
  }

  queryPci(): unknown {
    const devices = this.machine.pci.functions().map((f) => {
      const cfg = f.fn.config;
      const dev = this.devices.find((d) => d.virtio === f.fn);
      const regions: unknown[] = [];
      if (f.fn instanceof PciBarFunction) {
        for (let bar = 0; bar < 6; bar++) {
          const lo = cfg.getU32(0x10 + bar * 4);
          if (!lo) continue;
          const is64 = (lo & 0x6) === 0x4;
          const address = f.fn.barAddress(bar);
          regions.push({
            bar,
            type: 'memory',
            address: address ?? 0,
            size: f.fn.barSize(bar) ?? 0,
            prefetch: (lo & 8) !== 0,
            mem_type_64: is64,
            mapped: address !== undefined,
          });
          if (is64) bar++;
        }
      }
      const info: Record<string, unknown> = {
        bus: 0,
        slot: f.device,
        function: f.function,
        class_info: { class: cfg.getU16(0x0a) },
        id: { vendor: cfg.getU16(0), device: cfg.getU16(2), 'subsystem-vendor': cfg.getU16(0x2c), subsystem: cfg.getU16(0x2e) },
        regions,
        command: cfg.command,
        qdev_id: dev?.id ?? f.fn.name,
      };
      if (dev?.virtio) {
        const m = dev.virtio.msix;
        info.msix = { vectors: m.vectors, enabled: m.enabled, 'function-masked': m.functionMasked };
      }
      return info;
    });
    return [{ bus: 0, devices }];
  }

  findDevice(ref: string) {
    return findDevice(this.devices, ref);
  }
}

/** A clear QMP error where a debug action cannot apply to a queue (the device says why). */
function refuseDebugAction(
  pci: {
    device: { id: string; debugActionRefusal?(a: 'drop-kicks' | 'drop-interrupts' | 'kick' | 'call', q: number): string | undefined };
  },
  action: 'drop-kicks' | 'drop-interrupts' | 'kick' | 'call',
  queue: number,
): void {
  const why = pci.device.debugActionRefusal?.(action, queue);
  if (why) throw new CommandError(`${action} cannot apply to queue ${queue} of device '${pci.device.id}': ${why}`);
}
