/**
 * The virtio-net device (virtio 1.2 section 5.1) over a TAP: receive queues
 * (2i), transmit queues (2i+1) for each queue pair, and the control queue last.
 *
 * With `iothread=ID` the whole device's queues run on that iothread
 * (dataplane.ts): the worker's copy of this class reads and writes duplicated
 * TAP descriptors, watches the TAP and the queues' ioeventfds and writes the
 * irqfds; this main-thread copy keeps negotiation, config space and MSI-X, and
 * tells the plane when the VM stops and runs (NetPlaneMessage).
 */
import * as os from 'os';
import { errnoException, FdWatch } from '@tsvmm/kvm-native';
import {
  DataPlaneDevice,
  Descriptor,
  DescriptorChain,
  Fields,
  gather,
  GuestMemory,
  lastWritableByte,
  readConfigImage,
  scatter,
  SplitVirtqueue,
  StateError,
  views as guestViews,
} from '@tsvmm/virtio-core';
import * as N from './generated/virtio-net-uapi';
import { Tap, VNET_HDR_LEN } from './backend/tap';
import { BATCH_FRAMES, FrameBatch } from './frame-batch';

export const VIRTIO_ID_NET = 1;
export const QUEUE_SIZE = 256;
const MAX_FRAME = 65536 + VNET_HDR_LEN;
/** Receive chains popped for a batch at least (see rxWant). */
const RX_MIN_BATCH = 4;

const bit = (n: number) => 1n << BigInt(n);
const { EAGAIN, EINVAL, EIO, ENOBUFS } = os.constants.errno;

export interface VirtioNetOptions {
  id: string;
  tap: Tap;
  mac: Uint8Array;
  pairs: number;
  mtu: number;
  eventIdx?: boolean;
  log?: (m: string) => void;
}

export interface NetCounters {
  rxPackets: number;
  rxBytes: number;
  /** Frames dropped because a chain without MRG_RXBUF was too small. */
  rxDropped: number;
  txPackets: number;
  txBytes: number;
  /** Frames the TAP refused (its queue was full). */
  txDropped: number;
  /** Times RX stopped because the guest had posted no buffers. */
  rxNoBuffers: number;
}

/** What the control queue changed, which migration carries (absent fields: the defaults). */
export interface NetExtraState {
  activePairs?: number;
  /** The MAC the driver set (VIRTIO_NET_CTRL_MAC_ADDR_SET), as 52:54:00:12:34:56. */
  mac?: string;
  rxMode?: Partial<RxMode>;
}

/** The main thread's messages to the plane on an iothread ('activate', 'restore' and 'device'). */
export interface NetPlaneMessage {
  /** The VM runs (true) or stopped (false): nothing is taken from the TAP while it is stopped. */
  running?: boolean;
}

const RX_MODE_KEYS = ['promisc', 'allmulti', 'alluni', 'nomulti', 'nouni', 'nobcast'] as const;
export type RxMode = Record<(typeof RX_MODE_KEYS)[number], boolean>;
const defaultRxMode = (): RxMode => ({ promisc: true, allmulti: false, alluni: false, nomulti: false, nouni: false, nobcast: false });

const macText = (b: Uint8Array) => [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');
const macBytes = (text: string) => Uint8Array.from(text.split(':').map((x) => parseInt(x, 16)));

export class VirtioNetDevice extends DataPlaneDevice {
  readonly tap: Tap;
  readonly pairs: number;
  readonly mac: Uint8Array;
  activePairs = 1;
  readonly net: NetCounters = { rxPackets: 0, rxBytes: 0, rxDropped: 0, txPackets: 0, txBytes: 0, txDropped: 0, rxNoBuffers: 0 };
  /** RX mode set through the control queue (recorded; the TAP delivers what the host sends it). */
  readonly rxMode: RxMode = defaultRxMode();
  private readonly config = new Uint8Array(N.SIZEOF_virtio_net_config);
  private readonly watches: FdWatch[];
  /** A frame read from the TAP that did not fit the guest's buffers yet, per pair. */
  private readonly stashed: (Uint8Array | undefined)[];
  private readonly rxBuf = new Uint8Array(MAX_FRAME);
  /** Where a received frame longer than its first chain goes on (MRG_RXBUF), before it is copied to the next chains. */
  private readonly spill = new Uint8Array(MAX_FRAME);
  private readonly txBatch = new FrameBatch();
  private readonly rxBatch = new FrameBatch(this.spill);
  /** The chains of the receive batch (reused). */
  private readonly rxChains: DescriptorChain[] = [];
  /** Receive chains to pop for the next batch, per pair (adapts to how many frames the TAP had). */
  private readonly rxWant: number[];
  /** Used receive entries in this pass (one interrupt at its end). */
  private rxPushed = 0;

  constructor(memory: GuestMemory, opts: VirtioNetOptions) {
    let features =
      bit(N.VIRTIO_NET_F_MAC) |
      bit(N.VIRTIO_NET_F_STATUS) |
      bit(N.VIRTIO_NET_F_MRG_RXBUF) |
      bit(N.VIRTIO_NET_F_CTRL_VQ) |
      bit(N.VIRTIO_NET_F_CTRL_RX) |
      bit(N.VIRTIO_NET_F_CTRL_VLAN) |
      bit(N.VIRTIO_NET_F_MTU) |
      // Frames to the TAP may carry checksum and segmentation offload requests (IFF_VNET_HDR takes them).
      bit(N.VIRTIO_NET_F_CSUM) |
      bit(N.VIRTIO_NET_F_HOST_TSO4) |
      bit(N.VIRTIO_NET_F_HOST_TSO6) |
      bit(N.VIRTIO_NET_F_HOST_ECN);
    // Offloads towards the guest only where the TAP can produce them.
    const tapOffloads = N.TUN_F_CSUM | N.TUN_F_TSO4 | N.TUN_F_TSO6 | N.TUN_F_TSO_ECN;
    if (opts.tap.setOffloads(tapOffloads)) {
      features |=
        bit(N.VIRTIO_NET_F_GUEST_CSUM) | bit(N.VIRTIO_NET_F_GUEST_TSO4) | bit(N.VIRTIO_NET_F_GUEST_TSO6) | bit(N.VIRTIO_NET_F_GUEST_ECN);
      opts.tap.setOffloads(0); // until the driver negotiates them
    }
    if (opts.pairs > 1) features |= bit(N.VIRTIO_NET_F_MQ);
    super(memory, {
      id: opts.id,
      deviceId: VIRTIO_ID_NET,
      numQueues: 2 * opts.pairs + 1,
      queueMaxSize: QUEUE_SIZE,
      features,
      eventIdx: opts.eventIdx,
      log: opts.log,
    });
    this.tap = opts.tap;
    this.pairs = opts.pairs;
    this.mac = opts.mac;
    this.config.set(opts.mac, N.OFF_virtio_net_config_mac);
    const dv = new DataView(this.config.buffer);
    dv.setUint16(N.OFF_virtio_net_config_status, N.VIRTIO_NET_S_LINK_UP, true);
    dv.setUint16(N.OFF_virtio_net_config_max_virtqueue_pairs, opts.pairs, true);
    dv.setUint16(N.OFF_virtio_net_config_mtu, opts.mtu, true);
    this.watches = Array.from({ length: opts.pairs }, (_, i) => opts.tap.watch(i, () => this.serviceRx(i)));
    this.stashed = Array.from({ length: opts.pairs }, () => undefined);
    this.rxWant = Array.from({ length: opts.pairs }, () => RX_MIN_BATCH);
  }

  override deviceInfo(): Record<string, unknown> {
    const own = { tap: this.tap.name, pairs: this.pairs, ...this.planeCounters() };
    if (!this.iothread) return own;
    // On an iothread: the plane's counters and control-queue state as it last reported them (within 100 ms).
    return { ...own, ...(this.workerCounters<Record<string, unknown>>() ?? {}), iothread: this.iothread };
  }

  /** The counters and control-queue state of this copy (what the plane on an iothread reports). */
  planeCounters(): Record<string, unknown> {
    return { mac: macText(this.config.subarray(0, 6)), 'active-pairs': this.activePairs, 'rx-mode': { ...this.rxMode }, ...this.net };
  }

  /** The VM's running state for the plane on an iothread ('activate' and 'restore'). */
  protected override planeDeviceState(): NetPlaneMessage {
    return { running: !this.vmStopped };
  }

  /** The plane's side of NetPlaneMessage (on the iothread's copy of the device). */
  applyPlaneMessage(m: NetPlaneMessage): void {
    if (m.running !== undefined) this.setVmRunning(m.running);
  }

  /**
   * After a negotiated state was loaded rather than negotiated (the plane's
   * 'activate' and 'restore', a migration destination): the TAP offloads the
   * driver accepted, and RX.
   */
  startDataPath(): void {
    if (!this.driverOk || this.broken) return;
    this.applyOffloads(); // also with bus mastering off: the TAP's offloads are the negotiation's, not a memory access
    this.startRx();
  }

  // --- migration ---------------------------------------------------------------

  /** Migration: what the control queue changed (on an iothread: the plane's, taken by the last drain). */
  saveNetState(): NetExtraState {
    if (this.iothread) return structuredClone((this.drainedState().extra as NetExtraState | undefined) ?? {});
    return { activePairs: this.activePairs, mac: macText(this.config.subarray(0, 6)), rxMode: { ...this.rxMode } };
  }

  /** Migration: the extra state checked against this device (pairs, MAC syntax, RX mode keys), nothing applied. */
  checkNetState(raw: unknown): { activePairs: number; mac?: Uint8Array; rxMode: RxMode } {
    const rxMode = defaultRxMode();
    if (raw === undefined) return { activePairs: 1, rxMode };
    const f = new Fields(raw, '');
    const activePairs = f.optional('activePairs', (g, k) => g.int(k, 1, this.pairs)) ?? 1;
    const mac = f.optional('mac', (g, k) => {
      const text = g.str(k, 17);
      const m = /^([0-9a-f]{2}:){5}[0-9a-f]{2}$/i.exec(text);
      if (!m) throw new StateError(g.at(k), `${JSON.stringify(text)} is not a MAC address`);
      return macBytes(text);
    });
    f.optional('rxMode', (g, k) => {
      const r = new Fields(g.raw(k), g.at(k));
      for (const key of RX_MODE_KEYS) if (r.has(key)) rxMode[key] = r.bool(key);
    });
    return { activePairs, mac, rxMode };
  }

  /** Migration destination: the counterpart of saveNetState (checked first; on an iothread the plane gets it with 'restore'). */
  loadNetState(raw: NetExtraState | undefined): void {
    const s = this.checkNetState(raw);
    this.activePairs = s.activePairs;
    if (s.mac) this.config.set(s.mac, N.OFF_virtio_net_config_mac);
    Object.assign(this.rxMode, s.rxMode);
    // The plane gets the checked state, normalised (nothing of the stream's beyond it).
    if (this.iothread)
      this.restoredExtra = {
        activePairs: s.activePairs,
        ...(s.mac ? { mac: macText(s.mac) } : {}),
        rxMode: { ...s.rxMode },
      } satisfies NetExtraState;
  }

  readConfig(offset: number, size: number): number {
    // On an iothread the control queue runs there: the MAC the driver set is the plane's, as it last reported it.
    const mac = this.iothread ? this.workerCounters<{ mac?: string }>()?.mac : undefined;
    if (mac) this.config.set(macBytes(mac), N.OFF_virtio_net_config_mac);
    return readConfigImage(this.config, offset, size);
  }

  /** Receive and transmit queues in pairs (rx0, tx0, rx1, ...), then the control queue (spec 5.1.2). */
  override queueName(queue: number): string {
    if (queue === this.ctrlIndex) return 'ctrl';
    return `${queue % 2 ? 'tx' : 'rx'}${queue >> 1}`;
  }

  private get ctrlIndex(): number {
    return 2 * this.pairs;
  }

  protected override onActivate(): void {
    this.activePairs = 1;
    if (this.iothread) return super.onActivate(); // the plane takes the negotiated state
    this.applyOffloads();
    this.startRx();
  }

  /** The offloads towards the guest the driver accepted, set on the TAP (it then may send such frames). */
  private applyOffloads(): void {
    let offloads = 0;
    if (this.hasFeature(N.VIRTIO_NET_F_GUEST_CSUM)) offloads |= N.TUN_F_CSUM;
    if (this.hasFeature(N.VIRTIO_NET_F_GUEST_TSO4)) offloads |= N.TUN_F_TSO4;
    if (this.hasFeature(N.VIRTIO_NET_F_GUEST_TSO6)) offloads |= N.TUN_F_TSO6;
    if (this.hasFeature(N.VIRTIO_NET_F_GUEST_ECN)) offloads |= N.TUN_F_TSO_ECN;
    this.tap.setOffloads(offloads);
  }

  protected override onReset(): void {
    super.onReset(); // the iothread's plane (a dead worker is restarted)
    for (const w of this.watches) w.stop();
    this.stashed.fill(undefined);
    this.activePairs = 1;
  }

  override setDisabled(disabled: boolean): void {
    if (disabled) for (const w of this.watches) w.stop();
    super.setDisabled(disabled);
    if (!disabled && !this.iothread) this.startRx();
  }

  /**
   * The VM stopped (false) or runs again (true). While stopped nothing is
   * taken from the TAP (frames wait in its queue): a device that kept
   * filling receive buffers would change guest memory and its ring indices
   * after a migration or snapshot took them.
   */
  setVmRunning(running: boolean): void {
    this.vmStopped = !running;
    if (this.iothread) return this.sendToPlanes({ running } satisfies NetPlaneMessage);
    if (!running) for (const w of this.watches) w.stop();
    else this.startRx();
  }

  private vmStopped = false;

  private startRx(): void {
    if (!this.canProcess || this.vmStopped || this.iothread) return;
    for (let i = 0; i < this.activePairs; i++) if (this.queues[2 * i].active) this.serviceRx(i);
  }

  /** RX of a pair inside the fault boundary, with its queue's chain budget (TAP readable, RX resumed). */
  private serviceRx(pair: number): void {
    this.service(this.queues[2 * pair], `receive on pair ${pair}`, () => this.receive(pair));
  }

  /** Receive buffers wait for frames: never a kick-side stall. */
  override holdsBuffers(queue: number): boolean {
    return queue < this.ctrlIndex && queue % 2 === 0;
  }

  protected processQueue(q: SplitVirtqueue): void {
    if (q.index === this.ctrlIndex) this.control(q);
    else if (q.index % 2 === 1) this.transmit(q);
    else this.receive(q.index / 2); // the guest posted receive buffers
  }

  // --- transmit ------------------------------------------------------------------

  /**
   * Takes every chain the driver made available (within the pass's budget)
   * and writes the frames to the TAP in batches (BATCH_FRAMES): one call into
   * the addon per batch and one writev per frame, no per-frame allocation;
   * one interrupt at the end of the pass.
   */
  private transmit(q: SplitVirtqueue): void {
    const pair = (q.index - 1) / 2;
    const b = this.txBatch;
    let sent = 0;
    do {
      q.disableNotification();
      b.begin(this.memory);
      for (let chain = this.popChain(q); chain; chain = this.popChain(q)) {
        if (chain.writable.length || chain.readableLength < VNET_HDR_LEN) {
          sent += this.flushTx(q, pair);
          this.markBroken(
            chain.writable.length
              ? 'transmit chain has device-writable buffers'
              : `transmit chain of ${chain.readableLength} bytes is shorter than the virtio-net header`,
          );
          return;
        }
        if (b.add(chain.head, chain.readable)) {
          if (b.full) sent += this.flushTx(q, pair);
          continue;
        }
        // More buffers than a batch takes per frame: the frames before it first, then this one alone.
        sent += this.flushTx(q, pair);
        if (this.broken) return;
        const r = pair < this.activePairs ? this.tap.write(pair, guestViews(this.memory, chain.readable)) : -EAGAIN;
        if (!this.txDone(q, chain.head, chain.readableLength, r)) return;
        sent++;
      }
      sent += this.flushTx(q, pair);
      if (this.broken) return;
    } while (this.canProcess && q.enableNotification());
    // One interrupt for the whole batch.
    if (sent) this.signalUsed(q);
  }

  /** Writes the transmit batch to the TAP and returns its chains to the driver; the count returned. */
  private flushTx(q: SplitVirtqueue, pair: number): number {
    const b = this.txBatch;
    const n = b.count;
    if (n === 0) return 0;
    const up = pair < this.activePairs; // frames on a pair the driver has not enabled are dropped
    if (up) this.tap.writeFrames(pair, b);
    let done = 0;
    for (let i = 0; i < n; i++) {
      if (!this.txDone(q, b.heads[i], b.capacity[i], up ? b.results[i] : -EAGAIN)) break;
      done++;
    }
    b.begin(this.memory);
    return done;
  }

  /** One frame's outcome (bytes written or -errno); false when it broke the device. */
  private txDone(q: SplitVirtqueue, head: number, length: number, r: number): boolean {
    if (r >= 0) {
      this.net.txPackets++;
      this.net.txBytes += length - VNET_HDR_LEN;
    } else if (r === -EINVAL) {
      // The TAP refuses a frame whose virtio-net header it cannot honour (GSO fields) or that is shorter than an Ethernet header.
      this.markBroken(`the TAP refused a transmit frame of ${length} bytes (EINVAL): bad virtio-net header or runt frame`);
      return false;
    } else if (r === -EAGAIN || r === -EIO || r === -ENOBUFS) this.net.txDropped++;
    else throw errnoException(-r, 'writev');
    this.pushUsed(q, head, 0);
    return true;
  }

  // --- receive -------------------------------------------------------------------

  /** Moves frames from the TAP into the guest until either runs dry. */
  private receive(pair: number): void {
    const q = this.queues[2 * pair];
    const watch = this.watches[pair];
    if (!this.canProcess || !q.active || pair >= this.activePairs || this.vmStopped) {
      watch.stop();
      return;
    }
    this.rxPushed = 0;
    for (;;) {
      // The chain budget is spent: service() comes back in a later turn (frames wait in the TAP).
      if (q.budgetExhausted) break;
      if (q.pending() === 0) {
        // No buffers: stop reading the TAP (its queue holds the frames) until the guest kicks.
        if (!q.enableNotification()) {
          this.net.rxNoBuffers++;
          watch.stop();
          break;
        }
      }
      if (!(this.stashed[pair] ? this.receiveOne(q, pair) : this.receiveBatch(q, pair))) break;
    }
    if (this.rxPushed) this.signalUsed(q);
  }

  /**
   * Pops up to a batch of receive chains and reads frames from the TAP
   * straight into them (one call into the addon, one readv per frame). A
   * frame longer than its chain spills into a host buffer and goes on into
   * the next chains (MRG_RXBUF). Chains left without a frame go back to the
   * ring. A chain with an odd shape (device-readable buffers, a first buffer
   * that cannot hold the header, very many buffers) goes to receiveOne.
   * Returns whether to go on.
   */
  private receiveBatch(q: SplitVirtqueue, pair: number): boolean {
    const b = this.rxBatch;
    const chains = this.rxChains;
    chains.length = 0;
    b.begin(this.memory);
    const want = this.rxWant[pair];
    while (b.count < want) {
      const chain = this.popChain(q);
      if (!chain) break;
      if (chain.readable.length || chain.writable[0].len < VNET_HDR_LEN || !b.add(chain.head, chain.writable)) {
        this.unpopChains(q, 1);
        break;
      }
      chains.push(chain);
    }
    if (this.broken) return false;
    if (chains.length === 0) return this.receiveOne(q, pair);
    const m = this.tap.readFrames(pair, b, this.spill);
    // Chains are popped before the TAP says how many frames it has: ask for twice what the last batch got (a walk
    // of a chain that goes back unused is wasted work), up to a full batch while every chain gets a frame.
    this.rxWant[pair] = m === chains.length ? Math.min(2 * want, BATCH_FRAMES) : Math.max(RX_MIN_BATCH, 2 * m);
    let consumed = 0;
    let more = m === chains.length; // fewer: the TAP is empty
    for (let i = 0; i < m; i++) {
      const n = b.results[i];
      if (n < 0) {
        this.unpopChains(q, chains.length - consumed);
        throw errnoException(-n, 'readv');
      }
      const chain = chains[i];
      if (n <= b.capacity[i]) {
        // num_buffers: this frame took one chain.
        this.memory.writeU16(chain.writable[0].addr + N.OFF_virtio_net_hdr_mrg_rxbuf_num_buffers, 1);
        this.noteWritten(chain.writable, n);
        this.rxDone(q, chain.head, n, n);
        consumed++;
        continue;
      }
      // The frame went on into the spill buffer (the last result): the rest goes to the next chains.
      const r = this.receiveSpilled(q, pair, i, n);
      if (r < 0) return false;
      consumed = r;
      more = true;
    }
    this.unpopChains(q, chains.length - consumed);
    if (!more) this.watches[pair].start(); // wait for the TAP
    return more;
  }

  /**
   * Frame `i` of the receive batch was `n` bytes, more than chain i holds;
   * the rest is in the spill buffer. Without MRG_RXBUF it is dropped; with it
   * the next chains (popped already or popped now) take the rest. Returns
   * how many of rxChains are used (the caller returns the rest), or -1 to
   * stop (broken, or waiting for buffers with the frame stashed).
   */
  private receiveSpilled(q: SplitVirtqueue, pair: number, i: number, n: number): number {
    const chains = this.rxChains;
    const first = chains[i];
    const cap = this.rxBatch.capacity[i];
    if (!this.hasFeature(N.VIRTIO_NET_F_MRG_RXBUF)) {
      // Without mergeable buffers a frame must fit one chain: drop it, give the chain back empty.
      this.net.rxDropped++;
      this.pushUsed(q, first.head, 0);
      this.rxPushed++;
      return i + 1;
    }
    let off = cap;
    let j = i + 1;
    while (off < n) {
      let chain = j < chains.length ? chains[j] : undefined;
      if (!chain) {
        chain = this.popChain(q) ?? undefined;
        if (!chain) break;
        chains.push(chain);
      }
      j++;
      if (chain.readable.length) {
        this.markBroken('receive chain has device-readable buffers');
        return -1;
      }
      off += chain.writableLength;
    }
    if (this.broken) return -1;
    if (off < n) {
      // Not enough buffers: keep the frame (what is in chain i and the spill) and return the chains.
      const frame = new Uint8Array(n);
      frame.set(gather(this.memory, first.writable, 0, cap));
      frame.set(this.spill.subarray(0, n - cap), cap);
      this.unpopChains(q, chains.length - i);
      chains.length = i;
      return this.stashOrDrop(q, pair, frame) ? -1 : i;
    }
    this.memory.writeU16(first.writable[0].addr + N.OFF_virtio_net_hdr_mrg_rxbuf_num_buffers, j - i);
    this.noteWritten(first.writable, cap);
    this.pushUsed(q, first.head, cap);
    let pos = 0;
    for (let k = i + 1; k < j; k++) {
      const c = chains[k];
      const len = Math.min(c.writableLength, n - cap - pos);
      scatter(this.memory, c.writable, this.spill.subarray(pos, pos + len));
      pos += len;
      this.pushUsed(q, c.head, len);
    }
    this.rxPushed += j - i;
    this.net.rxPackets++;
    this.net.rxBytes += n - VNET_HDR_LEN;
    return j;
  }

  /** A frame that found too few buffers: true when it is stashed and RX waits; false when RX goes on (dropped, or buffers arrived). */
  private stashOrDrop(q: SplitVirtqueue, pair: number, frame: Uint8Array): boolean {
    const pendingBefore = q.pending();
    if (q.budgetExhausted) {
      this.stashed[pair] = frame;
      return true;
    }
    if (pendingBefore >= q.size) {
      // Even a full ring of the guest's buffers cannot hold this frame: drop it, or RX would stall for good.
      this.net.rxDropped++;
      return false;
    }
    // Keep the frame and wait for the guest to post more buffers (its kick resumes RX).
    this.stashed[pair] = frame;
    this.net.rxNoBuffers++;
    this.watches[pair].stop();
    return !(q.enableNotification() && q.pending() > pendingBefore); // buffers arrived meanwhile
  }

  /** One used receive chain of `len` bytes for a frame of `frameLen` (with its header). */
  private rxDone(q: SplitVirtqueue, head: number, len: number, frameLen: number): void {
    this.pushUsed(q, head, len);
    this.rxPushed++;
    this.net.rxPackets++;
    this.net.rxBytes += frameLen - VNET_HDR_LEN;
  }

  /** Tells guest memory's dirty tracking (migration) about `n` bytes the TAP wrote from the start of `bufs`. */
  private noteWritten(bufs: readonly Descriptor[], n: number): void {
    for (let k = 0; k < bufs.length && n > 0; k++) {
      const len = Math.min(bufs[k].len, n);
      this.memory.noteWritten(bufs[k].addr, len);
      n -= len;
    }
  }

  /**
   * One frame the one-at-a-time way: the stashed frame, or one read from the
   * TAP into a host buffer, scattered by deliver() with every check. Returns
   * whether to go on.
   */
  private receiveOne(q: SplitVirtqueue, pair: number): boolean {
    let frame = this.stashed[pair];
    this.stashed[pair] = undefined;
    const fromTap = !frame;
    if (!frame) {
      const n = this.tap.read(pair, this.rxBuf);
      if (n <= 0) {
        this.watches[pair].start(); // wait for the TAP
        return false;
      }
      frame = this.rxBuf.subarray(0, n);
    }
    const r = this.deliver(q, frame);
    if (r === 'broken') return false;
    if (r === 'no-room') return !this.stashOrDrop(q, pair, fromTap ? Uint8Array.from(frame) : frame);
    this.rxPushed++;
    return true;
  }

  /** Scatters one frame (vnet header first) into one or more chains. */
  private deliver(q: SplitVirtqueue, frame: Uint8Array): 'ok' | 'no-room' | 'broken' | 'dropped' {
    const mrg = this.hasFeature(N.VIRTIO_NET_F_MRG_RXBUF);
    const used: { chain: DescriptorChain; len: number }[] = [];
    let off = 0;
    while (off < frame.length) {
      const chain = this.popChain(q);
      if (!chain) {
        if (this.broken) return 'broken';
        this.unpopChains(q, used.length);
        return 'no-room';
      }
      if (chain.readable.length) {
        this.markBroken('receive chain has device-readable buffers');
        return 'broken';
      }
      if (!mrg && chain.writableLength < frame.length) {
        // Without mergeable buffers a frame must fit one chain: drop it, give the chain back empty.
        this.net.rxDropped++;
        this.pushUsed(q, chain.head, 0);
        return 'dropped';
      }
      const n = Math.min(chain.writableLength, frame.length - off);
      if (used.length === 0 && n < VNET_HDR_LEN) {
        this.markBroken(`receive buffer of ${chain.writableLength} bytes cannot hold the virtio-net header`);
        return 'broken';
      }
      used.push({ chain, len: n });
      off += n;
      if (!mrg) break;
    }
    // num_buffers in the header tells the driver how many chains this frame used.
    const hdr = Uint8Array.from(frame.subarray(0, VNET_HDR_LEN));
    new DataView(hdr.buffer).setUint16(N.OFF_virtio_net_hdr_mrg_rxbuf_num_buffers, used.length, true);
    let pos = 0;
    for (const u of used) {
      scatter(
        this.memory,
        u.chain.writable,
        pos === 0 ? concat(hdr, frame.subarray(VNET_HDR_LEN, u.len)) : frame.subarray(pos, pos + u.len),
      );
      pos += u.len;
      this.pushUsed(q, u.chain.head, u.len);
    }
    this.net.rxPackets++;
    this.net.rxBytes += frame.length - VNET_HDR_LEN;
    return 'ok';
  }

  // --- control -------------------------------------------------------------------

  private control(q: SplitVirtqueue): void {
    let n = 0;
    // enableNotification moves avail_event (EVENT_IDX) past what we took: without it the driver
    // would kick for its first command only and then wait forever for the second (Linux does).
    do {
      for (let chain = this.popChain(q); chain; chain = this.popChain(q)) {
        if (chain.readableLength < 2 || chain.writableLength < 1) {
          this.markBroken('control request needs a 2-byte header and a writable ack byte');
          return;
        }
        // The ack is the last byte of the last writable buffer; a zero-length one has none.
        const ackAddr = lastWritableByte(chain.writable);
        if (ackAddr === undefined) {
          this.markBroken('control request: the last device-writable buffer (the ack byte) has length 0');
          return;
        }
        const req = gather(this.memory, chain.readable, 0, chain.readableLength);
        const ack = this.controlCommand(req[0], req[1], req.subarray(2)) ? N.VIRTIO_NET_OK : N.VIRTIO_NET_ERR;
        this.memory.writeU8(ackAddr, ack);
        this.pushUsed(q, chain.head, 1);
        n++;
      }
    } while (this.canProcess && q.enableNotification());
    if (n) this.signalUsed(q);
  }

  private controlCommand(cls: number, cmd: number, data: Uint8Array): boolean {
    const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
    switch (cls) {
      case N.VIRTIO_NET_CTRL_RX: {
        if (!this.hasFeature(N.VIRTIO_NET_F_CTRL_RX) || data.length < 1) return false;
        const on = data[0] !== 0;
        const names: Record<number, keyof typeof this.rxMode> = {
          [N.VIRTIO_NET_CTRL_RX_PROMISC]: 'promisc',
          [N.VIRTIO_NET_CTRL_RX_ALLMULTI]: 'allmulti',
          [N.VIRTIO_NET_CTRL_RX_ALLUNI]: 'alluni',
          [N.VIRTIO_NET_CTRL_RX_NOMULTI]: 'nomulti',
          [N.VIRTIO_NET_CTRL_RX_NOUNI]: 'nouni',
          [N.VIRTIO_NET_CTRL_RX_NOBCAST]: 'nobcast',
        };
        if (!(cmd in names)) return false;
        this.rxMode[names[cmd]] = on;
        return true;
      }
      case N.VIRTIO_NET_CTRL_MAC:
        if (cmd === N.VIRTIO_NET_CTRL_MAC_ADDR_SET) {
          if (data.length !== 6) return false;
          this.config.set(data, N.OFF_virtio_net_config_mac);
          return true;
        }
        if (cmd === N.VIRTIO_NET_CTRL_MAC_TABLE_SET) {
          // Two tables (unicast, multicast): u32 count + 6-byte entries each. Checked, then accepted.
          let o = 0;
          for (let t = 0; t < 2; t++) {
            if (o + 4 > data.length) return false;
            const entries = dv.getUint32(o, true);
            o += 4 + entries * 6;
            if (o > data.length) return false;
          }
          return o === data.length;
        }
        return false;
      case N.VIRTIO_NET_CTRL_VLAN:
        return (
          (cmd === N.VIRTIO_NET_CTRL_VLAN_ADD || cmd === N.VIRTIO_NET_CTRL_VLAN_DEL) && data.length === 2 && dv.getUint16(0, true) < 4096
        );
      case N.VIRTIO_NET_CTRL_MQ: {
        if (cmd !== N.VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET || data.length !== 2 || !this.hasFeature(N.VIRTIO_NET_F_MQ)) return false;
        const pairs = dv.getUint16(0, true);
        if (pairs < 1 || pairs > this.pairs) return false;
        for (let i = pairs; i < this.activePairs; i++) this.watches[i].stop();
        this.activePairs = pairs;
        this.startRx();
        return true;
      }
      case N.VIRTIO_NET_CTRL_ANNOUNCE:
        return cmd === N.VIRTIO_NET_CTRL_ANNOUNCE_ACK;
      default:
        return false;
    }
  }

  async destroy(): Promise<void> {
    if (this.iothread) await this.closePlanes();
    for (const w of this.watches) w.close();
    this.tap.close();
  }
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}
