// Seed inputs for jail.fuzz.ts (written by `node tools/fuzz/src/make-seeds.js apps/vmm jail`).
const input = (args: string[], mountinfo = '', cgroup = '') => Buffer.from([args.join('\n'), mountinfo, cgroup].join('\x01'), 'latin1');

const HYBRID = [
  '30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755',
  '31 30 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu',
  '32 30 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory',
  '33 30 0:29 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids',
  '34 30 0:30 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw',
].join('\n');
const V2 = '40 25 0:35 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate';

export function seeds(): Record<string, Uint8Array> {
  return {
    'uid-run': input([
      '--id',
      'vm-1',
      '--uid',
      '65534',
      '--gid',
      '65534',
      '--',
      '--kernel',
      'k.elf',
      '--device',
      'virtio-blk,id=d0,file=d.img',
    ]),
    'user-cgroups-v1': input(
      ['--id', 'a', '--user', 'nobody', '--cgroup', 'memory.limit_in_bytes=512M', '--cgroup', 'pids.max=64', '--', '--kernel', 'k'],
      HYBRID,
      '4:memory:/a/b\n8:pids:/\n0::/',
    ),
    'cgroups-v2': input(
      [
        '--id',
        'b',
        '--uid',
        '1',
        '--gid',
        '2',
        '--cgroup-version',
        '2',
        '--cgroup',
        'cpu.max=50000 100000',
        '--parent-cgroup',
        '/vmm',
        '--',
        '--kernel',
        'k',
      ],
      V2,
      'cpu memory pids',
    ),
    netns: input([
      '--id',
      'c',
      '--uid',
      '1',
      '--gid',
      '1',
      '--netns',
      '/var/run/netns/x',
      '--keep',
      '--',
      '--kernel',
      'k',
      '--device',
      'virtio-net,id=n0,fd=3',
    ]),
    refused: input(['--id', 'd', '--uid', '1', '--gid', '1', '--', '--kernel', 'k', '--qmp', 'unix:/q.sock', '--serial', 'file:/x']),
  };
}
