/**
 * The jail's cgroups (docs/security.md#cgroups): for each controller named by
 * a --cgroup KEY=VALUE, a cgroup ID below the parent in the hierarchy that has
 * the controller, cgroup v2 (the unified hierarchy) or v1 (one mount per
 * controller or group of controllers). Hosts have either or both ("hybrid":
 * v1 controllers plus a v2 hierarchy that holds the controllers no v1 mount
 * took). The plan is computed from /proc/self/mountinfo and /proc/self/cgroup
 * texts, so unit tests can give a host of their own.
 */
import * as fs from 'fs';
import * as path from 'path';
import { CgroupController, CgroupSetting } from './args';

export class CgroupError extends Error {}

export interface CgroupMount {
  version: 1 | 2;
  /** Where it is mounted. */
  mountPoint: string;
  /** v1: the controllers of this mount (from its options); v2: empty (read cgroup.controllers). */
  controllers: string[];
}

/** cgroup and cgroup2 mounts of a /proc/self/mountinfo text (mounts of a hierarchy's root only). */
export function cgroupMounts(mountinfo: string): CgroupMount[] {
  const out: CgroupMount[] = [];
  for (const line of mountinfo.split('\n')) {
    const sep = line.indexOf(' - ');
    if (sep < 0) continue;
    const f = line.slice(0, sep).split(' ');
    const [fstype, , superOpts = ''] = line.slice(sep + 3).split(' ');
    if (f.length < 5 || f[3] !== '/' || !f[4].startsWith('/')) continue;
    const mountPoint = f[4].replace(/\\([0-7]{3})/g, (_, o) => String.fromCharCode(parseInt(o, 8)));
    if (fstype === 'cgroup2') out.push({ version: 2, mountPoint, controllers: [] });
    else if (fstype === 'cgroup') out.push({ version: 1, mountPoint, controllers: superOpts.split(',').filter((o) => !o.includes('=')) });
  }
  return out;
}

/** The calling process's cgroup per hierarchy, from a /proc/self/cgroup text: v1 by controller, v2 under ''. */
export function ownCgroups(text: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const line of text.split('\n')) {
    const a = line.indexOf(':');
    const b = line.indexOf(':', a + 1);
    if (a < 0 || b < 0) continue;
    const ctrls = line.slice(a + 1, b);
    const p = line.slice(b + 1);
    if (line.slice(0, a) === '0' && ctrls === '') m.set('', p);
    else for (const c of ctrls.split(',')) if (c) m.set(c, p);
  }
  return m;
}

export interface CgroupPlan {
  version: 1 | 2;
  controllers: CgroupController[];
  /** The jail's cgroup directory. */
  dir: string;
  /** The parent directory (created when missing, removed again if it was and is empty). */
  parentDir: string;
  /** v2: the ancestors (from the hierarchy's root) whose cgroup.subtree_control must enable the controllers. */
  enableIn: string[];
  settings: CgroupSetting[];
}

export interface PlanOptions {
  id: string;
  version?: 1 | 2;
  parent?: string;
  mountinfo: string;
  selfCgroup: string;
  /** Reads a v2 cgroup's cgroup.controllers (default: from the file system). */
  readControllers?: (dir: string) => string[];
}

const readControllersFile = (dir: string): string[] => {
  try {
    return fs.readFileSync(path.join(dir, 'cgroup.controllers'), 'utf8').split(/\s+/).filter(Boolean);
  } catch {
    return [];
  }
};

/** Which hierarchy and directory each --cgroup setting goes to; throws CgroupError naming what is missing. */
export function planCgroups(settings: readonly CgroupSetting[], o: PlanOptions): CgroupPlan[] {
  if (!settings.length) return [];
  const mounts = cgroupMounts(o.mountinfo);
  const own = ownCgroups(o.selfCgroup);
  const read = o.readControllers ?? readControllersFile;
  const v2 = mounts.find((m) => m.version === 2);
  const v2ctrls = v2 ? read(v2.mountPoint) : [];
  const plans: CgroupPlan[] = [];
  for (const s of settings) {
    let version: 1 | 2;
    let mount: CgroupMount | undefined;
    const v1 = mounts.find((m) => m.version === 1 && m.controllers.includes(s.controller));
    if (o.version === 2 || (o.version === undefined && v2 && v2ctrls.includes(s.controller))) {
      if (!v2) throw new CgroupError(`--cgroup ${s.file}: this host has no cgroup v2 hierarchy (cgroup2 mount)`);
      if (!v2ctrls.includes(s.controller))
        throw new CgroupError(
          `--cgroup ${s.file}: the cgroup v2 hierarchy at ${v2.mountPoint} does not have the ${s.controller} controller${v1 ? ` (it is on cgroup v1 at ${v1.mountPoint}: --cgroup-version 1)` : ''}`,
        );
      version = 2;
      mount = v2;
    } else {
      if (!v1)
        throw new CgroupError(
          `--cgroup ${s.file}: no cgroup v1 hierarchy has the ${s.controller} controller${v2ctrls.includes(s.controller) ? ' (cgroup v2 has it: --cgroup-version 2)' : ''}`,
        );
      version = 1;
      mount = v1;
    }
    const ownPath = own.get(version === 2 ? '' : s.controller) ?? '/';
    const parentRel = o.parent ?? path.posix.join(ownPath, 'vmm');
    const parentDir = path.join(mount.mountPoint, parentRel);
    const dir = path.join(parentDir, o.id);
    let plan = plans.find((p) => p.dir === dir);
    if (!plan) {
      const enableIn: string[] = [];
      if (version === 2) {
        // Every ancestor from the root down to the parent hands the controller to its children.
        let d = mount.mountPoint;
        enableIn.push(d);
        for (const part of parentRel.split('/').filter(Boolean)) enableIn.push((d = path.join(d, part)));
      }
      plan = { version, controllers: [], dir, parentDir, enableIn, settings: [] };
      plans.push(plan);
    }
    if (!plan.controllers.includes(s.controller)) plan.controllers.push(s.controller);
    plan.settings.push(s);
  }
  return plans;
}

/** The directories createCgroups made, to remove at the end (deepest first). */
export interface CreatedCgroups {
  plans: CgroupPlan[];
  created: string[];
}

function errText(e: unknown): string {
  const x = e as NodeJS.ErrnoException;
  return x.code ?? x.message;
}

/** Creates the jail's cgroups and writes the limits (before the VMM is placed in them). */
export function createCgroups(plans: CgroupPlan[]): CreatedCgroups {
  const out: CreatedCgroups = { plans, created: [] };
  try {
    for (const p of plans) {
      for (const d of [p.parentDir, p.dir]) {
        if (fs.existsSync(d)) {
          if (d === p.dir) throw new CgroupError(`cgroup ${p.dir} exists already (another jail with this id?)`);
          continue;
        }
        try {
          fs.mkdirSync(d, { recursive: true });
        } catch (e) {
          throw new CgroupError(`cannot create cgroup ${d}: ${errText(e)}`);
        }
        out.created.unshift(d);
      }
      if (p.version === 2) {
        for (const d of p.enableIn) {
          const f = path.join(d, 'cgroup.subtree_control');
          try {
            fs.writeFileSync(f, p.controllers.map((c) => `+${c}`).join(' '));
          } catch (e) {
            const busy = (e as NodeJS.ErrnoException).code === 'EBUSY';
            throw new CgroupError(
              `cgroup v2: enabling ${p.controllers.join(', ')} in ${f}: ${errText(e)}${busy ? ' (that cgroup has processes of its own; give --parent-cgroup a cgroup that has none)' : ''}`,
            );
          }
        }
      }
      for (const s of p.settings) {
        const f = path.join(p.dir, s.file);
        if (!fs.existsSync(f))
          throw new CgroupError(
            `--cgroup ${s.file}: cgroup v${p.version} has no such file in ${p.dir} (${p.version === 1 ? 'v1 names: memory.limit_in_bytes, cpu.cfs_quota_us, cpu.shares, pids.max' : 'v2 names: memory.max, memory.high, cpu.max, cpu.weight, pids.max'})`,
          );
        try {
          fs.writeFileSync(f, s.value);
        } catch (e) {
          throw new CgroupError(`--cgroup ${s.file}=${s.value}: the kernel refused it: ${errText(e)}`);
        }
      }
    }
  } catch (e) {
    removeCgroups(out);
    throw e;
  }
  return out;
}

/** Moves process `pid` into every planned cgroup. */
export function placeInCgroups(c: CreatedCgroups, pid: number): void {
  for (const p of c.plans) {
    try {
      fs.writeFileSync(path.join(p.dir, 'cgroup.procs'), String(pid));
    } catch (e) {
      throw new CgroupError(`placing the VMM (pid ${pid}) in cgroup ${p.dir}: ${errText(e)}`);
    }
  }
}

/** Removes the cgroups createCgroups made (a parent only when empty); once the processes in them are gone. */
export function removeCgroups(c: CreatedCgroups): string[] {
  const left: string[] = [];
  for (const d of c.created) {
    try {
      fs.rmdirSync(d);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && !(code === 'EBUSY' && !c.plans.some((p) => p.dir === d)) && code !== 'ENOTEMPTY') left.push(`${d}: ${code}`);
    }
  }
  return left;
}
