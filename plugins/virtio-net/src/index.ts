/**
 * The virtio-net plugin: `--device virtio-net,id=ID,tap=IFNAME|fd=N[:N...][,mac=52:54:00:xx:xx:xx]
 * [,queues=N][,mtu=N][,ioeventfd=on|off][,event-idx=on|off][,iothread=ID]`.
 * `iothread=ID` runs every queue (and the TAP's reads and writes) on that
 * iothread (dataplane.ts).
 */
import * as crypto from 'crypto';
import {
  attachIoThreadPlanes,
  DeviceContext,
  DevicePlugin,
  PLUGIN_API_VERSION,
  PropertyValue,
  stallSettings,
  VIRTIO_PCI_DEBUG_PROPERTIES,
  VirtioPciDevice,
  VirtioPciPluginDevice,
} from '@tsvmm/pci';
import { Tap, TapError } from './backend/tap';
import { NetExtraState, VirtioNetDevice } from './device';
import { NET_PLANE, NetInit } from './dataplane';

export { VirtioNetDevice, VIRTIO_ID_NET } from './device';
export type { NetCounters, NetExtraState } from './device';
export { Tap, TapError } from './backend/tap';

/** PCI class: network controller, Ethernet. */
export const VIRTIO_NET_CLASS_CODE = 0x020000;

export class VirtioNetPci extends VirtioPciPluginDevice {
  readonly type = 'virtio-net';
  constructor(
    id: string,
    readonly net: VirtioNetDevice,
    transport: VirtioPciDevice,
  ) {
    super(id, transport);
  }

  override setRunning(running: boolean): void {
    if (!running) {
      super.setRunning(false);
      this.net.setVmRunning(false);
    } else {
      // On an iothread the plane first takes requests again (after a drain), then RX starts.
      this.net.resumeDataPlane();
      super.setRunning(true);
      this.net.setVmRunning(true);
    }
  }

  /** Migration dirty log of the pages the iothread writes (none without one: the main thread's writes are tracked by the VM). */
  async startDirtyLog(): Promise<void> {
    await this.net.dataPlaneDirtyLog('start');
  }

  syncDirtyLog(): Promise<Iterable<number>> {
    return this.net.dataPlaneDirtyLog('sync');
  }

  async stopDirtyLog(): Promise<void> {
    await this.net.dataPlaneDirtyLog('stop');
  }

  /** Migration: on an iothread, the plane's state (ring indices, control-queue state) taken at once. */
  drain(): Promise<void> {
    return this.net.drain();
  }

  /** The control queue's effects: active queue pairs, the MAC the driver set, the RX mode. */
  protected override saveExtra(): unknown {
    return this.net.saveNetState();
  }

  protected override checkExtra(extra: unknown): void {
    this.net.checkNetState(extra);
  }

  protected override loadExtra(extra: unknown): void {
    this.net.loadNetState(extra as NetExtraState | undefined);
  }

  override loadState(state: unknown): void {
    super.loadState(state);
    // The destination's TAP: the offloads the driver negotiated on the source (RX starts when the VM runs).
    if (!this.net.iothread) this.net.startDataPath();
  }

  override async destroy(): Promise<void> {
    await super.destroy();
    await this.net.destroy();
  }
}

export function parseMac(text: string): Uint8Array | undefined {
  const m = /^([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2})$/i.exec(text);
  if (!m) return undefined;
  const b = Uint8Array.from(m.slice(1).map((x) => parseInt(x, 16)));
  if (b[0] & 1) return undefined; // multicast bit: not a station address
  return b;
}

/** A locally administered MAC in QEMU's 52:54:00 range, stable for a device id. */
export function defaultMac(id: string): Uint8Array {
  const h = crypto.createHash('sha256').update(id).digest();
  return Uint8Array.of(0x52, 0x54, 0x00, h[0], h[1], h[2]);
}

export function createVirtioNet(ctx: DeviceContext, id: string, props: Record<string, PropertyValue | undefined>): VirtioNetPci {
  const what = `--device virtio-net,id=${id}`;
  const pairs = props.queues as number;
  if ((props.tap === undefined) === (props.fd === undefined)) throw new Error(`${what}: give exactly one of tap=IFNAME or fd=N`);
  const mac = props.mac === undefined ? defaultMac(id) : parseMac(props.mac as string);
  if (!mac) throw new Error(`${what}: mac=${props.mac as string} is not a unicast MAC address like 52:54:00:12:34:56`);
  let tap: Tap;
  try {
    const fds = props.fd === undefined ? undefined : String(props.fd).split(':').map(Number);
    if (fds && fds.some((f) => !Number.isInteger(f) || f < 0))
      throw new TapError(`fd=${props.fd as string}: expected fd numbers separated by ':'`);
    tap = new Tap({ name: props.tap as string | undefined, fds, queues: pairs });
  } catch (e) {
    if (e instanceof TapError) throw new Error(`${what}: ${e.message}`);
    throw e;
  }
  const net = new VirtioNetDevice(ctx.memory, {
    id,
    tap,
    mac,
    pairs,
    mtu: props.mtu as number,
    eventIdx: props['event-idx'] as boolean,
    log: ctx.log,
  });
  const transport = new VirtioPciDevice(net, ctx, { classCode: VIRTIO_NET_CLASS_CODE, ioeventfd: props.ioeventfd as boolean });
  transport.stall = stallSettings(props);
  const iothread = props.iothread as string | undefined;
  if (iothread !== undefined)
    attachIoThreadPlanes<NetInit>({
      ctx,
      id,
      device: net,
      transport,
      plane: NET_PLANE,
      eventIdx: props['event-idx'] as boolean,
      placements: [{ iothread }],
      fields: () => ({ tap: { name: tap.name, fds: tap.dupFds() }, mac: [...mac], pairs, mtu: props.mtu as number }),
      ownedFds: (f) => f.tap.fds,
    });
  return new VirtioNetPci(id, net, transport);
}

export const plugin: DevicePlugin = {
  apiVersion: PLUGIN_API_VERSION,
  name: '@tsvmm/virtio-net',
  version: '0.1.0',
  deviceTypes: [
    {
      type: 'virtio-net',
      description: 'virtio network device (virtio-pci, modern) backed by a Linux TAP',
      properties: {
        tap: {
          type: 'string',
          description: 'TAP interface name (opened through /dev/net/tun)',
          pattern: /^[A-Za-z0-9_.-]{1,15}$/,
          patternHint: 'an interface name of 1 to 15 characters',
        },
        fd: {
          type: 'string',
          description: 'already-open TAP fd(s), one per queue pair, separated by ":"',
          pattern: /^\d+(:\d+)*$/,
          patternHint: 'fd numbers separated by ":"',
        },
        mac: { type: 'string', description: 'MAC address (default: 52:54:00 plus a hash of the id)' },
        queues: { type: 'int', description: 'queue pairs (VIRTIO_NET_F_MQ when > 1; needs a multi_queue TAP)', default: 1, min: 1, max: 8 },
        mtu: { type: 'int', description: 'MTU advertised with VIRTIO_NET_F_MTU', default: 1500, min: 68, max: 65535 },
        ioeventfd: { type: 'bool', description: 'queue notifications through KVM ioeventfd (off: through the exit path)', default: true },
        'event-idx': { type: 'bool', description: 'offer VIRTIO_RING_F_EVENT_IDX', default: true },
        iothread: {
          type: 'string',
          description: "run the queues (receive, transmit, control) and the TAP's reads and writes in the worker thread of this iothread",
          pattern: /^[A-Za-z][A-Za-z0-9_.-]*$/,
          patternHint: 'a name starting with a letter',
        },
        ...VIRTIO_PCI_DEBUG_PROPERTIES,
      },
      create: createVirtioNet,
    },
  ],
};
