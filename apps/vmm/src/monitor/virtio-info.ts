/** Introspection of virtio devices for the monitor (x-query-virtio*, info virtio...). */
import { Device, VirtioPciDevice } from '@tsvmm/pci';
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
    'device-info': d.deviceInfo(),
  };
}

export function statusNames(s: number): string[] {
  const names: [number, string][] = [[1, 'ACKNOWLEDGE'], [2, 'DRIVER'], [8, 'FEATURES_OK'], [4, 'DRIVER_OK'], [0x40, 'NEEDS_RESET'], [0x80, 'FAILED']];
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
    'used-event': q.eventIdx ? guest(q.availRing + 4 + 2 * q.size) : null,
    'avail-event': q.eventIdx ? guest(q.usedRing + 4 + 8 * q.size) : null,
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
