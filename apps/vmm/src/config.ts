/**
 * The VM configuration: one shape whether it comes from flags or --config FILE.json.
 *
 * SETTINGS is the one table of `vmm run`'s settings: each entry is a flag, its
 * --help text, its key and schema in the JSON config (and so in `vmm
 * config-schema`), and how a value is applied. Adding a flag is adding an
 * entry there (and a field to VmConfig); see docs/cli.md.
 */
import * as fs from 'fs';
import * as path from 'path';
import type { z as Zod } from 'zod';
import { DeviceType, isPrototypeKey, parseSize, PropertyError, PropertySpec, showValue } from '@tsvmm/pci';
import { DEFAULT_POLL_MAX_NS, POLL_FACTOR_LIMIT, POLL_MAX_NS_LIMIT, type PollSettings } from '@tsvmm/virtio-core';
import { ConfigError } from './config-error';
import { parseLogFlag, type LogOptions } from './logger';
import { parseMetricsFlag, type MetricsOptions } from './metrics';

/** sun_path holds 108 bytes including the terminating NUL. */
export const UNIX_PATH_MAX = 107;

/** A unix socket path a flag names: checked for sun_path's length here, for its directory when opened. */
function socketPath(flag: string, p: string): string {
  const len = Buffer.byteLength(p);
  if (len > UNIX_PATH_MAX)
    throw new ConfigError(
      `${flag}: socket path '${p}' is ${len} bytes; a unix socket path holds at most ${UNIX_PATH_MAX} (use a shorter path)`,
    );
  return p;
}

/** A one-line reason for a failed open/read of a file a flag names. */
export function describeFileError(e: unknown, file: string): string {
  const code = (e as { code?: string }).code;
  switch (code) {
    case 'ENOENT': {
      const dir = path.dirname(file);
      let dirExists = true;
      try {
        dirExists = fs.statSync(dir).isDirectory();
      } catch {
        dirExists = false;
      }
      return dirExists ? 'no such file' : `directory ${dir} does not exist`;
    }
    case 'ENOTDIR':
      return `a component of ${path.dirname(file)} is not a directory`;
    case 'EACCES':
    case 'EPERM':
      return 'permission denied';
    case 'EISDIR':
      return 'is a directory';
    case 'EROFS':
      return 'read-only file system';
    default:
      return (e as Error).message;
  }
}

/** Where a device was configured, when in a --config file: the file and the JSON path of its entry. */
export interface DeviceOrigin {
  file: string;
  /** e.g. `devices[0]`. */
  path: string;
}

export interface DeviceConfig {
  type: string;
  id: string;
  /** Raw property values, validated later against the device type's schema. */
  props: Record<string, unknown>;
  /** Set for a device from a --config file, so errors blame the file and JSON path, not --device. */
  origin?: DeviceOrigin;
}

export type SerialConfig = { kind: 'stdio' } | { kind: 'file'; path: string } | { kind: 'none' };

export interface VmConfig {
  kernel: string;
  initrd?: string;
  cmdline: string;
  memoryBytes: number;
  cpus: number;
  devices: DeviceConfig[];
  serial: SerialConfig;
  /** Print boot timing (VMM start to first serial byte) on exit. */
  traceBoot: boolean;
  /** QMP unix socket paths (--qmp unix:PATH, repeatable). */
  qmp: string[];
  /** Socket modes given with `--qmp unix:PATH,mode=0660`, by path (0600 when absent). */
  qmpMode?: Record<string, number>;
  /** --run-with user=USER|UID:GID[,chroot=DIR]: the privileges the VMM drops to once everything is open. */
  runWith?: RunWith;
  /** --log-level, --log-file, --log-format (logger.ts); undefined: info, text, stderr. */
  log?: LogOptions;
  /** --metrics file:PATH[,interval=SECONDS] (metrics.ts). */
  metrics?: MetricsOptions;
  /** --monitor stdio: the HMP monitor on stdin/stdout. */
  monitorStdio: boolean;
  /** -S / --paused: do not start the vCPUs until `cont`. */
  startPaused: boolean;
  /** --incoming unix:PATH: wait for a live migration instead of booting. */
  incoming?: string;
  /** --incoming ...,timeout=SECONDS: how long the destination waits for the next byte of a started stream (0: for ever; default DEFAULT_INCOMING_TIMEOUT_S). */
  incomingTimeoutS?: number;
  /** --restore FILE: continue from an x-snapshot-save file instead of booting. */
  restore?: string;
  /** --sandbox on: no_new_privs and the seccomp filter once everything is open (docs/security.md). */
  sandbox: boolean;
  /** --stall-ms N: the stall detector's threshold for devices without stall-ms= (0: off, the default). */
  stallMs?: number;
  /** --object iothread,id=ID (repeatable): the iothreads devices may name with iothread=ID, in order. */
  iothreads?: string[];
  /** Each declared iothread's poll-max-ns / poll-grow / poll-shrink (defaults filled in), by id. */
  iothreadPoll?: Record<string, PollSettings>;
}

/** The object types `--object` creates (QEMU's -object; only iothreads so far). */
export const OBJECT_TYPES = ['iothread'] as const;

/**
 * `--object iothread,id=ID` (QEMU's -object syntax, ",," a literal comma), or
 * in the config file the same string or `{"qom-type": "iothread", "id": ID}`
 * (QEMU's JSON form; `type` accepted too), with the polling properties
 * poll-max-ns, poll-grow, poll-shrink (docs/cli.md#iothreads). Returns the
 * iothread's id and poll settings.
 */
export function parseObjectSpec(where: string, v: unknown): { id: string; poll: PollSettings } {
  let type: unknown;
  let props: Record<string, unknown>;
  if (typeof v === 'string') {
    const parts = splitDeviceSpec(v);
    type = parts.shift();
    props = {};
    for (const p of parts) {
      const eq = p.indexOf('=');
      if (eq <= 0) throw new ConfigError(`${where} '${v}': '${p}' is not key=value`);
      const k = p.slice(0, eq);
      if (isPrototypeKey(k)) throw new ConfigError(`${where} '${v}': '${k}' is not a property name (a reserved name)`);
      if (Object.hasOwn(props, k)) throw new ConfigError(`${where} '${v}': property '${k}' given twice`);
      props[k] = p.slice(eq + 1);
    }
  } else if (v && typeof v === 'object' && !Array.isArray(v)) {
    const o = v as Record<string, unknown>;
    if (Object.hasOwn(o, 'qom-type') && Object.hasOwn(o, 'type')) throw new ConfigError(`${where}: give 'qom-type' or 'type', not both`);
    const { 'qom-type': qom, type: t, ...rest } = o;
    type = qom ?? t;
    props = rest;
  } else throw new ConfigError(`${where}: must be "iothread,id=ID" or {"qom-type": "iothread", "id": "ID"}`);
  if (typeof type !== 'string' || !type || type.includes('='))
    throw new ConfigError(`${where}: must start with an object type (${OBJECT_TYPES.join(', ')})`);
  if (!(OBJECT_TYPES as readonly string[]).includes(type))
    throw new ConfigError(`${where}: unknown object type '${type}' (known: ${OBJECT_TYPES.join(', ')})`);
  for (const k of Object.keys(props))
    if (!IOTHREAD_PROPS.includes(k))
      throw new ConfigError(`${where}: ${type}: unknown property '${k}' (known: ${IOTHREAD_PROPS.join(', ')})`);
  const id = props.id;
  if (id === undefined) throw new ConfigError(`${where}: ${type}: id=ID is required`);
  if (typeof id !== 'string' || !/^[A-Za-z][A-Za-z0-9_.-]{0,63}$/.test(id))
    throw new ConfigError(
      `${where}: ${type}: id '${String(id)}' must start with a letter and use only letters, digits, _ . - (at most 64)`,
    );
  const int = (k: string, dflt: number, max: number): number => {
    const raw = props[k];
    if (raw === undefined) return dflt;
    const n = typeof raw === 'number' ? raw : typeof raw === 'string' && /^[0-9]{1,16}$/.test(raw) ? Number(raw) : NaN;
    if (!Number.isSafeInteger(n) || n < 0 || n > max)
      throw new ConfigError(`${where}: ${type}: ${k}: '${String(raw)}' must be an integer from 0 to ${max}`);
    return n;
  };
  const poll = {
    maxNs: int('poll-max-ns', DEFAULT_POLL_MAX_NS, POLL_MAX_NS_LIMIT),
    grow: int('poll-grow', 0, POLL_FACTOR_LIMIT),
    shrink: int('poll-shrink', 0, POLL_FACTOR_LIMIT),
  };
  return { id, poll };
}

/** The properties of `--object iothread`. */
const IOTHREAD_PROPS = ['id', 'poll-max-ns', 'poll-grow', 'poll-shrink'];

function addObject(c: VmConfig, where: string, v: unknown): void {
  const { id, poll } = parseObjectSpec(where, v);
  const ids = (c.iothreads ??= []);
  if (ids.includes(id)) throw new ConfigError(`${where}: iothread id '${id}' is used twice`);
  ids.push(id);
  (c.iothreadPoll ??= {})[id] = poll;
}

/** How long an incoming migration waits for the next byte once the source connected (seconds). */
export const DEFAULT_INCOMING_TIMEOUT_S = 60;

/**
 * `unix:PATH[,timeout=SECONDS]`: the URI, and the inactivity timeout when
 * given (0 to 86400; 0 waits for ever). Only a trailing `,timeout=` is an
 * option: any other comma belongs to PATH.
 */
export function parseIncoming(flag: string, v: string): { uri: string; timeoutS?: number } {
  const m = /^(.*?)(?:,timeout=([^,]*))?$/s.exec(v)!;
  if (m[2] === undefined) return { uri: v };
  if (!/^\d{1,5}$/.test(m[2]) || Number(m[2]) > 86400)
    throw new ConfigError(`${flag}: timeout ${showValue(m[2])} must be a whole number of seconds from 0 (wait for ever) to 86400`);
  return { uri: m[1], timeoutS: Number(m[2]) };
}

/** --stall-ms N: 0 (off) to 3600000 ms, as the stall-ms= device property. */
export function parseStallMs(flag: string, v: unknown): number {
  const n = typeof v === 'number' ? v : typeof v === 'string' && /^\d{1,7}$/.test(v) ? Number(v) : NaN;
  if (!Number.isInteger(n) || n < 0 || n > 3600000)
    throw new ConfigError(`${flag}: '${String(v)}' must be a whole number of milliseconds from 0 (off) to 3600000`);
  return n;
}

export { ConfigError };

export const MIN_MEMORY = 16 * 2 ** 20;
export const MAX_MEMORY = 64 * 2 ** 30;
export const MAX_CPUS = 64;

/** A guest RAM size: with no unit (a plain number, or a JSON number) it is MiB, as QEMU's -m. */
export function parseMemory(flag: string, text: unknown): number {
  let v: number | undefined;
  if (typeof text === 'number') v = Number.isSafeInteger(text) && text >= 0 ? text * 2 ** 20 : undefined;
  else if (typeof text === 'string') v = /^\s*\d+\s*$/.test(text) ? Number(text) * 2 ** 20 : parseSize(text);
  if (v === undefined || !Number.isSafeInteger(v))
    throw new ConfigError(`${flag}: '${String(text)}' is not a size (use e.g. 256M or 2G; a number alone means MiB)`);
  if (v < MIN_MEMORY) throw new ConfigError(`${flag}: ${String(text)} is below the minimum of 16M`);
  if (v > MAX_MEMORY) throw new ConfigError(`${flag}: ${String(text)} is above the maximum of 64G`);
  if (v % (2 * 2 ** 20) !== 0) throw new ConfigError(`${flag}: ${String(text)} must be a multiple of 2M`);
  return v;
}

export function parseCpus(flag: string, text: unknown): number {
  const v = typeof text === 'number' ? text : typeof text === 'string' && /^\d+$/.test(text) ? Number(text) : NaN;
  if (!Number.isInteger(v) || v < 1 || v > MAX_CPUS)
    throw new ConfigError(`${flag}: '${String(text)}' must be an integer from 1 to ${MAX_CPUS}`);
  return v;
}

export function parseQmp(flag: string, text: unknown): string {
  return parseQmpSpec(flag, text).path;
}

/**
 * `unix:PATH[,mode=OCTAL]`: the socket is 0600 unless `mode` widens it
 * deliberately (read and write bits only, the owner's included).
 */
export function parseQmpSpec(flag: string, text: unknown): { path: string; mode?: number } {
  if (typeof text !== 'string' || !text.startsWith('unix:') || text.length <= 5)
    throw new ConfigError(`${flag}: '${String(text)}' must be unix:PATH[,mode=0660]`);
  let p = text.slice(5);
  let mode: number | undefined;
  const m = /^(.+),mode=([^,]*)$/.exec(p);
  if (m) {
    if (!/^0?[0-7]{3}$/.test(m[2])) throw new ConfigError(`${flag}: mode '${m[2]}' must be an octal mode such as 0660`);
    mode = parseInt(m[2], 8);
    if ((mode & 0o600) !== 0o600 || (mode & ~0o666) !== 0)
      throw new ConfigError(`${flag}: mode ${m[2]} must keep the owner's rw (0600) and add only read/write bits (at most 0666)`);
    p = m[1];
  }
  return { path: socketPath(flag, p), mode };
}

/** Adds one QMP socket (and its mode, if given) to the config. */
function addQmp(c: VmConfig, where: string, v: unknown): void {
  const q = parseQmpSpec(where, v);
  c.qmp.push(q.path);
  if (q.mode !== undefined) c.qmpMode = { ...c.qmpMode, [q.path]: q.mode };
}

export interface RunWith {
  /** As given (a user name, or UID:GID). */
  user: string;
  uid?: number;
  gid?: number;
  chroot?: string;
}

/** `user=USER|UID:GID[,chroot=DIR]` (QEMU's -run-with spelling); a user name is resolved when the VMM drops privileges. */
export function parseRunWith(flag: string, text: unknown): RunWith {
  if (typeof text !== 'string' || !text) throw new ConfigError(`${flag}: expected user=USER|UID:GID[,chroot=DIR]`);
  let user: string | undefined;
  let chroot: string | undefined;
  for (const part of text.split(',')) {
    const eq = part.indexOf('=');
    const k = eq > 0 ? part.slice(0, eq) : part;
    const v = eq > 0 ? part.slice(eq + 1) : '';
    if (k === 'user' && v && user === undefined) user = v;
    else if (k === 'chroot' && v && chroot === undefined) chroot = v;
    else throw new ConfigError(`${flag}: '${part}' is not user=USER|UID:GID or chroot=DIR (each at most once)`);
  }
  if (user === undefined) throw new ConfigError(`${flag}: user=USER|UID:GID is required`);
  if (chroot !== undefined && !chroot.startsWith('/')) throw new ConfigError(`${flag}: chroot=${chroot} must be an absolute path`);
  const ids = /^(\d+):(\d+)$/.exec(user);
  if (ids) {
    const [uid, gid] = [Number(ids[1]), Number(ids[2])];
    if (uid > 0xfffffffe || gid > 0xfffffffe) throw new ConfigError(`${flag}: user=${user}: ids must be below 4294967295`);
    if (uid === 0 || gid === 0) throw new ConfigError(`${flag}: user=${user}: uid and gid must not be 0 (that would drop nothing)`);
    return { user, uid, gid, chroot };
  }
  if (!/^[A-Za-z_][A-Za-z0-9_.-]*\$?$/.test(user)) throw new ConfigError(`${flag}: user=${user} is neither a user name nor UID:GID`);
  return { user, chroot };
}

export function parseSandbox(flag: string, text: unknown): boolean {
  if (text === 'on' || text === 'off') return text === 'on';
  throw new ConfigError(`${flag}: '${String(text)}' must be on or off`);
}

export function parseSerial(flag: string, text: unknown): SerialConfig {
  if (text === 'stdio') return { kind: 'stdio' };
  if (text === 'none') return { kind: 'none' };
  if (typeof text === 'string' && text.startsWith('file:') && text.length > 5) return { kind: 'file', path: text.slice(5) };
  throw new ConfigError(`${flag}: '${String(text)}' must be stdio, none or file:PATH`);
}

const ON = ['on', 'yes', 'true'];
const OFF = ['off', 'no', 'false'];

/** A switch's value: `--flag` alone is on; `--flag=on|off` (yes/no, true/false); a JSON boolean. */
export function parseOnOff(flag: string, v: unknown): boolean {
  if (v === undefined || v === true) return true;
  if (v === false) return false;
  if (typeof v === 'string' && ON.includes(v.toLowerCase())) return true;
  if (typeof v === 'string' && OFF.includes(v.toLowerCase())) return false;
  throw new ConfigError(`${flag}: '${String(v)}' must be on or off`);
}

/**
 * QEMU's names for the device types this VMM provides: `--device
 * virtio-blk-pci,...` works as in QEMU. Resolved when a device is parsed, so
 * errors, QMP and `vmm plugins` use the VMM's own type name.
 */
export const DEVICE_ALIASES: Readonly<Record<string, string>> = {
  'virtio-blk-pci': 'virtio-blk',
  'virtio-net-pci': 'virtio-net',
  'virtio-scsi-pci': 'virtio-scsi',
  'vhost-scsi-pci': 'vhost-scsi',
};

export function canonicalDeviceType(type: string): string {
  return Object.hasOwn(DEVICE_ALIASES, type) ? DEVICE_ALIASES[type] : type;
}

/** The aliases of one device type. */
export function aliasesOf(type: string): string[] {
  return Object.keys(DEVICE_ALIASES).filter((a) => DEVICE_ALIASES[a] === type);
}

/** Splits QEMU's "a,b=c" option syntax (",," is a literal comma). */
export function splitDeviceSpec(spec: string): string[] {
  const parts: string[] = [];
  let cur = '';
  for (let i = 0; i < spec.length; i++) {
    if (spec[i] === ',') {
      if (spec[i + 1] === ',') {
        cur += ',';
        i++;
      } else {
        parts.push(cur);
        cur = '';
      }
    } else cur += spec[i];
  }
  parts.push(cur);
  return parts;
}

/** Parses "TYPE,id=ID,key=value,..." (QEMU's -device shape; ",," is a literal comma). */
export function parseDeviceSpec(flag: string, spec: string, index: number, origin?: DeviceOrigin): DeviceConfig {
  const parts = splitDeviceSpec(spec);
  const given = parts.shift()!;
  if (!given || given.includes('=')) throw new ConfigError(`${flag} '${spec}': must start with a device TYPE`);
  const type = canonicalDeviceType(given);
  const props: Record<string, unknown> = {};
  let id: string | undefined;
  for (const p of parts) {
    const eq = p.indexOf('=');
    if (eq <= 0) throw new ConfigError(`${flag} '${spec}': '${p}' is not key=value`);
    const k = p.slice(0, eq);
    const v = p.slice(eq + 1);
    if (isPrototypeKey(k)) throw new ConfigError(`${flag} '${spec}': '${k}' is not a property name (a reserved name)`);
    if (k === 'id') id = v;
    else if (Object.hasOwn(props, k)) throw new ConfigError(`${flag} '${spec}': property '${k}' given twice`);
    else props[k] = v;
  }
  return { type, id: id ?? `${type}${index}`, props, ...(origin ? { origin } : {}) };
}

/** How errors name a device: `--device TYPE,id=ID`, or `--config FILE: devices[N]`. */
export function deviceWhere(d: DeviceConfig): string {
  return d.origin ? `--config ${d.origin.file}: ${d.origin.path}` : `--device ${d.type},id=${d.id}`;
}

/** A device property error, blamed on the JSON path (`devices[0].num-queues`) when the device came from a config file. */
export function devicePropertyError(d: DeviceConfig, e: PropertyError): ConfigError {
  if (d.origin && e.property !== undefined && e.detail !== undefined)
    return new ConfigError(`--config ${d.origin.file}: ${d.origin.path}${jsonPathKey(e.property)}: ${e.detail}`);
  return new ConfigError(e.message);
}

/**
 * Where a setting that checkConfig may refuse came from (`-S`, `--paused`,
 * `--config vm.json: paused`), so its error blames that and not a flag the
 * user never gave. Beside the config, not in it: VmConfig stays plain data.
 */
const settingWhere = new WeakMap<VmConfig, { paused?: string }>();

/** Validates the settings shared by both sources. */
export function checkConfig(c: VmConfig): VmConfig {
  if (!c.kernel) throw new ConfigError('--kernel: a kernel (bzImage or PVH ELF) is required');
  if (c.incoming && c.restore) throw new ConfigError('--incoming and --restore cannot be combined');
  if (c.incoming !== undefined && !/^unix:./.test(c.incoming)) throw new ConfigError(`--incoming: '${c.incoming}' must be unix:PATH`);
  if (c.incoming !== undefined) socketPath('--incoming', c.incoming.slice(5));
  if (c.startPaused && !c.qmp.length && !c.monitorStdio)
    throw new ConfigError(
      `${settingWhere.get(c)?.paused ?? '-S'}: the vCPUs would wait for a cont that no monitor can send; add --qmp unix:PATH or --monitor stdio`,
    );
  if (c.monitorStdio && c.serial.kind === 'stdio')
    throw new ConfigError('--monitor stdio: stdio is taken by the serial console; add --serial file:PATH or --serial none');
  const ids = new Set<string>();
  for (const d of c.devices) {
    const where = d.origin ? `--config ${d.origin.file}: ${d.origin.path}.id` : `--device ${d.type}`;
    if (!/^[A-Za-z][A-Za-z0-9_.-]*$/.test(d.id))
      throw new ConfigError(`${where}: id '${d.id}' must start with a letter and use only letters, digits, _ . -`);
    if (ids.has(d.id)) throw new ConfigError(`${d.origin ? where : '--device'}: id '${d.id}' is used twice`);
    ids.add(d.id);
  }
  // iothread=ID must name a declared --object iothread. Without any declared, a name alone still makes
  // an iothread of that name (the shorthand of earlier versions; docs/cli.md#iothreads).
  const iothreads = c.iothreads ?? [];
  if (iothreads.length)
    for (const d of c.devices) {
      const t = d.props.iothread;
      if (t === undefined || (typeof t === 'string' && iothreads.includes(t))) continue;
      const at = d.origin ? `--config ${d.origin.file}: ${d.origin.path}.iothread` : `${deviceWhere(d)}: iothread`;
      throw new ConfigError(`${at}: '${String(t)}' names no --object iothread (declared: ${iothreads.join(', ')})`);
    }
  // iothread-vq-mapping=IO0;IO1 or IO0:Q+Q;IO1:Q names iothreads the same way (the plugin checks the queues).
  if (iothreads.length)
    for (const d of c.devices) {
      const m = d.props['iothread-vq-mapping'];
      if (typeof m !== 'string') continue;
      const unknown = m
        .split(';')
        .map((e) => e.split(':')[0])
        .find((t) => !iothreads.includes(t));
      if (unknown === undefined) continue;
      const at = d.origin ? `--config ${d.origin.file}: ${d.origin.path}.iothread-vq-mapping` : `${deviceWhere(d)}: iothread-vq-mapping`;
      throw new ConfigError(`${at}: '${unknown}' names no --object iothread (declared: ${iothreads.join(', ')})`);
    }
  return c;
}

export function defaultConfig(): VmConfig {
  return {
    kernel: '',
    cmdline: '',
    memoryBytes: 256 * 2 ** 20,
    cpus: 1,
    devices: [],
    serial: { kind: 'stdio' },
    traceBoot: false,
    qmp: [],
    monitorStdio: false,
    startPaused: false,
    sandbox: false,
  };
}

// ---------------------------------------------------------------------------
// The settings table.

type ZodNs = typeof import('zod').z;

/**
 * zod, loaded when first needed (a --config file, `vmm config-schema`): it
 * would add a tenth of a second to every VMM start on a loaded host.
 */
function zod(): ZodNs {
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- loaded lazily on purpose (see above)
  return (require('zod') as typeof import('zod')).z;
}

export const onOffJson = (z: ZodNs) =>
  z
    .union([z.boolean(), z.enum([...ON, ...OFF])], { error: 'must be true or false (or "on"/"off")' })
    .meta({ description: 'true/false, or "on"/"off", "yes"/"no"' });

const propertyValue = (z: ZodNs) =>
  z.union([z.string(), z.number(), z.boolean()], { error: 'a device property must be a string, a number or a boolean' });

const deviceJson = (z: ZodNs) =>
  z.union(
    [
      z.string().meta({ description: 'TYPE,id=ID,key=value,... as with --device' }),
      z
        .object({ type: z.string({ error: 'must be a string (a device type)' }), id: z.string({ error: 'must be a string' }).optional() })
        .catchall(propertyValue(z)),
    ],
    { error: 'must be an object with a "type" or a "TYPE,key=value" string' },
  );

/** What `apply` is told besides the value. */
export interface ApplyContext {
  /** Where the value comes from, for errors: `--memory`, or `--config vm.json: memory`. */
  where: string;
  /** Set when the value comes from a --config file. */
  file?: string;
}

/** One setting of `vmm run`: a flag, and (mostly) a key of the JSON config. */
export interface Setting {
  /** The long flag, `--NAME`; also the JSON key unless `jsonKey` says otherwise. */
  name: string;
  /** A one-letter alias (`-S`). */
  short?: string;
  /** 'bool': a switch (`--NAME`, `--NAME=on|off`); 'value': takes one value (`--NAME V` or `--NAME=V`). */
  kind: 'value' | 'bool';
  /** The value's placeholder in --help (value settings). */
  arg?: string;
  /** The --help text; lines after the first are indented under it. */
  help: string;
  /** The key in the JSON config; `null`: the config cannot hold it (e.g. --config itself). */
  jsonKey?: string | null;
  /** The JSON value's schema, checked before `apply`/`applyJson` and published by `vmm config-schema`. */
  json?: (z: ZodNs) => Zod.ZodType;
  /** Applies one flag value (a string; undefined for a bare switch) or a JSON value already checked by `json`. */
  apply(c: VmConfig, value: unknown, ctx: ApplyContext): void;
  /** Applies the JSON value when that differs from a flag's (lists). */
  applyJson?(c: VmConfig, value: unknown, ctx: ApplyContext): void;
}

export const SETTINGS: readonly Setting[] = [
  {
    name: 'kernel',
    kind: 'value',
    arg: 'PATH',
    help: 'Linux bzImage (64-bit boot protocol) or PVH ELF kernel (required)',
    json: (z) => z.string({ error: 'must be a string (a file name)' }),
    apply: (c, v) => void (c.kernel = v as string),
  },
  {
    name: 'initrd',
    kind: 'value',
    arg: 'PATH',
    help: 'initial ramdisk (bzImage) or first PVH module',
    json: (z) => z.string({ error: 'must be a string (a file name)' }),
    apply: (c, v) => void (c.initrd = v as string),
  },
  {
    name: 'cmdline',
    kind: 'value',
    arg: 'STR',
    help: "kernel command line (`--cmdline --help` passes '--help' to the guest)",
    json: (z) => z.string({ error: 'must be a string' }),
    apply: (c, v) => void (c.cmdline = v as string),
  },
  {
    name: 'memory',
    short: 'm',
    kind: 'value',
    arg: 'SIZE',
    help: 'guest RAM, e.g. 256M or 2G; a number alone means MiB, as QEMU -m (default 256M)',
    json: (z) =>
      z
        .union([z.string(), z.number()], { error: 'must be a size such as "512M" or "2G", or a number of MiB' })
        .meta({ description: 'guest RAM: "512M", "2G", or a number of MiB' }),
    apply: (c, v, { where }) => void (c.memoryBytes = parseMemory(where, v)),
  },
  {
    name: 'cpus',
    kind: 'value',
    arg: 'N',
    help: `number of vCPUs, 1 to ${MAX_CPUS} (default 1)`,
    json: (z) => z.union([z.number().int(), z.string()], { error: `must be an integer from 1 to ${MAX_CPUS}` }),
    apply: (c, v, { where }) => void (c.cpus = parseCpus(where, v)),
  },
  {
    name: 'device',
    kind: 'value',
    arg: 'SPEC',
    jsonKey: 'devices',
    help: 'TYPE,id=ID,key=value,... (repeatable); QEMU names such as virtio-blk-pci work too;\n`--device help` lists the types, `--device TYPE,help` their properties',
    json: (z) => z.array(deviceJson(z), { error: 'must be an array of devices' }),
    apply: (c, v, { where }) => void c.devices.push(parseDeviceSpec(where, v as string, c.devices.length)),
    applyJson: (c, v, { file }) => {
      (v as unknown[]).forEach((d, i) => c.devices.push(deviceFromJson(file!, d, i, c.devices.length)));
    },
  },
  {
    name: 'object',
    kind: 'value',
    arg: 'iothread,id=ID[,poll-max-ns=N]',
    jsonKey: 'objects',
    help: 'an iothread: a worker thread that devices naming it with iothread=ID\nshare (repeatable); poll-max-ns=N (default 0: off; 32768 in QEMU),\npoll-grow=G, poll-shrink=S: adaptive polling; see docs/cli.md#iothreads',
    json: (z) =>
      z.array(z.union([z.string(), z.record(z.string(), z.unknown())]), {
        error: 'must be an array of objects ("iothread,id=ID" or {"qom-type": "iothread", "id": "ID"})',
      }),
    apply: (c, v, { where }) => addObject(c, where, v),
    applyJson: (c, v, { where }) => (v as unknown[]).forEach((o, i) => addObject(c, `${where}[${i}]`, o)),
  },
  {
    name: 'serial',
    kind: 'value',
    arg: 'MODE',
    help: 'stdio | file:PATH | none (default stdio); COM1 at 0x3f8, IRQ 4',
    json: (z) => z.string({ error: 'must be "stdio", "none" or "file:PATH"' }),
    apply: (c, v, { where }) => void (c.serial = parseSerial(where, v)),
  },
  {
    name: 'config',
    kind: 'value',
    arg: 'FILE.json',
    jsonKey: null,
    help: 'settings as JSON, by the same names as the flags ("devices" for --device);\nsee docs/cli.md and `vmm config-schema`; flags after --config override it',
    apply: (c, v, { where }) => applyConfigFile(c, v as string, where),
  },
  {
    name: 'qmp',
    kind: 'value',
    arg: 'unix:PATH[,mode=0660]',
    help: 'serve QMP on a unix socket (repeatable; created 0600 unless\nmode= widens it); see docs/qmp.md and docs/security.md',
    json: (z) =>
      z.union([z.string(), z.array(z.string({ error: 'must be "unix:PATH"' }))], { error: 'must be "unix:PATH" or an array of them' }),
    apply: (c, v, { where }) => addQmp(c, where, v),
    applyJson: (c, v, { where }) => {
      if (typeof v === 'string') addQmp(c, where, v);
      else (v as string[]).forEach((q, i) => addQmp(c, `${where}[${i}]`, q));
    },
  },
  {
    name: 'monitor',
    kind: 'value',
    arg: 'stdio',
    help: 'the human monitor (HMP) on stdin/stdout (needs --serial file:PATH or none)',
    json: (z) => z.enum(['stdio', 'none'], { error: 'must be "stdio" or "none"' }),
    apply: (c, v, { where }) => {
      if (v !== 'stdio' && v !== 'none') throw new ConfigError(`${where}: '${String(v)}' must be stdio or none`);
      c.monitorStdio = v === 'stdio';
    },
  },
  {
    name: 'paused',
    short: 'S',
    kind: 'bool',
    help: "create the VM but start the vCPUs only on QMP/HMP 'cont'\n(needs --qmp or --monitor stdio)",
    json: onOffJson,
    apply: (c, v, { where }) => {
      c.startPaused = parseOnOff(where, v);
      settingWhere.set(c, { ...settingWhere.get(c), paused: where });
    },
  },
  {
    name: 'incoming',
    kind: 'value',
    arg: 'unix:PATH[,timeout=SECONDS]',
    help:
      "wait on PATH for a live migration (QMP 'migrate' on the\nsource), then run the migrated guest; same devices needed;\n" +
      `timeout=SECONDS: give up when the source sends nothing for\nthat long (default ${DEFAULT_INCOMING_TIMEOUT_S}; 0: wait for ever)`,
    json: (z) => z.string({ error: 'must be "unix:PATH[,timeout=SECONDS]"' }),
    apply: (c, v, { where }) => {
      const { uri, timeoutS } = parseIncoming(where, v as string);
      c.incoming = uri;
      if (timeoutS !== undefined) c.incomingTimeoutS = timeoutS;
    },
  },
  {
    name: 'restore',
    kind: 'value',
    arg: 'FILE',
    help: 'continue the guest from an x-snapshot-save file (same\n--kernel, --memory, --cpus and devices as when it was saved)',
    json: (z) => z.string({ error: 'must be a string (a file name)' }),
    apply: (c, v) => void (c.restore = v as string),
  },
  {
    name: 'run-with',
    kind: 'value',
    arg: 'user=USER|UID:GID[,chroot=DIR]',
    help: 'once /dev/kvm, images, TAPs and sockets are open: chroot to\nDIR, become USER and drop every capability (docs/security.md)',
    json: (z) => z.string({ error: 'must be "user=USER|UID:GID[,chroot=DIR]"' }),
    apply: (c, v, { where }) => void (c.runWith = parseRunWith(where, v)),
  },
  {
    name: 'stall-ms',
    kind: 'value',
    arg: 'N',
    help: "the virtqueue stall detector's threshold for devices without\nstall-ms= (default 0: off); see docs/qmp.md",
    json: (z) => z.union([z.number().int(), z.string()], { error: 'must be a whole number of milliseconds' }),
    apply: (c, v, { where }) => void (c.stallMs = parseStallMs(where, v)),
  },
  {
    // A value, not a switch: QEMU's `-sandbox on` spelling, so `--sandbox on` works as QEMU users type it.
    name: 'sandbox',
    kind: 'value',
    arg: 'on|off',
    help: 'on: once devices, sockets and files are open, set no_new_privs\nand confine every thread with a seccomp filter; a call outside\nits allow-list stops the VMM (exit 159); see docs/security.md',
    json: (z) => z.union([z.boolean(), z.enum(['on', 'off'])], { error: 'must be "on", "off" or a boolean' }),
    apply: (c, v, { where }) => void (c.sandbox = typeof v === 'boolean' ? v : parseSandbox(where, v)),
  },
  {
    name: 'trace-boot',
    kind: 'bool',
    help: 'report the time from start to the first serial byte',
    json: onOffJson,
    apply: (c, v, { where }) => void (c.traceBoot = parseOnOff(where, v)),
  },
  {
    name: 'log-level',
    kind: 'value',
    arg: 'LEVEL',
    help: 'trace | debug | info | warn | error | fatal | silent (default info)',
    json: (z) => z.string({ error: 'must be a level name' }),
    apply: (c, v, { where }) => void (c.log = parseLogFlag('--log-level', v as string, c.log, where)),
  },
  {
    name: 'log-file',
    kind: 'value',
    arg: 'PATH',
    help: 'append the log to PATH instead of stderr',
    json: (z) => z.string({ error: 'must be a path' }),
    apply: (c, v, { where }) => void (c.log = parseLogFlag('--log-file', v as string, c.log, where)),
  },
  {
    name: 'log-format',
    kind: 'value',
    arg: 'FORMAT',
    help: 'text (default: time, level, message) | json (JSON lines\nwith level, time, msg, and device and queue for device lines)',
    json: (z) => z.enum(['text', 'json'], { error: 'must be "text" or "json"' }),
    apply: (c, v, { where }) => void (c.log = parseLogFlag('--log-format', v as string, c.log, where)),
  },
  {
    name: 'metrics',
    kind: 'value',
    arg: 'file:PATH[,interval=SECONDS]',
    help: 'write Prometheus text-format metrics to PATH every SECONDS\n(default 5) and at exit: per-queue chains, kicks, interrupts;\ndevices needing reset; vCPU exits by reason',
    json: (z) => z.string({ error: 'must be "file:PATH[,interval=SECONDS]"' }),
    apply: (c, v, { where }) => void (c.metrics = parseMetricsFlag(where, v as string)),
  },
];

/** The JSON config's key of a setting, or undefined when the config cannot hold it. */
export function jsonKeyOf(s: Setting): string | undefined {
  return s.jsonKey === null ? undefined : (s.jsonKey ?? s.name);
}

/** `.key`, or `["odd key"]` when the key is not a plain name. */
function jsonPathKey(k: string | number): string {
  if (typeof k === 'number') return `[${k}]`;
  return /^[A-Za-z_][A-Za-z0-9_-]*$/.test(k) ? `.${k}` : `[${JSON.stringify(k)}]`;
}

/** `devices[0].num-queues` from ['devices', 0, 'num-queues']. */
export function formatJsonPath(p: readonly PropertyKey[]): string {
  return p
    .map((k) => jsonPathKey(typeof k === 'symbol' ? String(k) : k))
    .join('')
    .replace(/^\./, '');
}

function deviceFromJson(file: string, d: unknown, i: number, index: number): DeviceConfig {
  const origin = { file, path: `devices[${i}]` };
  if (typeof d === 'string') return parseDeviceSpec(`--config ${file}: devices[${i}]`, d, index, origin);
  const { type, id, ...props } = d as Record<string, unknown>;
  const canonical = canonicalDeviceType(type as string);
  return { type: canonical, id: (id as string | undefined) ?? `${canonical}${index}`, props, origin };
}

/** The zod schema of the JSON config, from SETTINGS; `devices` as given (for editors, see configJsonSchema). */
export function configSchema(devices?: Zod.ZodType): Zod.ZodObject {
  const z = zod();
  const shape: Record<string, Zod.ZodType> = {
    $schema: z
      .string({ error: 'must be a string' })
      .optional()
      .meta({ description: 'the JSON Schema this file follows (for editors; the VMM ignores it)' }),
  };
  for (const s of SETTINGS) {
    const key = jsonKeyOf(s);
    if (key === undefined || !s.json) continue;
    const schema = key === 'devices' && devices ? devices : s.json(z);
    shape[key] = schema.optional().meta({ description: s.help.replace(/\n/g, ' ') });
  }
  return z.strictObject(shape);
}

/**
 * The first reserved name (`__proto__`, `toString`, ...) used as a key at the
 * top level or in a device object: refused before any other check, so no
 * lookup or copy can reach Object.prototype.
 */
function reservedKey(o: Record<string, unknown>): string | undefined {
  const top = Object.keys(o).find(isPrototypeKey);
  if (top !== undefined) return `unknown setting '${top}' (a reserved name)`;
  if (Array.isArray(o.devices))
    for (const [i, d] of o.devices.entries()) {
      if (typeof d !== 'object' || d === null || Array.isArray(d)) continue;
      const k = Object.keys(d).find(isPrototypeKey);
      if (k !== undefined) return `devices[${i}]: '${k}' is not a property name (a reserved name)`;
    }
  return undefined;
}

/**
 * For a union (a device is a string or an object): the issue of the branch
 * that got furthest (`devices[0].id: must be a string` rather than "must be a
 * string or an object"), its path made absolute.
 */
function deepestIssue(issue: Zod.core.$ZodIssue): Zod.core.$ZodIssue {
  if (issue.code !== 'invalid_union' || !issue.errors.length) return issue;
  const firsts = issue.errors.map((b) => b[0]).filter((i) => i !== undefined);
  const best = firsts.reduce((a, b) => (b.path.length > a.path.length ? b : a), firsts[0]);
  if (!best || best.path.length === 0) return issue;
  return deepestIssue({ ...best, path: [...issue.path, ...best.path] } as Zod.core.$ZodIssue);
}

/**
 * Applies a parsed JSON config to `c`: checks it against the schema (errors
 * name `where`, the file, and the JSON path), then applies each setting in
 * SETTINGS order.
 */
export function applyConfigJson(c: VmConfig, json: unknown, where: string, file: string): void {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new ConfigError(`${where}: the file must hold a JSON object`);
  const o = json as Record<string, unknown>;
  const reserved = reservedKey(o);
  if (reserved) throw new ConfigError(`${where}: ${reserved}`);
  const r = configSchema().safeParse(o);
  if (!r.success) {
    const issue = deepestIssue(r.error.issues[0]);
    if (issue.code === 'unrecognized_keys') {
      const known = SETTINGS.map(jsonKeyOf).filter((k) => k !== undefined);
      const at = issue.path.length ? `${formatJsonPath(issue.path)}: ` : '';
      throw new ConfigError(`${where}: ${at}unknown setting '${issue.keys[0]}' (known: ${known.join(', ')})`);
    }
    throw new ConfigError(`${where}: ${formatJsonPath(issue.path)}: ${issue.message}`);
  }
  for (const s of SETTINGS) {
    const key = jsonKeyOf(s);
    if (key === undefined || !Object.hasOwn(o, key)) continue;
    const ctx = { where: `${where}: ${key}`, file };
    (s.applyJson ?? s.apply)(c, o[key], ctx);
  }
}

/** Line and column (from 1) of a character offset. */
function lineColumn(text: string, offset: number): { line: number; column: number } {
  const before = text.slice(0, offset);
  const line = before.split('\n').length;
  return { line, column: offset - before.lastIndexOf('\n') };
}

/** Nesting the syntax-error locator follows (its recursion is bounded; JSON.parse has no such limit). */
const MAX_JSON_DEPTH = 512;

/**
 * Where and why `text` is not JSON (RFC 8259), for a text JSON.parse refused:
 * its messages carry no reliable position. A small recursive scanner.
 */
export function locateJsonError(text: string): { offset: number; message: string } | undefined {
  let i = 0;
  class Bad extends Error {
    constructor(
      readonly offset: number,
      message: string,
    ) {
      super(message);
    }
  }
  const ws = () => {
    while (i < text.length && ' \t\n\r'.includes(text[i])) i++;
  };
  const what = () => (i >= text.length ? 'the end of the file' : text[i] === '/' ? "'/' (comments are not JSON)" : `'${text[i]}'`);
  const expect = (wanted: string) => new Bad(i, `${wanted} expected, found ${what()}`);
  const str = () => {
    const start = i++;
    for (;;) {
      if (i >= text.length) throw new Bad(start, 'unterminated string');
      const c = text.charCodeAt(i);
      if (c === 0x22) return void i++;
      if (c < 0x20) throw new Bad(i, 'a control character inside a string (write it as \\n, \\t or \\u00XX)');
      if (c === 0x5c) {
        const e = text[i + 1];
        if (e === 'u') {
          if (!/^[0-9a-fA-F]{4}$/.test(text.slice(i + 2, i + 6))) throw new Bad(i, 'malformed \\u escape (\\u and 4 hex digits)');
          i += 6;
        } else if (e !== undefined && '"\\/bfnrt'.includes(e)) i += 2;
        else throw new Bad(i, `malformed escape '\\${e ?? ''}'`);
      } else i++;
    }
  };
  const value = (depth: number): void => {
    ws();
    if (depth > MAX_JSON_DEPTH) throw new Bad(i, `nested deeper than ${MAX_JSON_DEPTH} levels`);
    const c = text[i];
    if (c === '{' || c === '[') {
      const close = c === '{' ? '}' : ']';
      i++;
      ws();
      if (text[i] === close) return void i++;
      for (;;) {
        if (c === '{') {
          ws();
          if (text[i] !== '"') throw expect(`a property name (a "string")`);
          str();
          ws();
          if (text[i] !== ':') throw expect("':'");
          i++;
        }
        value(depth + 1);
        ws();
        if (text[i] === close) return void i++;
        if (text[i] !== ',') throw expect(`',' or '${close}'`);
        i++;
        ws();
        if (text[i] === close) throw new Bad(i - 1, `a trailing ',' before '${close}' (not allowed in JSON)`);
      }
    }
    if (c === '"') return str();
    const lit = /true|false|null|-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/y;
    lit.lastIndex = i;
    const m = lit.exec(text);
    if (m && m[0] && !/[A-Za-z0-9_.]/.test(text[i + m[0].length] ?? '')) return void (i += m[0].length);
    throw expect('a value (object, array, string, number, true, false or null)');
  };
  try {
    value(0);
    ws();
    if (i < text.length) throw new Bad(i, `text after the end of the JSON value: ${what()}`);
    return undefined;
  } catch (e) {
    if (e instanceof Bad) return { offset: e.offset, message: e.message };
    throw e;
  }
}

/** JSON.parse, with a syntax error reported as `line L, column C: what`. */
export function parseJsonText(text: string, where: string): unknown {
  try {
    return JSON.parse(text);
  } catch (e) {
    if (!text.trim()) throw new ConfigError(`${where}: the file is empty (it must hold a JSON object)`);
    const bad = locateJsonError(text);
    if (!bad) throw new ConfigError(`${where}: not valid JSON (${(e as Error).message})`);
    const { line, column } = lineColumn(text, bad.offset);
    throw new ConfigError(`${where}: line ${line}, column ${column}: ${bad.message} (not valid JSON)`);
  }
}

export const MAX_CONFIG_BYTES = 4 * 2 ** 20;

/** --config FILE: reads, parses and applies the file; errors name it. */
export function applyConfigFile(c: VmConfig, file: string, flag = '--config'): void {
  const where = `${flag} ${file}`;
  let text: string;
  try {
    // A FIFO or /dev/zero would be read forever: only a regular file of sane size.
    const st = fs.statSync(file);
    if (!st.isFile()) throw new ConfigError(`${where}: not a regular file`);
    if (st.size > MAX_CONFIG_BYTES)
      throw new ConfigError(`${where}: ${st.size} bytes; a config file holds at most ${MAX_CONFIG_BYTES / 2 ** 20} MiB`);
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    if (e instanceof ConfigError) throw e;
    throw new ConfigError(`${where}: ${describeFileError(e, file)}`);
  }
  applyConfigJson(c, parseJsonText(text, where), `--config ${file}`, file);
}

// ---------------------------------------------------------------------------
// The published JSON Schema (`vmm config-schema`).

function propertyZod(z: ZodNs, spec: PropertySpec): Zod.ZodType {
  let t: Zod.ZodType;
  switch (spec.type) {
    case 'string':
      t = spec.pattern ? z.string().regex(spec.pattern) : z.string().min(1);
      break;
    case 'path':
      t = z.string().min(1);
      break;
    case 'bool':
      t = z.union([z.boolean(), z.enum(['on', 'off', 'true', 'false', 'yes', 'no', '1', '0'])]);
      break;
    case 'int':
    case 'size': {
      let n = z.number().int();
      if (spec.min !== undefined) n = n.min(spec.min);
      if (spec.max !== undefined) n = n.max(spec.max);
      t = z.union([
        n,
        z.string().regex(spec.type === 'size' ? /^(0x[0-9a-fA-F]+|\d+)\s*([kmgtKMGT]i?[bB]?|[bB])?$/ : /^(0x[0-9a-fA-F]+|-?\d+)$/),
      ]);
      break;
    }
    case 'enum':
      t = z.enum(spec.values as [string, ...string[]]);
      break;
  }
  const meta: Record<string, unknown> = { description: spec.description };
  if (spec.default !== undefined) meta.default = spec.default;
  return t.meta(meta);
}

/**
 * The JSON Schema (draft 2020-12) of the config file, for editors: every
 * setting, and each device type's properties (types, defaults, descriptions)
 * from the plugins' schemas.
 */
export function configJsonSchema(types: readonly DeviceType[]): Record<string, unknown> {
  const z = zod();
  const variants = types.map((t) => {
    const names = [t.type, ...aliasesOf(t.type)];
    const shape: Record<string, Zod.ZodType> = {
      type: (names.length > 1 ? z.enum(names as [string, ...string[]]) : z.literal(t.type)).meta({ description: t.description }),
      id: z.string().optional().meta({ description: 'the device id (default: TYPE and its index)' }),
    };
    for (const [k, spec] of Object.entries(t.properties)) {
      const p = propertyZod(z, spec);
      shape[k] = 'required' in spec && spec.required ? p : p.optional();
    }
    return z.strictObject(shape);
  });
  const device = z.union([z.string().meta({ description: 'TYPE,id=ID,key=value,... as with --device' }), ...variants]);
  const schema = z.toJSONSchema(configSchema(z.array(device)), { unrepresentable: 'any', io: 'input' });
  return { ...schema, title: 'tsvmm VM configuration (vmm run --config FILE.json)' };
}
