/**
 * The lost-kick / lost-interrupt drill for the stall detector tests
 * (docs/qmp.md "Stall detector"), on any virtio device the guest kit drives:
 * the VMM starts stopped with a QMP socket; the next kick of `kickQueue` and
 * the next interrupt of `irqQueue` are dropped (x-debug-virtqueue-drop); the
 * drill waits for each VIRTQUEUE_STALL, recovers it with x-debug-device-event
 * while the VM is stopped (so the guest adds nothing meanwhile) and records
 * the queue status before and after, for the test to assert on.
 */
import * as os from 'os';
import * as path from 'path';
import { QmpClient } from './qmp-client';
import { GUEST_ELF, Run, startNode, VMM_BIN } from './run';

export type QueueStatus = Record<string, unknown>;

export interface StallDrill {
  kickStall: Record<string, unknown>;
  irqStall: Record<string, unknown>;
  /** Status of kickQueue just before and after the recovering kick (VM stopped). */
  kick: { before: QueueStatus; after: QueueStatus };
  /** Status of irqQueue just before and after the recovering call (VM stopped). */
  call: { before: QueueStatus; after: QueueStatus };
  /** Every event the VMM sent. */
  events: Record<string, unknown>[];
  run: Run;
}

async function until(get: () => Promise<QueueStatus>, pred: (s: QueueStatus) => boolean, what: string): Promise<QueueStatus> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const s = await get();
    if (pred(s)) return s;
    if (Date.now() > deadline) throw new Error(`${what}: never happened; last status ${JSON.stringify(s)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export async function stallDrill(opts: {
  cmdline: string;
  devices: string[];
  /** The device id (QOM path accepted too). */
  dev: string;
  kickQueue: number;
  irqQueue: number;
  wrap?: string[];
  timeoutMs?: number;
}): Promise<StallDrill> {
  const sock = path.join(os.tmpdir(), `stall-drill-${process.pid}-${Math.random().toString(36).slice(2)}.sock`);
  const p = startNode(
    [
      VMM_BIN,
      'run',
      '-S',
      '--kernel',
      GUEST_ELF,
      '--memory',
      '64M',
      '--cmdline',
      opts.cmdline,
      '--qmp',
      `unix:${sock}`,
      ...opts.devices.flatMap((d) => ['--device', d]),
    ],
    { wrap: opts.wrap },
  );
  const killer = setTimeout(() => p.proc.kill('SIGKILL'), opts.timeoutMs ?? 90_000);
  try {
    const qmp = await QmpClient.connect(sock);
    await qmp.run('qmp_capabilities');
    const { dev, kickQueue, irqQueue } = opts;
    const status = (queue: number) => qmp.run('x-query-virtio-queue-status', { path: dev, queue }) as Promise<QueueStatus>;
    const stallOn = (side: string) =>
      qmp.waitFor((m) => m.event === 'VIRTQUEUE_STALL' && (m.data as { side: string }).side === side, 60_000);
    await qmp.run('x-debug-virtqueue-drop', { dev, queue: kickQueue, kicks: 1 });
    await qmp.run('x-debug-virtqueue-drop', { dev, queue: irqQueue, interrupts: 1 });
    await qmp.run('cont');
    const kickStall = (await stallOn('kick')).data as Record<string, unknown>;
    await qmp.run('stop');
    const kBefore = await status(kickQueue);
    await qmp.run('x-debug-device-event', { dev, event: 'kick', queue: kickQueue });
    const kAfter = await until(
      () => status(kickQueue),
      (s) => s.chains !== kBefore.chains,
      'the recovering kick taking chains',
    );
    await qmp.run('cont');
    const irqStall = (await stallOn('interrupt')).data as Record<string, unknown>;
    await qmp.run('stop');
    const cBefore = await status(irqQueue);
    await qmp.run('x-debug-device-event', { dev, event: 'call', queue: irqQueue });
    const cAfter = await status(irqQueue);
    await qmp.run('cont');
    const code = await p.exited;
    return {
      kickStall,
      irqStall,
      kick: { before: kBefore, after: kAfter },
      call: { before: cBefore, after: cAfter },
      events: qmp.messages.filter((m) => 'event' in m),
      run: { code, out: p.out(), err: p.err() },
    };
  } catch (e) {
    p.proc.kill('SIGKILL');
    await p.exited;
    throw new Error(`${(e as Error).message}\n${p.out()}\n${p.err()}`);
  } finally {
    clearTimeout(killer);
  }
}
