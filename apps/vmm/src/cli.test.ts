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
  ])('%j -> %s', (argv, msg) => {
    expect(() => parseArgs(argv)).toThrow(msg);
  });

  it('parses the plugins subcommand', () => {
    expect(parseArgs(['plugins'])).toEqual({ kind: 'plugins', json: false });
    expect(parseArgs(['plugins', '--json'])).toEqual({ kind: 'plugins', json: true });
  });
});
