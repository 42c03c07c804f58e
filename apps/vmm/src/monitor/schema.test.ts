// query-qmp-schema is generated from the declarations: every command the monitor registers with its
// return type, every event the VMM emits with its data; and what the code sends fits them.
import * as fs from 'fs';
import * as path from 'path';
import type { Machine } from '../machine/machine';
import { qmpSchema } from './commands';
import { QMP_EVENTS } from './events';
import { Monitor } from './monitor';
import { mismatch, q } from './qapi-types';
import { RETURNS } from './returns';

/** A monitor over a stand-in machine (no VM): enough for the registry, run state and stall events. */
function monitor(paused = false) {
  const machine = {
    devices: [],
    vcpus: [{ threadId: 4242 }, { threadId: undefined }],
    exited: false,
    isPaused: paused,
    pause: async () => void (machine.isPaused = true),
    resume: () => void (machine.isPaused = false),
  };
  const events: { name: string; data?: Record<string, unknown> }[] = [];
  const m = new Monitor(machine as unknown as Machine, () => undefined);
  m.listeners.push((name, data) => events.push({ name, data }));
  return { m, events };
}

/** The type `name` stands for in the schema, resolved (object members by name). */
function resolve(schema: { name: string }[], name: string) {
  return schema.find((s) => s.name === name) as Record<string, unknown> | undefined;
}

/** Every event name the VMM's sources pass to an event emitter. */
function emittedEvents(): Set<string> {
  const names = new Set<string>();
  const walk = (dir: string) => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith('.ts') && !e.name.endsWith('.test.ts'))
        for (const m of fs.readFileSync(p, 'utf8').matchAll(/\bevent\(\s*'([A-Z][A-Z0-9_]*)'/g)) names.add(m[1]);
    }
  };
  walk(path.join(__dirname, '..'));
  return names;
}

describe('query-qmp-schema from the declarations', () => {
  const { m } = monitor();
  const schema = qmpSchema(m.commands);
  const byName = new Map(schema.map((s) => [s.name, s]));

  it('lists every registered command with its arguments and what it returns; every type named is defined', () => {
    const commands = schema.filter((s) => s['meta-type'] === 'command');
    expect(commands.map((c) => c.name).sort()).toEqual(m.commands.names().sort());
    for (const c of commands) {
      if (c.name !== 'qmp_capabilities') expect(Object.hasOwn(RETURNS, c.name)).toBe(true);
      expect(byName.get(c['arg-type'] as string)?.['meta-type']).toBe('object');
      expect(byName.has(c['ret-type'] as string)).toBe(true);
    }
    for (const s of schema) {
      const named = [
        s['arg-type'],
        s['ret-type'],
        s['element-type'],
        ...((s.members as { type?: string }[] | undefined) ?? []).map((x) => x.type),
      ];
      for (const t of named) if (typeof t === 'string') expect([s.name, t, byName.has(t)]).toEqual([s.name, t, true]);
    }
    expect(new Set(schema.map((s) => s.name)).size).toBe(schema.length); // each name once
  });

  it('shows a return type as QEMU does: x-query-virtio-queue-status, its stall member an alternate of an object and null', () => {
    const cmd = byName.get('x-query-virtio-queue-status')!;
    expect(cmd).toMatchObject({ 'meta-type': 'command', 'ret-type': 'x-query-virtio-queue-status-ret', 'allow-oob': false });
    const ret = resolve(schema, 'x-query-virtio-queue-status-ret')!;
    const members = ret.members as { name: string; type: string; default?: null }[];
    expect(members).toContainEqual({ name: 'kicks-dropped', type: 'int' });
    expect(members).toContainEqual({ name: 'data-plane', type: 'str', default: null });
    const stall = members.find((x) => x.name === 'stall')!;
    const alt = resolve(schema, stall.type)!;
    expect(alt['meta-type']).toBe('alternate');
    const [objType, nullType] = (alt.members as { type: string }[]).map((x) => x.type);
    expect(nullType).toBe('null');
    expect((resolve(schema, objType)!.members as { name: string }[]).map((x) => x.name)).toEqual(['side', 'cause', 'stalled-ms']);
    expect(byName.get('query-commands')!['ret-type']).toBe('[query-commands-ret-element]');
    expect(byName.get('[query-commands-ret-element]')).toEqual({
      name: '[query-commands-ret-element]',
      'meta-type': 'array',
      'element-type': 'query-commands-ret-element',
    });
    expect(byName.get('human-monitor-command')!['ret-type']).toBe('str');
    expect(resolve(schema, byName.get('stop')!['ret-type'] as string)).toMatchObject({ 'meta-type': 'object', members: [] });
  });

  it('lists every event the VMM emits, with its data, and nothing it never emits', () => {
    const events = schema.filter((s) => s['meta-type'] === 'event');
    const emitted = emittedEvents();
    expect(emitted).toEqual(new Set(['STOP', 'RESUME', 'RESET', 'SHUTDOWN', 'MIGRATION', 'VIRTQUEUE_STALL', 'VIRTQUEUE_STALL_CLEARED']));
    expect(events.map((e) => e.name).sort()).toEqual([...emitted].sort());
    const stall = resolve(schema, byName.get('VIRTQUEUE_STALL')!['arg-type'] as string)!;
    expect(stall.members).toContainEqual({ name: 'used-event', type: 'int', default: null });
    const cause = (stall.members as { name: string; type: string }[]).find((x) => x.name === 'cause')!;
    expect(resolve(schema, cause.type)).toMatchObject({
      'meta-type': 'enum',
      values: ['no-notify', 'dropped', 'driver-silent', 'vector-masked', 'no-vector', 'msix-disabled', 'no-irqfd'],
    });
    expect(resolve(schema, byName.get('STOP')!['arg-type'] as string)).toMatchObject({ 'meta-type': 'object', members: [] });
  });
});

describe('what the monitor sends fits its declarations', () => {
  const fits = (type: Parameters<typeof mismatch>[0], v: unknown) => expect(mismatch(type, v)).toBeUndefined();

  it('the stall events, as the detector reports an episode and its end', () => {
    const { m, events } = monitor();
    const v = { id: 'd0', path: '/machine/peripheral/d0', pci: { stall: { policy: 'none' } } };
    const report = (m as unknown as { reportStall(v: unknown, r: unknown): void }).reportStall.bind(m);
    report(v, {
      queue: 0,
      transition: { kind: 'stall', side: 'kick', cause: 'no-notify', stalledMs: 501 },
      indices: { 'avail-idx': 9, 'last-avail-idx': 8, 'used-idx': 8, 'avail-event': 8 },
    });
    report(v, {
      queue: 0,
      transition: { kind: 'stall', side: 'interrupt', cause: 'dropped', stalledMs: 502.5 },
      indices: { 'avail-idx': 9, 'last-avail-idx': 9, 'used-idx': 9, 'used-event': 8 },
    });
    report(v, { queue: 0, transition: { kind: 'cleared', side: 'kick', cause: 'no-notify', stalledMs: 630 }, indices: {} });
    expect(events.map((e) => e.name)).toEqual(['VIRTQUEUE_STALL', 'VIRTQUEUE_STALL', 'VIRTQUEUE_STALL_CLEARED']);
    for (const e of events) fits(q.obj(QMP_EVENTS[e.name as keyof typeof QMP_EVENTS]), e.data ?? {});
  });

  it('STOP, RESUME, RESET and SHUTDOWN, and the run-state commands return what they declare', async () => {
    const { m, events } = monitor();
    const run = (name: string, args: Record<string, unknown> = {}) => m.commands.get(name)!.run(args);
    fits(RETURNS['query-status'], await run('query-status'));
    fits(RETURNS.stop, (await run('stop')) ?? {});
    fits(RETURNS['query-status'], await run('query-status'));
    fits(RETURNS.cont, (await run('cont')) ?? {});
    m.event('RESET', { guest: false, reason: 'host-qmp-system-reset' });
    m.event('SHUTDOWN', { guest: true, reason: 'guest-reset' });
    expect(events.map((e) => e.name)).toEqual(['STOP', 'RESUME', 'RESET', 'SHUTDOWN']);
    for (const e of events) fits(q.obj(QMP_EVENTS[e.name as keyof typeof QMP_EVENTS]), e.data ?? {});
    for (const name of [
      'query-version',
      'query-commands',
      'query-migrate',
      'query-migrate-parameters',
      'x-query-virtio',
      'query-qmp-schema',
      'query-cpus-fast',
    ] as const)
      fits(RETURNS[name], await run(name));
    // thread-id only for a vCPU whose thread runs (under -S none runs before cont).
    expect(await run('query-cpus-fast')).toEqual([
      { 'cpu-index': 0, 'qom-path': '/machine/unattached/device[0]', 'thread-id': 4242, target: 'x86_64' },
      { 'cpu-index': 1, 'qom-path': '/machine/unattached/device[1]', target: 'x86_64' },
    ]);
    fits(RETURNS['migrate-set-parameters'], (await run('migrate-set-parameters', { 'downtime-limit': 500 })) ?? {});
  });

  it('refuses what does not fit: a member not declared, a missing one, a wrong type, an enum value outside it', () => {
    const t = q.obj({ a: q.req('int'), b: q.opt(q.enum(['x', 'y'])), c: q.req(q.orNull('str')) });
    expect(mismatch(t, { a: 1, c: null })).toBeUndefined();
    expect(mismatch(t, { a: 1, c: 's', d: 0 })).toBe('$.d: not declared');
    expect(mismatch(t, { c: 's' })).toBe('$.a: missing');
    expect(mismatch(t, { a: 1.5, c: 's' })).toBe('$.a: expected int, got 1.5');
    expect(mismatch(t, { a: 1, b: 'z', c: 's' })).toBe('$.b: expected one of x|y');
    expect(mismatch(t, { a: 1, c: 3 })).toBe('$.c: no alternative fits 3');
  });
});
