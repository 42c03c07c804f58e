/** `vmm` command-line entry point. */
import * as fs from 'fs';
import { KvmUnavailableError } from '@tsvmm/kvm-native';
import { parseArgs, USAGE } from './cli';
import { ConfigError, describeFileError, VmConfig } from './config';
import { buildContainer, DeviceRegistry, DeviceSetupError, TYPES } from './container';
import { EXIT_CODE_VMM_ERROR, Machine, MachineExit } from './machine/machine';
import { KernelImageError } from './machine/loader';
import { Monitor } from './monitor/monitor';
import { checkSocketPath } from './monitor/qmp-server';
import { receiveIncoming, restoreFromFile } from './migration/migration';
import { PluginError } from '@tsvmm/pci';
import { loadPluginCatalog } from './plugins';
import { formatPluginReport, pluginReport } from './plugins-report';
import * as readline from 'readline';

const EXIT_USAGE = 2;

/** A file a flag names could not be opened: a one-line error, exit status 1. */
class FileOpenError extends Error {}

function serialSink(config: VmConfig): { write: (b: Uint8Array) => void; flush: () => void } {
  if (config.serial.kind === 'none') return { write: () => undefined, flush: () => undefined };
  let fd = 1;
  if (config.serial.kind === 'file') {
    const file = config.serial.path;
    try {
      fd = fs.openSync(file, 'w');
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
    process.stdout.write(USAGE);
    return 0;
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
  const config = cmd.config;
  let machine: Machine;
  let serial: ReturnType<typeof serialSink>;
  try {
    const missing = catalog.builtWith ? { builtWith: catalog.builtWith, leftOut: catalog.leftOut } : undefined;
    const container = buildContainer(config, catalog.plugins.map((p) => p.plugin), missing);
    const registry = container.get<DeviceRegistry>(TYPES.DeviceRegistry);
    registry.validate(config.devices);
    serial = serialSink(config);
    machine = new Machine({
      config,
      serialOut: serial.write,
      createDevices: (ctx) => registry.createAll(ctx, config.devices),
    });
  } catch (e) {
    if (e instanceof ConfigError) {
      process.stderr.write(`vmm: ${e.message}\n`);
      return EXIT_USAGE;
    }
    if (e instanceof FileOpenError || e instanceof KernelImageError || e instanceof KvmUnavailableError || e instanceof DeviceSetupError || e instanceof PluginError) {
      process.stderr.write(`vmm: ${e.message}\n`);
      return EXIT_CODE_VMM_ERROR;
    }
    throw e;
  }
  const log = (m: string) => process.stderr.write(`vmm: ${m}\n`);
  const monitor = new Monitor(machine, log);
  try {
    for (const p of config.qmp) await monitor.listenQmp(p);
  } catch (e) {
    process.stderr.write(`vmm: ${(e as Error).message}\n`);
    await machine.stop();
    return EXIT_CODE_VMM_ERROR;
  }
  monitor.startStallDetector(config.stallMs ?? 0);
  let exitPromise: Promise<MachineExit>;
  if (config.incoming || config.restore) {
    // The machine was built (devices, RAM) as for a boot; the stream replaces its state before any vCPU runs.
    exitPromise = machine.run({ startPaused: true });
    monitor.incoming = true;
    try {
      const problem = config.incoming ? checkSocketPath(config.incoming.slice(5)) : undefined;
      if (problem) throw new Error(`--incoming ${config.incoming}: ${problem}`);
      if (config.restore) await restoreFromFile(machine, config.restore, log);
      else await receiveIncoming(machine, config.incoming!, log, () => log(`waiting for an incoming migration on ${config.incoming!.slice(5)}`));
    } catch (e) {
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
  if (exit.reason !== 'stopped') monitor.event('SHUTDOWN', { guest: true, reason: exit.reason === 'reset' ? 'guest-reset' : exit.reason === 'fault' ? 'guest-panic' : 'guest-shutdown' });
  monitor.close();
  detach();
  serial.flush();
  if (exit.reason === 'fault' || exit.code !== 0 || exit.reason !== 'exit-port') process.stderr.write(`vmm: ${exit.message}\n`);
  if (process.env.VMM_EXIT_STATS) {
    const top = (m: Map<number, number>) => [...m.entries()].sort((a, b) => b[1] - a[1]).slice(0, 12).map(([a, n]) => `0x${a.toString(16)}:${n}`).join(' ');
    process.stderr.write(`vmm: exits pio=${machine.stats.pio} mmio=${machine.stats.mmio}\nvmm: top ports ${top(machine.stats.perPort)}\nvmm: top mmio ${top(machine.stats.perMmio)}\n`);
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
