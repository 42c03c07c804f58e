/**
 * A QMP server (QEMU Machine Protocol) on a unix socket: the greeting,
 * capabilities negotiation, execute/arguments/id requests, return/error
 * replies that echo the id exactly as sent, and timestamped asynchronous
 * events to every negotiated client.
 *
 * As QEMU's monitor, a connection's commands run one at a time in arrival
 * order: a pipelined burst gets every reply, in order. Commands that change
 * the run state also wait for each other VMM-wide (the `execute` hook).
 */
import * as fs from 'fs';
import * as net from 'net';
import * as path from 'path';
import { UNIX_PATH_MAX } from '../config';
import { listenPrivate, PRIVATE_MODE, removeStaleSocket } from '../host-files';
import { ArgSpec, checkArguments, Command, CommandError, CommandRegistry, isPrototypeKey } from './commands';

export const QMP_VERSION = { qemu: { major: 8, minor: 2, micro: 0 }, package: 'tsvmm 0.1.0' };

interface Client {
  socket: net.Socket;
  negotiated: boolean;
  buffer: string;
  /** The request being handled and those queued behind it (arrival order). */
  queue: Promise<void>;
  pending: number;
}

/** Requests queued on one connection before the server stops reading it (as QEMU's monitor). */
const MAX_PENDING = 8;

/** Runs a command: the monitor's admission check and run-state serialization. */
export type Execute = (cmd: Command, args: Record<string, unknown>) => Promise<unknown>;

export class QmpServer {
  private readonly server: net.Server;
  private readonly clients = new Set<Client>();

  constructor(
    readonly path: string,
    private readonly commands: CommandRegistry,
    private readonly log: (m: string) => void,
    private readonly execute: Execute = async (cmd, args) => cmd.run(args),
    /** The socket's mode: 0600 unless `--qmp unix:PATH,mode=` widens it (docs/security.md). */
    private readonly mode = PRIVATE_MODE,
  ) {
    this.server = net.createServer((s) => this.accept(s));
  }

  listen(): Promise<void> {
    const problem = checkSocketPath(this.path);
    if (problem) return Promise.reject(new Error(`--qmp unix:${this.path}: ${problem}`));
    try {
      // A stale socket from an earlier run goes; anything else at the path stays, and the start fails.
      removeStaleSocket(this.path);
    } catch (e) {
      return Promise.reject(new Error(`--qmp unix:${this.path}: ${(e as Error).message}`));
    }
    return listenPrivate(this.server, this.path, this.mode).catch((e) => {
      throw new Error(`--qmp unix:${this.path}: ${(e as Error).message}`);
    });
  }

  close(): void {
    for (const c of this.clients) c.socket.destroy();
    this.server.close();
    try {
      fs.unlinkSync(this.path);
    } catch {
      // already gone
    }
  }

  /** Sends an asynchronous event to every client past capabilities negotiation. */
  event(name: string, data?: Record<string, unknown>): void {
    const now = Date.now();
    const msg: Record<string, unknown> = { event: name, timestamp: { seconds: Math.floor(now / 1000), microseconds: (now % 1000) * 1000 } };
    if (data) msg.data = data;
    for (const c of this.clients) if (c.negotiated) this.send(c, msg);
  }

  private accept(socket: net.Socket): void {
    const c: Client = { socket, negotiated: false, buffer: '', queue: Promise.resolve(), pending: 0 };
    this.clients.add(c);
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => this.onData(c, d));
    socket.on('close', () => this.clients.delete(c));
    socket.on('error', () => this.clients.delete(c));
    this.send(c, { QMP: { version: QMP_VERSION, capabilities: [] } });
  }

  /** `rawId`: the request's id as its JSON text, echoed verbatim (digits beyond 2^53 included). */
  private send(c: Client, msg: unknown, rawId?: string): void {
    if (c.socket.destroyed) return;
    let text = JSON.stringify(msg);
    if (rawId !== undefined) text = `${text.slice(0, -1)},"id":${rawId}}`;
    c.socket.write(text + '\r\n');
  }

  /** Queues a request behind the connection's earlier ones; stops reading while MAX_PENDING wait. */
  private enqueue(c: Client, text: string): void {
    c.pending++;
    if (c.pending >= MAX_PENDING) c.socket.pause();
    c.queue = c.queue
      .then(() => this.handle(c, text))
      .catch((e) => this.log(`qmp: request failed: ${(e as Error).stack ?? e}`))
      .finally(() => {
        c.pending--;
        if (c.pending < MAX_PENDING && c.socket.isPaused() && !c.socket.destroyed) c.socket.resume();
      });
  }

  /** Splits the stream into top-level JSON values (objects may span lines, as QEMU accepts). */
  private onData(c: Client, data: string): void {
    c.buffer += data;
    for (;;) {
      const end = jsonValueEnd(c.buffer);
      if (end === undefined) break;
      const text = c.buffer.slice(0, end);
      c.buffer = c.buffer.slice(end);
      if (text.trim()) this.enqueue(c, text);
    }
    if (c.buffer.length > 1 << 20) {
      c.buffer = '';
      c.queue = c.queue.then(() => this.send(c, { error: { class: 'GenericError', desc: 'JSON parse error, request too large' } }));
    }
  }

  private async handle(c: Client, text: string): Promise<void> {
    let req: unknown;
    try {
      req = JSON.parse(text);
    } catch (e) {
      this.send(c, { error: { class: 'GenericError', desc: `JSON parse error, ${(e as Error).message}` } });
      return;
    }
    if (typeof req !== 'object' || req === null || Array.isArray(req)) {
      this.send(c, { error: { class: 'GenericError', desc: 'QMP input must be a JSON object' } });
      return;
    }
    const r = req as Record<string, unknown>;
    const rawId = Object.hasOwn(r, 'id') ? rawMember(text, 'id') : undefined;
    const reply = (body: Record<string, unknown>) => this.send(c, body, rawId);
    const fail = (cls: string, desc: string) => reply({ error: { class: cls, desc } });
    for (const k of Object.keys(r)) {
      if (!['execute', 'arguments', 'id', 'exec-oob'].includes(k)) return fail('GenericError', `QMP input member '${k}' is unexpected`);
    }
    if (!Object.hasOwn(r, 'execute')) return fail('GenericError', "QMP input lacks member 'execute'");
    if (typeof r.execute !== 'string') return fail('GenericError', "QMP input member 'execute' must be a string");
    if (Object.hasOwn(r, 'arguments') && (typeof r.arguments !== 'object' || r.arguments === null || Array.isArray(r.arguments)))
      return fail('GenericError', "QMP input member 'arguments' must be an object");
    const name = r.execute;
    const args = (Object.hasOwn(r, 'arguments') ? r.arguments : {}) as Record<string, unknown>;
    const reserved = Object.keys(args).find(isPrototypeKey);
    if (reserved !== undefined) return fail('GenericError', `Parameter '${reserved}' is unexpected (a reserved name)`);
    if (name === 'qmp_capabilities') {
      if (c.negotiated) return fail('CommandNotFound', "Capabilities negotiation is already complete, command 'qmp_capabilities' ignored");
      try {
        checkArguments({ enable: { type: 'array', optional: true } }, args);
      } catch (e) {
        return fail('GenericError', (e as Error).message);
      }
      c.negotiated = true;
      return reply({ return: {} });
    }
    if (!c.negotiated) return fail('CommandNotFound', "Expecting capabilities negotiation with 'qmp_capabilities'");
    const cmd = this.commands.get(name);
    if (!cmd) return fail('CommandNotFound', `The command ${name} has not been found`);
    try {
      checkArguments(cmd.args, args);
      const result = await this.execute(cmd, args);
      reply({ return: result ?? {} });
    } catch (e) {
      if (e instanceof CommandError) return fail(e.errorClass, e.message);
      this.log(`qmp: ${name} failed: ${(e as Error).stack ?? e}`);
      fail('GenericError', (e as Error).message);
    }
  }
}

/** End offset of the first complete JSON value in `s` (after leading whitespace), or undefined. */
export function jsonValueEnd(s: string): number | undefined {
  let i = 0;
  while (i < s.length && /\s/.test(s[i])) i++;
  if (i >= s.length) return undefined;
  if (s[i] !== '{' && s[i] !== '[') {
    // Not an object: take the rest of the line so the caller reports a parse error.
    const nl = s.indexOf('\n', i);
    return nl < 0 ? undefined : nl + 1;
  }
  let depth = 0;
  let inString = false;
  for (; i < s.length; i++) {
    const ch = s[i];
    if (inString) {
      // A raw line break cannot be inside a JSON string: the value is malformed, report it now.
      if (ch === '\n') return i + 1;
      if (ch === '\\') i++;
      else if (ch === '"') inString = false;
      continue;
    }
    if (ch === '"') inString = true;
    else if (ch === '{' || ch === '[') depth++;
    else if (ch === '}' || ch === ']') {
      depth--;
      if (depth === 0) return i + 1;
    }
  }
  return undefined;
}

/** Why a unix socket path cannot be listened on (too long, missing directory), or undefined. */
export function checkSocketPath(p: string): string | undefined {
  const len = Buffer.byteLength(p);
  if (len > UNIX_PATH_MAX)
    return `socket path is ${len} bytes; a unix socket path holds at most ${UNIX_PATH_MAX} (use a shorter path, e.g. under /tmp or /run)`;
  const dir = path.dirname(p);
  let st: fs.Stats;
  try {
    st = fs.statSync(dir);
  } catch {
    return `directory ${dir} does not exist`;
  }
  if (!st.isDirectory()) return `${dir} is not a directory`;
  return undefined;
}

/**
 * The JSON text of member `name` of the object `text` (already known to be
 * valid JSON), compacted (whitespace outside strings removed), so it can be
 * echoed exactly: JSON.parse would round a number beyond 2^53. The last
 * occurrence wins, as in JSON.parse.
 */
export function rawMember(text: string, name: string): string | undefined {
  let i = 0;
  const ws = () => {
    while (i < text.length && (text[i] === ' ' || text[i] === '\t' || text[i] === '\n' || text[i] === '\r')) i++;
  };
  const str = (): string => {
    const start = i++;
    while (text[i] !== '"') i += text[i] === '\\' ? 2 : 1;
    i++;
    return text.slice(start, i);
  };
  const value = (): string => {
    ws();
    const ch = text[i];
    if (ch === '"') return str();
    if (ch === '{' || ch === '[') {
      const close = ch === '{' ? '}' : ']';
      i++;
      const parts: string[] = [];
      ws();
      if (text[i] === close) {
        i++;
        return ch + close;
      }
      for (;;) {
        if (ch === '{') {
          ws();
          const k = str();
          ws();
          i++; // ':'
          parts.push(`${k}:${value()}`);
        } else parts.push(value());
        ws();
        if (text[i++] === close) return ch + parts.join(',') + close;
      }
    }
    const m = /-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|true|false|null/y;
    m.lastIndex = i;
    const t = m.exec(text)![0];
    i += t.length;
    return t;
  };
  ws();
  if (text[i] !== '{') return undefined;
  i++;
  let found: string | undefined;
  ws();
  if (text[i] === '}') return undefined;
  for (;;) {
    ws();
    const k = str();
    ws();
    i++; // ':'
    const v = value();
    if (JSON.parse(k) === name) found = v;
    ws();
    if (text[i++] === '}') return found;
  }
}

export type { ArgSpec };
