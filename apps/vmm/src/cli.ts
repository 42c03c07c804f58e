/**
 * Command-line parsing: `vmm run`, `vmm plugins`, `vmm config-schema`, on
 * node:util parseArgs (its tokens, so flags apply in the order given and a
 * string flag takes the next argument even when it starts with '-').
 * run's flags come from SETTINGS in config.ts.
 */
import { parseArgs as tokenize } from 'util';
import {
  checkConfig,
  ConfigError,
  defaultConfig,
  jsonKeyOf,
  Setting,
  SETTINGS,
  splitDeviceSpec,
  canonicalDeviceType,
  VmConfig,
} from './config';
import type { DevicePlugin, DeviceType, PropertySpec } from '@tsvmm/pci';
import { aliasesOf } from './config';
import { version } from '../package.json';
import { JailArgs, parseJailArgs } from './jail/args';

export const VERSION = version;

export type Command =
  | { kind: 'help'; text: string }
  | { kind: 'version' }
  | { kind: 'run'; config: VmConfig }
  | { kind: 'plugins'; json: boolean }
  | { kind: 'config-schema' }
  /** `vmm jail ...` (jail/args.ts). */
  | { kind: 'jail'; args: JailArgs }
  /** `--device help` (type undefined) or `--device TYPE,help`. */
  | { kind: 'device-help'; type?: string };

const EXIT_STATUS = `Exit status: the guest's exit-port value (port 0xf4), 0 on guest power-off or
reset, 112 on a triple fault, 113 on a KVM internal error (e.g. an instruction
the host cannot emulate), 114 on a VM entry failure, 1 on a VMM error,
2 on a usage error.
`;

function optionLines(opts: readonly { flag: string; help: string }[]): string {
  return opts
    .map(({ flag, help }) => {
      const [first, ...rest] = help.split('\n');
      const head = flag.length >= 23 ? `  ${flag}\n${' '.repeat(25)}${first}` : `  ${flag.padEnd(23)}${first}`;
      return [head, ...rest.map((l) => ' '.repeat(25) + l)].join('\n');
    })
    .join('\n');
}

function settingFlag(s: Setting): string {
  const long = `--${s.name}${s.kind === 'bool' ? '[=on|off]' : ` ${s.arg ?? 'VALUE'}`}`;
  return s.short ? `-${s.short}, ${long}` : long;
}

const RUN_HELP = `Usage: vmm run [options]

Boots a guest on /dev/kvm. A flag's value follows it (--memory 512M) or is
joined by '=' (--memory=512M); switches take =on|off (--paused=off).

Options:
${optionLines([
  ...SETTINGS.map((s) => ({ flag: settingFlag(s), help: s.help })),
  { flag: '-h, --help', help: 'show this help' },
  { flag: '--version', help: 'print the version' },
])}

With --serial stdio on a terminal, Ctrl-A x quits.

${EXIT_STATUS}`;

const PLUGINS_HELP = `Usage: vmm plugins [--json]

Lists the device plugins this VMM has (built in, or loaded at run time from
node_modules next to the bundle and VMM_PLUGIN_PATH): package, version,
plugin API, device types. --json prints the same as JSON.
`;

const CONFIG_SCHEMA_HELP = `Usage: vmm config-schema

Prints the JSON Schema of \`vmm run --config FILE.json\`, with every device
type's properties, for editors ("$schema" in the file, or the editor's
JSON schema settings). See docs/cli.md.
`;

export const USAGE = `Usage: vmm run [options]        boot a guest (vmm run --help for every option)
       vmm plugins [--json]     list the device plugins and their device types
       vmm config-schema        print the JSON Schema of the --config file
       vmm jail --id ID ...     run a VM in a jail (vmm jail --help; docs/security.md)
       vmm --version
       vmm [COMMAND] --help

${RUN_HELP.slice(RUN_HELP.indexOf('Boots'))}`;

/** Parses a command's arguments into tokens; unknown options and stray arguments are errors. */
function tokens(args: readonly string[], options: Record<string, { type: 'string' | 'boolean'; short?: string }>, command: string) {
  const all = { ...options, help: { type: 'boolean' as const, short: 'h' }, version: { type: 'boolean' as const } };
  const { tokens: toks } = tokenize({ args: [...args], options: all, strict: false, allowPositionals: true, tokens: true });
  for (const t of toks) {
    if (t.kind === 'positional') throw new ConfigError(`${command}: unexpected argument '${t.value}' (see vmm ${command} --help)`);
    if (t.kind !== 'option') continue;
    if (!Object.hasOwn(all, t.name))
      throw new ConfigError(`${command === 'run' ? '' : `${command}: `}unknown option '${t.rawName}' (see vmm ${command} --help)`);
  }
  return toks.filter((t) => t.kind === 'option');
}

function simpleCommand(
  args: readonly string[],
  command: string,
  help: string,
  extra: Record<string, { type: 'boolean' }> = {},
): Command | Record<string, boolean> {
  const toks = tokens(args, extra, command);
  const out: Record<string, boolean> = {};
  for (const t of toks) {
    if (t.name === 'help') return { kind: 'help', text: help };
    if (t.name === 'version') return { kind: 'version' };
    if (t.value !== undefined) throw new ConfigError(`${t.rawName}: takes no value`);
    out[t.name] = true;
  }
  return out;
}

/** `help`, `?`, or `TYPE,help`: a --device value that asks for help instead of a device. */
function deviceHelp(value: string): Command | undefined {
  if (value === 'help' || value === '?') return { kind: 'device-help' };
  const parts = splitDeviceSpec(value);
  if (parts.length === 2 && (parts[1] === 'help' || parts[1] === '?') && parts[0])
    return { kind: 'device-help', type: canonicalDeviceType(parts[0]) };
  return undefined;
}

function parseRun(args: readonly string[]): Command {
  const options: Record<string, { type: 'string' | 'boolean'; short?: string }> = {};
  for (const s of SETTINGS) options[s.name] = { type: s.kind === 'bool' ? 'boolean' : 'string', ...(s.short ? { short: s.short } : {}) };
  const toks = tokens(args, options, 'run');
  // --help and --version win wherever they are (but not as a flag's value: `--cmdline --help` is for the guest).
  if (toks.some((t) => t.name === 'help')) return { kind: 'help', text: RUN_HELP };
  if (toks.some((t) => t.name === 'version')) return { kind: 'version' };
  const config = defaultConfig();
  for (const t of toks) {
    const s = SETTINGS.find((x) => x.name === t.name)!;
    const flag = t.rawName.startsWith('--') ? t.rawName : `${t.rawName} (--${s.name})`;
    if (s.kind === 'bool') {
      if (t.rawName.length === 2 && t.value !== undefined) throw new ConfigError(`${t.rawName}: takes no value (use --${s.name}=on|off)`);
      s.apply(config, t.value, { where: t.rawName });
      continue;
    }
    if (t.value === undefined) throw new ConfigError(`${flag}: missing value`);
    if (s.name === 'device') {
      const help = deviceHelp(t.value);
      if (help) return help;
    }
    s.apply(config, t.value, { where: t.rawName });
  }
  return { kind: 'run', config: checkConfig(config) };
}

export function parseArgs(argv: readonly string[]): Command {
  const args = [...argv];
  if (args.length === 0) return { kind: 'help', text: USAGE };
  const [first, ...rest] = args;
  switch (first) {
    case 'run':
      return parseRun(rest);
    case 'plugins': {
      const r = simpleCommand(rest, 'plugins', PLUGINS_HELP, { json: { type: 'boolean' } });
      return 'kind' in r ? (r as Command) : { kind: 'plugins', json: !!r.json };
    }
    case 'config-schema': {
      const r = simpleCommand(rest, 'config-schema', CONFIG_SCHEMA_HELP);
      return 'kind' in r ? (r as Command) : { kind: 'config-schema' };
    }
    case 'jail':
      return parseJailArgs(rest);
    case 'help':
      return { kind: 'help', text: USAGE };
    case '--help':
    case '-h':
      return { kind: 'help', text: USAGE };
    case '--version':
      return { kind: 'version' };
  }
  if (!first.startsWith('-'))
    throw new ConfigError(`unknown command '${first}' (commands: run, plugins, config-schema, jail; see vmm --help)`);
  // `vmm --kernel ...` is `vmm run --kernel ...`.
  return parseRun(args);
}

/** The JSON config's keys, for docs and tests. */
export function configKeys(): string[] {
  return SETTINGS.map(jsonKeyOf).filter((k): k is string => k !== undefined);
}

/** A property's value type in `--device TYPE,help`: `int 1..16`, `bool`, `enum writeback|none`. */
function propertyType(spec: PropertySpec): string {
  switch (spec.type) {
    case 'int':
    case 'size': {
      const range = spec.min !== undefined || spec.max !== undefined ? ` ${spec.min ?? ''}..${spec.max ?? ''}` : '';
      return spec.type + range;
    }
    case 'enum':
      return spec.values.join('|');
    case 'bool':
      return 'on|off';
    case 'string':
      return spec.patternHint ? `string (${spec.patternHint})` : 'string';
    default:
      return spec.type;
  }
}

function propertyDefault(spec: PropertySpec): string {
  if ('required' in spec && spec.required) return 'required';
  if (spec.default === undefined) return '';
  if (spec.type === 'bool') return `default ${spec.default ? 'on' : 'off'}`;
  return `default ${String(spec.default)}`;
}

/** `--device help`: every device type, its plugin and its QEMU alias. */
export function formatDeviceTypes(types: readonly { type: DeviceType; plugin: DevicePlugin }[]): string {
  if (!types.length) return 'No device plugins are loaded (see vmm plugins).\n';
  const w = Math.max(...types.map((t) => t.type.type.length)) + 2;
  const lines = types.map(({ type, plugin }) => {
    const alias = aliasesOf(type.type);
    return `  ${type.type.padEnd(w)}${type.description} [${plugin.name}${alias.length ? `; QEMU name ${alias.join(', ')}` : ''}]`;
  });
  return `Device types (--device TYPE,id=ID,key=value,...; --device TYPE,help lists a type's properties):\n${lines.join('\n')}\n`;
}

/** `--device TYPE,help`: each property with its type, default and description. */
export function formatDeviceProperties(type: DeviceType, plugin: DevicePlugin): string {
  const alias = aliasesOf(type.type);
  const head = `${type.type}: ${type.description}\n  plugin ${plugin.name} ${plugin.version}${alias.length ? `; QEMU name ${alias.join(', ')}` : ''}\n`;
  const props = Object.entries(type.properties);
  if (!props.length) return `${head}  (no properties besides id)\n`;
  const rows = [
    ['id', 'string', '', 'the device id (default: the type and its index)'],
    ...props.map(([k, s]) => [k, propertyType(s), propertyDefault(s), s.description]),
  ];
  const w0 = Math.max(...rows.map((r) => r[0].length)) + 2;
  const w1 = Math.max(...rows.map((r) => r[1].length)) + 2;
  const w2 = Math.max(...rows.map((r) => r[2].length)) + 2;
  return `${head}Properties:\n${rows.map((r) => `  ${r[0].padEnd(w0)}${r[1].padEnd(w1)}${r[2].padEnd(w2)}${r[3]}`.trimEnd()).join('\n')}\n`;
}
