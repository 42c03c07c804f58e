// scripts/qmp.js, the one-shot QMP client docs/getting-started.md uses: against the real `vmm`
// running the guest kit, and against hostile servers on real unix sockets.
import { spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import { describeKvm } from '@tsvmm/kvm-native/testing';
import { GUEST_ELF, requireGuestKit, VMM_BIN } from './guest-kit';

const ROOT = path.resolve(__dirname, '../../..');
const QMP_JS = path.join(ROOT, 'scripts/qmp.js');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmm-qmpjs-demo-'));

function qmpJs(...args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [QMP_JS, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (err += d));
    p.on('close', (code) => resolve({ code, out, err }));
  });
}

describeKvm('scripts/qmp.js against the VMM', () => {
  it('prints a return value as JSON, HMP text as text, a QMP error on stderr with exit 1; quit ends the VMM', async () => {
    requireGuestKit();
    const sock = path.join(tmp, 'vmm.sock');
    const vm = spawn(
      process.execPath,
      [VMM_BIN, 'run', '--kernel', GUEST_ELF, '--cmdline', 'test=irq-msi count=1000', '--qmp', `unix:${sock}`, '-S'],
      { stdio: 'ignore' },
    );
    const exited = new Promise<number | null>((r) => vm.on('close', r));
    try {
      for (let i = 0; i < 200 && !fs.existsSync(sock); i++) await new Promise((r) => setTimeout(r, 50));
      const status = await qmpJs(sock, 'query-status');
      expect(status).toMatchObject({ code: 0, err: '' });
      expect(JSON.parse(status.out)).toEqual({ running: false, singlestep: false, status: 'paused' });
      const hmp = await qmpJs(sock, 'human-monitor-command', '{"command-line": "info status"}');
      expect(hmp).toMatchObject({ code: 0, err: '' });
      expect(hmp.out).toMatch(/^VM status: paused.*\n$/);
      const bad = await qmpJs(sock, 'x-query-virtio-queue-status', '{"path": "nope", "queue": 0}');
      expect(bad.code).toBe(1);
      expect(bad.out).toBe('');
      expect(bad.err).toMatch(/^qmp: x-query-virtio-queue-status: \w+: .*nope.*\n$/);
      expect(await qmpJs(sock, 'quit')).toMatchObject({ code: 0, err: '' });
      expect(await exited).toBe(0);
    } finally {
      vm.kill('SIGKILL');
    }
  });
});

describe('scripts/qmp.js: bad input and hostile servers give one line and an exit status, never a stack trace', () => {
  it.each([
    [[], 2, /^usage: node scripts\/qmp\.js SOCKET COMMAND/],
    [['/x.sock', 'query-status', '{bad'], 2, /^qmp: the arguments are not JSON: /],
    [['/x.sock', 'query-status', '[1]'], 2, /^qmp: the arguments must be a JSON object/],
    [['/x.sock', 'query-status', 'null'], 2, /^qmp: the arguments must be a JSON object/],
    [
      [path.join(os.tmpdir(), 'no-such-dir-qmpjs-demo', 'q.sock'), 'query-status'],
      1,
      /^qmp: cannot connect to the QMP socket .*: ENOENT\n$/,
    ],
  ])('%j: exit %d', async (args, code, msg) => {
    const r = await qmpJs(...(args as string[]));
    expect(r.code).toBe(code);
    expect(r.err).toMatch(msg);
    expect(r.err).not.toMatch(/\n\s+at /);
  });

  /** A server that answers each connection with `script(socket)`. */
  async function server(name: string, onConn: (s: net.Socket) => void): Promise<{ sock: string; close: () => void }> {
    const sock = path.join(tmp, `${name}.sock`);
    const srv = net.createServer(onConn);
    await new Promise<void>((r) => srv.listen(sock, r));
    return { sock, close: () => srv.close() };
  }

  it.each([
    ['garbage', (s: net.Socket) => s.end('\x00\xff not json\n'), /^qmp: not JSON from the VMM: /],
    ['not-qmp', (s: net.Socket) => s.end('{"hello": 1}\n'), /is not a QMP server \(greeting \{"hello":1\}\)/],
    ['closes', (s: net.Socket) => s.end('{"QMP": {}}\n'), /closed the QMP connection before answering qmp_capabilities/],
    [
      'non-objects then error',
      (s: net.Socket) => {
        s.write('null\n5\n"x"\n[]\n{"QMP": {}}\n');
        let n = 0;
        s.on('data', () =>
          s.write(++n === 1 ? '{"event": "STOP"}\n{"return": {}}\n' : '{"error": {"class": "GenericError", "desc": "no"}}\n'),
        );
      },
      /^qmp: query-status: GenericError: no\n$/,
    ],
  ])('server sends %s', async (name, onConn, msg) => {
    const srv = await server(name.replace(/\W/g, '-'), onConn as (s: net.Socket) => void);
    try {
      const r = await qmpJs(srv.sock, 'query-status');
      expect(r.code).toBe(1);
      expect(r.out).toBe('');
      expect(r.err).toMatch(msg);
      expect(r.err).not.toMatch(/\n\s+at /);
    } finally {
      srv.close();
    }
  });

  it('is valid JavaScript that node can load as a module', () => {
    expect(
      spawnSync(process.execPath, [
        '-e',
        `const q = require(${JSON.stringify(QMP_JS)}); if (typeof q.connect !== 'function') process.exit(3)`,
      ]).status,
    ).toBe(0);
  });
});
