/** Booting tools/linux-guest's kernel and busybox initramfs on the `vmm` binary. */
import { execFile, execFileSync, spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';

export const ROOT = path.resolve(__dirname, '../../..');
export const VMM_BIN = path.join(ROOT, 'apps/vmm/bin/vmm.js');
export const BZIMAGE = path.join(ROOT, 'tools/linux-guest/build/bzImage');
export const INITRAMFS = path.join(ROOT, 'tools/linux-guest/build/initramfs.cpio');
/** The tiny-kernel command line that works on this host (see tools/linux-guest/README.md). */
export const BASE_CMDLINE = fs.readFileSync(path.join(ROOT, 'tools/linux-guest/cmdline.txt'), 'utf8').trim();

export function requireLinux(): void {
  for (const f of [BZIMAGE, INITRAMFS, VMM_BIN])
    if (!fs.existsSync(f)) throw new Error(`${f} is missing: run \`npx nx run linux-guest:build\` and \`npx nx run vmm:build\``);
}

export interface LinuxRun {
  code: number | null;
  out: string;
  err: string;
  ms: number;
}

/**
 * Runs one guest test (tsvmm.test=NAME); the guest reboots at the end, which
 * ends the VMM (it does not reboot). `wrap` runs the VMM under e.g. `ip netns exec`.
 */
export function runLinux(test: string, opts: { args?: string[]; params?: string; wrap?: string[]; timeoutMs?: number; onLine?: (l: string) => void } = {}): Promise<LinuxRun> {
  requireLinux();
  const cmdline = `${BASE_CMDLINE} tsvmm.test=${test} tsvmm.exit=reboot ${opts.params ?? ''}`.trim();
  const argv = [VMM_BIN, 'run', '--memory', '128M', '--kernel', BZIMAGE, '--initrd', INITRAMFS, '--cmdline', cmdline, ...(opts.args ?? [])];
  const [cmd, ...args] = opts.wrap ? [...opts.wrap, process.execPath, ...argv] : [process.execPath, ...argv];
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    let partial = '';
    p.stdout.on('data', (d: Buffer) => {
      out += d.toString('latin1');
      if (opts.onLine) {
        partial += d.toString('latin1');
        const lines = partial.split(/\r?\n/);
        partial = lines.pop()!;
        lines.forEach(opts.onLine);
      }
    });
    p.stderr.on('data', (d) => (err += d));
    const t = setTimeout(() => p.kill('SIGKILL'), opts.timeoutMs ?? 360_000);
    p.on('error', reject);
    p.on('close', (code) => {
      clearTimeout(t);
      resolve({ code, out, err, ms: Date.now() - started });
    });
  });
}

export function expectGuestPass(r: LinuxRun, test: string): void {
  if (!r.out.includes(`linux-guest: PASS test=${test}`) || r.code !== 0)
    throw new Error(`Linux test ${test} did not pass (exit ${r.code}, ${r.ms} ms):\n${r.out.slice(-6000)}\n${r.err}`);
}

/**
 * A network namespace holding one TAP (IFF_VNET_HDR) whose host side has
 * `hostCidr` and is up; the VMM runs inside it (`exec` as `runLinux`'s wrap),
 * so the test needs root but touches nothing outside the namespace.
 */
export class TapNetns {
  readonly exec: string[];
  private alive = false;

  constructor(readonly name: string, readonly tap: string, hostCidr: string) {
    this.exec = ['ip', 'netns', 'exec', name];
    execFileSync('ip', ['netns', 'add', name], { stdio: 'pipe' });
    this.alive = true;
    try {
      this.ip('link', 'set', 'lo', 'up');
      this.ip('tuntap', 'add', tap, 'mode', 'tap', 'vnet_hdr');
      this.ip('addr', 'add', hostCidr, 'dev', tap);
      this.ip('link', 'set', tap, 'up');
    } catch (e) {
      this.delete();
      throw e;
    }
  }

  ip(...args: string[]): string {
    return execFileSync('ip', ['netns', 'exec', this.name, 'ip', ...args], { stdio: 'pipe' }).toString();
  }

  /** `ping -c COUNT` from inside the namespace (iputils ping, else busybox's); never throws. */
  ping(addr: string, count: number): Promise<{ ok: boolean; out: string }> {
    const ping = hostPing();
    return new Promise((resolve) => {
      execFile(...this.execArgs([...ping, '-c', String(count), '-i', '0.5', '-w', '40', addr]), { timeout: 60_000 }, (err, stdout, stderr) =>
        resolve({ ok: !err, out: `${stdout}${stderr}${err ? `\n(${err.message})` : ''}` }),
      );
    });
  }

  private execArgs(argv: string[]): [string, string[]] {
    return [this.exec[0], [...this.exec.slice(1), ...argv]];
  }

  /** Removes the namespace (and with it the TAP once the VMM has exited); idempotent. */
  delete(): void {
    if (!this.alive) return;
    this.alive = false;
    try {
      execFileSync('ip', ['netns', 'del', this.name], { stdio: 'pipe' });
    } catch {
      // already gone
    }
  }

  /** Deletes namespaces named PREFIX<pid> whose process no longer exists (left by a killed run). */
  static removeStale(prefix: string): void {
    let names: string[] = [];
    try {
      names = execFileSync('ip', ['netns', 'list'], { stdio: 'pipe' }).toString().split('\n').map((l) => l.split(' ')[0]);
    } catch {
      return;
    }
    for (const n of names) {
      const m = new RegExp(`^${prefix}(\\d+)$`).exec(n);
      if (!m || Number(m[1]) === process.pid) continue;
      try {
        process.kill(Number(m[1]), 0);
      } catch {
        execFileSync('ip', ['netns', 'del', n], { stdio: 'pipe' });
      }
    }
  }
}

/** Can this process create namespaces and TAPs? */
export function canUseTap(): boolean {
  return process.getuid?.() === 0 && fs.existsSync('/dev/net/tun') && hostPing().length > 0;
}

function hostPing(): string[] {
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(':')) if (dir && fs.existsSync(path.join(dir, 'ping'))) return [path.join(dir, 'ping')];
  return fs.existsSync('/bin/busybox') ? ['/bin/busybox', 'ping'] : [];
}
