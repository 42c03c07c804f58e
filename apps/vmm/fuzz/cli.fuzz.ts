/**
 * The command line and --config JSON: parseArgs() on the input as argv (one
 * argument per line, before an optional \x01), where every `--config FILE`
 * names a file holding the JSON after the \x01; then every device's
 * properties through parseProperties() with the built-in plugins' schemas,
 * as the VMM does before creating devices. Expected: ConfigError and
 * PropertyError, whose messages say what is wrong; anything else is a crash.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { DevicePlugin, parseProperties, PropertyError } from '@tsvmm/pci';
import { plugin as blk } from '../../../plugins/virtio-blk/src/index';
import { plugin as net } from '../../../plugins/virtio-net/src/index';
import { plugin as scsi } from '../../../plugins/virtio-scsi/src/index';
import { plugin as vhostScsi } from '../../../plugins/vhost-scsi/src/index';
import { parseArgs } from '../src/cli';
import { ConfigError, configFromJson } from '../src/config';

export const maxLen = 4096;
export const dictionary = [
  '--kernel', '--initrd', '--cmdline', '--memory', '--cpus', '--device', '--serial', '--config', '--qmp', '--monitor', '--incoming', '--restore',
  '-S', '--trace-boot', '--sandbox', 'run', 'plugins', '--json', 'unix:', 'file:', 'stdio', 'none', 'virtio-blk', 'virtio-net', 'virtio-scsi', 'scsi-hd', 'vhost-scsi',
  ',id=', ',file=', ',,', '=on', '=off', 'num-queues=', 'G', 'M', '0x', '"devices"', '"memory"', '{', '}', '[', ']', ':', '"',
];

const schemas = new Map<string, DevicePlugin['deviceTypes'][number]['properties']>();
for (const p of [blk, net, scsi, vhostScsi]) for (const t of p.deviceTypes) schemas.set(t.type, t.properties);

const configFile = path.join(process.env.FUZZ_TMPDIR ?? os.tmpdir(), `tsvmm-fuzz-cli-${process.pid}-${Math.random().toString(36).slice(2)}.json`);

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
      configFromJson('--config fuzz.json', JSON.parse(json));
    } catch (e) {
      if (!(e instanceof SyntaxError) && !(e instanceof ConfigError)) throw e;
    }
    const cmd = parseArgs(argv);
    if (cmd.kind !== 'run') return;
    for (const d of cmd.config.devices) {
      const schema = schemas.get(d.type);
      if (schema) parseProperties(`device '${d.id}' (${d.type})`, schema, d.props);
    }
  } finally {
    fs.rmSync(configFile, { force: true });
  }
}

export function isExpected(e: unknown): boolean {
  return e instanceof ConfigError || e instanceof PropertyError;
}
