/**
 * Main-thread side of a virtio-blk iothread: one worker per iothread id,
 * messages in both directions (see iothread-worker.ts).
 */
import * as path from 'path';
import { Worker } from 'worker_threads';
import type { BlkCounters } from './device';

export type ToWorker =
  | { type: 'init'; id: string; regions: { fd: number; gpa: number; size: number }[]; file: string; readonly: boolean; direct: boolean; numQueues: number; serial: string; eventIdx: boolean }
  | { type: 'activate'; driverFeatures: string; queues: { ready: boolean; size: number; descTable: number; availRing: number; usedRing: number }[]; vectorFds: number[]; disabled: boolean }
  | { type: 'kick'; queue: number }
  | { type: 'disabled'; disabled: boolean }
  | { type: 'reset' }
  | { type: 'stats' }
  | { type: 'close' };

export type FromWorker =
  | { type: 'interrupt'; queue: number }
  | { type: 'broken'; reason: string }
  | { type: 'log'; message: string }
  | { type: 'reset-done' }
  | { type: 'stats'; blk?: BlkCounters; inFlight: number };

/** The bundled worker script sits next to the bundle (esbuild builds it as its own entry). */
export function workerScript(): string {
  return process.env.VMM_BLK_IOTHREAD_WORKER ?? path.join(__dirname, 'virtio-blk-iothread.js');
}

export class BlkIoThread {
  private readonly worker: Worker;

  constructor(
    readonly name: string,
    onMessage: (m: FromWorker) => void,
  ) {
    this.worker = new Worker(workerScript());
    this.worker.on('message', onMessage);
    this.worker.on('error', (e) => onMessage({ type: 'log', message: `iothread ${name}: ${e.message}` }));
    this.worker.unref();
  }

  send(m: ToWorker): void {
    this.worker.postMessage(m);
  }

  async close(): Promise<void> {
    this.send({ type: 'close' });
    await this.worker.terminate();
  }
}
