/**
 * The VM configuration: one shape whether it comes from flags or --config FILE.json.
 */
import * as fs from 'fs';
import * as path from 'path';
import { isPrototypeKey, parseSize } from '@tsvmm/pci';

/** sun_path holds 108 bytes including the terminating NUL. */
export const UNIX_PATH_MAX = 107;

/** A unix socket path a flag names: checked for sun_path's length here, for its directory when opened. */
function socketPath(flag: string, p: string): string {
  const len = Buffer.byteLength(p);
  if (len > UNIX_PATH_MAX)
    throw new ConfigError(`${flag}: socket path '${p}' is ${len} bytes; a unix socket path holds at most ${UNIX_PATH_MAX} (use a shorter path)`);
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

export interface DeviceConfig {
  type: string;
  id: string;
  /** Raw property values, validated later against the device type's schema. */
  props: Record<string, unknown>;
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
  /** --monitor stdio: the HMP monitor on stdin/stdout. */
  monitorStdio: boolean;
  /** -S / --paused: do not start the vCPUs until `cont`. */
  startPaused: boolean;
  /** --incoming unix:PATH: wait for a live migration instead of booting. */
  incoming?: string;
  /** --restore FILE: continue from an x-snapshot-save file instead of booting. */
  restore?: string;
  /** --stall-ms N: the stall detector's threshold for devices without stall-ms= (0: off, the default). */
  stallMs?: number;
}

/** --stall-ms N: 0 (off) to 3600000 ms, as the stall-ms= device property. */
export function parseStallMs(flag: string, v: string): number {
  const n = /^\d{1,7}$/.test(v) ? Number(v) : NaN;
  if (!(n <= 3600000)) throw new ConfigError(`${flag}: '${v}' must be a whole number of milliseconds from 0 (off) to 3600000`);
  return n;
}

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

export const MIN_MEMORY = 16 * 2 ** 20;
export const MAX_MEMORY = 64 * 2 ** 30;
export const MAX_CPUS = 64;

export function parseMemory(flag: string, text: unknown): number {
  const v = typeof text === 'number' ? text : typeof text === 'string' ? parseSize(text) : undefined;
  if (v === undefined) throw new ConfigError(`${flag}: '${String(text)}' is not a size (use e.g. 256M or 2G)`);
  if (v < MIN_MEMORY) throw new ConfigError(`${flag}: ${String(text)} is below the minimum of 16M`);
  if (v > MAX_MEMORY) throw new ConfigError(`${flag}: ${String(text)} is above the maximum of 64G`);
  if (v % (2 * 2 ** 20) !== 0) throw new ConfigError(`${flag}: ${String(text)} must be a multiple of 2M`);
  return v;
}

export function parseCpus(flag: string, text: unknown): number {
  const v = typeof text === 'number' ? text : typeof text === 'string' && /^\d+$/.test(text) ? Number(text) : NaN;
  if (!Number.isInteger(v) || v < 1 || v > MAX_CPUS) throw new ConfigError(`${flag}: '${String(text)}' must be an integer from 1 to ${MAX_CPUS}`);
  return v;
}

export function parseQmp(flag: string, text: unknown): string {
  if (typeof text === 'string' && text.startsWith('unix:') && text.length > 5) return socketPath(flag, text.slice(5));
  throw new ConfigError(`${flag}: '${String(text)}' must be unix:PATH`);
}

export function parseSerial(flag: string, text: unknown): SerialConfig {
  if (text === 'stdio') return { kind: 'stdio' };
  if (text === 'none') return { kind: 'none' };
  if (typeof text === 'string' && text.startsWith('file:') && text.length > 5) return { kind: 'file', path: text.slice(5) };
  throw new ConfigError(`${flag}: '${String(text)}' must be stdio, none or file:PATH`);
}

/** Parses "TYPE,id=ID,key=value,..." (QEMU's -device shape; ",," is a literal comma). */
export function parseDeviceSpec(flag: string, spec: string, index: number): DeviceConfig {
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
  const type = parts.shift()!;
  if (!type || type.includes('=')) throw new ConfigError(`${flag} '${spec}': must start with a device TYPE`);
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
  return { type, id: id ?? `${type}${index}`, props };
}

/** Validates the settings shared by both sources. */
export function checkConfig(c: VmConfig): VmConfig {
  if (!c.kernel) throw new ConfigError('--kernel: a kernel (bzImage or PVH ELF) is required');
  if (c.incoming && c.restore) throw new ConfigError('--incoming and --restore cannot be combined');
  if (c.incoming !== undefined && !/^unix:./.test(c.incoming)) throw new ConfigError(`--incoming: '${c.incoming}' must be unix:PATH`);
  if (c.incoming !== undefined) socketPath('--incoming', c.incoming.slice(5));
  if (c.startPaused && !c.qmp.length && !c.monitorStdio)
    throw new ConfigError('-S: the vCPUs would wait for a cont that no monitor can send; add --qmp unix:PATH or --monitor stdio');
  if (c.monitorStdio && c.serial.kind === 'stdio') throw new ConfigError('--monitor stdio: stdio is taken by the serial console; add --serial file:PATH or --serial none');
  const ids = new Set<string>();
  for (const d of c.devices) {
    if (!/^[A-Za-z][A-Za-z0-9_.-]*$/.test(d.id)) throw new ConfigError(`--device ${d.type}: id '${d.id}' must start with a letter and use only letters, digits, _ . -`);
    if (ids.has(d.id)) throw new ConfigError(`--device: id '${d.id}' is used twice`);
    ids.add(d.id);
  }
  return c;
}

export function defaultConfig(): VmConfig {
  return { kernel: '', cmdline: '', memoryBytes: 256 * 2 ** 20, cpus: 1, devices: [], serial: { kind: 'stdio' }, traceBoot: false, qmp: [], monitorStdio: false, startPaused: false };
}

/** Reads a --config JSON file: the same settings as the flags, by the same names. */
export function configFromJson(flag: string, json: unknown): Partial<VmConfig> {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new ConfigError(`${flag}: the file must hold a JSON object`);
  const o = json as Record<string, unknown>;
  const known = ['kernel', 'initrd', 'cmdline', 'memory', 'cpus', 'devices', 'serial', 'qmp'];
  for (const k of Object.keys(o)) if (isPrototypeKey(k) || !known.includes(k)) throw new ConfigError(`${flag}: unknown setting '${k}' (known: ${known.join(', ')})`);
  const out: Partial<VmConfig> = {};
  const has = (k: string) => Object.hasOwn(o, k);
  const str = (k: string) => {
    if (typeof o[k] !== 'string') throw new ConfigError(`${flag}: '${k}' must be a string`);
    return o[k] as string;
  };
  if (has('kernel')) out.kernel = str('kernel');
  if (has('initrd')) out.initrd = str('initrd');
  if (has('cmdline')) out.cmdline = str('cmdline');
  if (has('memory')) out.memoryBytes = parseMemory(`${flag}: memory`, o.memory);
  if (has('cpus')) out.cpus = parseCpus(`${flag}: cpus`, o.cpus);
  if (has('serial')) out.serial = parseSerial(`${flag}: serial`, o.serial);
  if (has('qmp')) out.qmp = [parseQmp(`${flag}: qmp`, o.qmp)];
  if (has('devices')) {
    if (!Array.isArray(o.devices)) throw new ConfigError(`${flag}: 'devices' must be an array`);
    out.devices = o.devices.map((d, i) => {
      if (typeof d === 'string') return parseDeviceSpec(`${flag}: devices[${i}]`, d, i);
      if (typeof d !== 'object' || d === null || typeof (d as { type?: unknown }).type !== 'string')
        throw new ConfigError(`${flag}: devices[${i}] must be an object with a "type" or a "TYPE,key=value" string`);
      const { type, id, ...props } = d as Record<string, unknown>;
      const reserved = Object.keys(props).find(isPrototypeKey);
      if (reserved !== undefined) throw new ConfigError(`${flag}: devices[${i}]: '${reserved}' is not a property name (a reserved name)`);
      if (id !== undefined && typeof id !== 'string') throw new ConfigError(`${flag}: devices[${i}].id must be a string`);
      return { type: type as string, id: (id as string | undefined) ?? `${String(type)}${i}`, props };
    });
  }
  return out;
}
