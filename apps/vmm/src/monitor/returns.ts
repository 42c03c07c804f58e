/** What each QMP command returns (query-qmp-schema's ret-type); monitor.ts registers the commands with these. */
import { EMPTY, q, QType } from './qapi-types';

const int = q.req('int');
const str = q.req('str');
const bool = q.req('bool');
const counters = q.obj({ reads: int, writes: int });
const unclaimed = q.obj({
  reads: int,
  writes: int,
  regions: q.req(q.arr(q.obj({ start: int, end: int, reads: int, writes: int, 'last-address': int }))),
  other: q.req(counters),
});
const features = q.obj({ transports: q.req(q.arr('str')), 'dev-features': q.req(q.arr('str')), 'unknown-dev-features': int });
const intOrNull = q.req(q.orNull('int'));
const boolOrNull = q.req(q.orNull('bool'));

export const RETURNS = {
  'query-version': q.obj({ qemu: q.req(q.obj({ major: int, minor: int, micro: int })), package: str }),
  'query-commands': q.arr(q.obj({ name: str })),
  'query-status': q.obj({
    running: bool,
    singlestep: bool,
    status: q.req(q.enum(['running', 'paused', 'shutdown', 'inmigrate', 'postmigrate'])),
  }),
  'query-cpus-fast': q.arr(q.obj({ 'cpu-index': int, 'qom-path': str, 'thread-id': q.opt('int'), target: str })),
  /** QEMU's IOThreadInfo; thread-id once the worker runs (as query-cpus-fast); x-devices: the devices with a plane on it. */
  'query-iothreads': q.arr(
    q.obj({
      id: str,
      'thread-id': q.opt('int'),
      'poll-max-ns': int,
      'poll-grow': int,
      'poll-shrink': int,
      'aio-max-batch': int,
      'x-devices': q.req(q.arr('str')),
    }),
  ),
  stop: EMPTY,
  cont: EMPTY,
  system_reset: EMPTY,
  quit: EMPTY,
  'query-pci': q.arr(
    q.obj({
      bus: int,
      devices: q.req(
        q.arr(
          q.obj({
            bus: int,
            slot: int,
            function: int,
            class_info: q.req(q.obj({ class: int })),
            id: q.req(q.obj({ vendor: int, device: int, 'subsystem-vendor': int, subsystem: int })),
            regions: q.req(q.arr(q.obj({ bar: int, type: str, address: int, size: int, prefetch: bool, mem_type_64: bool, mapped: bool }))),
            command: int,
            qdev_id: str,
            msix: q.opt(q.obj({ vectors: int, enabled: bool, 'function-masked': bool })),
          }),
        ),
      ),
    }),
  ),
  'human-monitor-command': 'str',
  'x-query-unclaimed-io': q.obj({ pio: q.req(unclaimed), mmio: q.req(unclaimed) }),
  'x-query-virtio': q.arr(q.obj({ path: str, name: str })),
  'x-query-virtio-status': q.obj({
    name: str,
    'device-id': int,
    'device-features': str,
    'driver-features': str,
    'device-features-decoded': q.req(features),
    'driver-features-decoded': q.req(features),
    status: int,
    'status-bits': q.req(q.arr('str')),
    broken: bool,
    'broken-reason': q.req(q.orNull('str')),
    disabled: bool,
    'bus-master': bool,
    isr: int,
    'config-generation': int,
    'num-queues': int,
    ioeventfd: bool,
    'host-notifiers-active': bool,
    'msix-enabled': bool,
    'msix-function-masked': bool,
    'config-vector': int,
    /** The device type's own fields and counters (docs/qmp.md). */
    'device-info': q.req('any'),
  }),
  'x-query-virtio-queue-status': q.obj({
    name: str,
    queue: int,
    size: int,
    ready: bool,
    active: bool,
    'desc-addr': str,
    'avail-addr': str,
    'used-addr': str,
    'last-avail-idx': int,
    'shadow-avail-idx': intOrNull,
    'avail-idx': intOrNull,
    'used-idx': int,
    'event-idx': bool,
    'used-event': intOrNull,
    'avail-event': intOrNull,
    'avail-flags': intOrNull,
    'msix-vector': int,
    'vector-masked': boolOrNull,
    'vector-pending': boolOrNull,
    ioeventfd: bool,
    'kicks-eventfd': int,
    'kicks-exit': int,
    'kicks-dropped': int,
    chains: int,
    'interrupts-injected': int,
    'interrupts-suppressed': int,
    'interrupts-dropped': int,
    'debug-events': int,
    'pending-drop-kicks': int,
    'pending-drop-interrupts': int,
    'last-kick-ms-ago': q.req(q.orNull('number')),
    'last-interrupt-ms-ago': q.req(q.orNull('number')),
    'avail-idx-at-last-kick': intOrNull,
    'kicks-per-sec': q.req('number'),
    'interrupts-per-sec': q.req('number'),
    stall: q.req(q.orNull(q.obj({ side: q.req(q.enum(['kick', 'interrupt'])), cause: str, 'stalled-ms': q.req('number') }))),
    /** A device with iothread=: the worker's indices and counters (docs/qmp.md). */
    'data-plane': q.opt('str'),
    /** A device with iothread=: guest kicks the worker read from the queue's ioeventfd itself. */
    'kicks-iothread': q.opt('int'),
    /** A polling iothread (poll-max-ns): its poller's counters and adaptive window. */
    'iothread-poll': q.opt(q.obj({ polls: int, hits: int, timeouts: int, 'window-ns': int })),
    /** vhost-scsi: the back-end's view of the queue (docs/vhost.md). */
    vhost: q.opt('any'),
  }),
  'x-debug-device-event': EMPTY,
  'x-debug-virtqueue-drop': q.obj({ 'drop-kicks': int, 'drop-interrupts': int }),
  /** QEMU's SchemaInfo list. */
  'query-qmp-schema': q.arr('any'),
  'x-query-virtio-queue-element': q.obj({
    name: str,
    index: int,
    descs: q.req(q.arr(q.obj({ addr: int, len: int, flags: q.req(q.arr(q.enum(['next', 'write', 'indirect']))) }))),
    avail: q.req(q.obj({ flags: int, idx: int, ring: int })),
    used: q.req(q.obj({ flags: int, idx: int })),
    'x-error': q.opt('str'),
  }),
  'x-snapshot-save': EMPTY,
  migrate: EMPTY,
  migrate_cancel: EMPTY,
  'query-migrate': q.obj({
    status: q.opt(q.enum(['setup', 'active', 'device', 'completed', 'failed', 'cancelled'])),
    'total-time': q.opt('int'),
    downtime: q.opt('int'),
    'x-downtime-sent': q.opt('number'),
    'setup-time': q.opt('int'),
    ram: q.opt(
      q.obj({
        transferred: int,
        remaining: int,
        total: int,
        duplicate: int,
        normal: int,
        'normal-bytes': int,
        'dirty-sync-count': int,
        mbps: q.req('number'),
        'dirty-pages-rate': q.req('number'),
      }),
    ),
    'error-desc': q.opt('str'),
  }),
  'migrate-set-parameters': EMPTY,
  'query-migrate-parameters': q.obj({ 'downtime-limit': int, 'x-max-passes': int, 'max-bandwidth': int }),
} satisfies Record<string, QType>;
