/**
 * Helpers for tests that move a guest between real `vmm` processes (live
 * migration, snapshot/restore): a set of VMM processes with QMP sockets,
 * cleaned up after each test, and the QMP steps every such test repeats.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { QmpClient } from './qmp-client';
import { GUEST_ELF, Proc, requireBuilt, startNode, VMM_BIN } from './run';

export interface VmmProc extends Proc {
  /** Path of its QMP socket. */
  qmp: string;
}

export const uniq = (): string => Math.random().toString(36).slice(2, 8);

/** Polls `pred` every 20 ms; throws naming `what` after `ms`. */
export async function until(what: string, pred: () => boolean, ms = 40_000): Promise<void> {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A QMP session on `p`, past capabilities negotiation. */
export async function qmpSession(p: { qmp: string }): Promise<QmpClient> {
  const c = await QmpClient.connect(p.qmp);
  await c.run('qmp_capabilities');
  return c;
}

/** `migrate`, then polls `query-migrate` until completed or failed; returns the last answer. */
export async function migrateAndWait(src: QmpClient, uri: string): Promise<Record<string, unknown>> {
  await src.run('migrate', { uri });
  for (;;) {
    const r = (await src.run('query-migrate')) as Record<string, unknown>;
    if (r.status === 'completed' || r.status === 'failed') return r;
    await new Promise((res) => setTimeout(res, 20));
  }
}

/**
 * VMM processes running the guest kit, each with a QMP socket in a private
 * temporary directory. Call `killAll()` in afterEach.
 */
export class VmmFleet {
  readonly tmp: string;
  private readonly running: VmmProc[] = [];

  constructor(prefix = 'vmm-mig-') {
    this.tmp = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  }

  /** `vmm run --kernel GUEST_ELF --qmp unix:... ARGS` (`wrap`: e.g. `ip netns exec NS`). */
  start(args: string[], wrap?: string[]): VmmProc {
    requireBuilt();
    const qmp = path.join(this.tmp, `q-${uniq()}.sock`);
    const p: VmmProc = { ...startNode([VMM_BIN, 'run', '--kernel', GUEST_ELF, '--qmp', `unix:${qmp}`, ...args], { wrap }), qmp };
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
