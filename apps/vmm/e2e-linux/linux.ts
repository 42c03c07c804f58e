/** Booting tools/linux-guest's kernel and busybox initramfs on the `vmm` binary. */
import { execFile, execFileSync, spawn, spawnSync } from 'child_process';
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
export function runLinux(
  test: string,
  opts: { args?: string[]; params?: string; wrap?: string[]; timeoutMs?: number; onLine?: (l: string) => void } = {},
): Promise<LinuxRun> {
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

  constructor(
    readonly name: string,
    readonly tap: string,
    hostCidr: string,
  ) {
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
      execFile(
        ...this.execArgs([...ping, '-c', String(count), '-i', '0.5', '-w', '40', addr]),
        { timeout: 60_000 },
        (err, stdout, stderr) => resolve({ ok: !err, out: `${stdout}${stderr}${err ? `\n(${err.message})` : ''}` }),
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
      names = execFileSync('ip', ['netns', 'list'], { stdio: 'pipe' })
        .toString()
        .split('\n')
        .map((l) => l.split(' ')[0]);
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
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(':'))
    if (dir && fs.existsSync(path.join(dir, 'ping'))) return [path.join(dir, 'ping')];
  return fs.existsSync('/bin/busybox') ? ['/bin/busybox', 'ping'] : [];
}

/**
 * tools/linux-guest's tsvmm-io pattern: the little-endian 32-bit word at byte
 * offset o (of the disk for `dio`, of the file for `fill`) is
 * ((o / 4 + 1) * 0x9E3779B1 mod 2^32) ^ seed.  `offset` is a multiple of 4.
 */
export function ioPattern(offset: number, bytes: number, seed: number): Buffer {
  const b = Buffer.alloc(bytes + 3);
  for (let o = 0; o < bytes; o += 4) b.writeUInt32LE((Math.imul((offset + o) / 4 + 1, 0x9e3779b1) ^ seed) >>> 0, o);
  return b.subarray(0, bytes);
}

/** What the guest's fs_workload leaves on its ext2 disk: path, size, tsvmm-io seed. */
export const EXT2_FILES: [string, number, number][] = [
  ['/small', 5000, 11],
  ['/dir/medium', 300000, 12],
  ['/big', 3 * 2 ** 20, 13],
];

/**
 * Checks an image the guest's fs_workload wrote, with the host's e2fsprogs:
 * `e2fsck -fn` finds nothing (exit 0), the superblock says cleanly unmounted,
 * and every file (read with debugfs) holds its pattern.  Throws with the tool
 * output otherwise.
 */
export function checkExt2Image(img: string): void {
  const run = (cmd: string, args: string[]) => {
    const r = spawnSync(cmd, args, { maxBuffer: 64 * 2 ** 20, env: { ...process.env, PATH: `${process.env.PATH ?? ''}:/usr/sbin:/sbin` } });
    if (r.error) throw new Error(`${cmd}: ${r.error.message} (e2fsprogs installed?)`);
    return r;
  };
  const fsck = run('e2fsck', ['-fn', img]);
  if (fsck.status !== 0) throw new Error(`e2fsck -fn ${img} exited ${fsck.status}:\n${fsck.stdout}${fsck.stderr}`);
  const sb = run('dumpe2fs', ['-h', img]).stdout.toString();
  if (!/^Filesystem state:\s+clean$/m.test(sb)) throw new Error(`${img} was not cleanly unmounted:\n${sb}`);
  for (const [file, size, seed] of EXT2_FILES) {
    const cat = run('debugfs', ['-R', `cat ${file}`, img]);
    if (cat.status !== 0 || !cat.stdout.equals(ioPattern(0, size, seed)))
      throw new Error(`${file} in ${img}: ${cat.stdout.length} bytes, expected ${size} bytes of pattern seed ${seed}\n${cat.stderr}`);
  }
}
