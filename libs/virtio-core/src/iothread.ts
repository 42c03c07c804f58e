/**
 * Iothreads (`--object iothread,id=ID`), main-thread side, for any device
 * type: one worker thread per iothread id and VM, shared by every device that
 * names it; each device talks to its own plane in the worker over a channel
 * (messages enveloped by the device id). The worker (iothread-worker.ts)
 * maps guest RAM once and runs, per device, a plane (iothread-plane.ts) built
 * by the factory its device type registered.
 */
import * as path from 'path';
import { Worker } from 'worker_threads';
import type { InterruptRecord } from './stall';
import type { VirtioDeviceState } from './device';
import type { PollCounters, PollSettings } from './poll';

/** A polling plane's figures (the iothread's poll-max-ns): its poller's counters and its adaptive window now. */
export type WorkerPollStats = PollCounters & { windowNs: number };

/** The part of 'init' every plane has; a device type adds its own fields (its backend's descriptors, options). */
export interface IoThreadInit {
  type: 'init';
  /** The plane factory's name (a device type registered with the worker: `virtio-blk`, `virtio-scsi`). */
  plane: string;
  id: string;
  /** Guest RAM (memfds): the worker maps it once, for all its planes. */
  regions: { fd: number; gpa: number; size: number }[];
  eventIdx: boolean;
  /** SharedQueueStats of the device: the plane keeps its queues' indices, counters and interrupt records there. */
  stats?: SharedArrayBuffer;
  /** iothread-vq-mapping: the queues this plane processes (default: all); the device's other queues are other workers'. */
  queues?: number[];
  /** The iothread's poll-max-ns / poll-grow / poll-shrink (absent or maxNs 0: no polling). */
  poll?: PollSettings;
  /** IoThreadChannel.sent: how many messages the main thread posted (a plane's poll stops while one waits). */
  sent?: SharedArrayBuffer;
}

export type IoThreadToWorker<Init extends IoThreadInit = IoThreadInit, Extra = unknown> =
  | Init
  /** DRIVER_OK: the negotiated state as the transport holds it (features, queue layout, indices); loaded as is, not replayed. `device`: the device type's own (e.g. driver-written config). */
  | { type: 'activate'; virtio: VirtioDeviceState; vectorFds: number[]; device?: unknown }
  /** Migration destination: the device state from the stream (exact ring indices, held-back completions, the type's extra state). */
  | { type: 'restore'; virtio: VirtioDeviceState; extra: Extra; vectorFds: number[]; device?: unknown }
  /** A kick the main thread took (exit path, operator, raced a notifier's removal): already counted and recorded there. */
  | { type: 'kick'; queue: number }
  /** Watch `fd` (a duplicate of the queue's ioeventfd, now the worker's to close) and take the guest's kicks from it. */
  | { type: 'watch-notifier'; queue: number; fd: number }
  /** The transport removed the queue's ioeventfd from KVM: stop watching and close the duplicate. */
  | { type: 'unwatch-notifier'; queue: number }
  | { type: 'disabled'; disabled: boolean }
  | { type: 'reset' }
  /** A device type's own message (a new LUN, a config write, a power-on reset): the plane factory's `device` hook. */
  | { type: 'device'; m: unknown }
  /** Migration: take no new request, finish what is in flight, answer 'drained' with the state. */
  | { type: 'drain'; seq: number }
  /** The VM runs again: take requests, process the queues kicked while drained. */
  | { type: 'resume' }
  /** Migration dirty log of the pages the worker writes: answered with 'dirty'. */
  | { type: 'dirty'; seq: number; op: 'start' | 'sync' | 'stop' }
  | { type: 'stats' }
  | { type: 'close' };

export type IoThreadFromWorker<Counters = unknown, Extra = unknown> =
  | { type: 'interrupt'; queue: number }
  | { type: 'broken'; reason: string }
  | { type: 'log'; message: string }
  | { type: 'reset-done' }
  /** Synthesised on the main thread: the worker exited or threw outside the device (the device needs a reset, which starts a new worker). */
  | { type: 'dead'; reason: string }
  | { type: 'drained'; seq: number; virtio: VirtioDeviceState; extra: Extra; error?: undefined }
  | { type: 'dirty'; seq: number; pages: number[]; error?: undefined }
  /** A request the worker could not answer. */
  | { type: 'failed'; seq: number; error: string }
  | { type: 'stats'; counters?: Counters; inFlight: number; queues?: WorkerQueueStats[]; poll?: WorkerPollStats };

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

type AnyFromWorker = IoThreadFromWorker<unknown, unknown>;
type AnyToWorker = IoThreadToWorker<IoThreadInit, unknown>;
type Payload<X> = X extends { seq: number } ? Omit<X, 'seq'> : never;
export type IoThreadReply<F extends AnyFromWorker = AnyFromWorker> = Exclude<Extract<F, { seq: number }>, { type: 'failed' }>;

/**
 * The generic worker script: next to the bundle (apps/vmm's bundle builds it
 * with every plugin's plane factories as `iothread.js`). VMM_IOTHREAD_WORKER
 * names another (unit tests: the built bundle's).
 */
export function ioThreadWorkerScript(): string {
  return process.env.VMM_IOTHREAD_WORKER ?? path.join(__dirname, 'iothread.js');
}

/** What passes between the main thread and a shared worker: one device's message (dev '': the worker's own). */
export type Envelope<M> = { dev: string; m: M };

/** The worker's first message, its own (not a device's): its kernel thread id. */
export type WorkerThreadReport = { type: 'thread'; tid: number };

/** The main thread's own message to the worker (dev ''): end once everything posted before it was handled. */
export type WorkerExitRequest = { type: 'exit' };

/** How long the last device's close waits for the worker to handle what it was sent (its planes' 'close') and end. */
const WORKER_EXIT_WAIT_MS = 2000;

/** How the main thread talks to a device's plane: a worker's channel, or (unit tests) anything that carries the messages. */
export interface IoThreadPort<T = AnyToWorker> {
  postMessage(m: T): void;
  close(): Promise<void>;
}

/**
 * One worker thread of an iothread id, shared by the devices that name it,
 * whatever their type. A device connects a channel (its id); the worker ends
 * when the last channel closes. When the worker dies every device on it
 * hears 'dead' (each needs a reset); the next device to start a plane gets a
 * new worker (ioThreadHost).
 */
export class IoThreadHost {
  private readonly worker: Worker;
  private readonly channels = new Map<string, (m: AnyFromWorker) => void>();
  private deadReason: string | undefined;
  private ending = false;
  /** The worker's kernel thread id, once it reported it (query-iothreads: what an operator pins with taskset). */
  threadId: number | undefined;

  constructor(
    readonly name: string,
    script = ioThreadWorkerScript(),
  ) {
    this.worker = new Worker(script);
    this.worker.on('message', (e: Envelope<AnyFromWorker | WorkerThreadReport>) => {
      if (e.dev === '' && e.m.type === 'thread') this.threadId = (e.m as WorkerThreadReport).tid;
      else this.channels.get(e.dev)?.(e.m as AnyFromWorker);
    });
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

  /** Ends the worker (tests: what a crash of the thread does; every device on it hears 'dead'). */
  terminate(): Promise<number> {
    return this.worker.terminate();
  }

  private died(reason: string): void {
    if (this.deadReason !== undefined) return;
    this.deadReason = reason;
    if (this.ending) return;
    for (const deliver of [...this.channels.values()]) deliver({ type: 'dead', reason });
  }

  /** A device's channel (IoThreadChannel's `connect`). */
  connect<T = AnyToWorker, F = AnyFromWorker>(dev: string): (deliver: (m: F) => void) => IoThreadPort<T> {
    return (deliver) => {
      if (this.channels.has(dev)) throw new Error(`iothread ${this.name}: device ${dev} is already on it`);
      this.channels.set(dev, deliver as (m: AnyFromWorker) => void);
      return {
        postMessage: (m) => this.worker.postMessage({ dev, m } satisfies Envelope<T>),
        close: async () => {
          this.channels.delete(dev);
          if (this.channels.size > 0) return;
          this.ending = true;
          // Not terminate() at once: it drops messages not handled yet, and each plane's 'close' is what closes
          // its descriptors (duplicated images, TAP queues). The worker ends itself after them.
          if (this.alive) {
            const exited = new Promise<void>((resolve) => {
              const t = setTimeout(resolve, WORKER_EXIT_WAIT_MS);
              this.worker.once('exit', () => (clearTimeout(t), resolve()));
            });
            this.worker.postMessage({ dev: '', m: { type: 'exit' } } satisfies Envelope<WorkerExitRequest>);
            await exited;
          }
          await this.worker.terminate();
        },
      };
    };
  }
}

/** The iothreads of one VM by id (a worker is started by the first device that uses it, again after it died). */
const hostsByVm = new WeakMap<object, Map<string, IoThreadHost>>();

/** The iothreads of the VM `vm` whose worker was started (alive or dead), by id. */
export function ioThreadHosts(vm: object): ReadonlyMap<string, IoThreadHost> {
  return hostsByVm.get(vm) ?? new Map();
}

/** The live worker of iothread `name` in the VM `vm` (any object that identifies the VM), started on first use. */
export function ioThreadHost(vm: object, name: string, log?: (m: string) => void, script?: string): IoThreadHost {
  let hosts = hostsByVm.get(vm);
  if (!hosts) hostsByVm.set(vm, (hosts = new Map()));
  let h = hosts.get(name);
  if (!h || !h.alive) {
    hosts.set(name, (h = new IoThreadHost(name, script)));
    log?.(`iothread ${name}: worker thread started`);
  }
  return h;
}

/** A device's channel to its plane on an iothread: fire-and-forget messages, requests answered by sequence number. */
export class IoThreadChannel<T extends AnyToWorker = AnyToWorker, F extends AnyFromWorker = AnyFromWorker> {
  private readonly port: IoThreadPort<T>;
  private seq = 0;
  private readonly pending = new Map<number, { resolve: (m: IoThreadReply<F>) => void; reject: (e: Error) => void }>();
  private dead: Error | undefined;
  private closing = false;
  /** Messages posted to the plane, counted before each post (a polling plane stops its poll while one waits: init's `sent`). */
  readonly sent = new Int32Array(new SharedArrayBuffer(4));

  /** `connect` gives a port and the function that delivers its messages: a shared worker's channel (IoThreadHost.connect), or a test's. */
  constructor(
    readonly name: string,
    private readonly onMessage: (m: F) => void,
    connect: (deliver: (m: F) => void) => IoThreadPort<T>,
  ) {
    this.port = connect((m) => this.receive(m));
  }

  private receive(m: F): void {
    if (m.type === 'dead') {
      // A port (tests) reports its worker gone, as the Worker's exit does.
      this.died(m.reason);
      return;
    }
    if ('seq' in m) {
      const p = this.pending.get(m.seq);
      this.pending.delete(m.seq);
      if (m.type === 'failed') p?.reject(new Error(`iothread ${this.name}: ${m.error}`));
      else p?.resolve(m as IoThreadReply<F>);
      return;
    }
    this.onMessage(m);
  }

  /** The worker is gone without being asked to close: fail its requests and tell the device once. */
  private died(reason: string): void {
    const first = !this.dead;
    this.fail(new Error(reason));
    if (first && !this.closing) this.onMessage({ type: 'dead', reason } as F);
  }

  get alive(): boolean {
    return !this.dead;
  }

  private fail(e: Error): void {
    this.dead ??= e;
    for (const p of this.pending.values()) p.reject(e);
    this.pending.clear();
  }

  send(m: T): void {
    if (this.dead) return;
    Atomics.add(this.sent, 0, 1);
    this.port.postMessage(m);
  }

  /** Sends a message the worker answers (matched by sequence number). */
  request(m: { type: 'drain' }): Promise<Extract<IoThreadReply<F>, { type: 'drained' }>>;
  request(m: { type: 'dirty'; op: 'start' | 'sync' | 'stop' }): Promise<Extract<IoThreadReply<F>, { type: 'dirty' }>>;
  request(m: Payload<Extract<AnyToWorker, { seq: number }>>): Promise<IoThreadReply<F>> {
    if (this.dead) return Promise.reject(this.dead);
    const seq = ++this.seq;
    return new Promise((resolve, reject) => {
      this.pending.set(seq, { resolve, reject });
      Atomics.add(this.sent, 0, 1);
      this.port.postMessage({ ...m, seq } as unknown as T);
    });
  }

  async close(): Promise<void> {
    this.closing = true;
    this.send({ type: 'close' } as T);
    this.fail(new Error(`iothread ${this.name} closed`));
    await this.port.close();
  }
}
