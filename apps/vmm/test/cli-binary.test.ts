// The `vmm` command line as an operator meets it: --version, help, device help,
// the config schema, QEMU device names, and bad input named by flag, file or JSON path.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { describeKvm } from '@tsvmm/kvm-native/testing';
import { jsonKeyOf, SETTINGS } from '../src/config';
import { GUEST_ELF, lineValues, requireGuestKit, ROOT, runCli } from './guest-kit';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmm-cli-slice-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function writeJson(name: string, text: string): string {
  const f = path.join(tmp, name);
  fs.writeFileSync(f, text);
  return f;
}

describe('vmm: version, help and the device catalogue', () => {
  it('--version prints the package version', async () => {
    const { version } = JSON.parse(fs.readFileSync(path.join(ROOT, 'apps/vmm/package.json'), 'utf8'));
    const r = await runCli(['--version']);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(`vmm ${version} (node ${process.versions.node})\n`);
  });

  it('each command has its own --help', async () => {
    const run = await runCli(['run', '--help']);
    expect(run.code).toBe(0);
    expect(run.stdout).toMatch(/^Usage: vmm run \[options\]/);
    expect(run.stdout).toContain('-S, --paused[=on|off]');
    const plugins = await runCli(['plugins', '--help']);
    expect(plugins.stdout).toMatch(/^Usage: vmm plugins \[--json\]/);
  });

  it('--device help lists every device type with its plugin and QEMU name', async () => {
    const r = await runCli(['--device', 'help']);
    expect(r.code).toBe(0);
    const rows = r.stdout
      .split('\n')
      .filter((l) => l.startsWith('  '))
      .map((l) => l.trim().split(/\s+/)[0]);
    expect(rows).toEqual(['scsi-hd', 'vhost-scsi', 'virtio-blk', 'virtio-net', 'virtio-scsi']);
    expect(r.stdout).toMatch(/virtio-blk +virtio block device.*\[@tsvmm\/virtio-blk; QEMU name virtio-blk-pci\]/);
    expect(r.stdout).toMatch(/vhost-scsi .*QEMU name vhost-scsi-pci\]/);
  });

  it('--device virtio-blk,help lists its properties with type, default and description', async () => {
    const r = await runCli(['run', '--device', 'virtio-blk,help']);
    expect(r.code).toBe(0);
    const row = (name: string) =>
      r.stdout
        .split('\n')
        .find((l) => l.trim().startsWith(`${name} `))
        ?.trim()
        .split(/ {2,}/);
    expect(row('file')).toEqual(['file', 'path', 'required', 'raw image file or block device']);
    expect(row('num-queues')).toEqual(['num-queues', 'int 1..16', 'default 1', 'request queues (VIRTIO_BLK_F_MQ when > 1)']);
    expect(row('readonly')).toEqual(['readonly', 'on|off', 'default off', 'offer VIRTIO_BLK_F_RO and refuse writes']);
    expect(row('cache')).toEqual(['cache', 'writeback|none', 'default writeback', 'writeback (page cache) or none (O_DIRECT)']);
  });

  it.each([
    ['virtio-blk-pci', 'virtio-blk'],
    ['virtio-net-pci', 'virtio-net'],
    ['virtio-scsi-pci', 'virtio-scsi'],
    ['vhost-scsi-pci', 'vhost-scsi'],
  ])("--device %s,help (QEMU's name) describes %s", async (alias, type) => {
    const r = await runCli(['--device', `${alias},help`]);
    expect(r.code).toBe(0);
    expect(r.stdout.split('\n')[0]).toMatch(new RegExp(`^${type}: `));
    expect(r.stdout).toContain(`QEMU name ${alias}`);
  });

  it('vmm config-schema publishes a JSON Schema with every setting and every device property', async () => {
    const r = await runCli(['config-schema']);
    expect(r.code).toBe(0);
    const schema = JSON.parse(r.stdout);
    expect(schema.$schema).toBe('https://json-schema.org/draft/2020-12/schema');
    // Every setting of the flag table the config file can hold, and the editors' $schema key.
    const keys = SETTINGS.map(jsonKeyOf).filter((k): k is string => k !== undefined);
    expect(keys).toEqual(expect.arrayContaining(['kernel', 'devices', 'memory', 'qmp', 'paused', 'incoming', 'restore', 'trace-boot']));
    expect(Object.keys(schema.properties).sort()).toEqual(['$schema', ...keys].sort());
    expect(schema.additionalProperties).toBe(false);
    const blk = schema.properties.devices.items.anyOf.find((v: { properties?: { type?: { enum?: string[] } } }) =>
      v.properties?.type?.enum?.includes('virtio-blk'),
    );
    expect(blk.properties.type.enum).toEqual(['virtio-blk', 'virtio-blk-pci']);
    expect(blk.required).toEqual(['type', 'file']);
    expect(blk.properties['num-queues'].default).toBe(1);
    expect(blk.properties['num-queues'].description).toBe('request queues (VIRTIO_BLK_F_MQ when > 1)');
  });
});

describe('vmm: each bad input is named by its flag, file or JSON path', () => {
  it.each([
    [['run', '--kernel', 'k', '--paused=no', '--trace-boot=maybe'], 2, "vmm: --trace-boot: 'maybe' must be on or off"],
    [['run', '--kernel', 'k', '-S=on'], 2, "vmm: unknown option '-='"],
    [['run', '--kernel', 'k', '--memory', '8'], 2, 'vmm: --memory: 8 is below the minimum of 16M'],
    [
      ['run', '--kernel', 'k', '--device', 'virtio-blk-pci,id=d0,file=x,bogus=1'],
      2,
      "vmm: --device virtio-blk,id=d0: unknown property 'bogus' (known: file,",
    ],
    [
      ['run', '--kernel', 'k', '--qmp', 'unix:/nonexistent-cli-slice/q.sock'],
      1,
      'vmm: --qmp unix:/nonexistent-cli-slice/q.sock: directory /nonexistent-cli-slice does not exist',
    ],
    [
      ['run', '--kernel', 'k', '--serial', 'file:/nonexistent-cli-slice/s.log'],
      1,
      'vmm: --serial file:/nonexistent-cli-slice/s.log: directory /nonexistent-cli-slice does not exist',
    ],
    [['plugins', '--all'], 2, "vmm: plugins: unknown option '--all'"],
    [
      ['run', '--device', 'nosuch-pci,help'],
      2,
      "vmm: --device nosuch-pci: unknown device type 'nosuch-pci' (available: scsi-hd, vhost-scsi, virtio-blk, virtio-net, virtio-scsi)",
    ],
    [['run', '--device', ',help'], 2, "vmm: --device ',help': must start with a device TYPE"],
    [['config-schema', 'extra'], 2, "vmm: config-schema: unexpected argument 'extra'"],
  ])('%j', async (args, code, message) => {
    const r = await runCli(args);
    expect(r.stderr).toContain(message);
    expect(r.stderr).not.toContain('    at ');
    expect(r.code).toBe(code);
  });

  it.each([
    [
      'bad-prop.json',
      '{"kernel": "k", "devices": [{"type": "virtio-blk-pci", "file": "x", "num-queues": 99}]}',
      2,
      'devices[0].num-queues: must be at most 16, got 99',
    ],
    [
      'bad-type.json',
      '{"kernel": "k", "devices": [{"type": "virtio-blkk"}]}',
      2,
      "devices[0].type: unknown device type 'virtio-blkk' (available: ",
    ],
    [
      'bad-string-dev.json',
      '{"kernel": "k", "devices": ["virtio-scsi,num-queues=0"]}',
      2,
      'devices[0].num-queues: must be at least 1, got "0"',
    ],
    ['bad-key.json', '{"kernel": "k", "paused": "perhaps"}', 2, 'paused: must be true or false'],
    ['bad-syntax.json', '{\n  "kernel": "k"\n  "cpus": 2\n}', 2, "line 3, column 3: ',' or '}' expected, found '\"' (not valid JSON)"],
  ])('--config %s', async (name, text, code, message) => {
    const f = writeJson(name, text);
    const r = await runCli(['run', '--config', f]);
    expect(r.stderr).toContain(`vmm: --config ${f}: ${message}`);
    expect(r.stderr).not.toContain('--device');
    expect(r.code).toBe(code);
  });
});

describeKvm("vmm run: QEMU's device names, a config with every kind of value, switches set off", () => {
  beforeAll(requireGuestKit);

  it('boots the guest kit with virtio-blk-pci and virtio-scsi-pci from a config, memory in MiB and a --cmdline that starts with --', async () => {
    const disk = path.join(tmp, 'disk.img');
    fs.writeFileSync(disk, Buffer.alloc(1 << 20));
    const cfg = writeJson(
      'alias.json',
      JSON.stringify({
        kernel: GUEST_ELF,
        memory: 64,
        devices: [{ type: 'virtio-blk-pci', id: 'd0', file: disk }, 'virtio-scsi-pci,id=s0'],
      }),
    );
    const r = await runCli(['run', '--config', cfg, '--cmdline', '--help test=pci-scan', '--paused=off', '--trace-boot=no']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(lineValues(r.stdout, 'guest-kit: cmdline=')[0].cmdline).toBe('--help test=pci-scan');
    // 64 MiB: the RAM above 1 MiB ends at 64 MiB (memory: 64 is MiB, not bytes)
    expect(lineValues(r.stdout, 'guest-kit: mem ').find((m) => m.base === '0x100000')).toEqual({
      base: '0x100000',
      size: '0x3f00000',
      type: '1',
    });
    const ids = lineValues(r.stdout, 'pci: 00:')
      .filter((l) => l.vendor === '0x1af4')
      .map((l) => l.device);
    expect(ids.sort()).toEqual(['0x1042', '0x1048']); // virtio-blk and virtio-scsi (modern: 0x1040 + device ID)
    expect(r.stdout).toContain('guest-kit: PASS test=pci-scan');
  });

  it("blames a config device's missing file on the config's JSON path, not on --device", async () => {
    const cfg = writeJson(
      'bad-file.json',
      JSON.stringify({ kernel: GUEST_ELF, devices: [{ type: 'virtio-blk', file: '/nonexistent-cli-slice/d.img' }] }),
    );
    const r = await runCli(['run', '--config', cfg]);
    expect(r.stderr).toBe(`vmm: --config ${cfg}: devices[0]: file=/nonexistent-cli-slice/d.img: no such file\n`);
    expect(r.code).toBe(1);
  });
});
