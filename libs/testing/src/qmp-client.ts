/** A small QMP client for tests: sends requests, collects replies and events. */
import * as net from 'net';

export class QmpClient {
  readonly messages: Record<string, unknown>[] = [];
  private waiters: { pred: (m: Record<string, unknown>) => boolean; resolve: (m: Record<string, unknown>) => void }[] = [];
  private buf = '';
  private nextId = 1;

  private constructor(readonly socket: net.Socket) {
    socket.setEncoding('utf8');
    socket.on('error', () => undefined); // the VMM went away: waiters time out with what arrived
    socket.on('data', (d: string) => {
      this.buf += d;
      let nl: number;
      while ((nl = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, nl).trim();
        this.buf = this.buf.slice(nl + 1);
        if (!line) continue;
        const m = JSON.parse(line) as Record<string, unknown>;
        this.messages.push(m);
        const w = this.waiters.find((x) => x.pred(m));
        if (w) {
          this.waiters = this.waiters.filter((x) => x !== w);
          w.resolve(m);
        }
      }
    });
  }

  static async connect(path: string, timeoutMs = 20_000): Promise<QmpClient> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const s = await new Promise<net.Socket>((resolve, reject) => {
          const s = net.createConnection(path, () => resolve(s));
          s.once('error', reject);
        });
        const c = new QmpClient(s);
        await c.waitFor((m) => 'QMP' in m);
        return c;
      } catch (e) {
        if (Date.now() > deadline) throw e;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }

  waitFor(pred: (m: Record<string, unknown>) => boolean, timeoutMs = 20_000): Promise<Record<string, unknown>> {
    const seen = this.messages.find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`timed out waiting; got ${JSON.stringify(this.messages)}`)), timeoutMs);
      this.waiters.push({ pred, resolve: (m) => (clearTimeout(t), resolve(m)) });
    });
  }

  event(name: string, timeoutMs?: number): Promise<Record<string, unknown>> {
    return this.waitFor((m) => m.event === name, timeoutMs);
  }

  /** Sends raw text; resolves with the next reply carrying `id` (or the next reply at all when id is absent). */
  raw(text: string): void {
    this.socket.write(text);
  }

  async execute(cmd: string, args?: Record<string, unknown>): Promise<Record<string, unknown>> {
    const id = `t${this.nextId++}`;
    const msg: Record<string, unknown> = { execute: cmd, id };
    if (args) msg.arguments = args;
    this.socket.write(JSON.stringify(msg) + '\n');
    return this.waitFor((m) => m.id === id);
  }

  /** execute() that throws on an error reply. */
  async run(cmd: string, args?: Record<string, unknown>): Promise<unknown> {
    const r = await this.execute(cmd, args);
    if ('error' in r) throw new Error(`${cmd}: ${JSON.stringify(r.error)}`);
    return r.return;
  }

  close(): void {
    this.socket.destroy();
  }
}
