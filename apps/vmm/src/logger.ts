/**
 * The VMM's log: pino underneath (levels, timestamps, JSON lines), written
 * synchronously to stderr or to --log-file, as text for people or JSON lines
 * for machines (--log-format json). The rest of the VMM and the plugins log
 * through a plain `(message) => void` (DeviceContext.log); `lineLogger` turns a
 * line that starts with a device id ("d0: ...") into a record with a `device`
 * field (and "queue N" in it into a `queue` field), keeping the line as `msg`.
 */
import * as fs from 'fs';
import pino from 'pino';
import { ConfigError } from './config-error';

export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];
export const LOG_FORMATS = ['text', 'json'] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];

export interface LogOptions {
  /** Lowest level written (default info). */
  level: LogLevel;
  /** Where to write; undefined: stderr. The file is appended to. */
  file?: string;
  /** text: `TIME LEVEL message`; json: one pino JSON object per line (with device and queue fields). */
  format: LogFormat;
}

export function defaultLogOptions(): LogOptions {
  return { level: 'info', format: 'text' };
}

export type VmmLogger = pino.Logger;

/** Formats pino's JSON records as one text line each (no pino-pretty: no worker thread, nothing to bundle). */
function textStream(fd: number): pino.DestinationStream {
  return {
    write(json: string): void {
      let line: string;
      try {
        const r = JSON.parse(json) as { level: string; time: string; msg?: string };
        line = `${r.time} ${r.level.toUpperCase().padEnd(5)} ${r.msg ?? ''}\n`;
      } catch {
        line = json;
      }
      fs.writeSync(fd, line);
    },
  };
}

/** --log-level LEVEL, --log-file PATH, --log-format text|json: returns the options with the flag applied. */
export function parseLogFlag(flag: string, value: string, current: LogOptions = defaultLogOptions(), where = flag): LogOptions {
  switch (flag) {
    case '--log-level':
      if (!(LOG_LEVELS as readonly string[]).includes(value))
        throw new ConfigError(`${where}: '${value}' must be one of ${LOG_LEVELS.join(', ')}`);
      return { ...current, level: value as LogLevel };
    case '--log-format':
      if (!(LOG_FORMATS as readonly string[]).includes(value)) throw new ConfigError(`${where}: '${value}' must be text or json`);
      return { ...current, format: value as LogFormat };
    case '--log-file':
      if (value === '') throw new ConfigError(`${where}: empty path`);
      return { ...current, file: value };
    default:
      throw new ConfigError(`unknown option '${flag}'`);
  }
}

/** Opens the log. Throws with the path and the reason when --log-file cannot be opened. */
export function createLogger(opts: LogOptions): VmmLogger {
  let fd = 2;
  if (opts.file !== undefined) {
    try {
      fd = fs.openSync(opts.file, 'a', 0o600); // created 0600 like every file the VMM makes (docs/security.md)
    } catch (e) {
      throw new Error(
        `--log-file ${opts.file}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such directory' : (e as Error).message}`,
      );
    }
  }
  const dest = opts.format === 'json' ? pino.destination({ fd, sync: true }) : textStream(fd);
  return pino(
    {
      level: opts.level,
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      // "level":"warn" rather than pino's 40: a JSON line reads on its own.
      formatters: { level: (label) => ({ level: label }) },
    },
    dest,
  );
}

/**
 * A `(message) => void` for code that logs lines (DeviceContext.log, the
 * monitor, the machine): at warn when the line reports an error, else info.
 * A line "ID: ..." for a known device id gets { device: ID }, and "queue N"
 * in it { queue: N }.
 */
export function lineLogger(log: VmmLogger, deviceIds: readonly string[]): (message: string) => void {
  const ids = new Set(deviceIds);
  return (message: string) => {
    // The lines predate levels: errors, failures and needs-reset are warnings.
    const level = /error|fail|needs reset|refused/i.test(message) ? 'warn' : 'info';
    const colon = message.indexOf(': ');
    const id = colon > 0 ? message.slice(0, colon) : '';
    if (!ids.has(id)) {
      log[level](message);
      return;
    }
    // msg keeps the whole line (what people and existing tools grep for); the fields are for machines.
    const q = /\bqueue (\d+)\b/.exec(message.slice(colon + 2));
    log[level](q ? { device: id, queue: Number(q[1]) } : { device: id }, message);
  };
}
