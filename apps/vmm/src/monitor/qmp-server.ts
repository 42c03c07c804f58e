/**
 * A QMP server (QEMU Machine Protocol) on a unix socket: the greeting,
 * capabilities negotiation, execute/arguments/id requests, return/error
 * replies that echo the id, and timestamped asynchronous events to every
 * negotiated client.
 */
import * as fs from 'fs';
import * as net from 'net';
import { ArgSpec, checkArguments, CommandError, CommandRegistry } from './commands';

export const QMP_VERSION = { qemu: { major: 8, minor: 2, micro: 0 }, package: 'tsvmm 0.1.0' };

interface Client {
  socket: net.Socket;
  negotiated: boolean;
  buffer: string;
}

export class QmpServer {
  private readonly server: net.Server;
  private readonly clients = new Set<Client>();

  constructor(
    readonly path: string,
    private readonly commands: CommandRegistry,
    private readonly log: (m: string) => void,
  ) {
    this.server = net.createServer((s) => this.accept(s));
  }

  listen(): Promise<void> {
    try {
      if (fs.existsSync(this.path) && fs.statSync(this.path).isSocket()) fs.unlinkSync(this.path);
    } catch {
      // fall through: listen reports the real problem
    }
    return new Promise((resolve, reject) => {
      this.server.once('error', (e) => reject(new Error(`--qmp unix:${this.path}: ${(e as Error).message}`)));
      this.server.listen(this.path, () => resolve());
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
    const c: Client = { socket, negotiated: false, buffer: '' };
    this.clients.add(c);
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => this.onData(c, d));
    socket.on('close', () => this.clients.delete(c));
    socket.on('error', () => this.clients.delete(c));
    this.send(c, { QMP: { version: QMP_VERSION, capabilities: [] } });
  }

  private send(c: Client, msg: unknown): void {
    if (!c.socket.destroyed) c.socket.write(JSON.stringify(msg) + '\r\n');
  }

  /** Splits the stream into top-level JSON values (objects may span lines, as QEMU accepts). */
  private onData(c: Client, data: string): void {
    c.buffer += data;
    for (;;) {
      const end = jsonValueEnd(c.buffer);
      if (end === undefined) break;
      const text = c.buffer.slice(0, end);
      c.buffer = c.buffer.slice(end);
      if (text.trim()) void this.handle(c, text);
    }
    if (c.buffer.length > 1 << 20) {
      this.send(c, { error: { class: 'GenericError', desc: 'JSON parse error, request too large' } });
      c.buffer = '';
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
    const id = r.id;
    const reply = (body: Record<string, unknown>) => this.send(c, id === undefined ? body : { ...body, id });
    const fail = (cls: string, desc: string) => reply({ error: { class: cls, desc } });
    for (const k of Object.keys(r)) {
      if (!['execute', 'arguments', 'id', 'exec-oob'].includes(k)) return fail('GenericError', `QMP input member '${k}' is unexpected`);
    }
    if (!('execute' in r)) return fail('GenericError', "QMP input lacks member 'execute'");
    if (typeof r.execute !== 'string') return fail('GenericError', "QMP input member 'execute' must be a string");
    if ('arguments' in r && (typeof r.arguments !== 'object' || r.arguments === null || Array.isArray(r.arguments)))
      return fail('GenericError', "QMP input member 'arguments' must be an object");
    const name = r.execute;
    const args = (r.arguments ?? {}) as Record<string, unknown>;
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
      const result = await cmd.run(args);
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

export type { ArgSpec };
