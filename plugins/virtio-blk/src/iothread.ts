/**
 * Main-thread side of a virtio-blk iothread: one worker per iothread id,
 * messages in both directions (see iothread-worker.ts and dataplane.ts).
 */
import * as path from 'path';
import { Worker } from 'worker_threads';
import type { InterruptRecord, VirtioDeviceState } from '@tsvmm/virtio-core';
import type { BlkCounters, BlkExtraState } from './device';

export type ToWorker =
  | {
      type: 'init';
      id: string;
      regions: { fd: number; gpa: number; size: number }[];
      file: string;
      readonly: boolean;
      direct: boolean;
      aio?: 'io_uring' | 'threads';
      numQueues: number;
      serial: string;
      eventIdx: boolean;
    }
  | {
      type: 'activate';
      driverFeatures: string;
      queues: { ready: boolean; size: number; descTable: number; availRing: number; usedRing: number }[];
      vectorFds: number[];
      disabled: boolean;
    }
  /** Migration destination: the device state from the stream (exact ring indices, held-back completions). */
  | { type: 'restore'; virtio: VirtioDeviceState; blk: BlkExtraState; vectorFds: number[] }
  | { type: 'kick'; queue: number }
  | { type: 'disabled'; disabled: boolean }
  | { type: 'reset' }
  /** Migration: take no new request, finish what is in flight, answer 'drained' with the state. */
  | { type: 'drain'; seq: number }
  /** The VM runs again: take requests, process the queues kicked while drained. */
  | { type: 'resume' }
  /** Migration dirty log of the pages the worker writes: answered with 'dirty'. */
  | { type: 'dirty'; seq: number; op: 'start' | 'sync' | 'stop' }
  | { type: 'stats' }
  | { type: 'close' };

export type FromWorker =
  | { type: 'interrupt'; queue: number }
  | { type: 'broken'; reason: string }
  | { type: 'log'; message: string }
  | { type: 'reset-done' }
  /** Synthesised on the main thread: the worker exited or threw outside the device (the device needs a reset, which starts a new worker). */
  | { type: 'dead'; reason: string }
  | { type: 'drained'; seq: number; virtio: VirtioDeviceState; blk: BlkExtraState; error?: undefined }
  | { type: 'dirty'; seq: number; pages: number[]; error?: undefined }
  /** A request the worker could not answer. */
  | { type: 'failed'; seq: number; error: string }
  | { type: 'stats'; blk?: BlkCounters; inFlight: number; queues?: WorkerQueueStats[] };

/** A queue as the worker sees it (x-query-virtio-queue-status with an iothread). */
export interface WorkerQueueStats {
  lastAvailIdx: number;
  usedIdx: number;
  chains: number;
  interrupts: number;
  suppressed: number;
  /** The worker's interrupt record of the queue (the stall detector's interrupt side). */
  interrupt?: InterruptRecord;
}

export type WorkerReply = Exclude<Extract<FromWorker, { seq: number }>, { type: 'failed' }>;
type Request = Extract<ToWorker, { seq: number }>;
type Payload<T> = T extends Request ? Omit<T, 'seq'> : never;

/** The bundled worker script sits next to the bundle (esbuild builds it as its own entry). */
export function workerScript(): string {
  return process.env.VMM_BLK_IOTHREAD_WORKER ?? path.join(__dirname, 'virtio-blk-iothread.js');
}

/** How the main thread talks to its data plane: a worker, or (unit tests) anything that carries the messages. */
export interface BlkIoThreadPort {
  postMessage(m: ToWorker): void;
  close(): Promise<void>;
}

export class BlkIoThread {
  private readonly port: BlkIoThreadPort;
  private seq = 0;
  private readonly pending = new Map<number, { resolve: (m: WorkerReply) => void; reject: (e: Error) => void }>();
  private dead: Error | undefined;
  private closing = false;

  /** `connect` (tests) gives a port and the function that delivers its messages; default: a Worker running workerScript(). */
  constructor(
    readonly name: string,
    private readonly onMessage: (m: FromWorker) => void,
    connect?: (deliver: (m: FromWorker) => void) => BlkIoThreadPort,
  ) {
    if (connect) {
      this.port = connect((m) => this.receive(m));
      return;
    }
    const worker = new Worker(workerScript());
    worker.on('message', (m: FromWorker) => this.receive(m));
    worker.on('error', (e) => {
      onMessage({ type: 'log', message: `iothread ${name}: ${e.stack ?? e.message}` });
      this.died(`iothread ${name} failed: ${e.message}`);
    });
    worker.on('exit', (code) => this.died(`iothread ${name} exited (code ${code})`));
    worker.unref();
    this.port = { postMessage: (m) => worker.postMessage(m), close: async () => void (await worker.terminate()) };
  }

  private receive(m: FromWorker): void {
    if (m.type === 'dead') {
      // A port (tests) reports its worker gone, as the Worker's exit does.
      this.died(m.reason);
      return;
    }
    if ('seq' in m) {
      const p = this.pending.get(m.seq);
      this.pending.delete(m.seq);
      if (m.type === 'failed') p?.reject(new Error(`iothread ${this.name}: ${m.error}`));
      else p?.resolve(m);
      return;
    }
    this.onMessage(m);
  }

  /** The worker is gone without being asked to close: fail its requests and tell the device once. */
  private died(reason: string): void {
    const first = !this.dead;
    this.fail(new Error(reason));
    if (first && !this.closing) this.onMessage({ type: 'dead', reason });
  }

  get alive(): boolean {
    return !this.dead;
  }

  private fail(e: Error): void {
    this.dead ??= e;
    for (const p of this.pending.values()) p.reject(e);
    this.pending.clear();
  }

  send(m: ToWorker): void {
    if (this.dead) return;
    this.port.postMessage(m);
  }

  /** Sends a message the worker answers (matched by sequence number). */
  request<R extends WorkerReply['type']>(m: Payload<Request>): Promise<Extract<WorkerReply, { type: R }>> {
    if (this.dead) return Promise.reject(this.dead);
    const seq = ++this.seq;
    return new Promise((resolve, reject) => {
      this.pending.set(seq, { resolve: resolve as (m: WorkerReply) => void, reject });
      this.port.postMessage({ ...m, seq } as ToWorker);
    });
  }

  async close(): Promise<void> {
    this.closing = true;
    this.send({ type: 'close' });
    this.fail(new Error(`iothread ${this.name} closed`));
    await this.port.close();
  }
}
