/**
 * A virtio-scsi adapter whose queues are served by a vhost backend (kernel
 * vhost-scsi or a vhost-user-scsi process). The VMM keeps the virtio-pci
 * transport, feature negotiation, the status machine and the config space;
 * at DRIVER_OK it hands guest RAM, the rings, a kick eventfd and a call
 * eventfd per queue to the backend and gets out of the way:
 *
 * - kicks: the backend's kick eventfd is the queue's KVM ioeventfd (the
 *   transport's setBackendKicks); a kick that reaches the VMM anyway (exit
 *   path, fault injection standing in) is forwarded to that eventfd;
 * - calls: the backend signals the irqfd of the queue's MSI-X vector
 *   (the transport's queueCallEventFd), masking handled by MsixController;
 * - stop (reset, VM stop, destroy): GET_VRING_BASE per ring, the indices come
 *   back into the VMM's queues and the notifiers go back to the VMM;
 * - the backend's error eventfds, or a vhost-user back-end that goes away,
 *   mark the device needs-reset; the next DRIVER_OK reconnects.
 */
import { closeFd, createSharedMemory, EventFd, MemoryRegion } from '@tsvmm/kvm-native';
import { DirtyLogReader, logSizeFor, VHOST_F_LOG_ALL } from '@tsvmm/vhost-user';
import type { VirtioPciDevice } from '@tsvmm/pci';
import { GuestMemory, readConfigImage, SplitVirtqueue, VirtioDevice, virtioUapi as V } from '@tsvmm/virtio-core';
import { REQUEST_QUEUE_BASE, scsiQueueName, VIRTIO_ID_SCSI, virtioScsiUapi as S } from '@tsvmm/virtio-scsi-core';
import { VhostBackend, VhostMemRegion } from './backend/backend';

export const VHOST_QUEUE_SIZE = 128;
const MAX_SECTORS = 0xffff;
const CMD_PER_LUN = 128;
const MAX_LUN = 16383;
const bit = (n: number) => 1n << BigInt(n);
/** Features a vhost backend may provide and this front-end passes on to the driver. */
export const VHOST_SCSI_FEATURES = bit(V.VIRTIO_F_VERSION_1) | bit(V.VIRTIO_RING_F_EVENT_IDX) | bit(V.VIRTIO_RING_F_INDIRECT_DESC);

export interface VhostScsiOptions {
  id: string;
  numQueues: number;
  eventIdx?: boolean;
  log: (m: string) => void;
  /** The VMM's guest RAM regions (memfds and host addresses) for SET_MEM_TABLE. */
  regions: () => readonly MemoryRegion[];
}

/** What the monitor shows of the handover, per queue. */
export interface VhostQueueState {
  'kick-fd': number;
  'call-fd': number | null;
  'err-fd': number;
  /** The last index the backend returned with GET_VRING_BASE (or was given with SET_VRING_BASE). */
  'vring-base': number;
  started: boolean;
  notifier: string;
}

export class VhostScsiDevice extends VirtioDevice {
  transport: VirtioPciDevice | undefined;
  /** Backend started (rings handed over). */
  started = false;
  /** The VM is running (vhost rings stop while it is stopped). */
  private running = true;
  readonly kicks: EventFd[];
  readonly errs: EventFd[];
  private readonly callFds: (number | undefined)[] = [];
  private readonly vringBase: number[];
  private readonly config = new Uint8Array(S.SIZEOF_virtio_scsi_config);
  readonly stats = { starts: 0, stops: 0, disconnects: 0, forwardedKicks: 0, errors: 0, dirtyPages: 0 };
  /** Migration: the dirty log shared with the backend (startDirtyLog .. stopDirtyLog). */
  private dirtyLog: { fd: number; size: number; hostAddress: bigint; reader: DirtyLogReader } | undefined;
  lastError: string | undefined;

  constructor(
    memory: GuestMemory,
    readonly backend: VhostBackend,
    backendFeatures: bigint,
    private readonly opts: VhostScsiOptions,
  ) {
    super(memory, {
      id: opts.id,
      deviceId: VIRTIO_ID_SCSI,
      numQueues: REQUEST_QUEUE_BASE + opts.numQueues,
      queueMaxSize: VHOST_QUEUE_SIZE,
      features: 0n,
      eventIdx: opts.eventIdx,
      log: opts.log,
    });
    // Offer only what the backend can do.
    this.deviceFeatures &= backendFeatures & VHOST_SCSI_FEATURES;
    const dv = new DataView(this.config.buffer);
    dv.setUint32(S.OFF_virtio_scsi_config_num_queues, opts.numQueues, true);
    dv.setUint32(S.OFF_virtio_scsi_config_seg_max, VHOST_QUEUE_SIZE - 2, true);
    dv.setUint32(S.OFF_virtio_scsi_config_max_sectors, MAX_SECTORS, true);
    dv.setUint32(S.OFF_virtio_scsi_config_cmd_per_lun, CMD_PER_LUN, true);
    dv.setUint32(S.OFF_virtio_scsi_config_event_info_size, S.SIZEOF_virtio_scsi_event, true);
    dv.setUint32(S.OFF_virtio_scsi_config_sense_size, S.VIRTIO_SCSI_SENSE_DEFAULT_SIZE, true);
    dv.setUint32(S.OFF_virtio_scsi_config_cdb_size, S.VIRTIO_SCSI_CDB_DEFAULT_SIZE, true);
    dv.setUint16(S.OFF_virtio_scsi_config_max_target, 0, true);
    dv.setUint32(S.OFF_virtio_scsi_config_max_lun, MAX_LUN, true);
    this.kicks = this.queues.map(() => EventFd.create());
    this.errs = this.queues.map((_, i) => {
      const e = EventFd.create();
      e.watch(
        this.guarded(`error eventfd of queue ${i}`, () =>
          this.backendFailed(`the ${backend.kind === 'user' ? 'vhost-user back-end' : 'vhost backend'} reported an error on queue ${i}`),
        ),
      );
      return e;
    });
    this.vringBase = this.queues.map(() => 0);
    backend.onDisconnect = this.guarded('back-end disconnect', (reason: string) => this.disconnected(reason));
  }

  readConfig(offset: number, size: number): number {
    return readConfigImage(this.config, offset, size);
  }

  /** The backend parses requests with the default sizes: the driver may write them, nothing else. */
  override writeConfig(offset: number, size: number, value: number): void {
    if (size !== 4) return;
    if (offset === S.OFF_virtio_scsi_config_sense_size && value === S.VIRTIO_SCSI_SENSE_DEFAULT_SIZE) return;
    if (offset === S.OFF_virtio_scsi_config_cdb_size && value === S.VIRTIO_SCSI_CDB_DEFAULT_SIZE) return;
  }

  override deviceInfo(): Record<string, unknown> {
    return {
      backend: this.backend.kind,
      'backend-description': this.backend.description,
      'backend-connected': this.backend.connected,
      started: this.started,
      'request-queues': this.queues.length - REQUEST_QUEUE_BASE,
      ...this.stats,
      'last-error': this.lastError ?? null,
    };
  }

  /** The vhost part of x-query-virtio-queue-status. */
  vhostQueueState(i: number): VhostQueueState {
    return {
      'kick-fd': this.kicks[i].fd,
      'call-fd': this.started ? (this.callFds[i] ?? null) : null,
      'err-fd': this.errs[i].fd,
      'vring-base': this.vringBase[i],
      started: this.started && this.queues[i].ready,
      notifier: this.transport?.queueNotifierKind(i) ?? 'exit',
    };
  }

  override queueName(queue: number): string {
    return scsiQueueName(queue);
  }

  /** The back-end's interrupts go straight to KVM (the call eventfd is the vector's irqfd): the VMM never sees one to drop. */
  override debugActionRefusal(action: 'drop-kicks' | 'drop-interrupts' | 'kick' | 'call'): string | undefined {
    if (action !== 'drop-interrupts') return undefined;
    return `the vhost ${this.backend.kind} back-end signals its interrupts to KVM directly (irqfd), past the VMM, so none can be dropped; drop kicks instead`;
  }

  override queueInfo(i: number): Record<string, unknown> {
    return { vhost: { backend: this.backend.kind, ...this.vhostQueueState(i) } };
  }

  /** A kick reached the VMM (exit path, or the VMM standing in during fault injection): pass it on. */
  protected processQueue(q: SplitVirtqueue): void {
    if (!this.started) {
      // No backend owns the ring yet (e.g. the one kick per queue after a restore, which the
      // transport sends as the VM resumes, just before the rings are handed over): it goes to
      // the backend at the next start, so nothing published before the handover waits unseen.
      this.kickedBeforeStart.add(q.index);
      return;
    }
    this.stats.forwardedKicks++;
    this.kicks[q.index].write(1);
  }

  private readonly kickedBeforeStart = new Set<number>();

  protected override onActivate(): void {
    if (this.running) this.start();
  }

  protected override onReset(): void {
    this.stop();
    this.kickedBeforeStart.clear();
    // Stale kicks must not reach the next backend session.
    for (const k of this.kicks) k.read();
    this.vringBase.fill(0);
  }

  setRunning(running: boolean): void {
    if (running === this.running) return;
    this.running = running;
    if (!running) this.stop();
    else if (this.driverOk && !this.broken) this.start();
  }

  private regions(): VhostMemRegion[] {
    return this.opts.regions().map((r) => ({ guestPhysAddr: r.guestPhysAddr, size: r.size, hostAddress: r.hostAddress, fd: r.fd }));
  }

  /** Guest-physical to the VMM's virtual address (ring addresses are given that way). */
  private hva(gpa: number): bigint {
    for (const r of this.opts.regions()) {
      const base = Number(r.guestPhysAddr);
      if (gpa >= base && gpa < base + r.size) return r.hostAddress + BigInt(gpa - base);
    }
    throw new Error(`guest address 0x${gpa.toString(16)} is not RAM`);
  }

  /** Hands the rings to the backend (DRIVER_OK, or the VM resumed). */
  private start(): void {
    if (this.started || !this.transport) return;
    const b = this.backend;
    try {
      if (!b.connected) {
        b.connect();
        this.opts.log(`${this.id}: reconnected to the ${b.description}`);
      }
      if (b.maxQueues !== undefined && b.maxQueues < this.queues.length)
        throw new Error(`the ${b.description} serves ${b.maxQueues} rings; this adapter has ${this.queues.length}`);
      b.setFeatures(this.backendFeatures);
      b.setMemTable(this.regions());
      if (this.dirtyLog) b.setLogBase(this.dirtyLog);
      const kicks: (EventFd | undefined)[] = [];
      for (const q of this.queues) {
        const i = q.index;
        if (!q.ready) continue;
        b.setVringNum(i, q.size);
        b.setVringBase(i, q.lastAvailIdx);
        this.vringBase[i] = q.lastAvailIdx;
        b.setVringAddr(i, this.vringAddresses(q));
        b.setVringKick(i, this.kicks[i].fd);
        const call = this.transport.queueCallEventFd(i);
        this.callFds[i] = call.fd;
        b.setVringCall(i, call.fd);
        b.setVringErr(i, this.errs[i].fd);
        if (b.needsEnable) b.setVringEnable(i, true);
        kicks[i] = this.kicks[i];
      }
      b.startDevice();
      this.started = true;
      this.stats.starts++;
      this.transport.setBackendKicks(kicks);
      for (const i of this.kickedBeforeStart) if (kicks[i]) kicks[i]!.write(1);
      this.kickedBeforeStart.clear();
      this.transport.onCallEventFdChanged = (i) => this.callChanged(i);
    } catch (e) {
      this.backendFailed((e as Error).message);
    }
  }

  /** Features for the backend: the driver's, plus VHOST_F_LOG_ALL while migration logs dirty pages. */
  private get backendFeatures(): bigint {
    return this.driverFeatures | (this.dirtyLog ? bit(VHOST_F_LOG_ALL) : 0n);
  }

  private vringAddresses(q: SplitVirtqueue) {
    return {
      desc: this.hva(q.descTable),
      used: this.hva(q.usedRing),
      avail: this.hva(q.availRing),
      ...(this.dirtyLog ? { logGuestAddr: BigInt(q.usedRing) } : {}),
    };
  }

  /** Why this device cannot be migrated (the backend cannot log its writes), or undefined. */
  migrationBlocker(): string | undefined {
    const why = this.backend.dirtyLogUnsupported;
    return why ? `${this.id}: cannot be migrated: ${why}` : undefined;
  }

  /**
   * Migration: a shared log (memfd, one bit per 4 KiB guest page) goes to the
   * backend with SET_LOG_BASE; while the rings run, VHOST_F_LOG_ALL and
   * VHOST_VRING_F_LOG (used ring at its guest address) are turned on at once,
   * otherwise at the next start.
   */
  startDirtyLog(): void {
    if (this.dirtyLog) return;
    const why = this.backend.dirtyLogUnsupported;
    if (why) throw new Error(`${this.id}: ${why}`);
    const end = Math.max(...this.opts.regions().map((r) => Number(r.guestPhysAddr) + r.size));
    const size = logSizeFor(end);
    const m = createSharedMemory(`${this.id}-dirty-log`, size);
    this.dirtyLog = { fd: m.fd, size, hostAddress: m.address, reader: new DirtyLogReader(new Uint8Array(m.buffer)) };
    if (!this.started) return;
    try {
      this.backend.setLogBase(this.dirtyLog);
      this.backend.setFeatures(this.backendFeatures);
      for (const q of this.queues) if (q.ready) this.backend.setVringAddr(q.index, this.vringAddresses(q));
    } catch (e) {
      this.dropDirtyLog();
      throw new Error(`${this.id}: starting the dirty log failed: ${(e as Error).message}`);
    }
  }

  /** The VMM's view of the dirty log while one is set up (introspection and tests: what the backend marks). */
  get dirtyLogBitmap(): Uint8Array | undefined {
    return this.dirtyLog?.reader.bitmap;
  }

  /** Guest page numbers the backend wrote since the last call (fetched and cleared atomically). */
  syncDirtyLog(): number[] {
    const pages = this.dirtyLog?.reader.take() ?? [];
    this.stats.dirtyPages += pages.length;
    return pages;
  }

  /** Logging off: VHOST_F_LOG_ALL and the rings' log flag cleared (while running); the log is released. */
  stopDirtyLog(): void {
    if (!this.dirtyLog) return;
    this.dropDirtyLog();
    if (!this.started) return;
    try {
      this.backend.setFeatures(this.backendFeatures);
      for (const q of this.queues) if (q.ready) this.backend.setVringAddr(q.index, this.vringAddresses(q));
    } catch (e) {
      this.backendFailed((e as Error).message);
    }
  }

  private dropDirtyLog(): void {
    const l = this.dirtyLog;
    this.dirtyLog = undefined;
    if (l) closeFd(l.fd); // the mapping (and the backend's) outlive the fd
  }

  /** The driver moved a queue to another vector while the backend runs: tell the backend the new eventfd. */
  private callChanged(i: number): void {
    if (!this.started || !this.queues[i].ready || !this.transport) return;
    try {
      const call = this.transport.queueCallEventFd(i);
      this.callFds[i] = call.fd;
      this.backend.setVringCall(i, call.fd);
    } catch (e) {
      this.backendFailed((e as Error).message);
    }
  }

  /** Takes the rings back: GET_VRING_BASE per ring, notifiers back to the VMM. */
  private stop(): void {
    if (!this.started) return;
    this.started = false;
    this.stats.stops++;
    this.transport?.setBackendKicks(undefined);
    try {
      this.backend.stopDevice();
      for (const q of this.queues) {
        if (!q.ready) continue;
        const base = this.backend.getVringBase(q.index);
        this.vringBase[q.index] = base;
        if (q.active) {
          q.lastAvailIdx = base;
          q.usedIdx = this.memory.readU16(q.usedRing + 2);
        }
      }
    } catch (e) {
      this.backendFailed((e as Error).message);
    }
  }

  private disconnected(reason: string): void {
    this.stats.disconnects++;
    this.backendFailed(`the ${this.backend.description} went away (${reason})`);
  }

  /** The backend is gone or failed: the device needs a reset (which reconnects at the next DRIVER_OK). */
  private backendFailed(reason: string): void {
    this.stats.errors++;
    this.lastError = reason;
    this.opts.log(`${this.id}: ${reason}; the device needs reset`);
    if (this.started) {
      this.started = false;
      this.transport?.setBackendKicks(undefined);
    }
    if (this.backend.kind === 'user') this.backend.close();
    if (this.driverOk) this.markBroken(reason);
  }

  destroy(): void {
    this.stop();
    this.dropDirtyLog();
    this.backend.onDisconnect = undefined;
    this.backend.close();
    for (const e of [...this.kicks, ...this.errs]) e.close();
  }
}
