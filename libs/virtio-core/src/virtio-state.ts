/**
 * The checked form of a saved VirtioDevice (VirtioDeviceState) and its
 * queues (QueueState), parsed from an untrusted stream before anything is
 * applied (docs/migration.md, "What a destination checks").
 */
import * as V from './generated/virtio-uapi';
import { GuestMemory } from './guest-memory';
import { Fields, int, StateError } from './state-check';
import { QueueState, splitRingSizes } from './virtqueue';

/** What a state is checked against: the device it is loaded into. */
export interface VirtioStateTarget {
  readonly deviceFeatures: bigint;
  readonly queues: readonly { readonly maxSize: number }[];
  readonly memory: GuestMemory;
}

export interface CheckedVirtioState {
  deviceFeatures: bigint;
  driverFeatures: bigint;
  status: number;
  configGeneration: number;
  broken: boolean;
  disabled: boolean;
  queues: QueueState[];
  deferred: { queue: number; head: number; len: number }[];
  kickedWhileDisabled: number[];
  /** True when loading re-activates the ready queues (DRIVER_OK and not broken). */
  live: boolean;
}

const isPow2 = (n: number) => n > 0 && (n & (n - 1)) === 0;
/** Addresses the driver may have written (64-bit registers) and JSON still holds as integers. */
const MAX_ADDR = 2 ** 64;

/**
 * A queue's saved state. Ring indices are 16-bit; size and addresses are what
 * the driver wrote (any 16-bit size, any 64-bit address) unless the queue is
 * re-activated by the load (`live`): then the layout must be one activate()
 * takes (power-of-two size up to the device's maximum, aligned rings in RAM).
 */
export function parseQueueState(v: unknown, path: string, maxSize: number, live: boolean, memory: GuestMemory): QueueState {
  const f = new Fields(v, path);
  const q: QueueState = {
    size: f.u16('size'),
    descTable: f.uint('descTable', MAX_ADDR),
    availRing: f.uint('availRing', MAX_ADDR),
    usedRing: f.uint('usedRing', MAX_ADDR),
    ready: f.bool('ready'),
    lastAvailIdx: f.u16('lastAvailIdx'),
    usedIdx: f.u16('usedIdx'),
  };
  if (live && q.ready) {
    const n = q.size;
    if (!isPow2(n) || n > maxSize) throw new StateError(f.at('size'), `${n} is not a power of two up to the queue's maximum ${maxSize}`);
    const ring = (key: 'descTable' | 'availRing' | 'usedRing', align: number, len: number) => {
      const a = q[key];
      if (a % align) throw new StateError(f.at(key), `0x${a.toString(16)} is not ${align}-byte aligned`);
      if (!Number.isSafeInteger(a) || !memory.checkRange(a, len))
        throw new StateError(f.at(key), `[0x${a.toString(16)}, +0x${len.toString(16)}) is not guest RAM`);
    };
    const sizes = splitRingSizes(n);
    ring('descTable', 16, sizes.descTable);
    ring('availRing', 2, sizes.availRing);
    ring('usedRing', 4, sizes.usedRing);
  }
  return q;
}

/**
 * A device's saved virtio state, checked against the device it goes into:
 * same offered features and queue count, driver features a subset of the
 * offered ones once FEATURES_OK is set (before that the driver may have
 * written anything; the device refuses it at FEATURES_OK), 8-bit status and
 * generation, held-back completions and kicks naming existing queues and
 * descriptors. Optional fields absent = what a VMM without them did.
 */
export function parseVirtioState(v: unknown, path: string, dev: VirtioStateTarget): CheckedVirtioState {
  const f = new Fields(v, path);
  const deviceFeatures = f.hex('deviceFeatures');
  if (deviceFeatures !== dev.deviceFeatures)
    throw new StateError(
      f.at('deviceFeatures'),
      `0x${deviceFeatures.toString(16)} differs from what this device offers (0x${dev.deviceFeatures.toString(16)}); started with other properties?`,
    );
  const driverFeatures = f.hex('driverFeatures');
  const status = f.u8('status');
  if (status & V.VIRTIO_CONFIG_S_FEATURES_OK && driverFeatures & ~deviceFeatures)
    throw new StateError(
      f.at('driverFeatures'),
      `0x${driverFeatures.toString(16)} has bits the device does not offer (0x${(driverFeatures & ~deviceFeatures).toString(16)})`,
    );
  const configGeneration = f.u8('configGeneration');
  const broken = f.bool('broken');
  const disabled = f.optional('disabled', (g, k) => g.bool(k)) ?? false;
  const live = (status & V.VIRTIO_CONFIG_S_DRIVER_OK) !== 0 && !broken;
  const n = dev.queues.length;
  const raw = f.raw('queues');
  if (Array.isArray(raw) && raw.length !== n)
    throw new StateError(f.at('queues'), `the stream has ${raw.length} queues, this device has ${n}`);
  const queues = f.array('queues', n, (q, p, i) => parseQueueState(q, p, dev.queues[i].maxSize, live, dev.memory));
  const maxDeferred = dev.queues.reduce((s, q) => s + q.maxSize, 0);
  const deferred =
    f.optional('deferred', (g, k) =>
      g.array(k, maxDeferred, (d, p) => {
        const e = new Fields(d, p);
        const queue = e.uint('queue', n - 1);
        return { queue, head: e.uint('head', Math.max(0, queues[queue].size - 1)), len: e.u32('len') };
      }),
    ) ?? [];
  const kicked = f.optional('kickedWhileDisabled', (g, k) => g.array(k, n, (q, p) => int(q, p, 0, n - 1))) ?? [];
  return {
    deviceFeatures,
    driverFeatures,
    status,
    configGeneration,
    broken,
    disabled,
    queues,
    deferred,
    kickedWhileDisabled: kicked,
    live,
  };
}
