/**
 * The virtio-pci modern transport (virtio 1.2 section 4.1): wraps any
 * VirtioDevice in a PCI function with the common, notify, ISR, device and
 * PCI-config-access capabilities and MSI-X.
 *
 * BAR0 (32-bit): MSI-X table at 0x000, PBA at 0x800.
 * BAR4 (64-bit, placed below 4 GiB): common cfg 0x0000, ISR 0x1000, device cfg
 * 0x2000, notify 0x3000 (queue i at 0x3000 + 4*i).
 *
 * Queue notifications use one KVM ioeventfd per queue on its notify address
 * (16-bit writes, as drivers issue them), registered while the driver is at
 * DRIVER_OK, the VM runs and no backend owns the notifiers; a queue handler
 * on another thread (QueueHandler.attachNotifier: virtio-blk's iothread)
 * watches a duplicate there instead of this thread. A notify write the
 * ioeventfd does not catch (other widths, or ioeventfd=off) arrives through
 * the exit path and does the same thing.
 *
 * Every way into the device from here runs inside the device's fault boundary
 * (VirtioDevice.runGuarded): BAR and config-space accesses (vCPU exits),
 * the ioeventfd and fallback-call watchers, the MSI-X irqfd watchers,
 * monitor kicks and calls. A throw there marks the device needs-reset; it
 * never reaches the vCPU exit handler or the event loop.
 */
import { EventFd, Vm } from '@tsvmm/kvm-native';
import {
  DeliveryBlock,
  Fields,
  QueueHandler,
  VirtioDevice,
  VirtioDeviceState,
  VirtioInterrupt,
  virtioUapi as V,
  within,
} from '@tsvmm/virtio-core';
import { CheckedVirtioPciState, parseVirtioPciState } from './virtio-pci-state';
import { GsiRoutes } from './gsi-routes';
import { BusDevice, IoBus } from './io-bus';
import { MmioAllocator } from './mmio-allocator';
import { MsixController } from './msix';
import { PciBarFunction } from './pci-device';
import { PciBus } from './pci-bus';

import type { PropertySchema } from './properties';

/** Properties every virtio-pci plugin offers for the stall detector (docs/qmp.md). */
export const VIRTIO_PCI_DEBUG_PROPERTIES: PropertySchema = {
  'stall-ms': {
    type: 'int',
    description: 'emit VIRTQUEUE_STALL when a kick or interrupt is missing this long (0: off; absent: the VMM-wide --stall-ms)',
    min: 0,
    max: 3600000,
  },
  'stall-policy': {
    type: 'enum',
    description: 'what to do on a stall: none, kick the queue (kick side), or send its interrupt (interrupt side)',
    values: ['none', 'kick', 'call'],
    default: 'none',
  },
};

export type StallPolicy = 'none' | 'kick' | 'call';

/** A plugin's stall settings from its properties (VIRTIO_PCI_DEBUG_PROPERTIES). */
export function stallSettings(props: Record<string, unknown>): { ms: number | undefined; policy: StallPolicy } {
  return { ms: props['stall-ms'] as number | undefined, policy: (props['stall-policy'] as StallPolicy | undefined) ?? 'none' };
}

export const VIRTIO_PCI_VENDOR_ID = 0x1af4;
export const VIRTIO_PCI_DEVICE_ID_BASE = 0x1040;
const PCI_CAP_ID_VNDR = 0x09;

const MSIX_BAR = 0;
const VIRTIO_BAR = 4;
const VIRTIO_BAR_SIZE = 0x4000;
const COMMON_OFFSET = 0x0000;
const ISR_OFFSET = 0x1000;
const DEVICE_OFFSET = 0x2000;
const NOTIFY_OFFSET = 0x3000;
const NOTIFY_MULTIPLIER = 4;
const NO_VECTOR = V.VIRTIO_MSI_NO_VECTOR;

export interface VirtioPciContext {
  vm: Vm;
  pci: PciBus;
  mmio: IoBus;
  gsiRoutes: GsiRoutes;
  mmio32: MmioAllocator;
  log(message: string): void;
}

export interface VirtioPciOptions {
  /** PCI class code for the device type (e.g. 0x018000 for block). */
  classCode: number;
  /** Use KVM ioeventfd for queue notifications (default true). */
  ioeventfd?: boolean;
  /** PCI slot; the first free one when omitted. */
  slot?: number;
}

/** The transport's part of a virtio-pci function's migration state. */
export interface VirtioPciState {
  /** The 256-byte config space, base64. */
  config: string;
  msixTable: string;
  msixPba: string;
  queueVectors: number[];
  msixConfig: number;
  deviceFeatureSelect: number;
  driverFeatureSelect: number;
  queueSelect: number;
  isr: number;
}

/** What VirtioPciPluginDevice saves: the transport and the device model. */
export interface VirtioPciDeviceState {
  transport: VirtioPciState;
  virtio: VirtioDeviceState;
  /** The plugin's own fields (VirtioPciPluginDevice.saveExtra). */
  extra?: unknown;
}

interface HostNotifier {
  efd: EventFd;
  addr: number;
  /**
   * own: the VMM's eventfd, watched; backend: a vhost backend's kick eventfd
   * (the VMM never reads it); interposed: the VMM's eventfd standing in for a
   * backend's while kicks are being dropped (fault injection).
   */
  kind: 'own' | 'backend' | 'interposed';
  /** own: the queue handler (on another thread) that watches a duplicate of the eventfd instead of this thread. */
  handler?: QueueHandler;
}

export class VirtioPciDevice extends PciBarFunction implements VirtioInterrupt {
  readonly msix: MsixController;
  readonly slot: number;
  readonly ioeventfd: boolean;
  /** Set by the VMM while the VM is stopped (notifiers off) and by vhost backends. */
  private vmRunning = true;
  private notifiersOwnedByBackend = false;
  private notifiers: (HostNotifier | undefined)[] = [];
  /** Per queue: the kick eventfd of a vhost backend that owns the queue's notifier. */
  private backendKicks: (EventFd | undefined)[] = [];
  /** Per queue: a VMM-watched call eventfd for a backend whose queue has no MSI-X vector. */
  private fallbackCalls: (EventFd | undefined)[] = [];
  /** Told when the eventfd a backend should signal for a queue changes (its vector was reassigned). */
  onCallEventFdChanged: ((queue: number) => void) | undefined;

  private deviceFeatureSelect = 0;
  private driverFeatureSelect = 0;
  private queueSelect = 0;
  private msixConfig = NO_VECTOR;
  private readonly queueVectors: number[];
  private isr = 0;
  private readonly pciCfgCapOffset: number;

  constructor(
    readonly device: VirtioDevice,
    private readonly ctx: VirtioPciContext,
    opts: VirtioPciOptions,
  ) {
    super(
      device.id,
      {
        vendorId: VIRTIO_PCI_VENDOR_ID,
        deviceId: VIRTIO_PCI_DEVICE_ID_BASE + device.deviceId,
        classCode: opts.classCode,
        revision: 1,
        subsystemVendorId: VIRTIO_PCI_VENDOR_ID,
        subsystemId: 0x1100,
      },
      ctx.mmio,
    );
    this.ioeventfd = opts.ioeventfd ?? true;
    this.queueVectors = device.queues.map(() => NO_VECTOR);
    const vectors = device.queues.length + 1;

    this.msix = new MsixController(this.config, vectors, { tableBar: MSIX_BAR, tableOffset: 0, pbaBar: MSIX_BAR, pbaOffset: 0x800 }, ctx);
    this.msix.boundary = (entry, fn) => void device.runGuarded(entry, fn);
    const msixBar: BusDevice = {
      read: (o, s) =>
        device.runGuarded('MSI-X BAR read', () =>
          o < 0x800 ? this.msix.tableDevice.read(o, s) : this.msix.pbaDevice.read(o - 0x800, s),
        ) ?? 0,
      write: (o, s, v) => void device.runGuarded('MSI-X BAR write', () => (o < 0x800 ? this.msix.tableDevice.write(o, s, v) : undefined)),
    };
    this.addBar({ index: MSIX_BAR, size: 0x1000, kind: 'mem32', device: msixBar }, ctx.mmio32.allocate(0x1000));
    this.addBar(
      { index: VIRTIO_BAR, size: VIRTIO_BAR_SIZE, kind: 'mem64', prefetchable: false, device: this.virtioBar },
      ctx.mmio32.allocate(VIRTIO_BAR_SIZE),
    );

    this.addVirtioCap(V.VIRTIO_PCI_CAP_COMMON_CFG, COMMON_OFFSET, 0x40);
    this.addVirtioCap(V.VIRTIO_PCI_CAP_ISR_CFG, ISR_OFFSET, 1);
    this.addVirtioCap(V.VIRTIO_PCI_CAP_DEVICE_CFG, DEVICE_OFFSET, 0x1000);
    this.addVirtioCap(V.VIRTIO_PCI_CAP_NOTIFY_CFG, NOTIFY_OFFSET, Math.max(device.queues.length * NOTIFY_MULTIPLIER, 4), NOTIFY_MULTIPLIER);
    // VIRTIO_PCI_CAP_PCI_CFG: bar, offset and length are driver-writable; pci_cfg_data is the window.
    this.pciCfgCapOffset = this.addVirtioCap(V.VIRTIO_PCI_CAP_PCI_CFG, 0, 0, undefined, true);

    this.device.interrupt = this;
    // Fault injection on a backend-owned queue interposes the VMM (see syncHostNotifiers).
    this.device.faultsChanged = () => this.device.later('fault injection change', () => this.syncHostNotifiers());
    // Bus mastering is off until the driver sets it: the device must not touch memory.
    this.device.setDisabled(true);
    this.slot = ctx.pci.attach(this, opts.slot);
  }

  /** Appends a virtio vendor capability; returns its config offset. */
  private addVirtioCap(cfgType: number, offset: number, length: number, multiplier?: number, pciCfg = false): number {
    const len = pciCfg ? V.SIZEOF_virtio_pci_cfg_cap : multiplier !== undefined ? V.SIZEOF_virtio_pci_notify_cap : V.SIZEOF_virtio_pci_cap;
    const body = new Uint8Array(len - 2);
    const dv = new DataView(body.buffer);
    const b = (off: number) => off - 2; // body offsets exclude cap_vndr and cap_next
    body[b(V.OFF_virtio_pci_cap_cap_len)] = len;
    body[b(V.OFF_virtio_pci_cap_cfg_type)] = cfgType;
    body[b(V.OFF_virtio_pci_cap_bar)] = pciCfg ? 0 : VIRTIO_BAR;
    dv.setUint32(b(V.OFF_virtio_pci_cap_offset), offset, true);
    dv.setUint32(b(V.OFF_virtio_pci_cap_length), length, true);
    if (multiplier !== undefined) dv.setUint32(b(V.OFF_virtio_pci_notify_cap_notify_off_multiplier), multiplier, true);
    let mask: Uint8Array | undefined;
    if (pciCfg) {
      mask = new Uint8Array(len - 2);
      mask[b(V.OFF_virtio_pci_cap_bar)] = 0xff;
      mask.fill(0xff, b(V.OFF_virtio_pci_cap_offset), b(V.OFF_virtio_pci_cap_length) + 4);
    }
    return this.config.addCapability(PCI_CAP_ID_VNDR, body, mask);
  }

  // --- config space ------------------------------------------------------------

  override configRead(offset: number, size: number): number {
    return this.device.runGuarded('PCI config read', () => this.configReadUnguarded(offset, size)) ?? 0;
  }

  override configWrite(offset: number, size: number, value: number): void {
    this.device.runGuarded('PCI config write', () => this.configWriteUnguarded(offset, size, value));
  }

  private configReadUnguarded(offset: number, size: number): number {
    const data = this.pciCfgCapOffset + V.OFF_virtio_pci_cfg_cap_pci_cfg_data;
    if (offset >= data && offset < data + 4) {
      const w = this.pciCfgWindow();
      return w ? Number(this.virtioBar.read(w.offset, w.length)) : 0;
    }
    return super.configRead(offset, size);
  }

  private configWriteUnguarded(offset: number, size: number, value: number): void {
    const data = this.pciCfgCapOffset + V.OFF_virtio_pci_cfg_cap_pci_cfg_data;
    if (offset >= data && offset < data + 4) {
      const w = this.pciCfgWindow();
      if (w) this.virtioBar.write(w.offset, w.length, value);
      return;
    }
    super.configWrite(offset, size, value);
    if (offset < this.msix.capOffset + 12 && offset + size > this.msix.capOffset) this.msix.configWritten();
  }

  /** The BAR4 access the VIRTIO_PCI_CAP_PCI_CFG window currently selects, if valid. */
  private pciCfgWindow(): { offset: number; length: number } | undefined {
    const c = this.pciCfgCapOffset;
    const bar = this.config.getU8(c + V.OFF_virtio_pci_cap_bar);
    const offset = this.config.getU32(c + V.OFF_virtio_pci_cap_offset);
    const length = this.config.getU32(c + V.OFF_virtio_pci_cap_length);
    if (bar !== VIRTIO_BAR || ![1, 2, 4].includes(length) || offset % length || offset + length > VIRTIO_BAR_SIZE) return undefined;
    return { offset, length };
  }

  protected override onBusMaster(enabled: boolean): void {
    this.device.setDisabled(!enabled);
  }

  protected override onBarMapped(index: number): void {
    if (index === VIRTIO_BAR) this.syncHostNotifiers(true);
  }

  // --- BAR4: common, ISR, device, notify ---------------------------------------

  readonly virtioBar: BusDevice = {
    read: (off, size) => this.device.runGuarded('BAR4 read', () => this.virtioBarRead(off, size)) ?? 0,
    write: (off, size, value) => void this.device.runGuarded('BAR4 write', () => this.virtioBarWrite(off, size, value)),
  };

  private virtioBarRead(off: number, size: number): number {
    if (off < ISR_OFFSET) return this.commonRead(off, size);
    if (off < DEVICE_OFFSET) {
      // Reading ISR clears it (and would deassert INTx).
      const v = this.isr;
      this.isr = 0;
      return off === ISR_OFFSET ? v : 0;
    }
    if (off < NOTIFY_OFFSET) return this.device.readConfig(off - DEVICE_OFFSET, size);
    return 0;
  }

  private virtioBarWrite(off: number, size: number, value: number | bigint): void {
    const v = Number(value);
    if (off < ISR_OFFSET) this.commonWrite(off, size, v);
    else if (off < DEVICE_OFFSET) return;
    else if (off < NOTIFY_OFFSET) this.device.writeConfig(off - DEVICE_OFFSET, size, v);
    else {
      // A doorbell that came through the exit path (ioeventfd off, or an unusual width).
      const q = Math.floor((off - NOTIFY_OFFSET) / NOTIFY_MULTIPLIER);
      if (q < this.device.queues.length) this.device.notify(q, 'exit');
    }
  }

  private get selectedQueue() {
    return this.device.queues[this.queueSelect];
  }

  private commonRead(off: number, size: number): number {
    const d = this.device;
    const q = this.selectedQueue;
    switch (off) {
      case V.OFF_virtio_pci_common_cfg_device_feature_select:
        return this.deviceFeatureSelect;
      case V.OFF_virtio_pci_common_cfg_device_feature:
        return d.readDeviceFeatures(this.deviceFeatureSelect);
      case V.OFF_virtio_pci_common_cfg_driver_feature_select:
        return this.driverFeatureSelect;
      case V.OFF_virtio_pci_common_cfg_driver_feature:
        return this.driverFeatureSelect > 1 ? 0 : Number((d.driverFeatures >> BigInt(32 * this.driverFeatureSelect)) & 0xffffffffn);
      case V.OFF_virtio_pci_common_cfg_msix_config:
        return this.msixConfig;
      case V.OFF_virtio_pci_common_cfg_num_queues:
        return d.queues.length;
      case V.OFF_virtio_pci_common_cfg_device_status:
        return d.status;
      case V.OFF_virtio_pci_common_cfg_config_generation:
        return d.configGeneration;
      case V.OFF_virtio_pci_common_cfg_queue_select:
        return this.queueSelect;
      case V.OFF_virtio_pci_common_cfg_queue_size:
        return q ? q.size : 0;
      case V.OFF_virtio_pci_common_cfg_queue_msix_vector:
        return q ? this.queueVectors[this.queueSelect] : NO_VECTOR;
      case V.OFF_virtio_pci_common_cfg_queue_enable:
        return q?.ready ? 1 : 0;
      case V.OFF_virtio_pci_common_cfg_queue_notify_off:
        return q ? this.queueSelect : 0;
      case V.OFF_virtio_pci_common_cfg_queue_desc:
        return q ? q.descTable >>> 0 : 0;
      case V.OFF_virtio_pci_common_cfg_queue_desc + 4:
        return q ? Math.floor(q.descTable / 2 ** 32) : 0;
      case V.OFF_virtio_pci_common_cfg_queue_driver:
        return q ? q.availRing >>> 0 : 0;
      case V.OFF_virtio_pci_common_cfg_queue_driver + 4:
        return q ? Math.floor(q.availRing / 2 ** 32) : 0;
      case V.OFF_virtio_pci_common_cfg_queue_device:
        return q ? q.usedRing >>> 0 : 0;
      case V.OFF_virtio_pci_common_cfg_queue_device + 4:
        return q ? Math.floor(q.usedRing / 2 ** 32) : 0;
      default:
        return 0;
    }
  }

  private commonWrite(off: number, size: number, v: number): void {
    const d = this.device;
    const q = this.selectedQueue;
    const queueWritable = q !== undefined && !q.ready && !d.driverOk;
    const setLo = (cur: number) => Math.floor(cur / 2 ** 32) * 2 ** 32 + (v >>> 0);
    const setHi = (cur: number) => (v >>> 0) * 2 ** 32 + (cur % 2 ** 32);
    switch (off) {
      case V.OFF_virtio_pci_common_cfg_device_feature_select:
        this.deviceFeatureSelect = v >>> 0;
        return;
      case V.OFF_virtio_pci_common_cfg_driver_feature_select:
        this.driverFeatureSelect = v >>> 0;
        return;
      case V.OFF_virtio_pci_common_cfg_driver_feature:
        d.writeDriverFeatures(this.driverFeatureSelect, v);
        return;
      case V.OFF_virtio_pci_common_cfg_msix_config:
        this.msixConfig = this.assignVector(this.msixConfig, v & 0xffff);
        return;
      case V.OFF_virtio_pci_common_cfg_device_status:
        this.writeStatus(v & 0xff);
        return;
      case V.OFF_virtio_pci_common_cfg_queue_select:
        this.queueSelect = v & 0xffff;
        return;
      case V.OFF_virtio_pci_common_cfg_queue_size:
        if (queueWritable) q.size = v & 0xffff;
        return;
      case V.OFF_virtio_pci_common_cfg_queue_msix_vector:
        if (q) {
          const old = this.queueVectors[this.queueSelect];
          this.queueVectors[this.queueSelect] = this.assignVector(old, v & 0xffff);
          if (this.queueVectors[this.queueSelect] !== old) this.onCallEventFdChanged?.(this.queueSelect);
        }
        return;
      case V.OFF_virtio_pci_common_cfg_queue_enable:
        if (queueWritable && (v & 0xffff) === 1) q.ready = true;
        return;
      case V.OFF_virtio_pci_common_cfg_queue_desc:
        if (queueWritable) q.descTable = setLo(q.descTable);
        return;
      case V.OFF_virtio_pci_common_cfg_queue_desc + 4:
        if (queueWritable) q.descTable = setHi(q.descTable);
        return;
      case V.OFF_virtio_pci_common_cfg_queue_driver:
        if (queueWritable) q.availRing = setLo(q.availRing);
        return;
      case V.OFF_virtio_pci_common_cfg_queue_driver + 4:
        if (queueWritable) q.availRing = setHi(q.availRing);
        return;
      case V.OFF_virtio_pci_common_cfg_queue_device:
        if (queueWritable) q.usedRing = setLo(q.usedRing);
        return;
      case V.OFF_virtio_pci_common_cfg_queue_device + 4:
        if (queueWritable) q.usedRing = setHi(q.usedRing);
        return;
      default:
        if (size === 8) {
          this.commonWrite(off, 4, v % 2 ** 32);
          this.commonWrite(off + 4, 4, Math.floor(v / 2 ** 32));
        }
    }
  }

  /** Maps a vector number written by the driver: out-of-range reads back as NO_VECTOR (spec 4.1.5.1.2). */
  private assignVector(old: number, v: number): number {
    const nv = v !== NO_VECTOR && v >= this.msix.vectors ? NO_VECTOR : v;
    if (old !== NO_VECTOR && old !== nv && !this.vectorUsedElsewhere(old, 1)) this.msix.releaseVector(old);
    if (nv !== NO_VECTOR) this.msix.useVector(nv);
    return nv;
  }

  private vectorUsedElsewhere(v: number, allowed: number): boolean {
    const uses = this.queueVectors.filter((x) => x === v).length + (this.msixConfig === v ? 1 : 0);
    return uses > allowed;
  }

  private writeStatus(v: number): void {
    const wasOk = this.device.driverOk;
    this.device.writeStatus(v);
    if (v === 0) {
      // Reset: vectors unassigned, ISR clear, notifiers off.
      this.syncHostNotifiers();
      this.queueVectors.fill(NO_VECTOR);
      this.msixConfig = NO_VECTOR;
      this.msix.releaseAll();
      this.isr = 0;
      this.queueSelect = 0;
    } else if (this.device.driverOk !== wasOk) this.syncHostNotifiers();
  }

  // --- VirtioInterrupt -----------------------------------------------------------

  signalQueue(queue: number): void {
    this.isr |= 1;
    const v = this.queueVectors[queue];
    if (this.msix.enabled && v !== undefined && v !== NO_VECTOR) this.msix.notify(v);
  }

  /** The stall detector's view (InterruptDeliveryView): why the queue's interrupt is not reaching the driver now. */
  queueDeliveryBlock(queue: number): DeliveryBlock | undefined {
    const v = this.queueVectors[queue];
    if (!this.msix.enabled) return 'msix-disabled';
    if (v === undefined || v === NO_VECTOR) return 'no-vector';
    if (this.msix.functionMasked || this.msix.vectorMasked(v)) return this.msix.pending(v) ? 'vector-masked' : undefined;
    if (!this.msix.irqfdAssigned(v)) return 'no-irqfd';
    return undefined;
  }

  signalConfig(): void {
    this.isr |= V.VIRTIO_PCI_ISR_CONFIG;
    if (this.msix.enabled && this.msixConfig !== NO_VECTOR) this.msix.notify(this.msixConfig);
  }

  // --- host notifiers (ioeventfd) ----------------------------------------------------

  /** The VMM stops/starts the VM: notifiers are off while it is stopped. */
  setVmRunning(running: boolean): void {
    this.vmRunning = running;
    this.syncHostNotifiers();
    if (running && this.kickOnResume) {
      this.kickOnResume = false;
      this.kickActiveQueues();
    }
  }

  /** Set by loadState: the first resume kicks every active queue once (docs/migration.md). */
  private kickOnResume = false;

  /**
   * After a restore: one kick per active queue, through the queue's host
   * notifier when it has one, as a guest doorbell would arrive. The stream
   * carries ring indices, not doorbells: a kick the source had not processed
   * when it stopped, or a guest that saw VRING_USED_F_NO_NOTIFY (or an
   * avail_event) the source device had set while it was busy, would
   * otherwise leave buffers in the ring that nobody looks at.
   */
  private kickActiveQueues(): void {
    if (!this.device.driverOk || this.device.broken) return;
    this.device.queues.forEach((q, i) => {
      if (!q.ready) return;
      const n = this.notifiers[i];
      if (n) n.efd.write(1);
      else this.device.notify(i, 'restore');
    });
  }

  /**
   * Why the transport cannot be migrated now, if it cannot: a backend owns
   * queues (the VMM cannot see what it writes). A device that hands queues to
   * a backend and logs its writes (vhost-scsi: dirty logging, rings fetched
   * back with GET_VRING_BASE on stop) answers for itself instead; by the time
   * saveState runs the VM is stopped and the rings are back.
   */
  migrationBlocker(): string | undefined {
    if (this.backendKicks.some((k) => k !== undefined) || this.notifiersOwnedByBackend)
      return `${this.device.id}: queues owned by a backend cannot be migrated (the device does not log the backend's writes to guest memory)`;
    return undefined;
  }

  /** Migration: the transport's state (the device model saves its own). Taken while the VM is stopped. */
  saveState(): VirtioPciState {
    const blocker = this.migrationBlocker();
    if (blocker) throw new Error(blocker);
    return {
      config: Buffer.from(this.config.bytes).toString('base64'),
      msixTable: Buffer.from(this.msix.table).toString('base64'),
      msixPba: Buffer.from(this.msix.pba).toString('base64'),
      queueVectors: [...this.queueVectors],
      msixConfig: this.msixConfig,
      deviceFeatureSelect: this.deviceFeatureSelect,
      driverFeatureSelect: this.driverFeatureSelect,
      queueSelect: this.queueSelect,
      isr: this.isr,
    };
  }

  /** Migration: parses and checks the transport and device state (StateError naming the field); applies nothing. */
  checkState(t: unknown, d: unknown): CheckedVirtioPciState {
    const s = parseVirtioPciState(t, 'transport', { config: this.config, msix: this.msix, numQueues: this.device.queues.length });
    this.device.checkState(d, 'virtio');
    return s;
  }

  /**
   * Migration: restores the transport on a freshly created function with the
   * same device type and properties, while the VM is stopped: config space
   * (BARs mapped where the guest put them), MSI-X table and PBA, vector
   * assignments (new GSI routes and irqfds), then the device model. Host
   * notifiers are registered when the VM resumes, and each active queue is
   * kicked once then.
   */
  loadState(t: VirtioPciState | unknown, d: VirtioDeviceState | unknown): void {
    const s = this.checkState(t, d);
    this.msix.restore(s.msixTable, s.msixPba);
    this.restoreConfig(s.config);
    this.deviceFeatureSelect = s.deviceFeatureSelect;
    this.driverFeatureSelect = s.driverFeatureSelect;
    this.queueSelect = s.queueSelect;
    this.isr = s.isr;
    this.msixConfig = s.msixConfig;
    s.queueVectors.forEach((v, i) => (this.queueVectors[i] = v));
    for (const v of new Set([this.msixConfig, ...this.queueVectors])) if (v !== NO_VECTOR) this.msix.useVector(v);
    this.device.loadState(d);
    this.kickOnResume = true;
    this.syncHostNotifiers(true);
  }

  /** Turns off the VMM's own queue notifiers (kicks then come through the exit path). */
  setNotifiersOwnedByBackend(owned: boolean): void {
    this.notifiersOwnedByBackend = owned;
    this.syncHostNotifiers();
  }

  /**
   * Handover to a vhost backend. For each queue with a kick eventfd, the VMM's
   * own ioeventfd goes off and the backend's kick eventfd is registered with
   * KVM for the queue's notify address, so guest kicks reach the backend
   * without a VMM exit. `undefined` (or no eventfd for a queue) gives the
   * notifier back to the VMM. The eventfds stay the caller's.
   *
   * While x-debug-virtqueue-drop drops kicks of such a queue, the VMM's
   * eventfd stands in (its kicks go through VirtioDevice.notify, which drops
   * or forwards them) until the count runs out.
   */
  setBackendKicks(kicks: readonly (EventFd | undefined)[] | undefined): void {
    this.backendKicks = kicks ? [...kicks] : [];
    this.syncHostNotifiers();
  }

  /** The vhost backend's kick eventfd of a queue, if one owns it. */
  backendKick(queue: number): EventFd | undefined {
    return this.backendKicks[queue];
  }

  /**
   * The eventfd a vhost backend signals for a queue's used buffers: the irqfd
   * of the queue's MSI-X vector (KVM injects it; while the vector or the
   * function is masked the VMM watches it and sets the PBA bit, and
   * unmasking delivers it), or, without a vector, a VMM-watched eventfd that
   * raises the queue's interrupt the ordinary way.
   */
  queueCallEventFd(queue: number): EventFd {
    const v = this.queueVectors[queue];
    const efd = v !== undefined && v !== NO_VECTOR ? this.msix.eventFd(v) : undefined;
    if (efd) return efd;
    let f = this.fallbackCalls[queue];
    if (!f) {
      f = EventFd.create();
      f.watch(this.device.guarded(`call eventfd of queue ${queue}`, () => this.signalQueue(queue)));
      this.fallbackCalls[queue] = f;
    }
    return f;
  }

  /** The irqfd of the queue's MSI-X vector (VirtioInterrupt.queueInterruptFd); undefined without a vector. */
  queueInterruptFd(queue: number): number | undefined {
    const v = this.queueVectors[queue];
    return v !== undefined && v !== NO_VECTOR ? this.msix.eventFd(v)?.fd : undefined;
  }

  /** The VMM's own ioeventfd of a queue while registered (VirtioInterrupt.queueNotifierFd). */
  queueNotifierFd(queue: number): number | undefined {
    const n = this.notifiers[queue];
    return n?.kind === 'own' ? n.efd.fd : undefined;
  }

  get hostNotifiersActive(): boolean {
    return this.notifiers.some((n) => n !== undefined);
  }

  /** Registers or removes the per-queue ioeventfds to match the device state and backend ownership. */
  private syncHostNotifiers(rebind = false): void {
    const base = this.barAddress(VIRTIO_BAR);
    const on = this.ioeventfd && this.vmRunning && this.device.driverOk && base !== undefined;
    this.device.queues.forEach((q, i) => {
      const cur = this.notifiers[i];
      const addr = base === undefined ? undefined : base + NOTIFY_OFFSET + i * NOTIFY_MULTIPLIER;
      const backend = this.backendKicks[i];
      let kind: HostNotifier['kind'] | undefined;
      if (on && q.ready && addr !== undefined) {
        if (backend) kind = this.device.faults[i].dropKicks > 0 ? 'interposed' : 'backend';
        else if (!this.notifiersOwnedByBackend) kind = 'own';
      }
      // A handler that watches its notifier on its own thread (an iothread) gets it handed over, as a backend does.
      const h = kind === 'own' ? this.device.queueHandler(i) : undefined;
      const taker = h?.attachNotifier ? h : undefined;
      const same =
        cur &&
        kind === cur.kind &&
        !rebind &&
        cur.addr === addr &&
        (kind !== 'backend' || cur.efd === backend) &&
        (kind !== 'own' || cur.handler === taker);
      if (cur && !same) {
        this.ctx.vm.ioeventfd({ addr: cur.addr, len: 2, fd: cur.efd.fd, space: 'mmio' }, true);
        this.notifiers[i] = undefined;
        // A backend's kick eventfd keeps its count: the backend reads it.
        if (cur.kind !== 'backend') {
          cur.handler?.detachNotifier?.();
          cur.efd.unwatch();
          // Test-and-clear: a kick that raced the removal is processed, not lost.
          const raced = cur.efd.read();
          cur.efd.close();
          if (raced > 0n) this.device.notify(i, 'ioeventfd');
        }
      }
      if (kind && !this.notifiers[i]) {
        const efd = kind === 'backend' ? backend! : EventFd.create();
        this.ctx.vm.ioeventfd({ addr: addr!, len: 2, fd: efd.fd, space: 'mmio' });
        const handedOver = kind === 'own' && taker?.attachNotifier?.(efd.fd) === true;
        if (kind !== 'backend' && !handedOver)
          efd.watch(this.device.guarded(`ioeventfd of queue ${i}`, () => this.device.notify(i, 'ioeventfd')));
        this.notifiers[i] = { efd, addr: addr!, kind, ...(handedOver ? { handler: taker } : {}) };
      }
    });
  }

  /**
   * DeviceEvent kick: the queue's doorbell as a guest write would ring it (a
   * vhost backend's kick eventfd when it owns the queue; otherwise the device,
   * counted on the path a guest kick takes now: ioeventfd or exit). It always
   * arrives: a kick the operator sends on purpose is not a guest kick for a
   * pending x-debug-virtqueue-drop to take (through the ioeventfd it would be).
   */
  kick(queue: number): void {
    this.device.runGuarded(`monitor kick of queue ${queue}`, () => {
      this.device.counters[queue].debugEvents++;
      const n = this.notifiers[queue];
      if (n?.kind === 'backend') n.efd.write(1);
      else this.device.notify(queue, n ? 'ioeventfd' : 'exit', true);
    });
  }

  /** DeviceEvent call: the queue's interrupt as the device sends it; a masked vector gets its PBA bit. */
  call(queue: number): void {
    this.device.runGuarded(`monitor call of queue ${queue}`, () => this.device.debugCall(queue));
  }

  /** The MSI-X vector the driver assigned to a queue (0xffff: none). */
  queueVector(queue: number): number {
    return this.queueVectors[queue] ?? NO_VECTOR;
  }

  get configVector(): number {
    return this.msixConfig;
  }

  get isrStatus(): number {
    return this.isr;
  }

  /** Whether the queue's notifications currently go through a KVM ioeventfd. */
  queueHasIoeventfd(queue: number): boolean {
    return this.notifiers[queue] !== undefined;
  }

  /** Who takes the queue's guest kicks: the VMM's ioeventfd, a vhost backend's kick eventfd, the VMM standing in for a backend, or the exit path. */
  queueNotifierKind(queue: number): 'own' | 'backend' | 'interposed' | 'exit' {
    return this.notifiers[queue]?.kind ?? 'exit';
  }

  /** System reset: the device, its vectors and the PCI command register go back to power-on state. */
  reset(): void {
    this.writeStatus(0);
    this.configWrite(0x04, 2, 0); // command: no decode, no bus mastering (device disabled)
    this.configWrite(this.msix.capOffset + 2, 2, 0);
  }

  /**
   * Stall detection settings for the monitor: stall-ms (undefined: the
   * VMM-wide --stall-ms), stall-policy. Off unless the plugin offers the
   * properties (stallSettings): a device whose queues a backend serves cannot
   * be judged (docs/vhost.md).
   */
  stall: { ms: number | undefined; policy: StallPolicy } = { ms: 0, policy: 'none' };

  destroy(): void {
    this.vmRunning = false;
    this.syncHostNotifiers();
    for (const f of this.fallbackCalls) f?.close();
    this.fallbackCalls = [];
    this.msix.releaseAll();
    this.unmapAll();
  }
}

/**
 * What a virtio plugin hands back from `create`: its virtio-pci function,
 * wired to the machine's run state and reset. Plugins subclass it to add their
 * device model and close their backend in `destroy`.
 */
export abstract class VirtioPciPluginDevice {
  abstract readonly type: string;

  constructor(
    readonly id: string,
    readonly transport: VirtioPciDevice,
  ) {}

  get virtio(): VirtioPciDevice {
    return this.transport;
  }

  setRunning(running: boolean): void {
    this.transport.setVmRunning(running);
  }

  /** Migration: why not (a vhost backend owns the queues, or what the subclass says). */
  migrationBlocker(): string | undefined {
    return this.transport.migrationBlocker();
  }

  /** Migration: transport + virtio state, plus saveExtra(). Subclasses refuse what they cannot migrate. */
  saveState(): VirtioPciDeviceState {
    const s: VirtioPciDeviceState = { transport: this.transport.saveState(), virtio: this.transport.device.saveState() };
    const extra = this.saveExtra();
    if (extra !== undefined) s.extra = extra;
    return s;
  }

  loadState(state: unknown): void {
    const s = this.checkState(state);
    this.loadExtra(s.extra);
    this.transport.loadState(s.transport, s.virtio);
  }

  /** Migration: the whole state checked (transport, virtio, the plugin's extra) without applying anything. */
  checkState(state: unknown): VirtioPciDeviceState {
    const f = new Fields(state, '');
    const s = { transport: f.raw('transport'), virtio: f.raw('virtio'), extra: f.raw('extra') } as VirtioPciDeviceState;
    this.transport.checkState(s.transport, s.virtio);
    within('extra', () => this.checkExtra(s.extra));
    return s;
  }

  /** Checks a plugin's own migration fields without applying them (throw a StateError naming the field). */
  protected checkExtra(_extra: unknown): void {}

  /** A plugin's own migration fields (JSON). */
  protected saveExtra(): unknown {
    return undefined;
  }

  protected loadExtra(_extra: unknown): void {}

  reset(): void {
    this.transport.reset();
  }

  destroy(): void | Promise<void> {
    this.transport.destroy();
  }
}
