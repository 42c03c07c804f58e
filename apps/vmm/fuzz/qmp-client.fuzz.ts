/**
 * scripts/qmp.js, the one-shot QMP client of docs/getting-started.md and
 * `npm run demo`, against a hostile server: the input is what the server
 * sends on a real unix socket (then it closes). The client negotiates and
 * runs two commands. Expected: a result, or a QmpError (one line for the
 * user). Crashes: any other error, an unhandled rejection, a hang.
 */
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';

// Plain JavaScript (run by node directly, not part of a TypeScript project).
// eslint-disable-next-line @typescript-eslint/no-require-imports
const qmp = require('../../../scripts/qmp.js') as {
  connect(sock: string, timeoutMs?: number): Promise<{ execute(cmd: string, args?: unknown): Promise<unknown>; close(): void }>;
  QmpError: new (m: string) => Error;
};

export const maxLen = 4096;
export const dictionary = [
  '{"QMP": {}}\n',
  '{"return": {}}\n',
  '{"error": {"class": "GenericError", "desc": "x"}}\n',
  '{"event": "STOP"}\n',
  '\r\n',
  'null',
  '[]',
  '{',
  '}',
  '"',
  '\\u0000',
  '1e400',
];

const sockPath = path.join(
  process.env.FUZZ_TMPDIR ?? os.tmpdir(),
  `tsvmm-fuzz-qmpjs-${process.pid}-${Math.random().toString(36).slice(2)}.sock`,
);
let current = Buffer.alloc(0);
let server: Promise<net.Server> | undefined;

function getServer(): Promise<net.Server> {
  server ??= new Promise((resolve) => {
    const s = net.createServer((c) => {
      c.on('error', () => undefined);
      c.end(current);
    });
    s.listen(sockPath, () => resolve(s));
    process.on('exit', () => fs.rmSync(sockPath, { force: true }));
  });
  return server;
}

export function isExpected(e: unknown): boolean {
  return e instanceof qmp.QmpError;
}

export async function fuzz(data: Buffer): Promise<void> {
  await getServer();
  current = data;
  const c = await qmp.connect(sockPath, 1000);
  try {
    await c.execute('query-status');
    await c.execute('x-query-virtio-queue-status', { path: 'disk0', queue: 0 });
  } finally {
    c.close();
  }
}

export async function teardown(): Promise<void> {
  if (server) (await server).close();
}
