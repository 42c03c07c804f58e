/**
 * The QMP server and the monitor's dispatcher: the input goes, as a client
 * would send it, over a real unix socket to a QmpServer serving the
 * Monitor's real command registry (HMP through human-monitor-command too).
 * The machine behind the monitor is a stand-in whose every use throws
 * StandInMachine (expected): what is fuzzed is framing, JSON, argument
 * checking and dispatch, up to the point where a command acts. quit,
 * migrate and x-snapshot-save are replaced (they would end the worker or
 * write files named by the input).
 * Crashes: a command failing with anything but a CommandError or the
 * stand-in's error (the server logs "qmp: NAME failed: STACK"), an
 * unhandled rejection, a reply that is not one JSON object per line, or a
 * server that stops answering (hang).
 */
import fc from 'fast-check';
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import type { Machine } from '../src/machine/machine';
import { Monitor } from '../src/monitor/monitor';
import { QmpServer } from '../src/monitor/qmp-server';

export const maxLen = 4096;
export const dictionary = [
  '{"execute":"qmp_capabilities"}',
  '{"execute":',
  '"arguments":{',
  '"id":',
  '"exec-oob"',
  '}',
  '{',
  '[',
  ']',
  '\n',
  '\\"',
  '\\u0000',
  'null',
  'true',
  '1e400',
  '-0',
  '"human-monitor-command"',
  '"command-line":"',
  '"query-status"',
  '"x-query-virtio-status"',
  '"x-debug-virtqueue-drop"',
  '"x-debug-device-event"',
  '"migrate-set-parameters"',
  '"downtime-limit"',
  '"x-max-passes"',
  '"query-migrate"',
  '"stop"',
  '"cont"',
  '"query-pci"',
  '"path"',
  '"queue"',
  '"x-query-virtio-queue-element"',
  '"index"',
  '"query-qmp-schema"',
  'info virtqueues',
  'info virtio-queue-element ',
  'info virtio-queue-status ',
  'virtqueue_drop ',
  'device_event ',
  'migrate_set_downtime ',
  'info migrate',
  '0x',
];

class StandInMachine extends Error {}

const machine = new Proxy({ devices: [], exited: false, isPaused: false } as Record<string, unknown>, {
  get(t, k) {
    if (typeof k === 'string' && k in t) return t[k];
    if (k === 'then' || typeof k === 'symbol') return undefined;
    throw new StandInMachine(`stand-in machine: ${String(k)}`);
  },
}) as unknown as Machine;

const problems: string[] = [];
const log = (m: string) => {
  if (/^qmp: .* failed: /.test(m) && !/failed: (Error: )?stand-in machine|StandInMachine/.test(m.split('\n')[0])) problems.push(m);
};
const monitor = new Monitor(machine, log);
monitor.quit = async () => ({}) as never;
for (const name of ['quit', 'migrate', 'x-snapshot-save']) {
  const c = monitor.commands.get(name)!;
  monitor.commands.add({ ...c, run: () => ({}) });
}

/** Structure-aware inputs: negotiation, then well-formed requests with arbitrary JSON arguments (HMP lines from its words). */
const hmpLine = fc
  .array(
    fc.oneof(
      fc.constantFrom(
        'info',
        'status',
        'pci',
        'virtio',
        'virtio-status',
        'virtio-queue-status',
        'migrate',
        'stop',
        'cont',
        'help',
        'device_event',
        'kick',
        'call',
        'virtqueue_drop',
        'migrate_set_downtime',
        'savevm-file',
        'quit',
      ),
      fc.string({ maxLength: 8 }),
      fc.integer().map(String),
    ),
    { maxLength: 6 },
  )
  .map((w) => w.join(' '));
const ARG_NAMES = [
  'path',
  'queue',
  'dev',
  'event',
  'kicks',
  'interrupts',
  'downtime-limit',
  'x-max-passes',
  'uri',
  'file',
  'enable',
  'detach',
  'cpu-index',
];
export const arbitrary = fc
  .array(
    fc.record(
      {
        execute: fc.constantFrom(...monitor.commands.names()),
        arguments: fc.oneof(
          fc.dictionary(fc.constantFrom(...ARG_NAMES), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 3 }),
          fc.record({ 'command-line': hmpLine }),
        ),
        id: fc.jsonValue({ maxDepth: 1 }),
      },
      { requiredKeys: ['execute'] },
    ),
    { maxLength: 6 },
  )
  .map((reqs) => new Uint8Array(Buffer.from([{ execute: 'qmp_capabilities' }, ...reqs].map((r) => JSON.stringify(r)).join('\n') + '\n')));

const sockPath = path.join(
  process.env.FUZZ_TMPDIR ?? os.tmpdir(),
  `tsvmm-fuzz-qmp-${process.pid}-${Math.random().toString(36).slice(2)}.sock`,
);
let server: Promise<QmpServer> | undefined;

function getServer(): Promise<QmpServer> {
  server ??= (async () => {
    const s = new QmpServer(sockPath, monitor.commands, log);
    await s.listen();
    process.on('exit', () => fs.rmSync(sockPath, { force: true }));
    return s;
  })();
  return server;
}

export async function fuzz(data: Buffer): Promise<void> {
  await getServer();
  problems.length = 0;
  const replies = await new Promise<string>((resolve, reject) => {
    const c = net.connect(sockPath);
    let got = '';
    c.setEncoding('utf8');
    c.on('data', (d: string) => {
      got += d;
    });
    c.on('error', reject);
    c.on('connect', () => {
      c.write(data);
      // Then a request whose answer shows the server still serves this client (unless the input left an
      // object open, which swallows it), and the end of the client's side: the server closes its side then.
      c.end('\n{"execute":"query-version","id":"fuzz-end"}\n');
    });
    c.on('close', () => resolve(got));
  });
  for (const line of replies.split('\r\n')) {
    if (!line) continue;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch {
      throw new Error(`reply is not JSON: ${line.slice(0, 200)}`);
    }
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error(`reply is not a JSON object: ${line.slice(0, 200)}`);
  }
  for (let i = 0; i < 3; i++) await new Promise((r) => setImmediate(r));
  if (problems.length) throw new Error(`a command failed with an unexpected error: ${problems[0].slice(0, 2000)}`);
}
