/** Booting tools/linux-guest's kernel and busybox initramfs on the `vmm` binary. */
import { execFile, execFileSync, spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { QmpClient } from '@tsvmm/testing';

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

type Msg = Record<string, unknown>;
export type QueueStatus = Record<string, unknown>;

/** What an operator sees on one side of a drill (docs/debugging-lost-kicks.md). */
export interface DrillSide {
  /** x-query-virtio-queue-status before the fault was armed, while the guest hung, after it moved again. */
  before: QueueStatus;
  hung: QueueStatus;
  after: QueueStatus;
  /** The VIRTQUEUE_STALL and VIRTQUEUE_STALL_CLEARED events' data. */
  stall: Msg;
  cleared: Msg;
  /** The queue's line of `info virtqueues DEV` while it hung. */
  line: string;
  /** The whole `info virtqueues DEV` output then (printed for the walkthrough). */
  screen: string;
  /** Tries it took (a guest that moved the queue on its own before the detector judged it is tried again). */
  tries: number;
}

/**
 * The lost-kick and lost-interrupt drills of docs/debugging-lost-kicks.md on a
 * running Linux guest, as an operator runs them over QMP: `x-debug-virtqueue-drop`
 * one kick of `kickQueue`, wait for VIRTQUEUE_STALL (kick side), read `info
 * virtqueues`, recover with `x-debug-device-event kick`, wait for
 * VIRTQUEUE_STALL_CLEARED; then the same with one interrupt of `irqQueue` and
 * `x-debug-device-event call`. The guest must be doing I/O on those queues
 * meanwhile (or `provoke` makes it: it starts one I/O and resolves when it
 * completed). Also watches an idle period: `idleStart` / `idleEnd` bracket it,
 * `idleStalls` are the VIRTQUEUE_STALL events in it.
 */
export class MonitorDrill {
  private qmp: QmpClient | undefined;
  private connecting: Promise<QmpClient> | undefined;
  private idleFrom: number | undefined;
  private idleTo: number | undefined;
  idleScreen: string | undefined;

  constructor(
    readonly sock: string,
    readonly dev: string,
  ) {}

  /** Connects (once) and keeps every event from then on. */
  connect(): Promise<QmpClient> {
    this.connecting ??= (async () => {
      const c = await QmpClient.connect(this.sock, 120_000);
      await c.run('qmp_capabilities');
      this.qmp = c;
      return c;
    })();
    return this.connecting;
  }

  get events(): Msg[] {
    return (this.qmp?.messages ?? []).filter((m) => 'event' in m);
  }

  /** The guest went idle: from now until idleEnd no VIRTQUEUE_STALL may come. Takes `info virtqueues` after `screenAfterMs`. */
  async idleStart(screenAfterMs = 2000): Promise<void> {
    const c = await this.connect();
    this.idleFrom = c.messages.length;
    await new Promise((r) => setTimeout(r, screenAfterMs));
    this.idleScreen = await this.hmp(`info virtqueues ${this.dev}`);
  }

  idleEnd(): void {
    this.idleTo = this.qmp?.messages.length;
  }

  /** VIRTQUEUE_STALL events of the idle period (undefined: no idle period was bracketed). */
  idleStalls(): Msg[] | undefined {
    if (this.idleFrom === undefined || this.idleTo === undefined || !this.qmp) return undefined;
    return this.qmp.messages.slice(this.idleFrom, this.idleTo).filter((m) => m.event === 'VIRTQUEUE_STALL');
  }

  async hmp(line: string): Promise<string> {
    const c = await this.connect();
    return (await c.run('human-monitor-command', { 'command-line': line })) as string;
  }

  private async status(queue: number): Promise<QueueStatus> {
    return (await this.qmp!.run('x-query-virtio-queue-status', { path: this.dev, queue })) as QueueStatus;
  }

  /** The next message from index `from` on that matches. */
  private next(from: number, pred: (m: Msg) => boolean, timeoutMs: number): Promise<Msg> {
    const c = this.qmp!;
    return c.waitFor((m) => c.messages.indexOf(m) >= from && pred(m), timeoutMs);
  }

  /** The drill's own episode: a slow guest's driver-silent on the same queue is another one. */
  private stallEvent(name: string, queue: number, side: 'kick' | 'interrupt') {
    const cause = side === 'kick' ? 'no-notify' : 'dropped';
    return (m: Msg) => {
      const d = m.data as Msg | undefined;
      return m.event === name && d?.device === this.dev && d.queue === queue && d.side === side && d.cause === cause;
    };
  }

  /** One side: arm the fault, wait for the stall (retrying if the guest got the queue moving on its own), look, recover. */
  private async side(side: 'kick' | 'interrupt', queue: number, provoke?: () => Promise<unknown>): Promise<DrillSide> {
    const c = this.qmp!;
    const name = side === 'kick' ? 'kicks' : 'interrupts';
    for (let tries = 1; ; tries++) {
      // An episode still open on this side (e.g. a slow guest's driver-silent) would swallow the drill's: wait it out.
      let before = await this.status(queue);
      for (let i = 0; i < 200 && before.stall !== null; i++) {
        await new Promise((r) => setTimeout(r, 50));
        before = await this.status(queue);
      }
      const from = c.messages.length;
      await c.run('x-debug-virtqueue-drop', { dev: this.dev, queue, [name]: 1 });
      const io = provoke?.();
      const stalled = this.next(from, this.stallEvent('VIRTQUEUE_STALL', queue, side), 60_000);
      const first = await Promise.race([stalled, ...(io ? [io.then(() => undefined)] : [])]);
      if (!first) {
        // The I/O completed without a stall: something else moved the queue first (e.g. an ARP
        // packet settled the interrupt). Disarm and try again.
        if (tries >= 3) throw new Error(`${this.dev} queue ${queue}: no ${side}-side stall in ${tries} tries`);
        stalled.catch(() => undefined);
        await c.run('x-debug-virtqueue-drop', { dev: this.dev, queue, kicks: 0, interrupts: 0 });
        continue;
      }
      const hung = await this.status(queue);
      const screen = await this.hmp(`info virtqueues ${this.dev}`);
      const line = screen.split('\n').find((l) => l.split(/\s+/)[0] === this.dev && l.split(/\s+/)[1] === String(queue)) ?? '';
      const fromRecover = c.messages.length;
      await c.run('x-debug-device-event', { dev: this.dev, event: side === 'kick' ? 'kick' : 'call', queue });
      const cleared = await this.next(fromRecover, this.stallEvent('VIRTQUEUE_STALL_CLEARED', queue, side), 60_000);
      if (io) await io;
      const after = await this.status(queue);
      return { before, hung, after, stall: first.data as Msg, cleared: cleared.data as Msg, line, screen, tries };
    }
  }

  /** Both drills, kick side first. On any failure the queues are un-hung (drops disarmed, kick and call sent) before it throws. */
  async run(opts: {
    kickQueue: number;
    irqQueue: number;
    provokeKick?: () => Promise<unknown>;
    provokeIrq?: () => Promise<unknown>;
  }): Promise<{ kick: DrillSide; interrupt: DrillSide }> {
    await this.connect();
    try {
      const kick = await this.side('kick', opts.kickQueue, opts.provokeKick);
      const interrupt = await this.side('interrupt', opts.irqQueue, opts.provokeIrq);
      return { kick, interrupt };
    } catch (e) {
      for (const queue of new Set([opts.kickQueue, opts.irqQueue]))
        try {
          await this.qmp!.run('x-debug-virtqueue-drop', { dev: this.dev, queue, kicks: 0, interrupts: 0 });
          await this.qmp!.run('x-debug-device-event', { dev: this.dev, event: 'kick', queue });
          await this.qmp!.run('x-debug-device-event', { dev: this.dev, event: 'call', queue });
        } catch {
          // the VMM is gone
        }
      throw e;
    }
  }

  close(): void {
    this.qmp?.close();
  }
}

/** Ends the guest's drill_io loop (tools/linux-guest): the line DRILL-STOP at 3 MiB + 64 KiB of its disk image. */
export function stopDrillIo(img: string): void {
  const fd = fs.openSync(img, 'r+');
  try {
    fs.writeSync(fd, Buffer.from('DRILL-STOP\n'), 0, 11, 3 * 2 ** 20 + 65536);
  } finally {
    fs.closeSync(fd);
  }
}
