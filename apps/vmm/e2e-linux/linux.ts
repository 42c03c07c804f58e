/** Booting tools/linux-guest's kernel and busybox initramfs on the `vmm` binary. */
import { spawn } from 'child_process';
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
