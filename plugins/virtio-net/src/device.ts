/**
 * The virtio-net device (virtio 1.2 section 5.1) over a TAP: receive queues
 * (2i), transmit queues (2i+1) for each queue pair, and the control queue last.
 */
import { FdWatch } from '@tsvmm/kvm-native';
import {
  DescriptorChain,
  gather,
  GuestMemory,
  lastWritableByte,
  readConfigImage,
  scatter,
  SplitVirtqueue,
  views as guestViews,
  VirtioDevice,
} from '@tsvmm/virtio-core';
import * as N from './generated/virtio-net-uapi';
import { Tap, VNET_HDR_LEN } from './backend/tap';

export const VIRTIO_ID_NET = 1;
export const QUEUE_SIZE = 256;
const MAX_FRAME = 65536 + VNET_HDR_LEN;

const bit = (n: number) => 1n << BigInt(n);

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

export class VirtioNetDevice extends VirtioDevice {
  readonly tap: Tap;
  readonly pairs: number;
  readonly mac: Uint8Array;
  activePairs = 1;
  readonly net: NetCounters = { rxPackets: 0, rxBytes: 0, rxDropped: 0, txPackets: 0, txBytes: 0, txDropped: 0, rxNoBuffers: 0 };
  /** RX mode set through the control queue (recorded; the TAP delivers what the host sends it). */
  readonly rxMode = { promisc: true, allmulti: false, alluni: false, nomulti: false, nouni: false, nobcast: false };
  private readonly config = new Uint8Array(N.SIZEOF_virtio_net_config);
  private readonly watches: FdWatch[];
  /** A frame read from the TAP that did not fit the guest's buffers yet, per pair. */
  private readonly stashed: (Uint8Array | undefined)[];
  private readonly rxBuf = new Uint8Array(MAX_FRAME);

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
  }

  override deviceInfo(): Record<string, unknown> {
    const mac = [...this.config.subarray(0, 6)].map((b) => b.toString(16).padStart(2, '0')).join(':');
    return { tap: this.tap.name, mac, pairs: this.pairs, 'active-pairs': this.activePairs, 'rx-mode': { ...this.rxMode }, ...this.net };
  }

  readConfig(offset: number, size: number): number {
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
    let offloads = 0;
    if (this.hasFeature(N.VIRTIO_NET_F_GUEST_CSUM)) offloads |= N.TUN_F_CSUM;
    if (this.hasFeature(N.VIRTIO_NET_F_GUEST_TSO4)) offloads |= N.TUN_F_TSO4;
    if (this.hasFeature(N.VIRTIO_NET_F_GUEST_TSO6)) offloads |= N.TUN_F_TSO6;
    if (this.hasFeature(N.VIRTIO_NET_F_GUEST_ECN)) offloads |= N.TUN_F_TSO_ECN;
    this.tap.setOffloads(offloads);
    this.activePairs = 1;
    this.startRx();
  }

  protected override onReset(): void {
    for (const w of this.watches) w.stop();
    this.stashed.fill(undefined);
    this.activePairs = 1;
  }

  override setDisabled(disabled: boolean): void {
    if (disabled) for (const w of this.watches) w.stop();
    super.setDisabled(disabled);
    if (!disabled) this.startRx();
  }

  /**
   * The VM stopped (false) or runs again (true). While stopped nothing is
   * taken from the TAP (frames wait in its queue): a device that kept
   * filling receive buffers would change guest memory and its ring indices
   * after a migration or snapshot took them.
   */
  setVmRunning(running: boolean): void {
    this.vmStopped = !running;
    if (!running) for (const w of this.watches) w.stop();
    else this.startRx();
  }

  private vmStopped = false;

  private startRx(): void {
    if (!this.canProcess || this.vmStopped) return;
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

  private transmit(q: SplitVirtqueue): void {
    const pair = (q.index - 1) / 2;
    let sent = 0;
    do {
      q.disableNotification();
      for (let chain = this.popChain(q); chain; chain = this.popChain(q)) {
        if (chain.writable.length || chain.readableLength < VNET_HDR_LEN) {
          this.markBroken(
            chain.writable.length
              ? 'transmit chain has device-writable buffers'
              : `transmit chain of ${chain.readableLength} bytes is shorter than the virtio-net header`,
          );
          return;
        }
        const views = guestViews(this.memory, chain.readable); // a buffer across a RAM split is two views
        if (pair < this.activePairs && this.tap.write(pair, views)) {
          this.net.txPackets++;
          this.net.txBytes += chain.readableLength - VNET_HDR_LEN;
        } else this.net.txDropped++;
        this.pushUsed(q, chain.head, 0);
        sent++;
      }
    } while (this.canProcess && q.enableNotification());
    // One interrupt for the whole batch.
    if (sent) this.signalUsed(q);
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
    let delivered = 0;
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
      let frame = this.stashed[pair];
      this.stashed[pair] = undefined;
      if (!frame) {
        const n = this.tap.read(pair, this.rxBuf);
        if (n <= 0) {
          watch.start(); // wait for the TAP
          break;
        }
        frame = this.rxBuf.subarray(0, n);
      }
      const pendingBefore = q.pending();
      const r = this.deliver(q, frame);
      if (r === 'broken') return;
      if (r === 'no-room') {
        if (q.budgetExhausted) {
          this.stashed[pair] = Uint8Array.from(frame);
          break;
        }
        if (pendingBefore >= q.size) {
          // Even a full ring of the guest's buffers cannot hold this frame: drop it, or RX would stall for good.
          this.net.rxDropped++;
          continue;
        }
        // Keep the frame and wait for the guest to post more buffers (its kick resumes RX).
        this.stashed[pair] = Uint8Array.from(frame);
        this.net.rxNoBuffers++;
        watch.stop();
        if (q.enableNotification() && q.pending() > pendingBefore) continue; // buffers arrived meanwhile
        break;
      }
      delivered++;
    }
    if (delivered) this.signalUsed(q);
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

  destroy(): void {
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
