/**
 * The virtio-scsi host adapter (virtio 1.2 section 5.6): queue 0 is the
 * control queue (task management, asynchronous notification), queue 1 the
 * event queue, queues 2.. the request queues. Commands go to an ScsiTarget
 * (@tsvmm/scsi), which knows nothing of virtqueues; data moves straight between
 * the image and guest memory.
 */
import { ScsiLunState, ScsiResponse, ScsiTarget } from '@tsvmm/scsi';
import {
  DataPlaneDevice,
  Descriptor,
  Fields,
  GuestMemory,
  InFlightRequest,
  readConfigImage,
  SplitVirtqueue,
  StateError,
  views as guestViews,
  within,
} from '@tsvmm/virtio-core';

/** Buffers of one held-back response in a migrated state: a chain is at most a queue long. */
const MAX_HELD_BUFS = 32768;
import * as S from './generated/virtio-scsi-uapi';
import { describeScsiChainError, parseCmdRequest, parseControlRequest, ScsiCmdRequest, ScsiControlRequest } from './request';

export const VIRTIO_ID_SCSI = 8;
export const QUEUE_SIZE = 256;
const CONTROL_QUEUE = 0;
const EVENT_QUEUE = 1;
/** The first request queue. */
export const REQUEST_QUEUE_BASE = 2;

/** virtio-scsi queue names for the monitor (spec 5.6.2): controlq, eventq, then request queues. */
export function scsiQueueName(queue: number): string {
  return queue === 0 ? 'ctrl' : queue === EVENT_QUEUE ? 'event' : `req${queue - REQUEST_QUEUE_BASE}`;
}
/** Largest transfer per command, in 512-byte sectors (what the driver may ask in one request). */
const MAX_SECTORS = 0xffff;
const CMD_PER_LUN = 128;
/** virtio-scsi can address LUNs 0..16383 with flat addressing. */
export const MAX_LUN = 16383;
/** FUNCTION COMPLETE shares its value with VIRTIO_SCSI_S_OK. */
const VIRTIO_SCSI_S_FUNCTION_COMPLETE = S.VIRTIO_SCSI_S_OK;

export interface VirtioScsiOptions {
  id: string;
  /** Request queues. */
  numQueues: number;
  eventIdx?: boolean;
  log?: (m: string) => void;
  /** The LUNs to serve (default: a new, empty target). A vhost-user backend keeps one across connections. */
  target?: ScsiTarget;
}

export interface ScsiAdapterCounters {
  commands: number;
  overruns: number;
  badTarget: number;
  aborted: number;
  tmf: number;
  anQueries: number;
}

/**
 * Migration: what the adapter holds beyond VirtioDevice.saveState(). Every
 * field is optional; absent means what a VMM without it did (no held-back
 * responses, every LUN in its power-on state).
 */
export interface VirtioScsiExtraState {
  /** Per LUN: pending unit attention, mode parameters (ScsiTarget.saveState). */
  luns?: Record<string, ScsiLunState>;
  /** Response bytes held back while bus mastering was off. */
  pendingWrites?: { bufs: { addr: number; len: number }[]; bytes: string }[];
  /** The driver-written config fields, when not the defaults (absent: sense_size 96, cdb_size 32). */
  config?: { senseSize: number; cdbSize: number };
}

/** A command handed to the target and not yet answered (what task management looks at). */
interface InFlight {
  request: InFlightRequest;
  req: ScsiCmdRequest;
  lun: number;
  /** The command's abort signal (ScsiAbortSignal): a flag, not an AbortController, which costs ~10 µs per command in Node 20. */
  aborted: boolean;
  /** Why the transport ended it early (ABORTED for ABORT TASK[ SET], RESET for resets). */
  endedBy?: number;
  done: Promise<void>;
}

/** What the main thread sends the adapter's plane on an iothread beyond the generic messages ('device'). */
export interface ScsiPlaneMessage {
  /** The driver-written config fields (at activation, restore, and on each write). */
  config?: { senseSize: number; cdbSize: number };
  /** A system reset: every LUN's power-on unit attention. */
  powerOn?: true;
}

export class VirtioScsiDevice extends DataPlaneDevice {
  readonly target: ScsiTarget;
  readonly scsi: ScsiAdapterCounters = { commands: 0, overruns: 0, badTarget: 0, aborted: 0, tmf: 0, anQueries: 0 };
  private readonly config = new Uint8Array(S.SIZEOF_virtio_scsi_config);
  /** Commands handed to the target and not yet answered (task management); the completion path tracks every request. */
  private readonly inFlight = new Set<InFlight>();

  constructor(memory: GuestMemory, opts: VirtioScsiOptions) {
    super(memory, {
      id: opts.id,
      deviceId: VIRTIO_ID_SCSI,
      numQueues: REQUEST_QUEUE_BASE + opts.numQueues,
      queueMaxSize: QUEUE_SIZE,
      features: 0n,
      eventIdx: opts.eventIdx,
      log: opts.log,
    });
    this.target = opts.target ?? new ScsiTarget();
    const dv = new DataView(this.config.buffer);
    dv.setUint32(S.OFF_virtio_scsi_config_num_queues, opts.numQueues, true);
    dv.setUint32(S.OFF_virtio_scsi_config_seg_max, QUEUE_SIZE - 2, true);
    dv.setUint32(S.OFF_virtio_scsi_config_max_sectors, MAX_SECTORS, true);
    dv.setUint32(S.OFF_virtio_scsi_config_cmd_per_lun, CMD_PER_LUN, true);
    dv.setUint32(S.OFF_virtio_scsi_config_event_info_size, S.SIZEOF_virtio_scsi_event, true);
    dv.setUint16(S.OFF_virtio_scsi_config_max_channel, 0, true);
    dv.setUint16(S.OFF_virtio_scsi_config_max_target, 0, true); // one target: 0
    dv.setUint32(S.OFF_virtio_scsi_config_max_lun, MAX_LUN, true);
    this.resetConfig();
  }

  /** sense_size and cdb_size are the driver's to choose; a reset restores the defaults. */
  private resetConfig(): void {
    const dv = new DataView(this.config.buffer);
    dv.setUint32(S.OFF_virtio_scsi_config_sense_size, S.VIRTIO_SCSI_SENSE_DEFAULT_SIZE, true);
    dv.setUint32(S.OFF_virtio_scsi_config_cdb_size, S.VIRTIO_SCSI_CDB_DEFAULT_SIZE, true);
  }

  /** Read for every command: one view, not a new DataView per read. */
  private readonly configView = new DataView(this.config.buffer);

  private get senseSize(): number {
    return this.configView.getUint32(S.OFF_virtio_scsi_config_sense_size, true);
  }

  private get cdbSize(): number {
    return this.configView.getUint32(S.OFF_virtio_scsi_config_cdb_size, true);
  }

  readConfig(offset: number, size: number): number {
    return readConfigImage(this.config, offset, size);
  }

  override writeConfig(offset: number, size: number, value: number): void {
    // Only sense_size and cdb_size are driver-writable. Bounded so a header stays a sane size.
    if (size !== 4) return;
    if (offset === S.OFF_virtio_scsi_config_sense_size && value >>> 0 <= 252) {
      new DataView(this.config.buffer).setUint32(offset, value >>> 0, true);
    } else if (offset === S.OFF_virtio_scsi_config_cdb_size && value >>> 0 >= 6 && value >>> 0 <= 256) {
      new DataView(this.config.buffer).setUint32(offset, value >>> 0, true);
    } else return;
    // On an iothread the plane parses the requests: it needs the sizes the driver chose.
    if (this.iothread) this.sendToPlanes(this.planeDeviceState());
  }

  /** The driver-written config, for the plane on an iothread ('activate', 'restore', config writes). */
  protected override planeDeviceState(): ScsiPlaneMessage {
    return { config: { senseSize: this.senseSize, cdbSize: this.cdbSize } };
  }

  /** The plane's side of ScsiPlaneMessage (on the iothread's copy of the device). */
  applyPlaneMessage(m: ScsiPlaneMessage): void {
    if (m.config) {
      this.configView.setUint32(S.OFF_virtio_scsi_config_sense_size, m.config.senseSize, true);
      this.configView.setUint32(S.OFF_virtio_scsi_config_cdb_size, m.config.cdbSize, true);
    }
    if (m.powerOn) this.target.reset('power-on');
  }

  /**
   * A message for the plane on a live iothread, made only if one takes it (a
   * LUN defined after the adapter, with duplicated descriptors: the plugin's).
   */
  sendPlaneMessage(make: () => unknown): void {
    this.sendToLivePlanes(make);
  }

  /** A system reset: every LUN reports its power-on unit attention (the plane's LUNs too, on an iothread). */
  powerOnReset(): void {
    this.target.reset('power-on');
    if (this.iothread) this.sendToPlanes({ powerOn: true } satisfies ScsiPlaneMessage);
  }

  override queueName(queue: number): string {
    return scsiQueueName(queue);
  }

  override deviceInfo(): Record<string, unknown> {
    const luns: Record<string, unknown> = {};
    for (const l of this.target.luns) luns[String(l)] = this.target.lun(l)!.info();
    const own = { 'request-queues': this.queues.length - REQUEST_QUEUE_BASE, 'in-flight': this.inFlight.size, ...this.scsi, luns };
    if (!this.iothread) return own;
    // On an iothread: the plane's counters and LUN facts as it last reported them (within 100 ms; exact after a drain).
    return {
      ...own,
      ...(this.workerCounters<Record<string, unknown>>() ?? {}),
      'in-flight': this.workerInFlight(),
      iothread: this.iothread,
    };
  }

  /** The counters and LUN facts of this copy (what the plane on an iothread reports). */
  planeCounters(): Record<string, unknown> {
    const luns: Record<string, unknown> = {};
    for (const l of this.target.luns) luns[String(l)] = this.target.lun(l)!.info();
    return { ...this.scsi, luns };
  }

  protected override onReset(): void {
    super.onReset(); // the iothread's plane (a dead worker is restarted)
    for (const f of this.inFlight) f.aborted = true;
    this.inFlight.clear();
    this.resetConfig();
  }

  /** The event queue's buffers wait for events: never a kick-side stall. */
  override holdsBuffers(queue: number): boolean {
    return queue === EVENT_QUEUE;
  }

  protected processQueue(q: SplitVirtqueue): void {
    if (q.index === EVENT_QUEUE) return; // buffers wait there for events; this adapter sends none (no hotplug)
    do {
      q.disableNotification();
      for (let taken = this.popRequest(q); taken; taken = this.popRequest(q)) {
        const { chain, request } = taken;
        if (q.index === CONTROL_QUEUE) {
          const parsed = parseControlRequest(this.memory, chain);
          if ('error' in parsed) {
            this.abandonRequest(request);
            return this.markBroken(describeScsiChainError(parsed.error));
          }
          this.guardPromise(
            'control request',
            this.control(request, parsed.request).finally(() => this.abandonRequest(request)),
          );
        } else {
          const parsed = parseCmdRequest(this.memory, chain, this.cdbSize, this.senseSize);
          if ('error' in parsed) {
            this.abandonRequest(request);
            return this.markBroken(describeScsiChainError(parsed.error));
          }
          this.command(request, parsed.request);
        }
      }
    } while (this.canProcess && q.enableNotification());
  }

  // --- request queues -------------------------------------------------------

  private command(request: InFlightRequest, req: ScsiCmdRequest): void {
    this.scsi.commands++;
    const { address } = req;
    if (!address.valid || address.target !== 0) {
      this.scsi.badTarget++;
      this.respond(request, req, { response: S.VIRTIO_SCSI_S_BAD_TARGET });
      return;
    }
    const views = (bufs: Descriptor[]) => guestViews(this.memory, bufs); // a buffer across a RAM split is two views
    const f: InFlight = { request, req, lun: address.lun, aborted: false, done: Promise.resolve() };
    f.done = this.target
      .execute(address.lun, { cdb: req.cdb, dataOut: views(req.dataOut), dataIn: views(req.dataIn), signal: f })
      .then(
        (r) => ({ r, failed: undefined as unknown }),
        (e: unknown) => ({ r: undefined, failed: e }),
      )
      // Inside the device fault boundary: a throw here breaks this device, and f.done still resolves.
      .then(
        this.guarded('command completion', ({ r, failed }: { r: ScsiResponse | undefined; failed: unknown }) => {
          this.inFlight.delete(f);
          if (!this.isCurrent(request)) return this.abandonRequest(request); // the driver reset the device meanwhile
          if (f.endedBy !== undefined) {
            this.scsi.aborted++;
            this.respond(request, req, { response: f.endedBy });
          } else if (failed !== undefined || !r) {
            this.log(`${this.id}: lun ${address.lun}: ${(failed as Error)?.message ?? 'no response'}`);
            this.respond(request, req, { response: S.VIRTIO_SCSI_S_FAILURE });
          } else if (r.overrun) {
            this.scsi.overruns++;
            this.respond(request, req, { response: S.VIRTIO_SCSI_S_OVERRUN });
          } else this.respond(request, req, { response: S.VIRTIO_SCSI_S_OK, result: r });
        }),
      )
      .finally(() => this.abandonRequest(request));
    this.inFlight.add(f);
  }

  /** Writes the response header (and sense) and puts the chain on the used ring. */
  private respond(request: InFlightRequest, req: ScsiCmdRequest, a: { response: number; result?: ScsiResponse }): void {
    const resp = new Uint8Array(req.responseLength);
    const dv = new DataView(resp.buffer);
    const dataBytes = a.result?.dataInLength ?? 0;
    let offered = 0;
    for (const d of req.dataIn) offered += d.len;
    for (const d of req.dataOut) offered += d.len;
    if (a.result) {
      const sense = a.result.sense.subarray(0, this.senseSize);
      resp.set(sense, S.OFF_virtio_scsi_cmd_resp_sense);
      dv.setUint32(S.OFF_virtio_scsi_cmd_resp_sense_len, sense.length, true);
      dv.setUint32(S.OFF_virtio_scsi_cmd_resp_resid, a.result.residual, true);
      resp[S.OFF_virtio_scsi_cmd_resp_status] = a.result.status;
    } else dv.setUint32(S.OFF_virtio_scsi_cmd_resp_resid, offered, true); // nothing transferred
    resp[S.OFF_virtio_scsi_cmd_resp_response] = a.response;
    // Data-in landed in views handed out when the command started: record the pages again now (dirty logging).
    for (const d of req.dataIn) this.memory.noteWritten(d.addr, d.len);
    this.completeRequest(request, req.responseLength + dataBytes, { bufs: req.response, bytes: resp });
  }

  // --- control queue --------------------------------------------------------

  private async control(request: InFlightRequest, req: ScsiControlRequest): Promise<void> {
    let bytes: Uint8Array;
    if (req.type === 'tmf') {
      this.scsi.tmf++;
      bytes = Uint8Array.of(await this.taskManagement(req));
    } else if (req.type === 'an') {
      this.scsi.anQueries++;
      // No asynchronous notifications are supported: event_actual 0.
      bytes = new Uint8Array(S.SIZEOF_virtio_scsi_ctrl_an_resp);
      bytes[S.OFF_virtio_scsi_ctrl_an_resp_response] =
        req.address.valid && req.address.target === 0 ? S.VIRTIO_SCSI_S_OK : S.VIRTIO_SCSI_S_BAD_TARGET;
    } else {
      bytes = Uint8Array.of(S.VIRTIO_SCSI_S_FAILURE);
    }
    this.completeRequest(request, bytes.length, { bufs: req.response, bytes });
  }

  /**
   * SAM task management. Commands cannot be pulled back from the image's I/O
   * once submitted, so an aborted command is answered ABORTED (or RESET) when
   * its I/O ends, and the function completes only after that: the guest never
   * gets a buffer back while the device may still write into it.
   */
  private async taskManagement(req: Extract<ScsiControlRequest, { type: 'tmf' }>): Promise<number> {
    const { address, subtype } = req;
    if (!address.valid || address.target !== 0) return S.VIRTIO_SCSI_S_BAD_TARGET;
    const onLun = [...this.inFlight].filter((f) => f.lun === address.lun);
    const end = async (list: InFlight[], why: number) => {
      for (const f of list) {
        f.endedBy ??= why;
        f.aborted = true;
      }
      await Promise.all(list.map((f) => f.done));
    };
    const lunExists = this.target.lun(address.lun) !== undefined;
    switch (subtype) {
      case S.VIRTIO_SCSI_T_TMF_ABORT_TASK:
        await end(
          onLun.filter((f) => f.req.tag === req.tag),
          S.VIRTIO_SCSI_S_ABORTED,
        );
        return VIRTIO_SCSI_S_FUNCTION_COMPLETE;
      case S.VIRTIO_SCSI_T_TMF_ABORT_TASK_SET:
      case S.VIRTIO_SCSI_T_TMF_CLEAR_TASK_SET:
        await end(onLun, S.VIRTIO_SCSI_S_ABORTED);
        return VIRTIO_SCSI_S_FUNCTION_COMPLETE;
      case S.VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET:
        if (!lunExists) return S.VIRTIO_SCSI_S_INCORRECT_LUN;
        await end(onLun, S.VIRTIO_SCSI_S_RESET);
        this.target.lun(address.lun)?.reset('lun-reset');
        return VIRTIO_SCSI_S_FUNCTION_COMPLETE;
      case S.VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET:
        await end([...this.inFlight], S.VIRTIO_SCSI_S_RESET);
        this.target.reset('nexus-reset');
        return VIRTIO_SCSI_S_FUNCTION_COMPLETE;
      case S.VIRTIO_SCSI_T_TMF_QUERY_TASK:
        return onLun.some((f) => f.req.tag === req.tag) ? S.VIRTIO_SCSI_S_FUNCTION_SUCCEEDED : VIRTIO_SCSI_S_FUNCTION_COMPLETE;
      case S.VIRTIO_SCSI_T_TMF_QUERY_TASK_SET:
        return onLun.length ? S.VIRTIO_SCSI_S_FUNCTION_SUCCEEDED : VIRTIO_SCSI_S_FUNCTION_COMPLETE;
      default:
        // CLEAR ACA (no ACA support) and anything unknown.
        return S.VIRTIO_SCSI_S_FUNCTION_REJECTED;
    }
  }

  // drain() (DataPlaneDevice): every command and control request in flight and the batched interrupts of their
  // completions (an orderly stop; migration: nothing lands in guest memory after it resolves); on an iothread, the plane's.

  /** Migration: the adapter's own fields (taken after drain, with the VM stopped). */
  saveScsiState(): VirtioScsiExtraState | undefined {
    // On an iothread the plane's state, taken by the last drain (the LUNs' unit attentions and held responses are there).
    if (this.iothread) return this.withConfig(structuredClone((this.drainedState().extra as VirtioScsiExtraState | undefined) ?? {}));
    if (this.inFlightCount > 0) throw new Error(`${this.id}: ${this.inFlightCount} requests still in flight (not drained)`);
    const s: VirtioScsiExtraState = {};
    const luns = Object.fromEntries(Object.entries(this.target.saveState()).filter(([, v]) => Object.keys(v).some((k) => k !== 'kind')));
    if (Object.keys(luns).length) s.luns = luns;
    const held = this.heldWrites;
    if (held.length)
      s.pendingWrites = held.map((p) => ({
        bufs: p.bufs.map((d) => ({ addr: d.addr, len: d.len })),
        bytes: Buffer.from(p.bytes).toString('base64'),
      }));
    return this.withConfig(s);
  }

  /** Adds the driver-written config (this thread's: config writes land here) when not the defaults. */
  private withConfig(s: VirtioScsiExtraState): VirtioScsiExtraState | undefined {
    delete s.config;
    if (this.senseSize !== S.VIRTIO_SCSI_SENSE_DEFAULT_SIZE || this.cdbSize !== S.VIRTIO_SCSI_CDB_DEFAULT_SIZE)
      s.config = { senseSize: this.senseSize, cdbSize: this.cdbSize };
    return Object.keys(s).length ? s : undefined;
  }

  /**
   * Migration: parses the adapter's own fields without applying them: LUN
   * states the target accepts, held-back responses (at most one per
   * descriptor of every queue) whose buffers are guest RAM and hold their bytes.
   */
  checkScsiState(raw: unknown): {
    luns: Record<string, ScsiLunState>;
    writes: { bufs: Descriptor[]; bytes: Uint8Array }[];
    config?: { senseSize: number; cdbSize: number };
  } {
    if (raw === undefined) return { luns: {}, writes: [] };
    const f = new Fields(raw, '');
    // The bounds writeConfig enforces.
    const config = f.optional('config', (g, k) => {
      const c = new Fields(g.raw(k), g.at(k));
      const senseSize = c.int('senseSize', 0, 252);
      const cdbSize = c.int('cdbSize', 6, 256);
      return { senseSize, cdbSize };
    });
    const maxWrites = this.queues.reduce((n, q) => n + q.maxSize, 0);
    const writes =
      f.optional('pendingWrites', (g, k) =>
        g.array(k, maxWrites, (v, p) => {
          const w = new Fields(v, p);
          const bufs = w.array('bufs', MAX_HELD_BUFS, (d, dp) => {
            const e = new Fields(d, dp);
            const addr = e.uint('addr');
            const len = e.u32('len');
            if (!this.memory.checkRange(addr, len))
              throw new StateError(dp, `[0x${addr.toString(16)}, +0x${len.toString(16)}) is not guest RAM`);
            return { addr, len, writable: true } as Descriptor;
          });
          const room = bufs.reduce((n, d) => n + d.len, 0);
          const bytes = w.base64('bytes', undefined, room);
          return { bufs, bytes };
        }),
      ) ?? [];
    const luns = (f.raw('luns') ?? {}) as Record<string, ScsiLunState>;
    within('luns', () => {
      try {
        this.target.checkState(luns);
      } catch (e) {
        throw e instanceof StateError ? e : new StateError('', (e as Error).message);
      }
    });
    return { luns, writes, config };
  }

  /** Migration: the counterpart of saveScsiState; checks everything (checkScsiState) before applying. */
  loadScsiState(raw: VirtioScsiExtraState | undefined): void {
    const s = this.checkScsiState(raw);
    this.target.loadState(s.luns);
    this.resetConfig();
    if (s.config) {
      this.configView.setUint32(S.OFF_virtio_scsi_config_sense_size, s.config.senseSize, true);
      this.configView.setUint32(S.OFF_virtio_scsi_config_cdb_size, s.config.cdbSize, true);
    }
    if (this.iothread) {
      // The plane takes the held responses (sent with 'restore' by loadState, which follows).
      this.setHeldWrites([]);
      this.restoredExtra = structuredClone(raw);
      return;
    }
    this.setHeldWrites(s.writes);
  }

  async destroy(): Promise<void> {
    if (this.iothread) await this.closePlanes();
    else await this.drain();
    this.target.close();
  }
}
