/** Processes for the vhost-scsi tests: the project's vhost-user-scsi back-end, the vmm, and a small QMP client. */
import { ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';

export const ROOT = path.resolve(__dirname, '../../..');
export const VMM = path.join(ROOT, 'apps/vmm/bin/vmm.js');
export const BACKEND = path.join(ROOT, 'apps/vhost-user-scsi/bin/vhost-user-scsi.js');
export const GUEST = path.join(ROOT, 'tools/guest-kit/build/guest.elf');
export const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vhost-scsi-'));

export function requireBuilt(): void {
  for (const f of [VMM, BACKEND, GUEST, path.join(ROOT, 'apps/vhost-user-scsi/dist/main.js'), path.join(ROOT, 'apps/vmm/dist/main.js')])
    if (!fs.existsSync(f)) throw new Error(`${f} is missing: build the guest kit, the vmm and vhost-user-scsi first (npx nx run-many -t build)`);
}

export const uniq = () => Math.random().toString(36).slice(2, 8);

export function image(bytes: number, fill = 0): string {
  const p = path.join(tmp, `img-${uniq()}.img`);
  fs.writeFileSync(p, Buffer.alloc(bytes, fill));
  return p;
}

export interface Proc {
  proc: ChildProcess;
  out: () => string;
  err: () => string;
  exited: Promise<number | null>;
}

function start(args: string[]): Proc {
  const proc = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  proc.stdout!.on('data', (d) => (out += d));
  proc.stderr!.on('data', (d) => (err += d));
  const exited = new Promise<number | null>((r) => proc.on('close', r));
  return { proc, out: () => out, err: () => err, exited };
}

async function waitFor(pred: () => boolean, what: string, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export interface Backend extends Proc {
  socket: string;
  control: string;
  stats(): Promise<BackendStats>;
  stop(): Promise<void>;
}

export interface BackendStats {
  connected: boolean;
  connections: number;
  rings: { index: number; kicks: number; calls: number; started: boolean; 'last-avail-idx'?: number }[];
  device: Record<string, unknown> | null;
}

/** Starts vhost-user-scsi with the given --lun specs and waits until it listens. */
export async function startBackend(luns: string[], extra: string[] = [], socket = path.join(tmp, `vu-${uniq()}.sock`)): Promise<Backend> {
  const control = path.join(tmp, `ctl-${uniq()}.sock`);
  const p = start([BACKEND, '--socket', socket, '--control', control, ...luns.flatMap((l) => ['--lun', l]), ...extra]);
  await waitFor(() => fs.existsSync(socket) && fs.existsSync(control) || p.proc.exitCode !== null, 'the back-end to listen');
  if (p.proc.exitCode !== null) throw new Error(`vhost-user-scsi exited ${p.proc.exitCode}: ${p.err()}`);
  const b: Backend = {
    ...p, socket, control,
    stats: () => controlRequest(control, 'stats') as Promise<BackendStats>,
    stop: async () => {
      if (p.proc.exitCode === null) p.proc.kill('SIGKILL');
      await p.exited;
    },
  };
  return b;
}

function controlRequest(sock: string, line: string): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const c = net.createConnection(sock);
    let buf = '';
    c.on('data', (d) => {
      buf += d;
      const nl = buf.indexOf('\n');
      if (nl >= 0) {
        c.end();
        resolve(JSON.parse(buf.slice(0, nl)));
      }
    });
    c.on('error', reject);
    c.write(`${line}\n`);
  });
}

export interface Run {
  code: number | null;
  out: string;
  err: string;
}

/** One VMM run of the guest kit to its end. */
export async function vmm(cmdline: string, devices: string[], opts: { timeoutMs?: number; extra?: string[] } = {}): Promise<Run> {
  const p = start([VMM, 'run', '--kernel', GUEST, '--memory', '64M', '--cmdline', cmdline, ...(opts.extra ?? []), ...devices.flatMap((d) => ['--device', d])]);
  const t = setTimeout(() => p.proc.kill('SIGKILL'), opts.timeoutMs ?? 60_000);
  const code = await p.exited;
  clearTimeout(t);
  return { code, out: p.out(), err: p.err() };
}

/** A VMM started paused with a QMP socket. */
export async function vmmWithQmp(cmdline: string, devices: string[]): Promise<Proc & { qmp: Qmp }> {
  const sock = path.join(tmp, `qmp-${uniq()}.sock`);
  const p = start([VMM, 'run', '-S', '--kernel', GUEST, '--memory', '64M', '--cmdline', cmdline, '--qmp', `unix:${sock}`, ...devices.flatMap((d) => ['--device', d])]);
  await waitFor(() => fs.existsSync(sock) || p.proc.exitCode !== null, 'the QMP socket');
  if (p.proc.exitCode !== null) throw new Error(`vmm exited ${p.proc.exitCode}: ${p.err()}`);
  const qmp = await Qmp.connect(sock);
  await qmp.run('qmp_capabilities');
  return { ...p, qmp };
}

export function expectPass(r: Run, test: string): void {
  if (r.code !== 0 || !r.out.includes(`guest-kit: PASS test=${test}`)) throw new Error(`guest failed (exit ${r.code}):\n${r.out}\n${r.err}`);
}

/** Enough QMP for these tests: commands and their replies. */
export class Qmp {
  private buf = '';
  private readonly replies = new Map<string, (m: Record<string, unknown>) => void>();
  private id = 0;
  private greeted: Promise<void>;

  private constructor(private readonly s: net.Socket) {
    let greet: () => void = () => undefined;
    this.greeted = new Promise((r) => (greet = r));
    s.setEncoding('utf8');
    s.on('data', (d: string) => {
      this.buf += d;
      for (let nl = this.buf.indexOf('\n'); nl >= 0; nl = this.buf.indexOf('\n')) {
        const line = this.buf.slice(0, nl).trim();
        this.buf = this.buf.slice(nl + 1);
        if (!line) continue;
        const m = JSON.parse(line) as Record<string, unknown>;
        if ('QMP' in m) greet();
        else if (typeof m.id === 'string') this.replies.get(m.id)?.(m);
      }
    });
    s.on('error', () => undefined);
  }

  static async connect(sock: string): Promise<Qmp> {
    const s = await new Promise<net.Socket>((res, rej) => {
      const c = net.createConnection(sock, () => res(c));
      c.once('error', rej);
    });
    const q = new Qmp(s);
    await q.greeted;
    return q;
  }

  execute(cmd: string, args?: Record<string, unknown>): Promise<Record<string, unknown>> {
    const id = `q${++this.id}`;
    return new Promise((resolve) => {
      this.replies.set(id, resolve);
      this.s.write(`${JSON.stringify({ execute: cmd, arguments: args, id })}\n`);
    });
  }

  async run(cmd: string, args?: Record<string, unknown>): Promise<unknown> {
    const r = await this.execute(cmd, args);
    if ('error' in r) throw new Error(`${cmd}: ${JSON.stringify(r.error)}`);
    return r.return;
  }

  close(): void {
    this.s.destroy();
  }
}

export async function until<T>(get: () => Promise<T>, pred: (v: T) => boolean, what: string, ms = 30_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await get();
    if (pred(v)) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; last: ${JSON.stringify(v)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
