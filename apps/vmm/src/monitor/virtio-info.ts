/** Introspection of virtio devices for the monitor (x-query-virtio*, info virtio...). */
import { Device, VirtioPciDevice } from '@tsvmm/pci';
import { availEventAddr, MAX_INDIRECT_ENTRIES, usedEventAddr } from '@tsvmm/virtio-core';
import { CommandError } from './commands';

export const PERIPHERAL = '/machine/peripheral/';

export interface VirtioDev {
  id: string;
  type: string;
  path: string;
  pci: VirtioPciDevice;
}

export function virtioDevices(devices: readonly Device[]): VirtioDev[] {
  return devices.filter((d) => d.virtio).map((d) => ({ id: d.id, type: d.type, path: `${PERIPHERAL}${d.id}`, pci: d.virtio! }));
}

/** Accepts "ID", "/machine/peripheral/ID" and ".../ID/virtio-backend". */
export function findDevice(devices: readonly Device[], ref: string): Device {
  let id = ref;
  if (id.startsWith(PERIPHERAL)) id = id.slice(PERIPHERAL.length);
  id = id.replace(/\/virtio-backend$/, '');
  const d = devices.find((x) => x.id === id);
  if (!d) throw new CommandError(`Device '${ref}' not found`, 'DeviceNotFound');
  return d;
}

export function findVirtio(devices: readonly Device[], ref: string): VirtioPciDevice {
  const d = findDevice(devices, ref);
  if (!d.virtio) throw new CommandError(`Device '${ref}' is not a virtio device`);
  return d.virtio;
}

const hex = (n: number | bigint) => `0x${n.toString(16)}`;

export function virtioStatus(pci: VirtioPciDevice): Record<string, unknown> {
  const d = pci.device;
  return {
    name: d.id,
    'device-id': d.deviceId,
    'device-features': hex(d.deviceFeatures),
    'driver-features': hex(d.driverFeatures),
    'device-features-decoded': decodeFeatures(d.deviceId, d.deviceFeatures),
    'driver-features-decoded': decodeFeatures(d.deviceId, d.driverFeatures),
    status: d.status,
    'status-bits': statusNames(d.status),
    broken: d.broken,
    'broken-reason': d.brokenReason ?? null,
    disabled: d.disabled,
    'bus-master': pci.busMaster,
    isr: pci.isrStatus,
    'config-generation': d.configGeneration,
    'num-queues': d.queues.length,
    ioeventfd: pci.ioeventfd,
    'host-notifiers-active': pci.hostNotifiersActive,
    'msix-enabled': pci.msix.enabled,
    'msix-function-masked': pci.msix.functionMasked,
    'config-vector': pci.configVector,
    'device-info': kebabCaseFields(d.deviceInfo()),
  };
}

const camel = /[a-z0-9][A-Z]/;

/**
 * QMP replies name fields in kebab-case; device counters (deviceInfo) were
 * camelCase (bytesRead). Each camelCase key gets its kebab-case twin
 * (bytes-read), nested objects too; the camelCase key stays as a deprecated
 * alias with the same value (docs/qmp.md), for scripts written against it.
 */
export function kebabCaseFields(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(kebabCaseFields);
  if (v === null || typeof v !== 'object') return v;
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v)) {
    const value = kebabCaseFields(x);
    if (camel.test(k)) out[k.replace(/([a-z0-9])([A-Z])/g, '$1-$2').toLowerCase()] = value;
    out[k] = value;
  }
  return out;
}

export function statusNames(s: number): string[] {
  const names: [number, string][] = [
    [1, 'ACKNOWLEDGE'],
    [2, 'DRIVER'],
    [8, 'FEATURES_OK'],
    [4, 'DRIVER_OK'],
    [0x40, 'NEEDS_RESET'],
    [0x80, 'FAILED'],
  ];
  return names.filter(([b]) => s & b).map(([, n]) => n);
}

export function queueStatus(pci: VirtioPciDevice, queue: number): Record<string, unknown> {
  const d = pci.device;
  const q = d.queues[queue];
  if (!q) throw new CommandError(`Invalid queue ${queue}: the device has ${d.queues.length} queue(s)`);
  const c = d.counters[queue];
  const vector = pci.queueVector(queue);
  const mem = d.memory;
  const guest = (addr: number): number | null => {
    if (!q.active || d.disabled) return null; // never read guest memory with bus mastering off
    try {
      return mem.readU16(addr);
    } catch {
      return null;
    }
  };
  return {
    name: d.id,
    queue,
    size: q.size,
    ready: q.ready,
    active: q.active,
    'desc-addr': hex(q.descTable),
    'avail-addr': hex(q.availRing),
    'used-addr': hex(q.usedRing),
    'last-avail-idx': q.lastAvailIdx,
    'shadow-avail-idx': q.active ? (q.lastAvailIdx + q.pending()) & 0xffff : null,
    'avail-idx': guest(q.availRing + 2),
    'used-idx': q.usedIdx,
    'event-idx': q.eventIdx,
    'used-event': q.eventIdx ? guest(usedEventAddr(q.availRing, q.size)) : null,
    'avail-event': q.eventIdx ? guest(availEventAddr(q.usedRing, q.size)) : null,
    'avail-flags': guest(q.availRing),
    'msix-vector': vector,
    'vector-masked': vector !== 0xffff && vector < pci.msix.vectors ? pci.msix.vectorMasked(vector) : null,
    'vector-pending': vector !== 0xffff && vector < pci.msix.vectors ? pci.msix.pending(vector) : null,
    ioeventfd: pci.queueHasIoeventfd(queue),
    'kicks-eventfd': c.kicksEventfd,
    'kicks-exit': c.kicksExit,
    'kicks-dropped': c.kicksDropped,
    chains: c.chains,
    'interrupts-injected': c.interrupts,
    'interrupts-suppressed': c.suppressed,
    'interrupts-dropped': c.interruptsDropped,
    'debug-events': c.debugEvents,
    'pending-drop-kicks': d.faults[queue].dropKicks,
    'pending-drop-interrupts': d.faults[queue].dropInterrupts,
    ...d.queueTiming(queue, Date.now()),
    ...d.queueInfo(queue),
  };
}

// --- feature bits by name (virtio 1.2 section 6 and each device type's "Feature bits") ---

const TRANSPORT_FEATURES: Record<number, string> = {
  24: 'VIRTIO_F_NOTIFY_ON_EMPTY',
  27: 'VIRTIO_F_ANY_LAYOUT',
  28: 'VIRTIO_RING_F_INDIRECT_DESC',
  29: 'VIRTIO_RING_F_EVENT_IDX',
  32: 'VIRTIO_F_VERSION_1',
  33: 'VIRTIO_F_ACCESS_PLATFORM',
  34: 'VIRTIO_F_RING_PACKED',
  35: 'VIRTIO_F_IN_ORDER',
  36: 'VIRTIO_F_ORDER_PLATFORM',
  37: 'VIRTIO_F_SR_IOV',
  38: 'VIRTIO_F_NOTIFICATION_DATA',
  39: 'VIRTIO_F_NOTIF_CONFIG_DATA',
  40: 'VIRTIO_F_RING_RESET',
};

/** Device-type feature bits, by virtio device ID. */
const DEVICE_FEATURES: Record<number, Record<number, string>> = {
  1: {
    0: 'VIRTIO_NET_F_CSUM',
    1: 'VIRTIO_NET_F_GUEST_CSUM',
    2: 'VIRTIO_NET_F_CTRL_GUEST_OFFLOADS',
    3: 'VIRTIO_NET_F_MTU',
    5: 'VIRTIO_NET_F_MAC',
    7: 'VIRTIO_NET_F_GUEST_TSO4',
    8: 'VIRTIO_NET_F_GUEST_TSO6',
    9: 'VIRTIO_NET_F_GUEST_ECN',
    10: 'VIRTIO_NET_F_GUEST_UFO',
    11: 'VIRTIO_NET_F_HOST_TSO4',
    12: 'VIRTIO_NET_F_HOST_TSO6',
    13: 'VIRTIO_NET_F_HOST_ECN',
    14: 'VIRTIO_NET_F_HOST_UFO',
    15: 'VIRTIO_NET_F_MRG_RXBUF',
    16: 'VIRTIO_NET_F_STATUS',
    17: 'VIRTIO_NET_F_CTRL_VQ',
    18: 'VIRTIO_NET_F_CTRL_RX',
    19: 'VIRTIO_NET_F_CTRL_VLAN',
    20: 'VIRTIO_NET_F_CTRL_RX_EXTRA',
    21: 'VIRTIO_NET_F_GUEST_ANNOUNCE',
    22: 'VIRTIO_NET_F_MQ',
    23: 'VIRTIO_NET_F_CTRL_MAC_ADDR',
    52: 'VIRTIO_NET_F_NOTF_COAL',
    54: 'VIRTIO_NET_F_GUEST_USO4',
    55: 'VIRTIO_NET_F_GUEST_USO6',
    56: 'VIRTIO_NET_F_HOST_USO',
    57: 'VIRTIO_NET_F_HASH_REPORT',
    59: 'VIRTIO_NET_F_GUEST_HDRLEN',
    60: 'VIRTIO_NET_F_RSS',
    61: 'VIRTIO_NET_F_RSC_EXT',
    62: 'VIRTIO_NET_F_STANDBY',
    63: 'VIRTIO_NET_F_SPEED_DUPLEX',
  },
  2: {
    1: 'VIRTIO_BLK_F_SIZE_MAX',
    2: 'VIRTIO_BLK_F_SEG_MAX',
    4: 'VIRTIO_BLK_F_GEOMETRY',
    5: 'VIRTIO_BLK_F_RO',
    6: 'VIRTIO_BLK_F_BLK_SIZE',
    9: 'VIRTIO_BLK_F_FLUSH',
    10: 'VIRTIO_BLK_F_TOPOLOGY',
    11: 'VIRTIO_BLK_F_CONFIG_WCE',
    12: 'VIRTIO_BLK_F_MQ',
    13: 'VIRTIO_BLK_F_DISCARD',
    14: 'VIRTIO_BLK_F_WRITE_ZEROES',
    15: 'VIRTIO_BLK_F_LIFETIME',
    16: 'VIRTIO_BLK_F_SECURE_ERASE',
  },
  8: { 0: 'VIRTIO_SCSI_F_INOUT', 1: 'VIRTIO_SCSI_F_HOTPLUG', 2: 'VIRTIO_SCSI_F_CHANGE', 3: 'VIRTIO_SCSI_F_T10_PI' },
};

/**
 * A feature word decoded as QEMU's x-query-virtio-status does (VirtioDeviceFeatures):
 * transport bits and device bits by name, the bits neither names as a number.
 */
export function decodeFeatures(
  deviceId: number,
  bits: bigint,
): { transports: string[]; 'dev-features': string[]; 'unknown-dev-features': number } {
  const transports: string[] = [];
  const dev: string[] = [];
  let unknown = 0n;
  const names = DEVICE_FEATURES[deviceId] ?? {};
  for (let b = 0; b < 64; b++) {
    if (!((bits >> BigInt(b)) & 1n)) continue;
    if (TRANSPORT_FEATURES[b]) transports.push(TRANSPORT_FEATURES[b]);
    else if (names[b]) dev.push(names[b]);
    else unknown |= 1n << BigInt(b);
  }
  return { transports, 'dev-features': dev, 'unknown-dev-features': Number(unknown) };
}

// --- info virtqueues: one line per queue ---

export interface VirtqueueRow {
  device: string;
  queue: number;
  name: string;
  status: Record<string, unknown>;
  /** The device needs a reset (then no queue of it moves). */
  broken?: boolean;
}

export function queueName(pci: VirtioPciDevice, queue: number): string {
  return pci.device.queueName?.(queue) ?? `q${queue}`;
}

/** Every queue of one device (`ref`) or of all virtio devices, with its x-query-virtio-queue-status. */
export function virtqueueRows(devices: readonly Device[], ref?: string): VirtqueueRow[] {
  const list =
    ref === undefined
      ? virtioDevices(devices).map((v) => ({ id: v.id, pci: v.pci }))
      : [{ id: findDevice(devices, ref).id, pci: findVirtio(devices, ref) }];
  return list.flatMap(({ id, pci }) =>
    pci.device.queues.map((_, i) => ({
      device: id,
      queue: i,
      name: queueName(pci, i),
      status: queueStatus(pci, i),
      broken: pci.device.broken,
    })),
  );
}

export const VIRTQUEUE_COLUMNS = [
  'dev',
  'q',
  'name',
  'size',
  'avail',
  'last-avail',
  'used',
  'kicks',
  'irqs',
  'vector',
  'last-kick',
  'last-irq',
  'verdict',
] as const;

const cell = (v: unknown): string => (v === null || v === undefined ? '-' : String(v));
const age = (v: unknown): string => (typeof v === 'number' ? `${Math.round(v)}ms` : '-');

/**
 * The cells of one `info virtqueues` line, from the queue's status alone.
 * The ages and the verdict come from the stall detector's fields
 * (`last-kick-ms-ago`, `last-interrupt-ms-ago`, `stall`); where the status
 * has none of them they are unknown ("-"). A device that needs a reset says so.
 */
export function virtqueueCells(r: VirtqueueRow): string[] {
  const s = r.status;
  const num = (k: string) => (typeof s[k] === 'number' ? (s[k] as number) : 0);
  const v = s['msix-vector'];
  let vector = v === 0xffff || v === undefined ? 'none' : String(v);
  const flags = [s['vector-masked'] === true ? 'masked' : '', s['vector-pending'] === true ? 'pending' : ''].filter(Boolean);
  if (flags.length) vector += `(${flags.join(',')})`;
  let verdict = '-';
  if (r.broken) verdict = 'NEEDS-RESET';
  else if (!s.active) verdict = 'off';
  else if (Object.hasOwn(s, 'stall')) {
    const st = s.stall as { side: string; cause: string; 'stalled-ms': number } | null;
    verdict = st ? `STALL ${st.side} ${st.cause} ${Math.round(st['stalled-ms'])}ms` : 'ok';
  }
  return [
    r.device,
    String(r.queue),
    r.name,
    cell(s.size),
    s.active ? cell(s['avail-idx']) : '-',
    s.active ? cell(s['last-avail-idx']) : '-',
    s.active ? cell(s['used-idx']) : '-',
    String(num('kicks-eventfd') + num('kicks-exit')),
    String(num('interrupts-injected')),
    vector,
    age(s['last-kick-ms-ago']),
    age(s['last-interrupt-ms-ago']),
    verdict,
  ];
}

/** The table: a header line, then one line per queue, columns padded to their widest cell. */
export function formatVirtqueues(rows: VirtqueueRow[]): string {
  const lines = [[...VIRTQUEUE_COLUMNS] as string[], ...rows.map(virtqueueCells)];
  const widths = VIRTQUEUE_COLUMNS.map((_, c) => Math.max(...lines.map((l) => l[c].length)));
  return (
    lines
      .map((l) =>
        l
          .map((x, c) => (c === l.length - 1 ? x : x.padEnd(widths[c])))
          .join('  ')
          .trimEnd(),
      )
      .join('\n') + '\n'
  );
}

// --- x-query-virtio-queue-element (QEMU 7.2): one descriptor chain, read-only ---

const DESC_FLAG_NAMES: [number, string][] = [
  [1, 'next'],
  [2, 'write'],
  [4, 'indirect'],
];

/**
 * The chain at avail ring position `index` (default: the next the device
 * will take, last_avail_idx), as the guest wrote it. Nothing in the queue or
 * device changes. Every address is checked before it is read; a loop or an
 * over-long chain ends the walk after `size` (or table-size) descriptors, as
 * QEMU does, and a malformed entry ends it with `x-error` saying why.
 */
export function queueElement(pci: VirtioPciDevice, queue: number, index?: number): Record<string, unknown> {
  const d = pci.device;
  const q = d.queues[queue];
  if (!q) throw new CommandError(`Invalid queue ${queue}: device '${d.id}' has queues 0-${d.queues.length - 1}`);
  if (!q.active) throw new CommandError(`Queue ${queue} of device '${d.id}' is not active (the driver has not set it up and DRIVER_OK)`);
  if (d.disabled) throw new CommandError(`Device '${d.id}' has bus mastering off: its rings are not read`);
  if (index !== undefined && (index < 0 || index >= q.size))
    throw new CommandError(`Invalid index ${index}: queue ${queue} of device '${d.id}' has ${q.size} entries (0-${q.size - 1})`);
  const mem = d.memory;
  const u16 = (addr: number) => mem.readU16(addr);
  // With iothread= the worker takes the chains: its last-avail-idx (from queueInfo) is the one that counts.
  const workerLast = d.queueInfo?.(queue)['last-avail-idx'];
  const pos = index ?? (typeof workerLast === 'number' ? workerLast : q.lastAvailIdx) % q.size;
  let head: number;
  let availFlags: number, availIdx: number, usedFlags: number, usedIdx: number;
  try {
    head = u16(q.availRing + 4 + 2 * pos);
    availFlags = u16(q.availRing);
    availIdx = u16(q.availRing + 2);
    usedFlags = u16(q.usedRing);
    usedIdx = u16(q.usedRing + 2);
  } catch {
    throw new CommandError(`Queue ${queue} of device '${d.id}': its rings are not readable guest RAM`);
  }
  const descs: { addr: number; len: number; flags: string[] }[] = [];
  const out: Record<string, unknown> = {
    name: d.id,
    index: head,
    descs,
    avail: { flags: availFlags, idx: availIdx, ring: head },
    used: { flags: usedFlags, idx: usedIdx },
  };
  if (head >= q.size) {
    out['x-error'] = `avail ring entry ${pos} names descriptor ${head}, outside the table of ${q.size}`;
    return out;
  }
  let table = q.descTable;
  let max = q.size;
  let i = head;
  let indirect = false;
  for (let n = 0; ; n++) {
    if (n >= max) {
      out['x-error'] = `the chain is longer than ${max} descriptors (a loop?); the walk stopped there`;
      break;
    }
    let b: Uint8Array;
    try {
      b = mem.read(table + 16 * i, 16);
    } catch {
      out['x-error'] = `descriptor ${i} at 0x${(table + 16 * i).toString(16)} is not guest RAM`;
      break;
    }
    const dv = new DataView(b.buffer, b.byteOffset, 16);
    const addr = Number(dv.getBigUint64(0, true));
    const len = dv.getUint32(8, true);
    const flags = dv.getUint16(12, true);
    const next = dv.getUint16(14, true);
    descs.push({ addr, len, flags: DESC_FLAG_NAMES.filter(([bit]) => flags & bit).map(([, name]) => name) });
    if (flags & 4 && !indirect) {
      // The chain continues in the table this descriptor points at (QEMU lists that table's entries).
      descs.pop();
      if (len === 0 || len % 16) {
        out['x-error'] = `indirect table length ${len} is not a non-zero multiple of 16`;
        break;
      }
      indirect = true;
      table = addr;
      // As the device's own walk, a table counts at most MAX_INDIRECT_ENTRIES (the spec bounds it only by its length).
      max = Math.min(len / 16, MAX_INDIRECT_ENTRIES);
      i = 0;
      n = -1;
      continue;
    }
    if (!(flags & 1)) break;
    if (next >= max) {
      out['x-error'] = `descriptor next ${next} is outside the table of ${max}`;
      break;
    }
    i = next;
  }
  return out;
}
