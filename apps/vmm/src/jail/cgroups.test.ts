import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { CgroupSetting } from './args';
import { CgroupError, cgroupMounts, createCgroups, ownCgroups, planCgroups, removeCgroups } from './cgroups';

// A hybrid host (this project's CI host): v1 cpu, memory and pids, and a v2 hierarchy holding hugetlb only.
const HYBRID = [
  '30 25 0:26 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw,mode=755',
  '31 30 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct',
  '32 30 0:28 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory',
  '33 30 0:29 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids',
  '34 30 0:30 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd',
  '35 30 0:31 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw',
  '36 25 0:32 /sub /mnt/elsewhere rw - cgroup cgroup rw,pids',
].join('\n');
const SELF = '5:cpu,cpuacct:/\n4:memory:/api/x\n3:pids:/\n1:name=systemd:/\n0::/';
const V2 = '40 25 0:35 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate';

const set = (file: string, value: string): CgroupSetting => ({
  controller: file.split('.')[0] as CgroupSetting['controller'],
  file,
  value,
});

describe('cgroup planning', () => {
  it('reads the hierarchies and the own cgroup of each', () => {
    expect(cgroupMounts(HYBRID)).toEqual([
      { version: 1, mountPoint: '/sys/fs/cgroup/cpu,cpuacct', controllers: ['rw', 'cpu', 'cpuacct'] },
      { version: 1, mountPoint: '/sys/fs/cgroup/memory', controllers: ['rw', 'memory'] },
      { version: 1, mountPoint: '/sys/fs/cgroup/pids', controllers: ['rw', 'pids'] },
      { version: 1, mountPoint: '/sys/fs/cgroup/systemd', controllers: ['rw', 'xattr'] },
      { version: 2, mountPoint: '/sys/fs/cgroup/unified', controllers: [] },
    ]);
    expect([...ownCgroups(SELF)]).toEqual([
      ['cpu', '/'],
      ['cpuacct', '/'],
      ['memory', '/api/x'],
      ['pids', '/'],
      ['name=systemd', '/'],
      ['', '/'],
    ]);
  });

  it('hybrid host: v1 for controllers v2 lacks, below the own cgroup; one directory per v1 mount', () => {
    const plans = planCgroups([set('memory.limit_in_bytes', '1G'), set('cpu.shares', '512'), set('cpu.cfs_quota_us', '50000')], {
      id: 'vm1',
      mountinfo: HYBRID,
      selfCgroup: SELF,
      readControllers: () => ['hugetlb'],
    });
    expect(plans.map((p) => [p.version, p.dir, p.settings.map((s) => s.file)])).toEqual([
      [1, '/sys/fs/cgroup/memory/api/x/vmm/vm1', ['memory.limit_in_bytes']],
      [1, '/sys/fs/cgroup/cpu,cpuacct/vmm/vm1', ['cpu.shares', 'cpu.cfs_quota_us']],
    ]);
    expect(() =>
      planCgroups([set('memory.max', '1G')], {
        id: 'v',
        version: 2,
        mountinfo: HYBRID,
        selfCgroup: SELF,
        readControllers: () => ['hugetlb'],
      }),
    ).toThrow(
      'the cgroup v2 hierarchy at /sys/fs/cgroup/unified does not have the memory controller (it is on cgroup v1 at /sys/fs/cgroup/memory: --cgroup-version 1)',
    );
  });

  it('v2 host: the unified hierarchy, with the controllers enabled from its root down to the parent', () => {
    const plans = planCgroups([set('pids.max', '64'), set('memory.max', '256M')], {
      id: 'vm2',
      parent: '/machines/vmm',
      mountinfo: V2,
      selfCgroup: '0::/user.slice',
      readControllers: () => ['cpu', 'memory', 'pids'],
    });
    expect(plans).toEqual([
      {
        version: 2,
        controllers: ['pids', 'memory'],
        dir: '/sys/fs/cgroup/machines/vmm/vm2',
        parentDir: '/sys/fs/cgroup/machines/vmm',
        enableIn: ['/sys/fs/cgroup', '/sys/fs/cgroup/machines', '/sys/fs/cgroup/machines/vmm'],
        settings: [set('pids.max', '64'), set('memory.max', '256M')],
      },
    ]);
    expect(() =>
      planCgroups([set('pids.max', '1')], { id: 'v', version: 1, mountinfo: V2, selfCgroup: '0::/', readControllers: () => ['pids'] }),
    ).toThrow('no cgroup v1 hierarchy has the pids controller (cgroup v2 has it: --cgroup-version 2)');
    expect(() => planCgroups([set('pids.max', '1')], { id: 'v', mountinfo: '', selfCgroup: '' })).toThrow(CgroupError);
  });

  it('creates the cgroup, writes the limits, refuses a file the hierarchy lacks, and removes what it made', () => {
    // A v2-like tree in a temporary directory: the interface files exist once "the kernel" (this test) makes them.
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'vmm-jail-cg-'));
    try {
      const [plan] = planCgroups([set('pids.max', '64')], {
        id: 'vm3',
        parent: '/vmm',
        mountinfo: `1 0 0:1 / ${root} rw - cgroup2 cgroup2 rw`,
        selfCgroup: '0::/',
        readControllers: () => ['pids'],
      });
      fs.mkdirSync(plan.dir, { recursive: true });
      fs.writeFileSync(path.join(plan.dir, 'pids.max'), 'max');
      expect(() => createCgroups([plan])).toThrow(`cgroup ${plan.dir} exists already`);
      fs.rmSync(plan.dir, { recursive: true });
      // Without the interface file: the error names the v2 spellings, and the cgroup made is removed again.
      expect(() => createCgroups([plan])).toThrow('--cgroup pids.max: cgroup v2 has no such file in');
      expect(fs.existsSync(plan.dir)).toBe(false);
      expect(fs.readFileSync(path.join(root, 'vmm/cgroup.subtree_control'), 'utf8')).toBe('+pids');
    } finally {
      fs.rmSync(root, { recursive: true, force: true });
    }
  });

  it('on this host: a real v1 hierarchy gets the jail cgroup and its limit, then loses both', () => {
    const mountinfo = fs.readFileSync('/proc/self/mountinfo', 'utf8');
    if (process.getuid!() !== 0 || !cgroupMounts(mountinfo).some((m) => m.version === 1 && m.controllers.includes('pids')))
      throw new Error('this test needs root and a cgroup v1 pids hierarchy (as the CI host has)');
    const id = `jailtest-${process.pid}`;
    const plans = planCgroups([set('pids.max', '77')], {
      id,
      version: 1,
      mountinfo,
      selfCgroup: fs.readFileSync('/proc/self/cgroup', 'utf8'),
    });
    const made = createCgroups(plans);
    expect(fs.readFileSync(path.join(plans[0].dir, 'pids.max'), 'utf8').trim()).toBe('77');
    expect(removeCgroups(made)).toEqual([]);
    expect(fs.existsSync(plans[0].dir)).toBe(false);
  });
});
