/**
 * `vmm jail`: its arguments (one per line, before an optional \x01) through
 * parseJailArgs, then the VM's run options through jailedVm (the refusals of
 * what a jail cannot give the VMM; a --config FILE is left out: it would name
 * host files); and the text after \x01, split at a second \x01, as
 * /proc/self/mountinfo and /proc/self/cgroup for the cgroup planner
 * (cgroupMounts, ownCgroups, planCgroups with v2 controllers from the input).
 * Expected: ConfigError and CgroupError, whose messages say what is wrong.
 */
import { ConfigError } from '../src/config';
import { parseJailArgs } from '../src/jail/args';
import { CgroupError, cgroupMounts, ownCgroups, planCgroups } from '../src/jail/cgroups';
import { createdInJail, jailedVm } from '../src/jail/jail';

export const maxLen = 4096;
export const dictionary = [
  '--id',
  '--uid',
  '--gid',
  '--user',
  '--chroot-base-dir',
  '--netns',
  '--new-netns',
  '--cgroup',
  '--cgroup-version',
  '--parent-cgroup',
  '--keep',
  '--config',
  '--',
  '--kernel',
  '--qmp',
  '--run-with',
  '--incoming',
  '--serial',
  'file:',
  '--log-file',
  '--metrics',
  '--device',
  'virtio-blk,id=d0,file=',
  'virtio-net,id=n0,fd=3',
  'memory.limit_in_bytes=',
  'memory.max=',
  'pids.max=',
  'cpu.max=',
  'cpu.cfs_quota_us=',
  'cgroup.procs',
  '65534',
  '/srv/jailer',
  ' - cgroup2 cgroup2 rw',
  ' - cgroup cgroup rw,memory',
  ' - cgroup cgroup rw,cpu,cpuacct',
  '0::/',
  '4:memory:/a/b',
  '\x01',
  '\n',
  '/',
  '..',
];

export function fuzz(data: Buffer): void {
  const text = data.toString('latin1');
  const [argText, mountinfo = '', selfCgroup = ''] = text.split('\x01');
  const mounts = cgroupMounts(mountinfo);
  for (const m of mounts) if (!m.mountPoint) throw new Error('a mount without a mount point');
  ownCgroups(selfCgroup);
  const cmd = parseJailArgs(argText.split('\n'));
  if (cmd.kind !== 'jail') return;
  const a = cmd.args;
  if (!/^[A-Za-z0-9-]{1,64}$/.test(a.id)) throw new Error(`id '${a.id}' was accepted`);
  for (const c of a.cgroups)
    if (c.file.includes('/') || c.value.includes('\n')) throw new Error(`cgroup ${c.file}=${c.value} was accepted`);
  const plans = planCgroups(a.cgroups, {
    id: a.id,
    version: a.cgroupVersion,
    parent: a.parentCgroup,
    mountinfo,
    selfCgroup,
    readControllers: () => selfCgroup.split(/\s+/).slice(0, 8),
  });
  for (const p of plans) if (!p.dir.endsWith(`/${a.id}`)) throw new Error(`cgroup ${p.dir} is not the jail's`);
  if (a.runArgs.includes('--config') || a.runArgs.some((x) => x.startsWith('--config='))) return;
  // What the jailed VMM creates must stay in the jail's /run.
  for (const [what, p] of createdInJail(jailedVm(a)))
    if (!/^\/run\/[^/]+$/.test(p) || p === '/run/..' || p === '/run/.') throw new Error(`${what} at ${p} was accepted`);
}

export function isExpected(e: unknown): boolean {
  return e instanceof ConfigError || e instanceof CgroupError;
}
