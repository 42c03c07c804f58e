/** Command-line parsing for `vmm run` and `vmm plugins`. */
import * as fs from 'fs';
import {
  checkConfig, ConfigError, configFromJson, defaultConfig, describeFileError, DeviceConfig, parseCpus, parseDeviceSpec, parseMemory,
  parseQmp, parseSerial, VmConfig,
} from './config';
import { parseStallMs } from './config';

export const USAGE = `Usage: vmm run [options]
       vmm plugins [--json]
       vmm --help

vmm run boots a guest on /dev/kvm. vmm plugins lists the device plugins this
VMM has (built in, or loaded at run time from node_modules next to the bundle
and VMM_PLUGIN_PATH): package, version, plugin API, device types.

Options:
  --kernel PATH          Linux bzImage (64-bit boot protocol) or PVH ELF kernel (required)
  --initrd PATH          initial ramdisk (bzImage) or first PVH module
  --cmdline STR          kernel command line
  --memory SIZE          guest RAM, e.g. 256M or 2G (default 256M)
  --cpus N               number of vCPUs (default 1)
  --device SPEC          TYPE,id=ID,key=value,... (repeatable)
  --serial MODE          stdio | file:PATH | none (default stdio); COM1 at 0x3f8, IRQ 4
  --config FILE.json     settings as JSON: {"kernel", "initrd", "cmdline", "memory",
                         "cpus", "serial", "devices": [{"type", "id", ...props}]};
                         flags given after --config override it
  --qmp unix:PATH        serve QMP on a unix socket (repeatable); see docs/qmp.md
  --monitor stdio        the human monitor (HMP) on stdin/stdout (needs --serial file:PATH or none)
  -S, --paused           create the VM but start the vCPUs only on QMP/HMP 'cont'
                         (needs --qmp or --monitor stdio)
  --incoming unix:PATH   wait on PATH for a live migration (QMP 'migrate' on the
                         source), then run the migrated guest; same devices needed
  --restore FILE         continue the guest from an x-snapshot-save file (same
                         --kernel, --memory, --cpus and devices as when it was saved)
  --trace-boot           report the time from start to the first serial byte
  --stall-ms N           the virtqueue stall detector's threshold for devices without
                         stall-ms= (default 0: off); see docs/qmp.md
  -h, --help             show this help

With --serial stdio on a terminal, Ctrl-A x quits.

Exit status: the guest's exit-port value (port 0xf4), 0 on guest power-off or
reset, 112 on a triple fault, 113 on a KVM internal error (e.g. an instruction
the host cannot emulate), 114 on a VM entry failure, 1 on a VMM error,
2 on a usage error.
`;

export type Command = { kind: 'help' } | { kind: 'run'; config: VmConfig } | { kind: 'plugins'; json: boolean };

const VALUE_FLAGS = ['--kernel', '--initrd', '--cmdline', '--memory', '--cpus', '--device', '--serial', '--config', '--qmp', '--monitor', '--incoming', '--restore', '--stall-ms'];

export function parseArgs(argv: readonly string[]): Command {
  const args = [...argv];
  if (args.length === 0 || args.includes('--help') || args.includes('-h')) return { kind: 'help' };
  if (args[0] === 'plugins') {
    const bad = args.slice(1).find((a) => a !== '--json');
    if (bad !== undefined) throw new ConfigError(`plugins: unknown option '${bad}' (it takes --json)`);
    return { kind: 'plugins', json: args.includes('--json') };
  }
  if (args[0] === 'run') args.shift();
  else if (!args[0].startsWith('-')) throw new ConfigError(`unknown command '${args[0]}' (commands: run, plugins; see --help)`);

  let config = defaultConfig();
  const devices: DeviceConfig[] = [];
  let fromFileDevices: DeviceConfig[] = [];
  for (let i = 0; i < args.length; i++) {
    let flag = args[i];
    let value: string | undefined;
    const eq = flag.indexOf('=');
    if (flag.startsWith('--') && eq > 0) {
      value = flag.slice(eq + 1);
      flag = flag.slice(0, eq);
    }
    if (flag === '-S' || flag === '--paused') {
      config.startPaused = true;
      continue;
    }
    if (flag === '--trace-boot') {
      config.traceBoot = true;
      continue;
    }
    if (!VALUE_FLAGS.includes(flag)) throw new ConfigError(`unknown option '${flag}' (see --help)`);
    if (value === undefined) {
      value = args[++i];
      if (value === undefined) throw new ConfigError(`${flag}: missing value`);
    }
    switch (flag) {
      case '--kernel':
        config.kernel = value;
        break;
      case '--initrd':
        config.initrd = value;
        break;
      case '--cmdline':
        config.cmdline = value;
        break;
      case '--memory':
        config.memoryBytes = parseMemory(flag, value);
        break;
      case '--cpus':
        config.cpus = parseCpus(flag, value);
        break;
      case '--serial':
        config.serial = parseSerial(flag, value);
        break;
      case '--qmp':
        config.qmp.push(parseQmp(flag, value));
        break;
      case '--monitor':
        if (value !== 'stdio' && value !== 'none') throw new ConfigError(`--monitor: '${value}' must be stdio or none`);
        config.monitorStdio = value === 'stdio';
        break;
      case '--incoming':
        config.incoming = value;
        break;
      case '--restore':
        config.restore = value;
        break;
      case '--stall-ms':
        config.stallMs = parseStallMs(flag, value);
        break;
      case '--device':
        devices.push(parseDeviceSpec(flag, value, devices.length + fromFileDevices.length));
        break;
      case '--config': {
        let text: string;
        try {
          text = fs.readFileSync(value, 'utf8');
        } catch (e) {
          throw new ConfigError(`--config ${value}: ${describeFileError(e, value)}`);
        }
        let json: unknown;
        try {
          json = JSON.parse(text);
        } catch (e) {
          throw new ConfigError(`--config ${value}: ${(e as Error).message}`);
        }
        const partial = configFromJson(`--config ${value}`, json);
        fromFileDevices = partial.devices ?? [];
        delete partial.devices;
        config = { ...config, ...partial };
        break;
      }
    }
  }
  config.devices = [...fromFileDevices, ...devices];
  return { kind: 'run', config: checkConfig(config) };
}
