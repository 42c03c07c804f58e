/**
 * Helpers for migration tests between real `vmm` processes: start VMMs with
 * QMP sockets (one by one, or as a VmmFleet cleaned up after each test), wait
 * for a condition, run `migrate` to its end, and check the images the guest
 * kit's mig-blk-loop and mig-scsi-loop wrote.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { QmpClient } from './qmp-client';
import { GUEST_ELF, Proc, requireBuilt, shareWithTestVmmUser, startNode, StartOptions, VMM_BIN } from './run';

export interface VmmProc extends Proc {
  /** The QMP socket path. */
  qmp: string;
}

export const uniq = (): string => Math.random().toString(36).slice(2, 8);

/** Starts `vmm run --kernel GUEST_ELF --qmp unix:DIR/q-*.sock ARGS...` (not waited for). */
export function startVmm(dir: string, args: string[], opts: StartOptions = {}): VmmProc {
  requireBuilt();
  const qmp = path.join(dir, `q-${uniq()}.sock`);
  return { ...startNode([VMM_BIN, 'run', '--kernel', GUEST_ELF, '--qmp', `unix:${qmp}`, ...args], opts), qmp };
}

export async function waitUntil(what: string, pred: () => boolean, ms = 40_000): Promise<void> {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * Waits for `guest-kit: holding` (a hold=1 test passed) on a VMM's serial
 * output; fails at once, with the guest's output, when the guest prints a
 * FAIL line or the VMM exits first.
 */
export async function waitGuestHolding(p: Proc, what: string, ms = 60_000): Promise<void> {
  await waitUntil(
    what,
    () => p.out().includes('guest-kit: holding') || p.out().includes('guest-kit: FAIL') || p.proc.exitCode !== null,
    ms,
  );
  if (!p.out().includes('guest-kit: holding'))
    throw new Error(`${what}: the guest did not pass (exit ${p.proc.exitCode}):\n${p.out().split('\n').slice(-15).join('\n')}\n${p.err()}`);
}

/** Connects to a VMM's QMP socket (waiting for it to appear) and negotiates capabilities. */
export async function qmpConnect(p: VmmProc, ms = 30_000): Promise<QmpClient> {
  await waitUntil(`QMP socket ${p.qmp}`, () => fs.existsSync(p.qmp), ms);
  const c = await QmpClient.connect(p.qmp);
  await c.run('qmp_capabilities');
  return c;
}

/** `migrate` then polls `query-migrate` until completed or failed; returns its last answer. */
export async function migrateAndWait(src: QmpClient, uri: string): Promise<Record<string, unknown>> {
  await src.run('migrate', { uri });
  for (;;) {
    const r = (await src.run('query-migrate')) as Record<string, unknown>;
    if (r.status === 'completed' || r.status === 'failed' || r.status === 'cancelled') return r;
    await new Promise((res) => setTimeout(res, 20));
  }
}

export interface ScsiLoopLayout {
  rounds: number;
  /** Logical blocks per round (each round writes blocks + 1: the last overlaps the next round). */
  blocks: number;
  blockSize?: number;
  lba?: number;
}

/**
 * Checks an image after the guest kit's mig-scsi-loop: every 512-byte sector
 * of round i's blocks holds tag i + 1 (the overlap block: the next round's),
 * the last block tag `rounds`, and nothing after it was written. Throws
 * naming the first sector that is wrong and the tag it holds.
 */
export function checkScsiLoopImage(file: string, l: ScsiLoopLayout): void {
  const img = fs.readFileSync(file);
  const spb = (l.blockSize ?? 512) / 512;
  const first = (l.lba ?? 0) * spb;
  const end = first + (l.rounds * l.blocks + 1) * spb;
  for (let sector = first; sector < end; sector++) {
    const round = Math.min(Math.floor((sector - first) / (l.blocks * spb)), l.rounds - 1);
    const tag = round + 1;
    const p = img.subarray(sector * 512, sector * 512 + 512);
    const got = p.readUInt32LE(4);
    const ok =
      p.readUInt32LE(0) === 0x4c53534d &&
      got === tag &&
      p.readBigUInt64LE(8) === BigInt(sector) &&
      p.subarray(16).every((b, i) => b === ((sector * 31 + (i + 16) * 7 + tag) & 0xff));
    if (!ok)
      throw new Error(
        `image sector ${sector} (round ${round + 1} of ${l.rounds}): ${p.readUInt32LE(0) === 0x4c53534d ? `tag ${got}, want ${tag}` : 'never written'}`,
      );
  }
  const rest = img.subarray(end * 512);
  const nz = rest.findIndex((b) => b !== 0);
  if (nz >= 0) throw new Error(`image byte ${end * 512 + nz} after the loop's last block is written`);
}

/**
 * VMM processes running the guest kit, each with a QMP socket in a private
 * temporary directory. Call `killAll()` in afterEach.
 */
export class VmmFleet {
  readonly tmp: string;
  private readonly running: VmmProc[] = [];

  constructor(prefix = 'vmm-mig-') {
    this.tmp = shareWithTestVmmUser(fs.mkdtempSync(path.join(os.tmpdir(), prefix)));
  }

  /** startVmm in this fleet's directory (`wrap`: e.g. `ip netns exec NS`). */
  start(args: string[], wrap?: string[]): VmmProc {
    const p = startVmm(this.tmp, args, { wrap });
    this.running.push(p);
    return p;
  }

  /** A fresh path in the temporary directory. */
  file(name: string): string {
    return path.join(this.tmp, `${name}-${uniq()}`);
  }

  async killAll(): Promise<void> {
    for (const p of this.running.splice(0)) {
      p.proc.kill('SIGKILL');
      await p.exited;
    }
  }
}

/** A zeroed 1 MiB disk image for the guest kit's mig-blk-loop. */
export function migLoopImage(fleet: VmmFleet): string {
  const f = `${fleet.file('disk')}.img`;
  fs.writeFileSync(f, Buffer.alloc(1 << 20));
  return f;
}

/**
 * Checks an image written by the guest kit's `mig-blk-loop ... sectors=1`:
 * sector i holds blktests' pattern with seed 1 + i, for every i < iters,
 * and (with restZero) nothing after the last.
 */
export function checkMigLoopImage(file: string, iters: number, restZero = true): void {
  const img = fs.readFileSync(file);
  for (let i = 0; i < iters; i++) {
    let v = (i * 31 + 1 + i) & 0xff;
    for (let j = 0; j < 512; j++, v = (v + 7) & 0xff) {
      if (img[i * 512 + j] !== v) throw new Error(`sector ${i} byte ${j}: 0x${img[i * 512 + j].toString(16)}, want 0x${v.toString(16)}`);
    }
  }
  if (restZero) {
    const rest = img.subarray(iters * 512).findIndex((b) => b !== 0);
    if (rest >= 0) throw new Error(`byte ${iters * 512 + rest} after the last sector written is not zero`);
  }
}
