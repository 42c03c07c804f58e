/** Processes for the vhost-scsi tests: the project's vhost-user-scsi back-end, the vmm, and a small QMP client. */
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import {
  GUEST_ELF,
  Proc,
  QmpClient,
  requireBuilt as requireVmmBuilt,
  ROOT,
  Run,
  runGuestKit,
  shareWithTestVmmUser,
  startNode,
  VMM_BIN,
} from '@tsvmm/testing';

export { expectGuestPass as expectPass } from '@tsvmm/testing';
export type { Proc, Run } from '@tsvmm/testing';
export { QmpClient as Qmp };

export const BACKEND = path.join(ROOT, 'apps/vhost-user-scsi/bin/vhost-user-scsi.js');
export const tmp = shareWithTestVmmUser(fs.mkdtempSync(path.join(os.tmpdir(), 'vhost-scsi-')));

export function requireBuilt(): void {
  requireVmmBuilt([BACKEND, path.join(ROOT, 'apps/vhost-user-scsi/dist/main.js')]);
}

export const uniq = () => Math.random().toString(36).slice(2, 8);

export function image(bytes: number, fill = 0): string {
  const p = path.join(tmp, `img-${uniq()}.img`);
  fs.writeFileSync(p, Buffer.alloc(bytes, fill));
  return p;
}

const start = (args: string[]): Proc => startNode(args);

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
  await waitFor(() => (fs.existsSync(socket) && fs.existsSync(control)) || p.proc.exitCode !== null, 'the back-end to listen');
  if (p.proc.exitCode !== null) throw new Error(`vhost-user-scsi exited ${p.proc.exitCode}: ${p.err()}`);
  // Under --run-with (VMM_TEST_RUN_WITH) the VMM reconnects after a reset as its user: the socket must be that user's.
  shareWithTestVmmUser(socket);
  const b: Backend = {
    ...p,
    socket,
    control,
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

/** One VMM run of the guest kit to its end. */
export function vmm(cmdline: string, devices: string[], opts: { timeoutMs?: number; extra?: string[] } = {}): Promise<Run> {
  return runGuestKit(cmdline, devices, opts);
}

/** A VMM started paused with a QMP socket. */
export async function vmmWithQmp(cmdline: string, devices: string[]): Promise<Proc & { qmp: QmpClient }> {
  const sock = path.join(tmp, `qmp-${uniq()}.sock`);
  const p = start([
    VMM_BIN,
    'run',
    '-S',
    '--kernel',
    GUEST_ELF,
    '--memory',
    '64M',
    '--cmdline',
    cmdline,
    '--qmp',
    `unix:${sock}`,
    ...devices.flatMap((d) => ['--device', d]),
  ]);
  await waitFor(() => fs.existsSync(sock) || p.proc.exitCode !== null, 'the QMP socket');
  if (p.proc.exitCode !== null) throw new Error(`vmm exited ${p.proc.exitCode}: ${p.err()}`);
  const qmp = await QmpClient.connect(sock);
  await qmp.run('qmp_capabilities');
  return { ...p, qmp };
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
