import { ConfigError } from '../config';
import { DEFAULT_CHROOT_BASE, JAIL_HELP, parseJailArgs } from './args';
import { createdInJail, jailedVm, mayAccess } from './jail';

const jail = (...a: string[]) => {
  const c = parseJailArgs(a);
  if (c.kind !== 'jail') throw new Error('not a jail command');
  return c.args;
};
const VM = ['--', '--kernel', 'k.elf'];

describe('vmm jail arguments', () => {
  it('takes the id, the user, the base directory, namespaces, cgroups and the VM after --', () => {
    const a = jail(
      '--id',
      'vm-7',
      '--uid',
      '1000',
      '--gid',
      '1001',
      '--netns',
      '/var/run/netns/n',
      '--cgroup',
      'memory.limit_in_bytes=512M',
      '--cgroup',
      'cpu.max=50000 100000',
      '--cgroup-version',
      '2',
      '--parent-cgroup',
      '/vmm',
      '--keep',
      '--config',
      'vm.json',
      '--',
      '--memory',
      '128M',
    );
    expect(a).toEqual({
      id: 'vm-7',
      uid: 1000,
      gid: 1001,
      user: undefined,
      chrootBaseDir: DEFAULT_CHROOT_BASE,
      netns: '/var/run/netns/n',
      newNetns: false,
      cgroups: [
        { controller: 'memory', file: 'memory.limit_in_bytes', value: '512M' },
        { controller: 'cpu', file: 'cpu.max', value: '50000 100000' },
      ],
      cgroupVersion: 2,
      parentCgroup: '/vmm',
      keep: true,
      runArgs: ['--config', 'vm.json', '--memory', '128M'],
    });
    expect(jail('--id', 'x', '--user', 'nobody', '--new-netns', '--chroot-base-dir', '/srv/j/', ...VM)).toMatchObject({
      user: 'nobody',
      newNetns: true,
      chrootBaseDir: '/srv/j',
      runArgs: ['--kernel', 'k.elf'],
    });
    expect(parseJailArgs(['--help'])).toEqual({ kind: 'help', text: JAIL_HELP });
  });

  it.each([
    [[...VM], '--id ID is required'],
    [['--id', '../etc', '--uid', '1', '--gid', '1', ...VM], "--id '../etc': use 1-64 letters, digits and '-'"],
    [['--id', 'a'.repeat(65), '--uid', '1', '--gid', '1', ...VM], 'use 1-64 letters'],
    [['--id', 'a/b', '--uid', '1', '--gid', '1', ...VM], 'use 1-64 letters'],
    [['--id', 'a', ...VM], 'the user is required'],
    [['--id', 'a', '--uid', '1', ...VM], 'the user is required'],
    [['--id', 'a', '--uid', '0', '--gid', '1', ...VM], '--uid 0: the VMM must not run as uid 0'],
    [['--id', 'a', '--uid', '-1', '--gid', '1', ...VM], "--uid '-1': must be a number"],
    [['--id', 'a', '--uid', '4294967295', '--gid', '1', ...VM], 'must be a number from 1 to 4294967294'],
    [['--id', 'a', '--uid', '1', '--gid', '1', '--user', 'x', ...VM], 'not both'],
    [['--id', 'a', '--user', 'no body', ...VM], 'is not a user name'],
    [['--id', 'a', '--uid', '1', '--gid', '1'], 'the VM is missing'],
    [['--id', 'a', '--id', 'b', '--uid', '1', '--gid', '1', ...VM], '--id given twice'],
    [['--id', 'a', '--uid', '1', '--gid', '1', '--chroot-base-dir', 'rel', ...VM], 'must be an absolute path'],
    [['--id', 'a', '--uid', '1', '--gid', '1', '--netns', '/n', '--new-netns', ...VM], 'cannot be combined'],
    [['--id', 'a', '--uid', '1', '--gid', '1', '--cgroup', 'pids.max', ...VM], 'expected KEY=VALUE'],
    [['--id', 'a', '--uid', '1', '--gid', '1', '--cgroup', 'blkio.weight=10', ...VM], "controller 'blkio' is not one of cpu, memory, pids"],
    [['--id', 'a', '--uid', '1', '--gid', '1', '--cgroup', '../../x=1', ...VM], 'is not a cgroup file name'],
    [['--id', 'a', '--uid', '1', '--gid', '1', '--cgroup', 'pids.max=1\n2', ...VM], 'the value must be'],
    [['--id', 'a', '--uid', '1', '--gid', '1', '--cgroup', 'memory.procs=1', ...VM], 'is not a limit'],
    [['--id', 'a', '--uid', '1', '--gid', '1', '--cgroup', 'pids.max=1', '--cgroup', 'pids.max=2', ...VM], 'pids.max given twice'],
    [['--id', 'a', '--uid', '1', '--gid', '1', '--cgroup-version', '3', ...VM], 'must be 1 or 2'],
    [['--id', 'a', '--uid', '1', '--gid', '1', '--parent-cgroup', '/a/../b', ...VM], 'no . or .. components'],
    [['--id', 'a', '--uid', '1', '--gid', '1', '--keep=yes', ...VM], '--keep takes no value'],
    [['--id', 'a', '--uid', '1', '--gid', '1', '--bogus', ...VM], "unknown option '--bogus'"],
    [['--id', 'a', '--uid', '1', '--gid', '1', 'stray', ...VM], "unexpected argument 'stray'"],
    [['--id'], '--id: missing value'],
  ])('%j is refused: %s', (argv, msg) => {
    expect(() => parseJailArgs(argv)).toThrow(ConfigError);
    expect(() => parseJailArgs(argv)).toThrow(msg);
  });

  it.each([
    [['--qmp', 'unix:/tmp/q.sock'], '--qmp is not available under the jailer: the jailer serves QMP at BASE/vmm/ID/root/run/qmp.sock'],
    [['--run-with', 'user=nobody'], '--run-with is not available under the jailer'],
    [['--incoming', 'unix:/tmp/i.sock'], '--incoming unix: /tmp/i.sock: the path is inside the jail and must be /run/NAME'],
    [['--serial', 'file:/tmp/s'], '--serial file: /tmp/s: the path is inside the jail and must be /run/NAME'],
    [['--serial', 'file:serial.log'], '--serial file: serial.log: the path is inside the jail and must be /run/NAME'],
    [['--serial', 'file:/run/../etc/passwd'], '--serial file: /run/../etc/passwd: the path is inside the jail'],
    [['--serial', 'file:/run/..'], '--serial file: /run/..: the path is inside the jail'],
    [['--serial', 'file:/run/a/b'], '--serial file: /run/a/b: the path is inside the jail'],
    [['--serial', 'file:/run/qmp.sock'], "--serial file: /run/qmp.sock: that path is the QMP socket's"],
    [['--serial', 'file:/run/x', '--log-file', '/run/x'], "--log-file /run/x: that path is --serial file:'s"],
    [['--log-file', '/tmp/l'], '--log-file /tmp/l: the path is inside the jail'],
    [['--metrics', 'file:/tmp/m'], '--metrics file: /tmp/m: the path is inside the jail'],
    [['--memory', 'lots'], '--memory'],
  ])("the VM's %j is refused: %s", (run, msg) => {
    expect(() => jailedVm(jail('--id', 'a', '--uid', '1', '--gid', '1', ...VM, ...run))).toThrow(msg);
  });

  it("what the VMM creates is named in the jail's /run, and kept as given", () => {
    const run = ['--incoming', 'unix:/run/in.sock,timeout=9', '--serial', 'file:/run/serial.log', '--log-file', '/run/vmm.log'];
    const vm = jailedVm(jail('--id', 'a', '--uid', '1', '--gid', '1', ...VM, ...run, '--metrics', 'file:/run/m.prom'));
    expect(vm).toMatchObject({ incoming: 'unix:/run/in.sock', incomingTimeoutS: 9, serial: { kind: 'file', path: '/run/serial.log' } });
    expect(createdInJail(vm)).toEqual([
      ['incoming migration', '/run/in.sock'],
      ['serial', '/run/serial.log'],
      ['log', '/run/vmm.log'],
      ['metrics', '/run/m.prom'],
    ]);
  });

  it('checks access as the jail user would have it, by owner, group and others', () => {
    const f = { uid: 1000, gid: 50, mode: 0o640 };
    expect(mayAccess(f, 1000, [1000], true)).toBe(true);
    expect(mayAccess(f, 2000, [50], false)).toBe(true);
    expect(mayAccess(f, 2000, [50], true)).toBe(false);
    expect(mayAccess(f, 2000, [2000], false)).toBe(false);
    expect(mayAccess({ uid: 0, gid: 0, mode: 0o666 }, 7, [7], true)).toBe(true);
  });
});
