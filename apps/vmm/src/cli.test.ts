import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { parseArgs } from './cli';

describe('parseArgs', () => {
  it('parses every flag', () => {
    const c = parseArgs([
      'run',
      '--kernel',
      'k',
      '--initrd',
      'i',
      '--cmdline',
      'a b',
      '--memory',
      '1G',
      '--cpus',
      '2',
      '--device',
      'virtio-blk,id=d0,file=/x,,y,readonly=on',
      '--serial=file:/tmp/s',
      '--trace-boot',
      '--sandbox',
      'on',
    ]);
    expect(c).toEqual({
      kind: 'run',
      config: {
        kernel: 'k',
        initrd: 'i',
        cmdline: 'a b',
        memoryBytes: 2 ** 30,
        cpus: 2,
        serial: { kind: 'file', path: '/tmp/s' },
        traceBoot: true,
        qmp: [],
        monitorStdio: false,
        startPaused: false,
        sandbox: true,
        devices: [{ type: 'virtio-blk', id: 'd0', props: { file: '/x,y', readonly: 'on' } }],
      },
    });
  });

  it.each([
    [['run', '--kernel'], '--kernel: missing value'],
    [['run', '--kernel', 'k', '--memory', '8'], '--memory: 8 is below the minimum of 16M'],
    [['run', '--kernel', 'k', '--memory', '1048576'], '--memory: 1048576 is above the maximum of 64G'],
    [['run', '--kernel', 'k', '--memory', '15'], '--memory: 15 is below the minimum of 16M'],
    [['run', '--kernel', 'k', '--memory', '17M'], '--memory: 17M must be a multiple of 2M'],
    [['run', '--kernel', 'k', '--device', 'x,id=a', '--device', 'y,id=a'], "--device: id 'a' is used twice"],
    [['run', '--kernel', 'k', '--device', 'x,novalue'], "--device 'x,novalue': 'novalue' is not key=value"],
    [['run', '--kernel', 'k', '--device', 'x,id=1bad'], "id '1bad' must start with a letter"],
    [['boot'], "unknown command 'boot'"],
    [['run', '--kernel', 'k', '--sandbox', 'yes'], "--sandbox: 'yes' must be on or off"],
    [['run', '--kernel', 'k', '--sandbox=ON'], "--sandbox: 'ON' must be on or off"],
    [['run', '--kernel', 'k', '--sandbox'], '--sandbox: missing value'],
    [['plugins', '--all'], "plugins: unknown option '--all' (see vmm plugins --help)"],
    [['plugins', 'extra'], "plugins: unexpected argument 'extra'"],
    [['config-schema', '--json'], "config-schema: unknown option '--json'"],
    [['run', '--kernel', 'k', '--paused=maybe'], "--paused: 'maybe' must be on or off"],
    [['run', '--kernel', 'k', '--trace-boot=2'], "--trace-boot: '2' must be on or off"],
    [['run', '--kernel', 'k', '--paused', 'no'], "run: unexpected argument 'no'"],
    [['run', '--kernel', 'k', '--monitor', 'tcp'], "--monitor: 'tcp' must be stdio or none"],
    [['run', '--kernel', 'k', '--cpus'], '--cpus: missing value'],
    [['run', '--kernel', 'k', '-m', 'x'], "-m: 'x' is not a size"],
    [['run', '--kernel', 'k', '-x'], "unknown option '-x'"],
    [['run', '--kernel', 'k', '--device', 'x,toString=1'], "--device 'x,toString=1': 'toString' is not a property name (a reserved name)"],
    [
      ['run', '--kernel', 'k', '--device', 'x,constructor=1'],
      "--device 'x,constructor=1': 'constructor' is not a property name (a reserved name)",
    ],
    [
      ['run', '--kernel', 'k', '--device', 'x,__proto__=1'],
      "--device 'x,__proto__=1': '__proto__' is not a property name (a reserved name)",
    ],
    [
      ['run', '--kernel', 'k', '-S'],
      '-S: the vCPUs would wait for a cont that no monitor can send; add --qmp unix:PATH or --monitor stdio',
    ],
    [
      ['run', '--kernel', 'k', '--paused=on'],
      '--paused: the vCPUs would wait for a cont that no monitor can send; add --qmp unix:PATH or --monitor stdio',
    ],
    [
      ['run', '--kernel', 'k', '--qmp', `unix:/tmp/${'q'.repeat(103)}`],
      `--qmp: socket path '/tmp/${'q'.repeat(103)}' is 108 bytes; a unix socket path holds at most 107`,
    ],
    [['run', '--kernel', 'k', '--incoming', `unix:/tmp/${'i'.repeat(120)}`], 'is 125 bytes; a unix socket path holds at most 107'],
    [
      ['run', '--kernel', 'k', '--incoming', 'unix:/tmp/m.sock,timeout=soon'],
      "--incoming: timeout 'soon' must be a whole number of seconds from 0 (wait for ever) to 86400",
    ],
    [
      ['run', '--kernel', 'k', '--incoming', 'unix:/tmp/m.sock,timeout=86401'],
      "--incoming: timeout '86401' must be a whole number of seconds from 0 (wait for ever) to 86400",
    ],
    [['run', '--kernel', 'k', '--incoming', 'unix:/tmp/m.sock,timeout=-1'], "--incoming: timeout '-1' must be a whole number"],
    [
      ['run', '--kernel', 'k', '--config', '/nonexistent-monitor-dir/vm.json'],
      '--config /nonexistent-monitor-dir/vm.json: directory /nonexistent-monitor-dir does not exist',
    ],
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
    expect(parseArgs(['run', '--kernel', 'k', '-S', '--monitor', 'stdio', '--serial', 'none'])).toMatchObject({
      config: { startPaused: true, monitorStdio: true },
    });
  });

  it.each(['toString', 'constructor', '__proto__', 'valueOf'])(
    'refuses the inherited name %s in a --config file, as a setting and as a device property',
    (key) => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmm-monitor-cfg-'));
      const file = path.join(dir, 'vm.json');
      fs.writeFileSync(file, `{"kernel": "k", "${key}": 1}`);
      expect(() => parseArgs(['run', '--config', file])).toThrow(`--config ${file}: unknown setting '${key}'`);
      fs.writeFileSync(file, `{"kernel": "k", "devices": [{"type": "virtio-blk", "${key}": "x"}]}`);
      expect(() => parseArgs(['run', '--config', file])).toThrow(
        `--config ${file}: devices[0]: '${key}' is not a property name (a reserved name)`,
      );
      fs.rmSync(dir, { recursive: true });
    },
  );

  it('takes an inactivity timeout for --incoming (a trailing ,timeout=SECONDS; other commas belong to the path)', () => {
    const run = (...a: string[]) => parseArgs(['run', '--kernel', 'k', ...a]);
    expect(run('--incoming', 'unix:/tmp/m.sock,timeout=5')).toMatchObject({
      config: { incoming: 'unix:/tmp/m.sock', incomingTimeoutS: 5 },
    });
    expect(run('--incoming', 'unix:/tmp/m.sock,timeout=0')).toMatchObject({
      config: { incoming: 'unix:/tmp/m.sock', incomingTimeoutS: 0 },
    });
    const plain = run('--incoming', 'unix:/tmp/a,b.sock') as unknown as { config: Record<string, unknown> };
    expect(plain.config.incoming).toBe('unix:/tmp/a,b.sock');
    expect(plain.config.incomingTimeoutS).toBeUndefined();
  });

  it('takes =on|off (and yes/no, true/false) for switches; a bare switch is on', () => {
    const run = (...a: string[]) => parseArgs(['run', '--kernel', 'k', '--qmp', 'unix:/tmp/q', ...a]);
    expect(run('--paused=no')).toMatchObject({ config: { startPaused: false } });
    expect(run('--paused=off')).toMatchObject({ config: { startPaused: false } });
    expect(run('--paused=on')).toMatchObject({ config: { startPaused: true } });
    expect(run('--paused')).toMatchObject({ config: { startPaused: true } });
    expect(run('-S', '--paused=false')).toMatchObject({ config: { startPaused: false } });
    expect(run('--trace-boot=yes')).toMatchObject({ config: { traceBoot: true } });
    expect(run('--trace-boot=no')).toMatchObject({ config: { traceBoot: false } });
  });

  it('hands a flag its value even when it looks like an option: --cmdline --help is for the guest', () => {
    expect(parseArgs(['run', '--kernel', 'k', '--cmdline', '--help'])).toMatchObject({ kind: 'run', config: { cmdline: '--help' } });
    expect(parseArgs(['run', '--kernel', 'k', '--cmdline=-v --version'])).toMatchObject({
      kind: 'run',
      config: { cmdline: '-v --version' },
    });
  });

  it('reads a size without unit as MiB, as QEMU -m', () => {
    expect(parseArgs(['run', '--kernel', 'k', '--memory', '512'])).toMatchObject({ config: { memoryBytes: 512 * 2 ** 20 } });
    expect(parseArgs(['run', '--kernel', 'k', '-m', '2G'])).toMatchObject({ config: { memoryBytes: 2 ** 31 } });
    expect(parseArgs(['run', '--kernel', 'k', '--memory', '67108864B'])).toMatchObject({ config: { memoryBytes: 64 * 2 ** 20 } });
  });

  it('answers --version and --help per command, wherever they stand', () => {
    expect(parseArgs(['--version'])).toEqual({ kind: 'version' });
    expect(parseArgs(['run', '--kernel', 'k', '--version'])).toEqual({ kind: 'version' });
    const help = (argv: string[]) => {
      const c = parseArgs(argv);
      if (c.kind !== 'help') throw new Error(`not help: ${c.kind}`);
      return c.text;
    };
    expect(help(['--help'])).toMatch(/^Usage: vmm run \[options\][^\n]*\n\s+vmm plugins/);
    expect(help(['run', '--help'])).toMatch(/^Usage: vmm run \[options\]\n/);
    expect(help(['run', '--kernel', 'k', '-h'])).toContain('-S, --paused[=on|off]');
    expect(help(['plugins', '--help'])).toMatch(/^Usage: vmm plugins \[--json\]/);
    expect(help(['config-schema', '-h'])).toMatch(/^Usage: vmm config-schema/);
    // every run setting is in run's help
    for (const key of [
      '--kernel PATH',
      '--initrd PATH',
      '--cmdline STR',
      '--memory SIZE',
      '--cpus N',
      '--device SPEC',
      '--serial MODE',
      '--config FILE.json',
      '--qmp unix:PATH',
      '--monitor stdio',
      '--incoming unix:PATH',
      '--restore FILE',
      '--trace-boot[=on|off]',
    ])
      expect(help(['run', '--help'])).toContain(key);
  });

  it('asks for device help with --device help and --device TYPE,help (QEMU names resolved)', () => {
    expect(parseArgs(['run', '--device', 'help'])).toEqual({ kind: 'device-help' });
    expect(parseArgs(['--device', 'virtio-blk,help'])).toEqual({ kind: 'device-help', type: 'virtio-blk' });
    expect(parseArgs(['run', '--device', 'vhost-scsi-pci,help'])).toEqual({ kind: 'device-help', type: 'vhost-scsi' });
  });

  it("takes QEMU's device names as aliases", () => {
    const c = parseArgs([
      'run',
      '--kernel',
      'k',
      '--device',
      'virtio-blk-pci,file=a',
      '--device',
      'virtio-net-pci,tap=t0',
      '--device',
      'virtio-scsi-pci',
      '--device',
      'vhost-scsi-pci,id=v',
    ]);
    expect(c).toMatchObject({
      config: {
        devices: [
          { type: 'virtio-blk', id: 'virtio-blk0' },
          { type: 'virtio-net' },
          { type: 'virtio-scsi' },
          { type: 'vhost-scsi', id: 'v' },
        ],
      },
    });
  });

  it('parses the plugins subcommand', () => {
    expect(parseArgs(['plugins'])).toEqual({ kind: 'plugins', json: false });
    expect(parseArgs(['plugins', '--json'])).toEqual({ kind: 'plugins', json: true });
  });

  it('parses --run-with (a user name, UID:GID, a chroot) and --qmp mode=', () => {
    const c = parseArgs([
      'run',
      '--kernel',
      'k',
      '--qmp',
      'unix:/tmp/a.sock,mode=0660',
      '--qmp',
      'unix:/tmp/b.sock',
      '--run-with',
      'user=nobody,chroot=/srv/vm',
    ]);
    expect(c).toMatchObject({
      config: { qmp: ['/tmp/a.sock', '/tmp/b.sock'], qmpMode: { '/tmp/a.sock': 0o660 }, runWith: { user: 'nobody', chroot: '/srv/vm' } },
    });
    expect(parseArgs(['run', '--kernel', 'k', '--run-with=user=1000:1001'])).toMatchObject({
      config: { runWith: { uid: 1000, gid: 1001 } },
    });
  });

  it.each([
    [['--run-with', 'nobody'], "--run-with: 'nobody' is not user=USER|UID:GID or chroot=DIR"],
    [['--run-with', 'chroot=/srv'], '--run-with: user=USER|UID:GID is required'],
    [['--run-with', 'user=a,user=b'], "--run-with: 'user=b' is not user=USER|UID:GID or chroot=DIR (each at most once)"],
    [['--run-with', 'user=nobody,chroot=srv'], '--run-with: chroot=srv must be an absolute path'],
    [['--run-with', 'user=0:0'], '--run-with: user=0:0: uid and gid must not be 0'],
    [['--run-with', 'user=1:99999999999'], '--run-with: user=1:99999999999: ids must be below 4294967295'],
    [['--run-with', 'user=../etc'], '--run-with: user=../etc is neither a user name nor UID:GID'],
    [['--qmp', 'unix:/tmp/q,mode=0777'], "--qmp: mode 0777 must keep the owner's rw (0600) and add only read/write bits (at most 0666)"],
    [['--qmp', 'unix:/tmp/q,mode=0400'], "--qmp: mode 0400 must keep the owner's rw (0600)"],
    [['--qmp', 'unix:/tmp/q,mode=rw'], "--qmp: mode 'rw' must be an octal mode such as 0660"],
  ])('refuses %j: %s', (extra, msg) => {
    expect(() => parseArgs(['run', '--kernel', 'k', ...extra])).toThrow(msg);
  });
});

describe('--config FILE.json', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmm-cli-cfg-'));
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
  let n = 0;
  const write = (text: string) => {
    const f = path.join(dir, `vm${n++}.json`);
    fs.writeFileSync(f, text);
    return f;
  };

  it('holds every setting a flag has, by the same name (devices for --device)', () => {
    const f = write(
      JSON.stringify({
        $schema: './vm.schema.json',
        kernel: 'k',
        initrd: 'i',
        cmdline: '--help',
        memory: 512,
        cpus: 2,
        serial: 'none',
        qmp: ['unix:/tmp/a.sock', 'unix:/tmp/b.sock'],
        monitor: 'stdio',
        paused: true,
        'trace-boot': 'on',
        restore: 'snap.bin',
        sandbox: 'on',
        devices: ['virtio-blk-pci,id=d0,file=a', { type: 'virtio-scsi-pci', id: 's0', 'num-queues': 2 }],
      }),
    );
    expect(parseArgs(['run', '--config', f])).toEqual({
      kind: 'run',
      config: {
        kernel: 'k',
        initrd: 'i',
        cmdline: '--help',
        memoryBytes: 512 * 2 ** 20,
        cpus: 2,
        serial: { kind: 'none' },
        qmp: ['/tmp/a.sock', '/tmp/b.sock'],
        monitorStdio: true,
        startPaused: true,
        traceBoot: true,
        restore: 'snap.bin',
        sandbox: true,
        devices: [
          { type: 'virtio-blk', id: 'd0', props: { file: 'a' }, origin: { file: f, path: 'devices[0]' } },
          { type: 'virtio-scsi', id: 's0', props: { 'num-queues': 2 }, origin: { file: f, path: 'devices[1]' } },
        ],
      },
    });
    const g = write(JSON.stringify({ kernel: 'k', incoming: 'unix:/tmp/m.sock,timeout=30', paused: 'off' }));
    expect(parseArgs(['run', '--config', g])).toMatchObject({
      config: { incoming: 'unix:/tmp/m.sock', incomingTimeoutS: 30, startPaused: false },
    });
  });

  it('lets later flags override it and adds later devices after its own', () => {
    const f = write(JSON.stringify({ kernel: 'k', memory: '1G', devices: [{ type: 'virtio-blk', file: 'a' }] }));
    const c = parseArgs(['run', '--config', f, '--memory', '64', '--device', 'virtio-blk,file=b']);
    expect(c).toMatchObject({
      config: { memoryBytes: 64 * 2 ** 20, devices: [{ id: 'virtio-blk0' }, { id: 'virtio-blk1', props: { file: 'b' } }] },
    });
  });

  it.each([
    ['{"kernel": "k", "memory": true}', 'memory: must be a size such as "512M" or "2G", or a number of MiB'],
    ['{"kernel": "k", "memory": 8}', 'memory: 8 is below the minimum of 16M'],
    ['{"kernel": "k", "cpus": 2.5}', 'cpus: must be an integer from 1 to 64'],
    ['{"kernel": 7}', 'kernel: must be a string (a file name)'],
    ['{"kernel": "k", "paused": "maybe"}', 'paused: must be true or false (or "on"/"off")'],
    [
      '{"kernel": "k", "paused": true}',
      'paused: the vCPUs would wait for a cont that no monitor can send; add --qmp unix:PATH or --monitor stdio',
    ],
    ['{"kernel": "k", "monitor": "tcp"}', 'monitor: must be "stdio" or "none"'],
    ['{"kernel": "k", "qmp": ["unix:/tmp/a", "tcp:1"]}', "qmp[1]: 'tcp:1' must be unix:PATH"],
    ['{"kernel": "k", "serial": "tcp:1"}', "serial: 'tcp:1' must be stdio, none or file:PATH"],
    ['{"kernel": "k", "devices": {}}', 'devices: must be an array of devices'],
    ['{"kernel": "k", "devices": [{"type": "virtio-blk", "id": 3}]}', 'devices[0].id: must be a string'],
    [
      '{"kernel": "k", "devices": [{"type": "virtio-blk", "num-queues": [1]}]}',
      'devices[0].num-queues: a device property must be a string, a number or a boolean',
    ],
    ['{"kernel": "k", "devices": [{"file": "a"}]}', 'devices[0].type: must be a string (a device type)'],
    ['{"kernel": "k", "devices": [{"type": "virtio-blk", "id": "1x"}]}', "devices[0].id: id '1x' must start with a letter"],
    ['{"kernel": "k", "devices": ["virtio-blk,novalue"]}', "devices[0] 'virtio-blk,novalue': 'novalue' is not key=value"],
    [
      '{"kernel": "k", "kernal": "x"}',
      "unknown setting 'kernal' (known: kernel, initrd, cmdline, memory, cpus, devices, objects, serial, qmp, monitor, paused, incoming, restore, run-with, stall-ms, sandbox, trace-boot, log-level, log-file, log-format, metrics)",
    ],
    ['{"kernel": "k", "config": "x"}', "unknown setting 'config'"],
    ['[1]', 'the file must hold a JSON object'],
    ['', 'the file is empty'],
    ['{\n  "kernel": "k",\n  "cpus": 2,\n  "devices": [1 2]\n}', "line 4, column 17: ',' or ']' expected, found '2' (not valid JSON)"],
    ['{"kernel": "k",}', "line 1, column 15: a trailing ',' before '}' (not allowed in JSON)"],
    ['{\n  // a comment\n}', 'line 2, column 3: a property name (a "string") expected, found \'/\' (comments are not JSON)'],
    ['{"kernel": "k", "cpus": tru}', "line 1, column 25: a value (object, array, string, number, true, false or null) expected, found 't'"],
    ['{"kernel": "k\u0001"}', 'line 1, column 14: a control character inside a string'],
    ['{"kernel": "k"} x', "line 1, column 17: text after the end of the JSON value: 'x'"],
  ])('%s -> names the file and the JSON path: %s', (text, msg) => {
    const f = write(text);
    expect(() => parseArgs(['run', '--config', f])).toThrow(`--config ${f}: ${msg}`);
  });

  it('refuses a config that is not a regular file or is too large, without reading it', () => {
    expect(() => parseArgs(['run', '--config', '/dev/zero'])).toThrow('--config /dev/zero: not a regular file');
    expect(() => parseArgs(['run', '--config', dir])).toThrow(`--config ${dir}: not a regular file`);
    const big = write(' '.repeat(4 * 2 ** 20 + 1));
    expect(() => parseArgs(['run', '--config', big])).toThrow(`--config ${big}: 4194305 bytes; a config file holds at most 4 MiB`);
  });

  it('locates a syntax error in hostile nesting without exhausting the stack', () => {
    const f = write('['.repeat(100_000));
    expect(() => parseArgs(['run', '--config', f])).toThrow(
      `--config ${f}: line 1, column 514: nested deeper than 512 levels (not valid JSON)`,
    );
  });
});

describe('--object iothread (flags and the config file)', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmm-object-dataplane-'));
  const write = (text: string) => {
    const f = path.join(dir, `c${fs.readdirSync(dir).length}.json`);
    fs.writeFileSync(f, text);
    return f;
  };
  const blk = (extra: string) => ['--device', `virtio-blk,id=d0,file=/x${extra}`];

  it("declares iothreads that devices name; QEMU's JSON form works in the config file", () => {
    const c = parseArgs(['run', '--kernel', 'k', '--object', 'iothread,id=io0', '--object=iothread,id=io1', ...blk(',iothread=io1')]);
    expect(c).toMatchObject({ config: { iothreads: ['io0', 'io1'] } });
    const f = write('{"kernel": "k", "objects": ["iothread,id=a", {"qom-type": "iothread", "id": "b"}, {"type": "iothread", "id": "c"}]}');
    expect(parseArgs(['run', '--config', f])).toMatchObject({ config: { iothreads: ['a', 'b', 'c'] } });
  });

  it('takes poll-max-ns, poll-grow and poll-shrink on iothreads, on the command line and in the config file (default 0: off)', () => {
    const c = parseArgs([
      'run',
      '--kernel',
      'k',
      '--object',
      'iothread,id=io0',
      '--object',
      'iothread,id=io1,poll-max-ns=32768',
      ...blk(''),
    ]);
    expect(c).toMatchObject({
      config: { iothreadPoll: { io0: { maxNs: 0, grow: 0, shrink: 0 }, io1: { maxNs: 32768, grow: 0, shrink: 0 } } },
    });
    const f = write(
      '{"kernel": "k", "objects": ["iothread,id=a,poll-max-ns=65536,poll-grow=4,poll-shrink=2", ' +
        '{"qom-type": "iothread", "id": "b", "poll-max-ns": 1000, "poll-shrink": "3"}]}',
    );
    expect(parseArgs(['run', '--config', f])).toMatchObject({
      config: { iothreadPoll: { a: { maxNs: 65536, grow: 4, shrink: 2 }, b: { maxNs: 1000, grow: 0, shrink: 3 } } },
    });
  });

  it('without any --object iothread, iothread=NAME alone still names a thread (the earlier shorthand)', () => {
    expect(parseArgs(['run', '--kernel', 'k', ...blk(',iothread=io0')])).toMatchObject({
      config: { devices: [{ props: { iothread: 'io0' } }] },
    });
  });

  it.each([
    [
      ['--object', 'iothread,id=io0', ...blk(',iothread=io9')],
      "--device virtio-blk,id=d0: iothread: 'io9' names no --object iothread (declared: io0)",
    ],
    [
      ['--object', 'iothread,id=io0', '--object', 'iothread,id=io1', ...blk(',num-queues=2,iothread-vq-mapping=io0:0;io9:1')],
      "--device virtio-blk,id=d0: iothread-vq-mapping: 'io9' names no --object iothread (declared: io0, io1)",
    ],
    [['--object', 'memory-backend-file,id=m0'], "--object: unknown object type 'memory-backend-file' (known: iothread)"],
    [['--object', 'iothread'], '--object: iothread: id=ID is required'],
    [['--object', 'iothread,id=1x'], "--object: iothread: id '1x' must start with a letter"],
    [
      ['--object', 'iothread,id=io0,poll-ns=0'],
      "--object: iothread: unknown property 'poll-ns' (known: id, poll-max-ns, poll-grow, poll-shrink)",
    ],
    [['--object', 'iothread,id=io0,poll-max-ns=-1'], "--object: iothread: poll-max-ns: '-1' must be an integer from 0 to 1000000000"],
    [['--object', 'iothread,id=io0,poll-max-ns=1000000001'], "poll-max-ns: '1000000001' must be an integer from 0 to 1000000000"],
    [['--object', 'iothread,id=io0,poll-max-ns=99999999999999999999'], "poll-max-ns: '99999999999999999999' must be an integer"],
    [['--object', 'iothread,id=io0,poll-max-ns=32k'], "poll-max-ns: '32k' must be an integer from 0 to 1000000000"],
    [['--object', 'iothread,id=io0,poll-max-ns='], "poll-max-ns: '' must be an integer"],
    [['--object', 'iothread,id=io0,poll-grow=1.5'], "poll-grow: '1.5' must be an integer from 0 to 65536"],
    [['--object', 'iothread,id=io0,poll-shrink=65537'], "poll-shrink: '65537' must be an integer from 0 to 65536"],
    [['--object', 'iothread,id=io0,poll-shrink=0x10'], "poll-shrink: '0x10' must be an integer"],
    [['--object', 'iothread,id=io0,id=io1'], "--object 'iothread,id=io0,id=io1': property 'id' given twice"],
    [['--object', 'iothread,id'], "--object 'iothread,id': 'id' is not key=value"],
    [['--object', 'iothread,__proto__=x'], "'__proto__' is not a property name"],
    [['--object', 'id=io0'], '--object: must start with an object type (iothread)'],
    [['--object', 'iothread,id=io0', '--object', 'iothread,id=io0'], "--object: iothread id 'io0' is used twice"],
  ])('%j -> %s', (argv, msg) => {
    expect(() => parseArgs(['run', '--kernel', 'k', ...argv])).toThrow(msg);
  });

  it.each([
    ['{"kernel": "k", "objects": "iothread,id=a"}', 'objects: must be an array of objects'],
    ['{"kernel": "k", "objects": [7]}', 'objects'],
    ['{"kernel": "k", "objects": [{"qom-type": "iothread"}]}', 'objects[0]: iothread: id=ID is required'],
    [
      '{"kernel": "k", "objects": [{"qom-type": "iothread", "id": "a", "poll-max-ns": -5}]}',
      "objects[0]: iothread: poll-max-ns: '-5' must be",
    ],
    [
      '{"kernel": "k", "objects": [{"qom-type": "iothread", "id": "a", "poll-max-ns": 1e300}]}',
      "objects[0]: iothread: poll-max-ns: '1e+300' must be an integer",
    ],
    [
      '{"kernel": "k", "objects": [{"qom-type": "iothread", "id": "a", "poll-grow": true}]}',
      "objects[0]: iothread: poll-grow: 'true' must be an integer",
    ],
    [
      '{"kernel": "k", "objects": [{"qom-type": "iothread", "id": "a", "poll-shrink": [2]}]}',
      "objects[0]: iothread: poll-shrink: '2' must be an integer",
    ],
    [
      '{"kernel": "k", "objects": [{"qom-type": "iothread", "type": "iothread", "id": "a"}]}',
      "objects[0]: give 'qom-type' or 'type', not both",
    ],
    ['{"kernel": "k", "objects": [{"qom-type": "iothread", "id": 5}]}', "objects[0]: iothread: id '5' must start with a letter"],
    ['{"kernel": "k", "objects": [{"qom-type": 3, "id": "a"}]}', 'objects[0]: must start with an object type (iothread)'],
    [
      '{"kernel": "k", "objects": ["iothread,id=a"], "devices": [{"type": "virtio-blk", "file": "/x", "iothread": "b"}]}',
      "devices[0].iothread: 'b' names no --object iothread (declared: a)",
    ],
  ])('%s -> names the file and the JSON path: %s', (text, msg) => {
    const f = write(text);
    expect(() => parseArgs(['run', '--config', f])).toThrow(`--config ${f}: ${msg}`);
  });
});
