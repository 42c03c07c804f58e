/** The QMP events this VMM sends and their data (query-qmp-schema lists them). */
import { q, QMembers } from './qapi-types';

const SHUTDOWN_CAUSE = q.enum(['host-qmp-quit', 'host-qmp-system-reset', 'guest-shutdown', 'guest-reset', 'guest-panic']);
const STALL_SIDE = q.enum(['kick', 'interrupt']);
const STALL_CAUSE = q.enum(['no-notify', 'dropped', 'driver-silent', 'vector-masked', 'no-vector', 'msix-disabled', 'no-irqfd']);
const STALL_QUEUE: QMembers = {
  device: q.req('str'),
  path: q.req('str'),
  queue: q.req('int'),
  side: q.req(STALL_SIDE),
  cause: q.req(STALL_CAUSE),
  'stalled-ms': q.req('number'),
};

export const QMP_EVENTS = {
  STOP: {},
  RESUME: {},
  RESET: { guest: q.req('bool'), reason: q.req(SHUTDOWN_CAUSE) },
  SHUTDOWN: { guest: q.req('bool'), reason: q.req(SHUTDOWN_CAUSE) },
  MIGRATION: { status: q.req(q.enum(['none', 'setup', 'active', 'device', 'completed', 'failed', 'cancelled'])) },
  /** docs/qmp.md "Stall detector": avail-event on the kick side, used-event on the interrupt side (EVENT_IDX). */
  VIRTQUEUE_STALL: {
    ...STALL_QUEUE,
    'avail-idx': q.req('int'),
    'last-avail-idx': q.req('int'),
    'used-idx': q.req('int'),
    'avail-event': q.opt('int'),
    'used-event': q.opt('int'),
  },
  VIRTQUEUE_STALL_CLEARED: STALL_QUEUE,
} satisfies Record<string, QMembers>;

export type QmpEventName = keyof typeof QMP_EVENTS;
