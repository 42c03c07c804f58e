/**
 * The vhost-user-scsi back-end: accepts one front-end connection at a time on
 * a unix socket, maps the guest RAM it is handed (SET_MEM_TABLE fds), and runs
 * the virtio-scsi device model of @tsvmm/virtio-scsi-core on the rings the
 * front-end describes. Kicks arrive on the front-end's kick eventfds;
 * completions are signalled on its call eventfds; a guest error in a ring
 * (the device model's needs-reset) is signalled on the error eventfds.
 *
 * When a connection ends the rings stop and the next connection starts from
 * scratch (the LUNs stay open): a VMM may reconnect.
 */
import {
  closeFds,
  EventFd,
  FdWatch,
  mapGuestRam,
  mapSharedFd,
  RamPiece,
  SocketClosedError,
  UnixListener,
  UnixSocket,
} from '@tsvmm/kvm-native';
import { ScsiTarget } from '@tsvmm/scsi';
import { GuestMemory, SplitVirtqueue, splitRingSizes, virtioUapi as V } from '@tsvmm/virtio-core';
import {
  decodeHeader,
  decodeLogDescription,
  decodeMemTable,
  decodeVringAddr,
  DirtyLogWriter,
  VHOST_F_LOG_ALL,
  VHOST_VRING_F_LOG,
  decodeVringState,
  encodeMessage,
  encodeVringState,
  FLAG_NEED_REPLY,
  FLAG_REPLY,
  HEADER_SIZE,
  MAX_MEM_REGIONS,
  MAX_PAYLOAD,
  MemRegion,
  readU64,
  requestName,
  u64Payload,
  VhostUserProtocolFeature as PF,
  VhostUserRequest as R,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VRING_IDX_MASK,
  VRING_NOFD_MASK,
} from '@tsvmm/vhost-user';
import { REQUEST_QUEUE_BASE, VirtioScsiDevice } from '@tsvmm/virtio-scsi-core';

const bit = (n: number) => 1n << BigInt(n);
/** What this back-end offers: VERSION_1, INDIRECT_DESC, EVENT_IDX, and the vhost-user protocol features. */
export const BACKEND_FEATURES =
  bit(V.VIRTIO_F_VERSION_1) | bit(V.VIRTIO_RING_F_INDIRECT_DESC) | bit(V.VIRTIO_RING_F_EVENT_IDX) | bit(VHOST_USER_F_PROTOCOL_FEATURES);
export const BACKEND_PROTOCOL_FEATURES = bit(PF.MQ) | bit(PF.REPLY_ACK);
/** With dirty logging (the default): VHOST_F_LOG_ALL and VHOST_USER_PROTOCOL_F_LOG_SHMFD on top. */
export const LOGGING_FEATURES = bit(VHOST_F_LOG_ALL);
export const LOGGING_PROTOCOL_FEATURES = bit(PF.LOG_SHMFD);
/** Largest dirty log accepted: 1 GiB of bitmap covers 32 TiB of guest-physical space. */
const MAX_LOG_BYTES = 1 << 30;
const ALL_STATUS = V.VIRTIO_CONFIG_S_ACKNOWLEDGE | V.VIRTIO_CONFIG_S_DRIVER | V.VIRTIO_CONFIG_S_FEATURES_OK | V.VIRTIO_CONFIG_S_DRIVER_OK;

/** The device model with a way to look at a ring without a kick (ring start), and used-ring logging. */
class BackendScsiDevice extends VirtioScsiDevice {
  /** Set while the front-end logs a ring's used-ring writes (VHOST_VRING_F_LOG): called after each write to it. */
  usedWritten: ((q: SplitVirtqueue) => void) | undefined;

  poll(i: number): void {
    const q = this.queues[i];
    // Inside the device fault boundary and the chain budget, as a kick is.
    if (this.canProcess && q.active) this.service(q, `ring ${i} start`, () => this.processQueue(q));
  }

  protected override processQueue(q: SplitVirtqueue): void {
    super.processQueue(q);
    this.usedWritten?.(q); // notification suppression (flags, avail_event) lives in the used ring
  }

  protected override pushUsed(q: SplitVirtqueue, head: number, len: number): void {
    super.pushUsed(q, head, len);
    this.usedWritten?.(q);
  }
}

export interface RingCounters {
  /** Kicks read from the ring's kick eventfd. */
  kicks: number;
  /** Signals written to the ring's call eventfd. */
  calls: number;
}

interface Ring {
  /** VHOST_VRING_F_LOG: log used-ring writes with this guest address as the ring's start. */
  logUsedAt?: bigint;
  num?: number;
  base: number;
  addr?: { desc: bigint; used: bigint; avail: bigint };
  kick?: EventFd;
  call?: EventFd;
  err?: EventFd;
  enabled: boolean;
  started: boolean;
}

interface MappedRegion extends MemRegion {
  pieces: RamPiece[];
}

export interface ServerOptions {
  socketPath: string;
  target: ScsiTarget;
  /** Request queues offered (the device has 2 + this many rings). */
  numQueues: number;
  log(message: string): void;
  /** Log every request (--verbose). */
  verbose?: boolean;
  /** Offer dirty logging (VHOST_USER_PROTOCOL_F_LOG_SHMFD, VHOST_F_LOG_ALL); default true. */
  logShmfd?: boolean;
}

class RequestFailed extends Error {}

export class VhostUserScsiServer {
  readonly counters: RingCounters[];
  connections = 0;
  readonly features: bigint;
  readonly protocolFeatures: bigint;
  /** Dirty logging, for the control socket: ranges marked, logs mapped. */
  readonly logStats = { marks: 0, logBases: 0 };
  private listener: UnixListener | undefined;
  private listenWatch: FdWatch | undefined;
  private conn: Connection | undefined;

  constructor(readonly opts: ServerOptions) {
    this.counters = Array.from({ length: REQUEST_QUEUE_BASE + opts.numQueues }, () => ({ kicks: 0, calls: 0 }));
    const log = opts.logShmfd !== false;
    this.features = BACKEND_FEATURES | (log ? LOGGING_FEATURES : 0n);
    this.protocolFeatures = BACKEND_PROTOCOL_FEATURES | (log ? LOGGING_PROTOCOL_FEATURES : 0n);
  }

  listen(): void {
    this.listener = UnixListener.listen(this.opts.socketPath);
    this.listenWatch = new FdWatch(this.listener.fd, () => this.acceptOne());
    this.listenWatch.start();
    this.opts.log(`listening on ${this.opts.socketPath}`);
  }

  private acceptOne(): void {
    if (this.conn) return;
    const s = this.listener?.accept();
    if (!s) return;
    this.connections++;
    this.opts.log(`front-end connected (connection ${this.connections})`);
    // One front-end at a time: the next waits in the listen backlog until this one ends.
    this.listenWatch?.stop();
    this.conn = new Connection(this, s, () => {
      this.conn = undefined;
      this.opts.log('front-end disconnected; waiting for the next one');
      if (this.listener) {
        this.listenWatch?.start();
        setImmediate(() => this.acceptOne());
      }
    });
  }

  get connected(): boolean {
    return this.conn !== undefined;
  }

  /** For the control socket. */
  stats(): Record<string, unknown> {
    return {
      connected: this.connected,
      connections: this.connections,
      rings: this.counters.map((c, i) => ({ index: i, ...c, ...(this.conn?.ringInfo(i) ?? { started: false }) })),
      device: this.conn?.deviceInfo() ?? null,
      'dirty-log': {
        offered: (this.protocolFeatures & LOGGING_PROTOCOL_FEATURES) !== 0n,
        active: this.conn?.logging ?? false,
        ...this.logStats,
      },
    };
  }

  close(): void {
    const l = this.listener;
    this.listener = undefined;
    this.conn?.end('server closing');
    this.listenWatch?.close();
    l?.close();
  }
}

/** One front-end connection: its negotiated state, memory and rings. */
class Connection {
  private readonly watch: FdWatch;
  private features = 0n;
  private protocolFeatures = 0n;
  private memory: MappedRegion[] = [];
  private dev: BackendScsiDevice | undefined;
  private readonly rings: Ring[];
  private busy = false;
  private ended = false;
  /** The front-end's dirty log (SET_LOG_BASE), written while VHOST_F_LOG_ALL is negotiated. */
  private log: DirtyLogWriter | undefined;

  constructor(
    private readonly server: VhostUserScsiServer,
    private readonly socket: UnixSocket,
    private readonly onEnd: () => void,
  ) {
    this.rings = server.counters.map(() => ({ base: 0, enabled: false, started: false }));
    this.watch = new FdWatch(socket.fd, () => void this.readMessage());
    this.watch.start();
  }

  private get say() {
    return this.server.opts.log;
  }

  /** VHOST_F_LOG_ALL negotiated and a log given: every guest write is logged. */
  get logging(): boolean {
    return this.log !== undefined && (this.features & bit(VHOST_F_LOG_ALL)) !== 0n;
  }

  /** Points the device model's memory and used rings at the log, or takes them off it. */
  private applyLogging(): void {
    const dev = this.dev;
    if (!dev) return;
    const log = this.logging ? this.log : undefined;
    const stats = this.server.logStats;
    dev.memory.setTouchObserver(log ? (a, l) => (stats.marks++, log.mark(a, l)) : undefined);
    dev.usedWritten = log
      ? (q) => {
          const at = this.rings[q.index]?.logUsedAt;
          if (at === undefined) return;
          stats.marks++;
          log.mark(Number(at), splitRingSizes(q.size).usedRing); // flags, idx, ring[size], avail_event
        }
      : undefined;
  }

  private get protocolFeaturesOn(): boolean {
    return (this.features & bit(VHOST_USER_F_PROTOCOL_FEATURES)) !== 0n;
  }

  ringInfo(i: number): Record<string, unknown> {
    const r = this.rings[i];
    const q = this.dev?.queues[i];
    return {
      started: r.started,
      enabled: r.enabled,
      size: r.num ?? null,
      'last-avail-idx': r.started && q ? q.lastAvailIdx : r.base,
      'used-idx': r.started && q ? q.usedIdx : null,
    };
  }

  deviceInfo(): Record<string, unknown> | null {
    return this.dev ? { broken: this.dev.broken, 'broken-reason': this.dev.brokenReason ?? null, ...this.dev.deviceInfo() } : null;
  }

  private async readMessage(): Promise<void> {
    if (this.busy || this.ended) return;
    this.busy = true;
    this.watch.stop();
    let fds: number[] = [];
    try {
      const h = this.socket.recvExact(HEADER_SIZE, 1000, MAX_MEM_REGIONS);
      fds = h.fds;
      const hdr = decodeHeader(h.data);
      if (hdr.size > MAX_PAYLOAD) throw new Error(`${requestName(hdr.request)} with a ${hdr.size}-byte payload`);
      const payload = hdr.size ? this.socket.recvExact(hdr.size, 1000).data : new Uint8Array(0);
      if (this.server.opts.verbose)
        this.say(
          `<- ${requestName(hdr.request)} flags=0x${hdr.flags.toString(16)} size=${hdr.size} fds=${fds.length} ${Buffer.from(payload.subarray(0, 16)).toString('hex')}`,
        );
      let reply: Uint8Array | undefined;
      let ok = true;
      try {
        reply = await this.handle(hdr.request, payload, fds);
        fds = [];
      } catch (e) {
        if (!(e instanceof RequestFailed)) throw e;
        this.say(`${requestName(hdr.request)} refused: ${e.message}`);
        ok = false;
        closeFds(fds);
        fds = [];
      }
      if (this.ended) return;
      if (reply) this.socket.send(encodeMessage(hdr.request, FLAG_REPLY, reply));
      else if (hdr.flags & FLAG_NEED_REPLY && this.protocolFeatures & bit(PF.REPLY_ACK))
        this.socket.send(encodeMessage(hdr.request, FLAG_REPLY, u64Payload(ok ? 0n : 1n)));
    } catch (e) {
      closeFds(fds);
      this.end(e instanceof SocketClosedError ? 'connection closed' : (e as Error).message);
      return;
    } finally {
      this.busy = false;
    }
    if (!this.ended) this.watch.start();
  }

  /** Handles one request; returns the reply payload for requests that have one. */
  private async handle(req: number, p: Uint8Array, fds: number[]): Promise<Uint8Array | undefined> {
    const ring = (i: number): Ring => {
      const r = this.rings[i];
      if (!r) throw new RequestFailed(`ring ${i} does not exist (this back-end has ${this.rings.length})`);
      return r;
    };
    switch (req) {
      case R.GET_FEATURES:
        return u64Payload(this.server.features);
      case R.SET_FEATURES: {
        const f = readU64(p);
        if (f & ~this.server.features) throw new RequestFailed(`features 0x${f.toString(16)} include ones never offered`);
        this.features = f;
        if (this.dev) this.dev.driverFeatures = f & ~bit(VHOST_USER_F_PROTOCOL_FEATURES) & ~bit(VHOST_F_LOG_ALL);
        this.applyLogging();
        return undefined;
      }
      case R.GET_PROTOCOL_FEATURES:
        return u64Payload(this.server.protocolFeatures);
      case R.SET_PROTOCOL_FEATURES:
        this.protocolFeatures = readU64(p) & this.server.protocolFeatures;
        return undefined;
      case R.SET_LOG_BASE:
        return this.setLogBase(p, fds);
      case R.GET_QUEUE_NUM:
        return u64Payload(BigInt(this.rings.length));
      case R.SET_OWNER:
        return undefined;
      case R.RESET_OWNER:
        await this.stopAll();
        return undefined;
      case R.SET_MEM_TABLE:
        this.setMemTable(decodeMemTable(p), fds);
        return undefined;
      case R.SET_VRING_NUM: {
        const s = decodeVringState(p);
        const r = ring(s.index);
        if (s.num === 0 || s.num > 32768 || s.num & (s.num - 1))
          throw new RequestFailed(`ring ${s.index} size ${s.num} is not a power of two up to 32768`);
        r.num = s.num;
        return undefined;
      }
      case R.SET_VRING_BASE: {
        const s = decodeVringState(p);
        ring(s.index).base = s.num & 0xffff;
        return undefined;
      }
      case R.SET_VRING_ADDR: {
        const a = decodeVringAddr(p);
        const r = ring(a.index);
        r.addr = { desc: a.desc, used: a.used, avail: a.avail };
        // May come while the ring runs (the front-end turns used-ring logging on or off): takes effect at once.
        r.logUsedAt = a.flags & (1 << VHOST_VRING_F_LOG) ? a.log : undefined;
        return undefined;
      }
      case R.SET_VRING_KICK:
      case R.SET_VRING_CALL:
      case R.SET_VRING_ERR: {
        const v = Number(readU64(p));
        const r = ring(v & VRING_IDX_MASK);
        const noFd = (v & VRING_NOFD_MASK) !== 0;
        if (!noFd && fds.length !== 1) throw new RequestFailed(`${requestName(req)} came with ${fds.length} fds (need 1)`);
        const efd = noFd ? undefined : EventFd.adopt(fds[0]);
        const i = v & VRING_IDX_MASK;
        if (req === R.SET_VRING_KICK) {
          if (!efd) throw new RequestFailed(`ring ${i}: polling mode (no kick fd) is not supported`);
          if (r.started) this.stopRing(i);
          r.kick?.close();
          r.kick = efd;
          if (!this.protocolFeaturesOn) r.enabled = true;
          this.maybeStart(i);
        } else if (req === R.SET_VRING_CALL) {
          r.call?.close();
          r.call = efd;
        } else {
          r.err?.close();
          r.err = efd;
        }
        return undefined;
      }
      case R.SET_VRING_ENABLE: {
        const s = decodeVringState(p);
        const r = ring(s.index);
        r.enabled = s.num === 1;
        if (r.enabled) this.maybeStart(s.index);
        return undefined;
      }
      case R.GET_VRING_BASE: {
        const s = decodeVringState(p);
        ring(s.index);
        const base = await this.stopRingDrained(s.index);
        return encodeVringState({ index: s.index, num: base });
      }
      default:
        throw new RequestFailed(`${requestName(req)} is not supported`);
    }
  }

  /**
   * SET_LOG_BASE (LOG_SHMFD): maps the front-end's log (its fd, mmap_size
   * and mmap_offset) and answers with a u64: 0, or 1 when it cannot be used
   * (the request is then refused without breaking the connection).
   */
  private setLogBase(p: Uint8Array, fds: number[]): Uint8Array {
    const fail = (why: string) => {
      closeFds(fds);
      this.say(`SET_LOG_BASE refused: ${why}`);
      return u64Payload(1n);
    };
    if (!(this.protocolFeatures & bit(PF.LOG_SHMFD))) return fail('VHOST_USER_PROTOCOL_F_LOG_SHMFD was not negotiated');
    if (fds.length !== 1) return fail(`it came with ${fds.length} fds (need 1)`);
    let d;
    try {
      d = decodeLogDescription(p);
    } catch (e) {
      return fail((e as Error).message);
    }
    if (d.mmapSize === 0n || d.mmapSize > BigInt(MAX_LOG_BYTES) || d.mmapSize % 8n !== 0n)
      return fail(`log size ${d.mmapSize} is not a multiple of 8 in 8..${MAX_LOG_BYTES}`);
    if (d.mmapOffset % 4096n !== 0n) return fail(`log offset ${d.mmapOffset} is not page-aligned`);
    let bytes: Uint8Array;
    try {
      bytes = new Uint8Array(mapSharedFd(fds[0], Number(d.mmapSize), Number(d.mmapOffset)).buffer);
    } catch (e) {
      return fail(`mapping the log failed: ${(e as Error).message}`);
    }
    closeFds(fds); // the mapping keeps the log
    this.log = new DirtyLogWriter(bytes);
    this.server.logStats.logBases++;
    this.say(`dirty log: ${d.mmapSize} bytes (${this.log.pages} pages)`);
    this.applyLogging();
    return u64Payload(0n);
  }

  private setMemTable(regions: MemRegion[], fds: number[]): void {
    if (fds.length !== regions.length) {
      closeFds(fds);
      throw new RequestFailed(`${regions.length} regions but ${fds.length} fds`);
    }
    const mapped: MappedRegion[] = [];
    try {
      regions.forEach((r, i) => {
        // As host buffers of at most 1 GiB (a V8 ArrayBuffer is at most 4 GiB); GuestMemory joins them.
        const m = mapGuestRam(fds[i], Number(r.guestPhysAddr), Number(r.size), Number(r.mmapOffset));
        mapped.push({ ...r, pieces: m.pieces });
      });
    } catch (e) {
      throw new RequestFailed(`mapping guest memory failed: ${(e as Error).message}`);
    } finally {
      closeFds(fds); // the mappings keep the memory
    }
    this.memory = mapped;
    const mem = new GuestMemory(mapped.flatMap((m) => m.pieces));
    this.say(`memory table: ${mapped.map((m) => `[0x${m.guestPhysAddr.toString(16)}, +0x${m.size.toString(16)})`).join(' ')}`);
    if (this.dev && this.rings.some((r) => r.started)) {
      // The front-end's memory map changed under running rings (QEMU re-sends it as its address space
      // changes): the rings move onto the new mappings, in-flight commands keep the old ones (same memfds).
      this.dev.replaceMemory(mem);
      this.applyLogging();
      return;
    }
    const dev = new BackendScsiDevice(mem, {
      id: 'vhost-user-scsi',
      numQueues: this.rings.length - REQUEST_QUEUE_BASE,
      target: this.server.opts.target,
      log: this.say,
    });
    dev.driverFeatures = this.features & ~bit(VHOST_USER_F_PROTOCOL_FEATURES) & ~bit(VHOST_F_LOG_ALL);
    dev.status = ALL_STATUS;
    dev.interrupt = {
      signalQueue: (q) => {
        const r = this.rings[q];
        if (!r?.call) return;
        this.server.counters[q].calls++;
        r.call.write(1);
      },
      // The device model found a guest error: every ring's error eventfd tells the front-end.
      signalConfig: () => {
        for (const r of this.rings) if (r.started) r.err?.write(1);
      },
    };
    this.dev = dev;
    this.applyLogging();
  }

  /** Front-end virtual address to guest-physical, through the memory table. */
  private toGuest(ua: bigint, len: number): number {
    for (const m of this.memory) {
      if (ua >= m.userAddr && ua + BigInt(len) <= m.userAddr + m.size) return Number(m.guestPhysAddr + (ua - m.userAddr));
    }
    throw new RequestFailed(`ring address 0x${ua.toString(16)} (+${len}) is in no memory region`);
  }

  /** A ring runs once it has a size, addresses, a kick fd and memory, and is enabled. */
  private maybeStart(i: number): void {
    const r = this.rings[i];
    const dev = this.dev;
    if (r.started || !r.enabled || !r.kick || !r.addr || !r.num || !dev) return;
    const q: SplitVirtqueue = dev.queues[i];
    q.reset();
    q.size = r.num;
    const sizes = splitRingSizes(r.num);
    q.descTable = this.toGuest(r.addr.desc, sizes.descTable);
    q.availRing = this.toGuest(r.addr.avail, sizes.availRing);
    q.usedRing = this.toGuest(r.addr.used, sizes.usedRing);
    q.ready = true;
    const err = q.activate(dev.memory, {
      eventIdx: dev.hasFeature(V.VIRTIO_RING_F_EVENT_IDX),
      indirect: dev.hasFeature(V.VIRTIO_RING_F_INDIRECT_DESC),
    });
    if (err) {
      dev.markBroken(err);
      return;
    }
    q.lastAvailIdx = r.base;
    q.usedIdx = dev.memory.readU16(q.usedRing + 2); // the used index the driver has seen
    r.started = true;
    r.kick.watch(
      dev.guarded(`kick of ring ${i}`, (n: bigint) => {
        this.server.counters[i].kicks += Number(n);
        dev.notify(i, 'ioeventfd');
      }),
    );
    this.say(`ring ${i} started: size ${r.num}, base ${r.base}`);
    dev.poll(i); // buffers made available before the ring (re)started
  }

  private stopRing(i: number): number {
    const r = this.rings[i];
    const q = this.dev?.queues[i];
    r.kick?.unwatch();
    if (r.started && q) r.base = q.lastAvailIdx;
    if (r.started) this.say(`ring ${i} stopped at ${r.base}`);
    r.started = false;
    q?.reset();
    return r.base;
  }

  /**
   * GET_VRING_BASE: the ring takes no more kicks (buffers made available
   * after this are left for whoever starts the ring next), the commands in
   * flight finish and their used entries are signalled, then the ring stops
   * at an index that counts exactly the requests answered.
   */
  private async stopRingDrained(i: number): Promise<number> {
    const r = this.rings[i];
    if (r.started && this.dev) {
      r.kick?.unwatch();
      await this.dev.drain();
    }
    return this.stopRing(i);
  }

  private async stopAll(): Promise<void> {
    for (let i = 0; i < this.rings.length; i++) await this.stopRingDrained(i);
  }

  end(why: string): void {
    if (this.ended) return;
    this.ended = true;
    this.say(`connection ended: ${why}`);
    this.watch.close();
    for (let i = 0; i < this.rings.length; i++) {
      this.stopRing(i);
      const r = this.rings[i];
      r.kick?.close();
      r.call?.close();
      r.err?.close();
      r.kick = r.call = r.err = undefined;
    }
    this.dev = undefined;
    this.log = undefined;
    this.memory = [];
    this.socket.close();
    this.onEnd();
  }
}
