/**
 * Running the real `vmm` binary (the bundle) on the guest kit from a test:
 * every package's guest suite needs the same spawn, timeout and PASS check.
 */
import { ChildProcess, execFileSync, spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';

export const ROOT = path.resolve(__dirname, '../../..');
export const VMM_BIN = path.join(ROOT, 'apps/vmm/bin/vmm.js');
export const GUEST_ELF = path.join(ROOT, 'tools/guest-kit/build/guest.elf');

/** Throws a message that says what to build when the guest kit, the vmm bundle or `more` files are missing. */
export function requireBuilt(more: string[] = []): void {
  for (const f of [GUEST_ELF, VMM_BIN, path.join(ROOT, 'apps/vmm/dist/main.js'), ...more])
    if (!fs.existsSync(f)) throw new Error(`${f} is missing: build first (npx nx run-many -t build)`);
}

export interface Run {
  code: number | null;
  out: string;
  err: string;
}

/** A child process whose output is collected. */
export interface Proc {
  proc: ChildProcess;
  out: () => string;
  err: () => string;
  exited: Promise<number | null>;
}

export interface StartOptions {
  /** A command prefix, e.g. ['ip', 'netns', 'exec', NS]. */
  wrap?: string[];
  /** Called with each complete stdout line. */
  onLine?: (line: string) => void;
  /** Extra environment variables for the child. */
  env?: Record<string, string>;
}

/**
 * VMM_TEST_SANDBOX=on: every `vmm run` a suite starts gets `--sandbox on`;
 * VMM_TEST_RUN_WITH=user=nobody: `--run-with user=nobody` (docs/security.md:
 * the guest-kit suites are run that way too). A run that sets the flag itself keeps its own.
 */
export function withTestSandbox(args: string[]): string[] {
  const mode = process.env.VMM_TEST_SANDBOX;
  const runWith = process.env.VMM_TEST_RUN_WITH;
  if (mode !== undefined && mode !== '' && mode !== 'on' && mode !== 'off') throw new Error(`VMM_TEST_SANDBOX='${mode}' must be on or off`);
  if (args[0] !== VMM_BIN || args[1] !== 'run') return args;
  const extra: string[] = [];
  if (mode && !args.includes('--sandbox')) extra.push('--sandbox', mode);
  if (runWith && !args.includes('--run-with')) extra.push('--run-with', runWith);
  return extra.length ? [VMM_BIN, 'run', ...extra, ...args.slice(2)] : args;
}

/** The uid and gid VMM_TEST_RUN_WITH names (`user=NAME` or `user=UID:GID`), or undefined when it is not set. */
export function testRunWithIds(): { uid: number; gid: number } | undefined {
  const runWith = process.env.VMM_TEST_RUN_WITH;
  if (!runWith) return undefined;
  const user = /(?:^|,)user=([^,]+)/.exec(runWith)?.[1];
  if (!user) throw new Error(`VMM_TEST_RUN_WITH='${runWith}' names no user= (e.g. user=nobody)`);
  const ids = /^(\d+):(\d+)$/.exec(user);
  if (ids) return { uid: Number(ids[1]), gid: Number(ids[2]) };
  const id = (flag: string) => Number(execFileSync('id', [flag, user], { encoding: 'utf8' }).trim());
  return { uid: id('-u'), gid: id('-g') };
}

/**
 * Under VMM_TEST_RUN_WITH, gives `p` (a test's temporary directory, a
 * vhost-user back-end's socket) to the user the VMM drops to, as a
 * deployment would: what the VMM opens after the drop (snapshot files,
 * migration sockets, a back-end reconnected after a reset) is then
 * reachable as that user. Does nothing otherwise. Returns `p`.
 */
export function shareWithTestVmmUser(p: string): string {
  const ids = testRunWithIds();
  if (ids) fs.chownSync(p, ids.uid, ids.gid);
  return p;
}

/** Starts `node ARGS...` (under `wrap` when given). */
export function startNode(args: string[], opts: StartOptions = {}): Proc {
  const [cmd, ...rest] = [...(opts.wrap ?? []), process.execPath, ...withTestSandbox(args)];
  const proc = spawn(cmd, rest, { stdio: ['ignore', 'pipe', 'pipe'], env: opts.env ? { ...process.env, ...opts.env } : process.env });
  let out = '';
  let err = '';
  let partial = '';
  proc.stdout!.on('data', (d: Buffer) => {
    out += d.toString('latin1');
    if (!opts.onLine) return;
    partial += d.toString('latin1');
    const lines = partial.split(/\r?\n/);
    partial = lines.pop()!;
    lines.forEach(opts.onLine);
  });
  proc.stderr!.on('data', (d) => (err += d));
  const exited = new Promise<number | null>((r) => proc.on('close', r));
  return { proc, out: () => out, err: () => err, exited };
}

export interface GuestKitOptions extends StartOptions {
  memory?: string;
  timeoutMs?: number;
  /** More vmm arguments (e.g. --qmp). */
  extra?: string[];
}

/** One run of the guest kit's `cmdline` test with `devices` (each a --device spec), to its end. */
export async function runGuestKit(cmdline: string, devices: string[], opts: GuestKitOptions = {}): Promise<Run> {
  const p = startNode(
    [
      VMM_BIN,
      'run',
      '--kernel',
      GUEST_ELF,
      '--memory',
      opts.memory ?? '64M',
      '--cmdline',
      cmdline,
      ...(opts.extra ?? []),
      ...devices.flatMap((d) => ['--device', d]),
    ],
    opts,
  );
  const t = setTimeout(() => p.proc.kill('SIGKILL'), opts.timeoutMs ?? 60_000);
  const code = await p.exited;
  clearTimeout(t);
  return { code, out: p.out(), err: p.err() };
}

/** Fails with the whole guest output unless the VMM exited 0 after `guest-kit: PASS test=TEST`. */
export function expectGuestPass(r: Run, test: string): void {
  if (r.code !== 0 || !r.out.includes(`guest-kit: PASS test=${test}`))
    throw new Error(`guest failed (exit ${r.code}):\n${r.out}\n${r.err}`);
  // A confined run (VMM_TEST_RUN_WITH) must have been one: the VMM logs the drop.
  if (process.env.VMM_TEST_RUN_WITH && !/running as uid \d+/.test(r.err))
    throw new Error(`VMM_TEST_RUN_WITH is set but the VMM never said "running as uid ..." (was --run-with applied?):\n${r.err}`);
}
