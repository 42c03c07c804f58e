// QMP and HMP over a real socket, against the real `vmm` binary running the guest kit.
import { ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import { describeKvm } from '@tsvmm/kvm-native/testing';
import { GUEST_ELF, requireGuestKit, runCli, VMM_BIN } from './guest-kit';
import { QmpClient } from '@tsvmm/testing';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmm-qmp-'));

interface Vm {
  proc: ChildProcess;
  sock: string;
  out: () => string;
  err: () => string;
  exited: Promise<number | null>;
}

/** Boots the guest kit waiting for interrupts forever (test=irq-msi): an idle, live guest. */
function boot(extra: string[] = [], cmdline = 'test=irq-msi count=1000'): Vm {
  requireGuestKit();
  const sock = path.join(tmp, `qmp-${Math.random().toString(36).slice(2)}.sock`);
  const proc = spawn(process.execPath, [VMM_BIN, 'run', '--kernel', GUEST_ELF, '--cmdline', cmdline, '--qmp', `unix:${sock}`, ...extra], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  proc.stdout!.on('data', (d) => (out += d));
  proc.stderr!.on('data', (d) => (err += d));
  const exited = new Promise<number | null>((r) => proc.on('close', r));
  return { proc, sock, out: () => out, err: () => err, exited };
}

async function negotiated(vm: Vm): Promise<QmpClient> {
  const c = await QmpClient.connect(vm.sock);
  await c.run('qmp_capabilities');
  return c;
}

describeKvm('QMP protocol', () => {
  let vm: Vm;
  afterEach(async () => {
    vm.proc.kill('SIGKILL');
    await vm.exited;
  });

  it('greets, negotiates, echoes ids and answers queries', async () => {
    vm = boot();
    const c = await QmpClient.connect(vm.sock);
    const greeting = c.messages[0] as { QMP: { version: { qemu: { major: number } }; capabilities: unknown[] } };
    expect(greeting.QMP.capabilities).toEqual([]);
    expect(greeting.QMP.version.qemu.major).toBeGreaterThan(0);
    expect(await c.execute('query-status')).toMatchObject({
      error: { class: 'CommandNotFound', desc: "Expecting capabilities negotiation with 'qmp_capabilities'" },
    });
    expect(await c.execute('qmp_capabilities')).toEqual({ return: {}, id: expect.any(String) });
    const r = await c.execute('query-status');
    expect(r).toEqual({ return: { running: true, singlestep: false, status: 'running' }, id: r.id });
    const cmds = (await c.run('query-commands')) as { name: string }[];
    for (const n of [
      'qmp_capabilities',
      'query-status',
      'stop',
      'cont',
      'system_reset',
      'quit',
      'query-pci',
      'human-monitor-command',
      'x-debug-device-event',
      'x-query-virtio-queue-status',
    ])
      expect(cmds.map((x) => x.name)).toContain(n);
    const pci = (await c.run('query-pci')) as { devices: { id: { vendor: number; device: number } }[] }[];
    expect(pci[0].devices[0].id).toEqual(expect.objectContaining({ vendor: 0x8086, device: 0x1237 }));
    c.close();
  });

  it('answers each kind of bad input with the QEMU error class and stays usable', async () => {
    vm = boot();
    const c = await negotiated(vm);
    const cases: [string, string, RegExp][] = [
      ['{"execute": "query-st', 'GenericError', /JSON parse error/],
      ['[1, 2]', 'GenericError', /QMP input must be a JSON object/],
      ['{"arguments": {}}', 'GenericError', /lacks member 'execute'/],
      ['{"execute": "no-such-command"}', 'CommandNotFound', /The command no-such-command has not been found/],
      ['{"execute": "x-query-virtio-status"}', 'GenericError', /Parameter 'path' is missing/],
      [
        '{"execute": "x-query-virtio-queue-status", "arguments": {"path": "x", "queue": "zero"}}',
        'GenericError',
        /Invalid parameter type for 'queue', expected: integer/,
      ],
      ['{"execute": "query-status", "arguments": {"verbose": true}}', 'GenericError', /Parameter 'verbose' is unexpected/],
      ['{"execute": "x-query-virtio-status", "arguments": {"path": "nosuch"}}', 'DeviceNotFound', /Device 'nosuch' not found/],
      [
        '{"execute": "x-debug-device-event", "arguments": {"dev": "d", "event": "poke", "queue": 0}}',
        'GenericError',
        /Parameter 'event' does not accept value 'poke'/,
      ],
      ['{"execute": "qmp_capabilities"}', 'CommandNotFound', /already complete/],
    ];
    for (const [text, cls, desc] of cases) {
      const before = c.messages.length;
      c.raw(`${text}\n`);
      const m = await c.waitFor((x) => c.messages.indexOf(x) >= before && 'error' in x);
      expect((m.error as { class: string }).class).toBe(cls);
      expect((m.error as { desc: string }).desc).toMatch(desc);
    }
    expect(await c.run('query-status')).toMatchObject({ status: 'running' });
    c.close();
  });

  it('stop/cont/system_reset/quit with events delivered to two concurrent clients', async () => {
    vm = boot([], 'test=irq-msi count=1000');
    const a = await negotiated(vm);
    const b = await negotiated(vm);
    await a.run('stop');
    await Promise.all([a.event('STOP'), b.event('STOP')]);
    expect(await b.run('query-status')).toMatchObject({ running: false, status: 'paused' });
    await b.run('cont');
    await Promise.all([a.event('RESUME'), b.event('RESUME')]);
    const banners = () => vm.out().split('guest-kit: hello').length - 1;
    while (banners() < 1) await new Promise((r) => setTimeout(r, 20));
    await a.run('system_reset');
    await b.event('RESET');
    while (banners() < 2) await new Promise((r) => setTimeout(r, 20)); // the guest boots again
    const ev = (await a.event('RESET')) as { timestamp: { seconds: number; microseconds: number } };
    expect(ev.timestamp.seconds).toBeGreaterThan(1.7e9);
    await a.run('quit');
    await b.event('SHUTDOWN');
    expect(await vm.exited).toBe(0);
  });

  it('human-monitor-command runs HMP text commands', async () => {
    vm = boot();
    const c = await negotiated(vm);
    const hmp = async (line: string) => (await c.run('human-monitor-command', { 'command-line': line })) as string;
    expect(await hmp('info status')).toBe('VM status: running\n');
    expect(await hmp('info pci')).toMatch(/Bus 0, device  0, function 0:\n\s+class 0x0600: PCI device 8086:1237/);
    expect(await hmp('stop')).toBe('');
    expect(await hmp('info status')).toBe('VM status: paused\n');
    expect(await hmp('frobnicate')).toMatch(/^Error: unknown command: 'frobnicate'/);
    expect(await hmp('help')).toContain('device_event DEV kick|call QUEUE');
    c.close();
  });

  /** Sends `cmds` in one write; resolves with every message that arrived until the last reply. */
  async function burst(c: QmpClient, cmds: { execute: string; arguments?: Record<string, unknown> }[]): Promise<Record<string, unknown>[]> {
    const first = c.messages.length;
    const base = 1000 + first * 100;
    c.raw(cmds.map((m, i) => JSON.stringify({ ...m, id: base + i })).join('\n') + '\n');
    await c.waitFor((m) => m.id === base + cmds.length - 1, 120_000);
    const got = c.messages.slice(first);
    const replies = got.filter((m) => 'return' in m || 'error' in m);
    expect(replies.map((m) => m.id)).toEqual(cmds.map((_, i) => base + i));
    return got;
  }
  const count = (msgs: Record<string, unknown>[], ev: string) => msgs.filter((m) => m.event === ev).length;
  const kinds = (msgs: Record<string, unknown>[]) =>
    msgs.map((m) =>
      m.event ? `event ${m.event}` : 'error' in m ? `error ${(m.error as { desc: string }).desc}` : `reply ${JSON.stringify(m.return)}`,
    );

  it('a pipelined stop, cont, query-status: every reply in order, one STOP, one RESUME, running', async () => {
    vm = boot(['--memory', '64M']);
    const c = await negotiated(vm);
    const msgs = await burst(c, [{ execute: 'stop' }, { execute: 'cont' }, { execute: 'query-status' }]);
    expect(kinds(msgs)).toEqual([
      'event STOP',
      'reply {}',
      'event RESUME',
      'reply {}',
      'reply {"running":true,"singlestep":false,"status":"running"}',
    ]);
    // And again: the pause that follows a resume is a new request, not the old acknowledgement.
    const again = await burst(c, [
      { execute: 'stop' },
      { execute: 'query-status' },
      { execute: 'cont' },
      { execute: 'stop' },
      { execute: 'query-status' },
    ]);
    expect(kinds(again)).toEqual([
      'event STOP',
      'reply {}',
      'reply {"running":false,"singlestep":false,"status":"paused"}',
      'event RESUME',
      'reply {}',
      'event STOP',
      'reply {}',
      'reply {"running":false,"singlestep":false,"status":"paused"}',
    ]);
    c.close();
  }, 120_000);

  it('a pipelined x-snapshot-save then cont: the snapshot completes with the vCPUs stopped, then the VM runs', async () => {
    vm = boot(['--memory', '64M']);
    const c = await negotiated(vm);
    const file = path.join(tmp, `snap-monitor-${Math.random().toString(36).slice(2)}.bin`);
    const msgs = await burst(c, [{ execute: 'x-snapshot-save', arguments: { file } }, { execute: 'cont' }, { execute: 'query-status' }]);
    expect(kinds(msgs)).toEqual([
      'event STOP',
      'reply {}',
      'event RESUME',
      'reply {}',
      'reply {"running":true,"singlestep":false,"status":"running"}',
    ]);
    expect(fs.statSync(file).size).toBeGreaterThan(0);
    // The monitor is still responsive and the VM still stops and resumes.
    expect(kinds(await burst(c, [{ execute: 'stop' }, { execute: 'cont' }]))).toEqual([
      'event STOP',
      'reply {}',
      'event RESUME',
      'reply {}',
    ]);
    fs.rmSync(file, { force: true });
    c.close();
  }, 120_000);

  it('a pipelined cont then system_reset from paused: RESUME once, RESET once, the guest boots again', async () => {
    vm = boot(['--memory', '64M']);
    const c = await negotiated(vm);
    const banners = () => vm.out().split('guest-kit: hello').length - 1;
    while (banners() < 1) await new Promise((r) => setTimeout(r, 20));
    await c.run('stop');
    const msgs = await burst(c, [{ execute: 'cont' }, { execute: 'system_reset' }, { execute: 'query-status' }]);
    expect(kinds(msgs)).toEqual([
      'event RESUME',
      'reply {}',
      'event RESET',
      'reply {}',
      'reply {"running":true,"singlestep":false,"status":"running"}',
    ]);
    while (banners() < 2) await new Promise((r) => setTimeout(r, 20));
    c.close();
  }, 120_000);

  it('a burst of 50 mixed commands in one write: 50 replies in order, each query-status as the commands before it left the VM, events counted exactly', async () => {
    vm = boot(['--memory', '64M']);
    const c = await negotiated(vm);
    const other = await negotiated(vm); // events go to every client
    const menu: { execute: string; arguments?: Record<string, unknown> }[] = [
      { execute: 'stop' },
      { execute: 'query-status' },
      { execute: 'cont' },
      { execute: 'stop' },
      { execute: 'query-version' },
      { execute: 'human-monitor-command', arguments: { 'command-line': 'cont' } },
      { execute: 'query-status' },
      { execute: 'cont' },
      { execute: 'human-monitor-command', arguments: { 'command-line': 'stop' } },
      { execute: 'query-pci' },
      { execute: 'nope' },
      { execute: 'human-monitor-command', arguments: { 'command-line': 'info status' } },
      { execute: 'system_reset' },
      { execute: 'query-status' },
    ];
    const cmds = Array.from({ length: 50 }, (_, i) => menu[(i * 5 + Math.floor(i / 14)) % menu.length]);
    cmds[49] = { execute: 'stop' };
    // The model: what each reply and event must be.
    let running = true;
    let stops = 0;
    let resumes = 0;
    let resets = 0;
    const expected: string[] = [];
    for (const m of cmds) {
      const hmp = m.execute === 'human-monitor-command' ? (m.arguments!['command-line'] as string) : undefined;
      if (m.execute === 'stop' || hmp === 'stop') {
        if (running) stops++;
        running = false;
      } else if (m.execute === 'cont' || hmp === 'cont') {
        if (!running) resumes++;
        running = true;
      } else if (m.execute === 'system_reset') resets++;
      if (m.execute === 'query-status') expected.push(`status ${running ? 'running' : 'paused'}`);
      else if (hmp === 'info status') expected.push(`hmp VM status: ${running ? 'running' : 'paused'}\n`);
      else if (m.execute === 'nope') expected.push('error CommandNotFound');
      else expected.push('ok');
    }
    const msgs = await burst(c, cmds);
    const replies = msgs.filter((m) => 'return' in m || 'error' in m);
    const seen = replies.map((r, i) =>
      'error' in r
        ? `error ${(r.error as { class: string }).class}`
        : cmds[i].execute === 'query-status'
          ? `status ${(r.return as { status: string }).status}`
          : cmds[i].execute === 'human-monitor-command' && r.return !== ''
            ? `hmp ${r.return as string}`
            : 'ok',
    );
    expect(seen).toEqual(expected);
    expect(stops).toBeGreaterThan(3);
    expect(resumes).toBeGreaterThan(3);
    expect([count(msgs, 'STOP'), count(msgs, 'RESUME'), count(msgs, 'RESET')]).toEqual([stops, resumes, resets]);
    await other.run('query-version'); // the other client got every event before this reply
    expect([count(other.messages, 'STOP'), count(other.messages, 'RESUME'), count(other.messages, 'RESET')]).toEqual([
      stops,
      resumes,
      resets,
    ]);
    expect(await other.run('query-status')).toMatchObject({ running: false, status: 'paused' });
    c.close();
    other.close();
  }, 180_000);

  it('cont during an outgoing migration is refused with the reason, over QMP and HMP', async () => {
    vm = boot(['--memory', '64M']);
    const c = await negotiated(vm);
    // A destination that accepts and never answers: the migration stays under way until cancelled.
    const dest = path.join(tmp, `mig-monitor-${Math.random().toString(36).slice(2)}.sock`);
    const held: net.Socket[] = [];
    const server = net.createServer((s) => held.push(s));
    await new Promise<void>((r) => server.listen(dest, r));
    await c.run('migrate', { uri: `unix:${dest}` });
    const msgs = await burst(c, [
      { execute: 'cont' },
      { execute: 'human-monitor-command', arguments: { 'command-line': 'cont' } },
      { execute: 'query-status' },
    ]);
    const replies = msgs.filter((m) => 'return' in m || 'error' in m);
    expect(replies[0].error).toEqual({
      class: 'GenericError',
      desc: expect.stringMatching(/^cont refused: an outgoing migration is in progress/),
    });
    expect(replies[1].return).toMatch(/^Error: cont refused: an outgoing migration is in progress/);
    expect(replies[2].return).toMatchObject({ status: 'running' });
    await c.run('migrate_cancel');
    await c.waitFor((m) => m.event === 'MIGRATION' && (m.data as { status: string }).status === 'cancelled');
    expect(await c.execute('cont')).toMatchObject({ return: {} });
    held.forEach((s) => s.destroy());
    server.close();
    c.close();
  }, 120_000);

  it('HMP lines pipelined through human-monitor-command run in order', async () => {
    vm = boot(['--memory', '64M']);
    const c = await negotiated(vm);
    const lines = ['stop', 'info status', 'cont', 'info status', 'c', 'stop', 'stop', 'info status', 'cont', 'info status'];
    const msgs = await burst(
      c,
      lines.map((l) => ({ execute: 'human-monitor-command', arguments: { 'command-line': l } })),
    );
    expect(kinds(msgs)).toEqual([
      'event STOP',
      'reply ""',
      'reply "VM status: paused\\n"',
      'event RESUME',
      'reply ""',
      'reply "VM status: running\\n"',
      'reply ""',
      'event STOP',
      'reply ""',
      'reply ""',
      'reply "VM status: paused\\n"',
      'event RESUME',
      'reply ""',
      'reply "VM status: running\\n"',
    ]);
    c.close();
  }, 120_000);
});

describeKvm('HMP on --monitor stdio', () => {
  it('runs the lines of one write in order, each output after the events its command caused', async () => {
    requireGuestKit();
    const proc = spawn(
      process.execPath,
      [
        VMM_BIN,
        'run',
        '--kernel',
        GUEST_ELF,
        '--cmdline',
        'test=irq-msi count=1000',
        '--memory',
        '64M',
        '--serial',
        'none',
        '--monitor',
        'stdio',
      ],
      { stdio: ['pipe', 'pipe', 'pipe'] },
    );
    let out = '';
    proc.stdout!.on('data', (d) => (out += d));
    const exited = new Promise<number | null>((r) => proc.on('close', r));
    proc.stdin!.write('stop\ninfo status\ncont\ncont\ninfo status\nstop\nstop\ninfo status\nsystem_reset\nquit\n');
    expect(await exited).toBe(0);
    expect(out.split('(vmm) ').join('')).toBe(
      'event STOP\nVM status: paused\nevent RESUME\nVM status: running\nevent STOP\nVM status: paused\n' +
        'event RESET {"guest":false,"reason":"host-qmp-system-reset"}\nevent SHUTDOWN {"guest":false,"reason":"host-qmp-quit"}\n',
    );
  }, 120_000);
});

describeKvm('command-line checks', () => {
  it('-S without any monitor is a usage error', async () => {
    const r = await runCli(['run', '--kernel', GUEST_ELF, '-S', '--serial', 'none']);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe('vmm: -S: the vCPUs would wait for a cont that no monitor can send; add --qmp unix:PATH or --monitor stdio\n');
  });

  it('--serial file: and --qmp unix: in a missing directory: a one-line error naming it, exit 1', async () => {
    const dir = path.join(tmp, 'missing-monitor-dir');
    const serial = await runCli(['run', '--kernel', GUEST_ELF, '--serial', `file:${dir}/serial.log`]);
    expect(serial.code).toBe(1);
    expect(serial.stderr).toBe(`vmm: --serial file:${dir}/serial.log: directory ${dir} does not exist\n`);
    const qmp = await runCli(['run', '--kernel', GUEST_ELF, '--serial', 'none', '--qmp', `unix:${dir}/q.sock`]);
    expect(qmp.code).toBe(1);
    expect(qmp.stderr).toBe(`vmm: --qmp unix:${dir}/q.sock: directory ${dir} does not exist\n`);
  });
});
