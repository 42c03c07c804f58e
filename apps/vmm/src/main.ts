/** `vmm` command-line entry point. */
import * as fs from 'fs';
import { KvmUnavailableError } from '@tsvmm/kvm-native';
import { formatDeviceProperties, formatDeviceTypes, parseArgs, VERSION } from './cli';
import { ConfigError, configJsonSchema, DEFAULT_INCOMING_TIMEOUT_S, describeFileError, VmConfig } from './config';
import { buildContainer, DeviceRegistry, DeviceSetupError, TYPES } from './container';
import { EXIT_CODE_VMM_ERROR, Machine, MachineExit } from './machine/machine';
import { KernelImageError } from './machine/loader';
import { Monitor } from './monitor/monitor';
import { checkSocketPath } from './monitor/qmp-server';
import { IncomingListener, listenIncoming, openRestoreFile, receiveIncoming, restoreFromFd } from './migration/migration';
import { dropPrivileges, RunWithError } from './run-with';
import { PluginError } from '@tsvmm/pci';
import { createLogger, defaultLogOptions, lineLogger } from './logger';
import { startMetrics } from './metrics';
import { loadPluginCatalog } from './plugins';
import { formatPluginReport, pluginReport } from './plugins-report';
import * as readline from 'readline';
import { enterSandbox, SandboxError } from './sandbox/seccomp';
import { JailError, runJail } from './jail/jail';

const EXIT_USAGE = 2;

/** A file a flag names could not be opened: a one-line error, exit status 1. */
class FileOpenError extends Error {}

function serialSink(config: VmConfig): { write: (b: Uint8Array) => void; flush: () => void } {
  if (config.serial.kind === 'none') return { write: () => undefined, flush: () => undefined };
  let fd = 1;
  if (config.serial.kind === 'file') {
    const file = config.serial.path;
    try {
      fd = fs.openSync(file, 'w', 0o600); // created 0600 like every file the VMM makes (docs/security.md)
    } catch (e) {
      throw new FileOpenError(`--serial file:${file}: ${describeFileError(e, file)}`);
    }
  }
  // Bytes are batched and written between exits, so a slow terminal never stalls a vCPU.
  let pending: number[] = [];
  let scheduled = false;
  const flush = () => {
    scheduled = false;
    if (!pending.length) return;
    const buf = Buffer.from(pending);
    pending = [];
    let off = 0;
    while (off < buf.length) {
      try {
        off += fs.writeSync(fd, buf, off);
      } catch (e) {
        if ((e as { code?: string }).code !== 'EAGAIN') throw e;
      }
    }
  };
  return {
    write: (b) => {
      for (const x of b) pending.push(x);
      if (!scheduled) {
        scheduled = true;
        setImmediate(flush);
      }
    },
    flush,
  };
}

/** With --serial stdio, stdin feeds COM1; on a terminal, Ctrl-A x quits. */
function attachStdin(machine: Machine): () => void {
  const stdin = process.stdin;
  if (!stdin.readable) return () => undefined;
  const tty = stdin.isTTY;
  if (tty) stdin.setRawMode(true);
  let ctrlA = false;
  const onData = (d: Buffer) => {
    const out: number[] = [];
    for (const b of d) {
      if (tty && ctrlA) {
        ctrlA = false;
        if (b === 0x78 /* x */) {
          void machine.stop('quit from the console (Ctrl-A x)');
          return;
        }
        if (b !== 0x01) out.push(0x01);
      } else if (tty && b === 0x01) {
        ctrlA = true;
        continue;
      }
      out.push(b);
    }
    machine.serial.receive(Uint8Array.from(out));
  };
  stdin.on('data', onData);
  stdin.on('error', () => undefined);
  return () => {
    stdin.off('data', onData);
    if (tty) stdin.setRawMode(false);
    stdin.pause();
  };
}

/** --monitor stdio: HMP lines in, text out. */
function attachHmp(monitor: Monitor): () => void {
  const rl = readline.createInterface({ input: process.stdin, output: process.stdout, prompt: '(vmm) ', terminal: process.stdin.isTTY });
  monitor.listeners.push((name, data) => process.stdout.write(`event ${name}${data ? ' ' + JSON.stringify(data) : ''}\n`));
  rl.on('line', (line) => {
    // Queued like every monitor command: lines run one at a time, in order, each output in its turn.
    void monitor.hmp(line, (out) => {
      process.stdout.write(out);
      rl.prompt();
    });
  });
  rl.prompt();
  return () => rl.close();
}

export async function main(argv: readonly string[]): Promise<number> {
  let cmd;
  try {
    cmd = parseArgs(argv);
  } catch (e) {
    process.stderr.write(`vmm: ${(e as Error).message}\n`);
    return EXIT_USAGE;
  }
  if (cmd.kind === 'help') {
    process.stdout.write(cmd.text);
    return 0;
  }
  if (cmd.kind === 'version') {
    process.stdout.write(`vmm ${VERSION} (node ${process.versions.node})\n`);
    return 0;
  }
  if (cmd.kind === 'jail') {
    try {
      return await runJail(cmd.args);
    } catch (e) {
      if (e instanceof ConfigError) {
        process.stderr.write(`vmm: ${e.message}\n`);
        return EXIT_USAGE;
      }
      if (!(e instanceof JailError) && !(e instanceof PluginError)) throw e;
      process.stderr.write(`vmm: ${e.message}\n`);
      return EXIT_CODE_VMM_ERROR;
    }
  }
  const catalog = loadPluginCatalog();
  if (cmd.kind === 'plugins') {
    const report = pluginReport(catalog);
    process.stdout.write(cmd.json ? JSON.stringify(report, null, 2) + '\n' : formatPluginReport(report));
    return report.problems.length ? EXIT_CODE_VMM_ERROR : 0;
  }
  if (catalog.problems.length) {
    // A plugin the VMM cannot use is an installation problem: refuse to start rather than run without it.
    for (const p of catalog.problems) process.stderr.write(`vmm: ${p.message}\n`);
    return EXIT_CODE_VMM_ERROR;
  }
  if (cmd.kind === 'device-help' || cmd.kind === 'config-schema') {
    try {
      const missing = catalog.builtWith ? { builtWith: catalog.builtWith, leftOut: catalog.leftOut } : undefined;
      const registry = new DeviceRegistry(
        catalog.plugins.map((p) => p.plugin),
        missing,
      );
      const types = registry.types.map((t) => ({ type: registry.lookup(t), plugin: registry.pluginOf(t)! }));
      if (cmd.kind === 'config-schema') process.stdout.write(JSON.stringify(configJsonSchema(types.map((t) => t.type)), null, 2) + '\n');
      else if (cmd.type === undefined) process.stdout.write(formatDeviceTypes(types));
      else process.stdout.write(formatDeviceProperties(registry.lookup(cmd.type), registry.pluginOf(cmd.type)!));
      return 0;
    } catch (e) {
      if (!(e instanceof ConfigError) && !(e instanceof PluginError)) throw e;
      process.stderr.write(`vmm: ${e.message}\n`);
      return e instanceof ConfigError ? EXIT_USAGE : EXIT_CODE_VMM_ERROR;
    }
  }
  const config = cmd.config;
  for (const p of config.qmp) {
    // Before the machine is built: a socket that cannot be created is an error in seconds, not after RAM and devices.
    const problem = checkSocketPath(p);
    if (problem) {
      process.stderr.write(`vmm: --qmp unix:${p}: ${problem}\n`);
      return EXIT_CODE_VMM_ERROR;
    }
  }
  let log: (m: string) => void;
  try {
    log = lineLogger(
      createLogger(config.log ?? defaultLogOptions()),
      config.devices.map((d) => d.id),
    );
  } catch (e) {
    process.stderr.write(`vmm: ${(e as Error).message}\n`);
    return EXIT_CODE_VMM_ERROR;
  }
  let machine: Machine;
  let serial: ReturnType<typeof serialSink>;
  try {
    const missing = catalog.builtWith ? { builtWith: catalog.builtWith, leftOut: catalog.leftOut } : undefined;
    const container = buildContainer(
      config,
      catalog.plugins.map((p) => p.plugin),
      missing,
    );
    const registry = container.get<DeviceRegistry>(TYPES.DeviceRegistry);
    registry.validate(config.devices);
    serial = serialSink(config);
    machine = new Machine({
      config,
      serialOut: serial.write,
      log,
      createDevices: (ctx) => registry.createAll(ctx, config.devices),
    });
  } catch (e) {
    if (e instanceof ConfigError) {
      process.stderr.write(`vmm: ${e.message}\n`);
      return EXIT_USAGE;
    }
    if (
      e instanceof FileOpenError ||
      e instanceof KernelImageError ||
      e instanceof KvmUnavailableError ||
      e instanceof DeviceSetupError ||
      e instanceof PluginError
    ) {
      process.stderr.write(`vmm: ${e.message}\n`);
      return EXIT_CODE_VMM_ERROR;
    }
    throw e;
  }
  const monitor = new Monitor(machine, log);
  // Everything the VM needs from the host is opened before the confinement below.
  let incoming: IncomingListener | undefined;
  let restoreFd: number | undefined;
  try {
    for (const p of config.qmp) await monitor.listenQmp(p, config.qmpMode?.[p]);
    if (config.incoming) {
      const problem = checkSocketPath(config.incoming.slice(5));
      if (problem) throw new Error(`--incoming ${config.incoming}: ${problem}`);
      try {
        incoming = await listenIncoming(config.incoming);
      } catch (e) {
        throw new Error(`--incoming ${config.incoming}: ${(e as Error).message}`);
      }
    }
    if (config.restore) restoreFd = openRestoreFile(config.restore);
  } catch (e) {
    process.stderr.write(`vmm: ${(e as Error).message}\n`);
    incoming?.server.close();
    await machine.stop();
    monitor.close();
    return EXIT_CODE_VMM_ERROR;
  }
  let stopMetrics: (() => Promise<void>) | undefined;
  if (config.metrics) {
    try {
      stopMetrics = await startMetrics(
        config.metrics,
        { devices: () => machine.devices, exits: () => machine.exitCounts, migration: () => monitor.migration.info },
        log,
      );
    } catch (e) {
      process.stderr.write(`vmm: ${(e as Error).message}\n`);
      monitor.close();
      await machine.stop();
      return EXIT_CODE_VMM_ERROR;
    }
  }
  // --- confinement hook: open everything -> drop privileges (--run-with) -> seccomp (--sandbox) ---
  try {
    if (config.runWith) dropPrivileges(config.runWith, log, [...monitor.qmpPaths, ...(incoming ? [incoming.path] : [])]);
  } catch (e) {
    if (!(e instanceof RunWithError)) throw e;
    process.stderr.write(`vmm: ${e.message}\n`);
    incoming?.server.close();
    await machine.stop();
    monitor.close();
    return EXIT_CODE_VMM_ERROR;
  }
  monitor.startStallDetector(config.stallMs ?? 0);
  if (config.sandbox) {
    // Everything the VMM opens up front is open (KVM, RAM, devices, TAPs, QMP sockets); the vCPU threads start below and inherit the filter.
    try {
      enterSandbox();
    } catch (e) {
      process.stderr.write(`vmm: ${e instanceof SandboxError ? e.message : `--sandbox on: ${(e as Error).message}`}\n`);
      incoming?.server.close();
      await machine.stop();
      monitor.close();
      return EXIT_CODE_VMM_ERROR;
    }
  }
  let exitPromise: Promise<MachineExit>;
  if (incoming || restoreFd !== undefined) {
    // The machine was built (devices, RAM) as for a boot; the stream replaces its state before any vCPU runs.
    exitPromise = machine.run({ startPaused: true });
    monitor.incoming = true;
    try {
      if (restoreFd !== undefined) await restoreFromFd(machine, restoreFd, log);
      else {
        await receiveIncoming(machine, incoming!, log, () => log(`waiting for an incoming migration on ${incoming!.path}`), {
          idleTimeoutMs: (config.incomingTimeoutS ?? DEFAULT_INCOMING_TIMEOUT_S) * 1000,
          onConnected: () => monitor.event('MIGRATION', { status: 'active' }),
        });
        monitor.event('MIGRATION', { status: 'completed' });
      }
    } catch (e) {
      // As QEMU's destination: a failed incoming migration ends the VMM (status 1); the guest never runs here.
      if (incoming) monitor.event('MIGRATION', { status: 'failed' });
      process.stderr.write(`vmm: ${config.restore ? 'restore' : 'incoming migration'} failed: ${(e as Error).message}\n`);
      await machine.stop();
      monitor.close();
      return EXIT_CODE_VMM_ERROR;
    }
    monitor.incoming = false;
    if (!config.startPaused) {
      machine.resume();
      monitor.event('RESUME');
    }
  } else exitPromise = machine.run({ startPaused: config.startPaused });
  const detach = config.serial.kind === 'stdio' ? attachStdin(machine) : config.monitorStdio ? attachHmp(monitor) : () => undefined;
  const onSignal = () => void machine.stop('terminated by signal');
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const exit: MachineExit = await exitPromise;
  if (exit.reason !== 'stopped')
    monitor.event('SHUTDOWN', {
      guest: true,
      reason: exit.reason === 'reset' ? 'guest-reset' : exit.reason === 'fault' ? 'guest-panic' : 'guest-shutdown',
    });
  monitor.close();
  detach();
  serial.flush();
  await stopMetrics?.();
  if (exit.reason === 'fault' || exit.code !== 0 || exit.reason !== 'exit-port') process.stderr.write(`vmm: ${exit.message}\n`);
  if (process.env.VMM_EXIT_STATS) {
    const top = (m: Map<number, number>) =>
      [...m.entries()]
        .sort((a, b) => b[1] - a[1])
        .slice(0, 12)
        .map(([a, n]) => `0x${a.toString(16)}:${n}`)
        .join(' ');
    process.stderr.write(
      `vmm: exits pio=${machine.stats.pio} mmio=${machine.stats.mmio}\nvmm: top ports ${top(machine.stats.perPort)}\nvmm: top mmio ${top(machine.stats.perMmio)}\n`,
    );
  }
  if (config.traceBoot) {
    const t = machine.firstSerialByteAt;
    process.stderr.write(`vmm: first serial byte ${t === undefined ? 'never arrived' : `after ${t.toFixed(1)} ms`} (from process start)\n`);
  }
  return exit.code;
}

/**
 * Runs `vmm ARGS...` and exits with its status. The bundle's generated entry
 * calls it when main.js is run directly (`node dist/main.js run ...`), after
 * it has registered its plugins; bin/vmm.js does the same through main().
 */
export function runAndExit(argv: readonly string[]): void {
  main(argv).then(
    (code) => process.exit(code),
    (e) => {
      process.stderr.write(`vmm: internal error: ${(e as Error).stack ?? e}\n`);
      process.exit(EXIT_CODE_VMM_ERROR);
    },
  );
}
