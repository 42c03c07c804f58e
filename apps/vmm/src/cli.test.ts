import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { parseArgs } from './cli';

describe('parseArgs', () => {
  it('parses every flag', () => {
    const c = parseArgs(['run', '--kernel', 'k', '--initrd', 'i', '--cmdline', 'a b', '--memory', '1G', '--cpus', '2',
      '--device', 'virtio-blk,id=d0,file=/x,,y,readonly=on', '--serial=file:/tmp/s', '--trace-boot']);
    expect(c).toEqual({
      kind: 'run',
      config: {
        kernel: 'k', initrd: 'i', cmdline: 'a b', memoryBytes: 2 ** 30, cpus: 2, serial: { kind: 'file', path: '/tmp/s' }, traceBoot: true, qmp: [], monitorStdio: false, startPaused: false,
        devices: [{ type: 'virtio-blk', id: 'd0', props: { file: '/x,y', readonly: 'on' } }],
      },
    });
  });

  it.each([
    [['run', '--kernel'], '--kernel: missing value'],
    [['run', '--kernel', 'k', '--memory', '1000'], '--memory: 1000 is below the minimum of 16M'],
    [['run', '--kernel', 'k', '--memory', '17M'], '--memory: 17M must be a multiple of 2M'],
    [['run', '--kernel', 'k', '--device', 'x,id=a', '--device', 'y,id=a'], "--device: id 'a' is used twice"],
    [['run', '--kernel', 'k', '--device', 'x,novalue'], "--device 'x,novalue': 'novalue' is not key=value"],
    [['run', '--kernel', 'k', '--device', 'x,id=1bad'], "id '1bad' must start with a letter"],
    [['boot'], "unknown command 'boot'"],
    [['plugins', '--all'], "plugins: unknown option '--all' (it takes --json)"],
    [['run', '--kernel', 'k', '--device', 'x,toString=1'], "--device 'x,toString=1': 'toString' is not a property name (a reserved name)"],
    [['run', '--kernel', 'k', '--device', 'x,constructor=1'], "--device 'x,constructor=1': 'constructor' is not a property name (a reserved name)"],
    [['run', '--kernel', 'k', '--device', 'x,__proto__=1'], "--device 'x,__proto__=1': '__proto__' is not a property name (a reserved name)"],
    [['run', '--kernel', 'k', '-S'], '-S: the vCPUs would wait for a cont that no monitor can send; add --qmp unix:PATH or --monitor stdio'],
    [['run', '--kernel', 'k', '--qmp', `unix:/tmp/${'q'.repeat(103)}`], `--qmp: socket path '/tmp/${'q'.repeat(103)}' is 108 bytes; a unix socket path holds at most 107`],
    [['run', '--kernel', 'k', '--incoming', `unix:/tmp/${'i'.repeat(120)}`], 'is 125 bytes; a unix socket path holds at most 107'],
    [['run', '--kernel', 'k', '--config', '/nonexistent-monitor-dir/vm.json'], '--config /nonexistent-monitor-dir/vm.json: directory /nonexistent-monitor-dir does not exist'],
  ])('%j -> %s', (argv, msg) => {
    expect(() => parseArgs(argv)).toThrow(msg);
  });

  it('--stall-ms: the stall detector default, 0 to 3600000 ms; anything else is refused by name', () => {
    const run = (v: string) => parseArgs(['run', '--kernel', 'k', '--stall-ms', v]);
    expect(run('500')).toMatchObject({ config: { stallMs: 500 } });
    expect(run('0')).toMatchObject({ config: { stallMs: 0 } });
    expect(parseArgs(['run', '--kernel', 'k', '--stall-ms=3600000'])).toMatchObject({ config: { stallMs: 3600000 } });
    for (const bad of ['-1', '3600001', '1e3', '0x10', '', 'fast', '500ms', '99999999999999999999'])
      expect(() => run(bad)).toThrow(`--stall-ms: '${bad}' must be a whole number of milliseconds from 0 (off) to 3600000`);
  });

  it('accepts -S with a monitor and a socket path of exactly 107 bytes', () => {
    const p = `/tmp/${'q'.repeat(102)}`;
    expect(Buffer.byteLength(p)).toBe(107);
    const c = parseArgs(['run', '--kernel', 'k', '-S', '--qmp', `unix:${p}`]);
    expect(c).toMatchObject({ config: { startPaused: true, qmp: [p] } });
    expect(parseArgs(['run', '--kernel', 'k', '-S', '--monitor', 'stdio', '--serial', 'none'])).toMatchObject({ config: { startPaused: true, monitorStdio: true } });
  });

  it.each(['toString', 'constructor', '__proto__', 'valueOf'])('refuses the inherited name %s in a --config file, as a setting and as a device property', (key) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmm-monitor-cfg-'));
    const file = path.join(dir, 'vm.json');
    fs.writeFileSync(file, `{"kernel": "k", "${key}": 1}`);
    expect(() => parseArgs(['run', '--config', file])).toThrow(`--config ${file}: unknown setting '${key}'`);
    fs.writeFileSync(file, `{"kernel": "k", "devices": [{"type": "virtio-blk", "${key}": "x"}]}`);
    expect(() => parseArgs(['run', '--config', file])).toThrow(`--config ${file}: devices[0]: '${key}' is not a property name (a reserved name)`);
    fs.rmSync(dir, { recursive: true });
  });

  it('parses the plugins subcommand', () => {
    expect(parseArgs(['plugins'])).toEqual({ kind: 'plugins', json: false });
    expect(parseArgs(['plugins', '--json'])).toEqual({ kind: 'plugins', json: true });
  });
});
