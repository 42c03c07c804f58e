/**
 * The command line and --config JSON: the JSON after an optional \x01 through
 * parseJsonText (JSON.parse, and the scanner that locates syntax errors) and
 * applyConfigJson (the zod schema, then each setting); parseArgs() on the
 * input as argv (one argument per line, before the \x01), where every
 * `--config FILE` names a file holding that JSON; then every device's
 * properties through parseProperties() with the built-in plugins' schemas
 * (blamed on the JSON path for config devices), as the VMM does before
 * creating devices, and `--device TYPE,help` formatted. Expected: ConfigError
 * and PropertyError, whose messages say what is wrong; anything else is a crash.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { DevicePlugin, DeviceType, parseProperties, PropertyError } from '@tsvmm/pci';
import { plugin as blk } from '../../../plugins/virtio-blk/src/index';
import { plugin as net } from '../../../plugins/virtio-net/src/index';
import { plugin as scsi } from '../../../plugins/virtio-scsi/src/index';
import { plugin as vhostScsi } from '../../../plugins/vhost-scsi/src/index';
import { formatDeviceProperties, parseArgs } from '../src/cli';
import { applyConfigJson, ConfigError, defaultConfig, devicePropertyError, deviceWhere, parseJsonText } from '../src/config';

export const maxLen = 4096;
export const dictionary = [
  '--kernel',
  '--initrd',
  '--cmdline',
  '--memory',
  '--cpus',
  '--device',
  '--object',
  'iothread,id=',
  ',iothread=',
  'qom-type',
  '--serial',
  '--config',
  '--qmp',
  '--monitor',
  '--incoming',
  ',timeout=',
  '--restore',
  '--sandbox',
  'on',
  'off',
  '--log-level',
  '--log-file',
  '--log-format',
  'json',
  'text',
  'debug',
  'silent',
  '--metrics',
  ',interval=',
  '--run-with',
  'user=',
  'chroot=',
  ',mode=',
  '0660',
  '65534:65534',
  'nobody',
  '-S',
  '--trace-boot',
  '--paused',
  '=yes',
  '=no',
  '--help',
  '--version',
  'help',
  ',help',
  'config-schema',
  'virtio-blk-pci',
  'virtio-net-pci',
  'run',
  'plugins',
  '--json',
  'unix:',
  'file:',
  'stdio',
  'none',
  'virtio-blk',
  'virtio-net',
  'virtio-scsi',
  'scsi-hd',
  'vhost-scsi',
  '"trace-boot"',
  '"paused"',
  '"qmp"',
  '"incoming"',
  '"type"',
  'true',
  '//',
  '/*',
  '\\u',
  ',id=',
  ',file=',
  ',,',
  '=on',
  '=off',
  'num-queues=',
  'G',
  'M',
  '0x',
  '"devices"',
  '"memory"',
  '{',
  '}',
  '[',
  ']',
  ':',
  '"',
];

const types = new Map<string, { type: DeviceType; plugin: DevicePlugin }>();
for (const p of [blk, net, scsi, vhostScsi]) for (const t of p.deviceTypes) types.set(t.type, { type: t, plugin: p });

const configFile = path.join(
  process.env.FUZZ_TMPDIR ?? os.tmpdir(),
  `tsvmm-fuzz-cli-${process.pid}-${Math.random().toString(36).slice(2)}.json`,
);

export function fuzz(data: Buffer): void {
  const text = data.toString('latin1');
  const sep = text.indexOf('\x01');
  const argText = sep < 0 ? text : text.slice(0, sep);
  const json = sep < 0 ? '' : text.slice(sep + 1);
  const argv = argText.split('\n');
  for (let i = 0; i < argv.length - 1; i++) if (argv[i] === '--config') argv[i + 1] = configFile;
  for (let i = 0; i < argv.length; i++) if (argv[i].startsWith('--config=')) argv[i] = `--config=${configFile}`;
  fs.writeFileSync(configFile, json);
  try {
    try {
      applyConfigJson(defaultConfig(), parseJsonText(json, '--config fuzz.json'), '--config fuzz.json', 'fuzz.json');
    } catch (e) {
      if (!(e instanceof ConfigError)) throw e;
    }
    const cmd = parseArgs(argv);
    if (cmd.kind === 'device-help' && cmd.type !== undefined) {
      const t = types.get(cmd.type);
      if (t) formatDeviceProperties(t.type, t.plugin);
    }
    if (cmd.kind !== 'run') return;
    for (const d of cmd.config.devices) {
      const t = types.get(d.type);
      if (!t) continue;
      try {
        parseProperties(deviceWhere(d), t.type.properties, d.props);
      } catch (e) {
        throw e instanceof PropertyError ? devicePropertyError(d, e) : e;
      }
    }
  } finally {
    fs.rmSync(configFile, { force: true });
  }
}

export function isExpected(e: unknown): boolean {
  return e instanceof ConfigError || e instanceof PropertyError;
}
