/**
 * Main-thread side of a virtio-blk iothread: one worker per iothread id
 * (`--object iothread,id=ID`), shared by every device that names it; each
 * device talks to its own plane in the worker over a channel (messages carry
 * the device id; see iothread-worker.ts and dataplane.ts).
 */
import * as path from 'path';
import { Worker } from 'worker_threads';
import type { OpenedImage } from '@tsvmm/block';
import type { InterruptRecord, PollSettings, VirtioDeviceState } from '@tsvmm/virtio-core';
import type { BlkCounters, BlkExtraState } from './device';

export type ToWorker =
  | {
      type: 'init';
      id: string;
      regions: { fd: number; gpa: number; size: number }[];
      file: string;
      /** The image's descriptors, duplicated for the worker (it opens nothing by path: see RawFileBackend's `opened`). */
      fds?: OpenedImage;
      readonly: boolean;
      direct: boolean;
      aio?: 'io_uring' | 'threads';
      numQueues: number;
      serial: string;
      eventIdx: boolean;
      /** SharedQueueStats of the device: the plane keeps its queues' indices, counters and interrupt records there. */
      stats?: SharedArrayBuffer;
      /** iothread-vq-mapping: the queues this plane processes (default: all); the device's other queues are other workers'. */
      queues?: number[];
      /** The iothread's poll-max-ns / poll-grow / poll-shrink (absent or maxNs 0: no polling). */
      poll?: PollSettings;
      /** BlkIoThread.sent: how many messages the main thread posted (a poll stops while one waits). */
      sent?: SharedArrayBuffer;
    }
  /** DRIVER_OK: the negotiated state as the transport holds it (features, queue layout, indices); loaded as is, not replayed. */
  | { type: 'activate'; virtio: VirtioDeviceState; vectorFds: number[] }
  /** Migration destination: the device state from the stream (exact ring indices, held-back completions). */
  | { type: 'restore'; virtio: VirtioDeviceState; blk: BlkExtraState; vectorFds: number[] }
  /** A kick the main thread took (exit path, operator, raced a notifier's removal): already counted and recorded there. */
  | { type: 'kick'; queue: number }
  /** Watch `fd` (a duplicate of the queue's ioeventfd, now the worker's to close) and take the guest's kicks from it. */
  | { type: 'watch-notifier'; queue: number; fd: number }
  /** The transport removed the queue's ioeventfd from KVM: stop watching and close the duplicate. */
  | { type: 'unwatch-notifier'; queue: number }
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

/** What passes between the main thread and a shared worker: one device's message. */
export type Envelope<M> = { dev: string; m: M };

/**
 * One worker thread of an iothread id, shared by the devices that name it.
 * A device connects a channel (its id); the worker ends when the last
 * channel closes. When the worker dies every device on it hears 'dead' (each
 * needs a reset); the next device to start a plane gets a new worker.
 */
export class IoThreadHost {
  private readonly worker: Worker;
  private readonly channels = new Map<string, (m: FromWorker) => void>();
  private deadReason: string | undefined;
  private ending = false;

  constructor(readonly name: string) {
    this.worker = new Worker(workerScript());
    this.worker.on('message', (e: Envelope<FromWorker>) => this.channels.get(e.dev)?.(e.m));
    this.worker.on('error', (e) => {
      for (const deliver of this.channels.values()) deliver({ type: 'log', message: `iothread ${name}: ${e.stack ?? e.message}` });
      this.died(`iothread ${name} failed: ${e.message}`);
    });
    this.worker.on('exit', (code) => this.died(`iothread ${name} exited (code ${code})`));
    this.worker.unref();
  }

  get alive(): boolean {
    return this.deadReason === undefined;
  }

  /** The devices with a plane on this worker. */
  get devices(): string[] {
    return [...this.channels.keys()];
  }

  private died(reason: string): void {
    if (this.deadReason !== undefined) return;
    this.deadReason = reason;
    if (this.ending) return;
    for (const deliver of [...this.channels.values()]) deliver({ type: 'dead', reason });
  }

  /** A device's channel (BlkIoThread's `connect`). */
  connect(dev: string): (deliver: (m: FromWorker) => void) => BlkIoThreadPort {
    return (deliver) => {
      if (this.channels.has(dev)) throw new Error(`iothread ${this.name}: device ${dev} is already on it`);
      this.channels.set(dev, deliver);
      return {
        postMessage: (m) => this.worker.postMessage({ dev, m } satisfies Envelope<ToWorker>),
        close: async () => {
          this.channels.delete(dev);
          if (this.channels.size > 0) return;
          this.ending = true;
          await this.worker.terminate();
        },
      };
    };
  }
}

/** The iothreads of one VM by id (a worker is started by the first device that uses it, again after it died). */
const hostsByVm = new WeakMap<object, Map<string, IoThreadHost>>();

/** The live worker of iothread `name` in the VM `vm` (any object that identifies the VM), started on first use. */
export function ioThreadHost(vm: object, name: string, log?: (m: string) => void): IoThreadHost {
  let hosts = hostsByVm.get(vm);
  if (!hosts) hostsByVm.set(vm, (hosts = new Map()));
  let h = hosts.get(name);
  if (!h || !h.alive) {
    hosts.set(name, (h = new IoThreadHost(name)));
    log?.(`iothread ${name}: worker thread started`);
  }
  return h;
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
  /** Messages posted to the plane, counted before each post (the plane's poll stops while one waits: init's `sent`). */
  readonly sent = new Int32Array(new SharedArrayBuffer(4));

  /** `connect` gives a port and the function that delivers its messages: a shared worker's channel (IoThreadHost.connect), or a test's. */
  constructor(
    readonly name: string,
    private readonly onMessage: (m: FromWorker) => void,
    connect: (deliver: (m: FromWorker) => void) => BlkIoThreadPort,
  ) {
    this.port = connect((m) => this.receive(m));
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
    Atomics.add(this.sent, 0, 1);
    this.port.postMessage(m);
  }

  /** Sends a message the worker answers (matched by sequence number). */
  request<R extends WorkerReply['type']>(m: Payload<Request>): Promise<Extract<WorkerReply, { type: R }>> {
    if (this.dead) return Promise.reject(this.dead);
    const seq = ++this.seq;
    return new Promise((resolve, reject) => {
      this.pending.set(seq, { resolve: resolve as (m: WorkerReply) => void, reject });
      Atomics.add(this.sent, 0, 1);
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
