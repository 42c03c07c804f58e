// QMP and HMP over a real socket, against the real `vmm` binary running the guest kit.
import { ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { describeKvm } from '@tsvmm/kvm-native/testing';
import { GUEST_ELF, requireGuestKit, VMM_BIN } from './guest-kit';
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
  const proc = spawn(process.execPath, [VMM_BIN, 'run', '--kernel', GUEST_ELF, '--cmdline', cmdline, '--qmp', `unix:${sock}`, ...extra], { stdio: ['ignore', 'pipe', 'pipe'] });
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
    expect(await c.execute('query-status')).toMatchObject({ error: { class: 'CommandNotFound', desc: "Expecting capabilities negotiation with 'qmp_capabilities'" } });
    expect(await c.execute('qmp_capabilities')).toEqual({ return: {}, id: expect.any(String) });
    const r = await c.execute('query-status');
    expect(r).toEqual({ return: { running: true, singlestep: false, status: 'running' }, id: r.id });
    const cmds = (await c.run('query-commands')) as { name: string }[];
    for (const n of ['qmp_capabilities', 'query-status', 'stop', 'cont', 'system_reset', 'quit', 'query-pci', 'human-monitor-command', 'x-debug-device-event', 'x-query-virtio-queue-status'])
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
      ['{"execute": "x-query-virtio-queue-status", "arguments": {"path": "x", "queue": "zero"}}', 'GenericError', /Invalid parameter type for 'queue', expected: integer/],
      ['{"execute": "query-status", "arguments": {"verbose": true}}', 'GenericError', /Parameter 'verbose' is unexpected/],
      ['{"execute": "x-query-virtio-status", "arguments": {"path": "nosuch"}}', 'DeviceNotFound', /Device 'nosuch' not found/],
      ['{"execute": "x-debug-device-event", "arguments": {"dev": "d", "event": "poke", "queue": 0}}', 'GenericError', /Parameter 'event' does not accept value 'poke'/],
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
});
