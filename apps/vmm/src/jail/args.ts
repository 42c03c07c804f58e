/**
 * `vmm jail` arguments (docs/security.md#the-jailer): the jail's own flags,
 * then the VM as `vmm run` takes it (`--config FILE`, and/or run flags after
 * `--`). Pure parsing, no file system access: the fuzz target drives it.
 */
import { parseArgs as tokenize } from 'util';
import { ConfigError } from '../config';

export const DEFAULT_CHROOT_BASE = '/srv/jailer';

/** The cgroup controllers a jail may limit (docs/security.md). */
export const CGROUP_CONTROLLERS = ['cpu', 'memory', 'pids'] as const;
export type CgroupController = (typeof CGROUP_CONTROLLERS)[number];

export interface CgroupSetting {
  controller: CgroupController;
  /** The interface file, e.g. memory.limit_in_bytes (v1) or memory.max (v2). */
  file: string;
  value: string;
}

export interface JailArgs {
  id: string;
  /** Set with --uid/--gid, or resolved later from `user`. */
  uid?: number;
  gid?: number;
  user?: string;
  chrootBaseDir: string;
  /** A network namespace to join (e.g. /var/run/netns/NAME). */
  netns?: string;
  newNetns: boolean;
  cgroups: CgroupSetting[];
  /** 1, 2, or undefined: per controller, v2 where the unified hierarchy has it, else v1. */
  cgroupVersion?: 1 | 2;
  /** The parent of the jail's cgroup, from the hierarchy's root (default: the jailer's own cgroup, then vmm). */
  parentCgroup?: string;
  keep: boolean;
  /** The VM: arguments for `vmm run` (a --config FILE first when given). */
  runArgs: string[];
}

export const JAIL_HELP = `Usage: vmm jail --id ID (--uid UID --gid GID | --user NAME) [options]
                (--config FILE.json | -- RUN-OPTIONS... | both)

Runs a VM confined as Firecracker's jailer does: creates BASE/vmm/ID/root,
links the kernel, initrd, restore file and device files of the VM's config
into it (hard links; bind mounts across file systems), creates /dev/kvm,
/dev/net/tun, /dev/null and /dev/urandom owned by the user, enters new mount,
PID, IPC and UTS namespaces (and a network namespace if asked), applies the
cgroup limits, pivots into the root and runs the VMM there as the user with
--sandbox on. QMP is served at BASE/vmm/ID/root/run/qmp.sock (0600, the
user's). What the VMM creates is named inside the jail as /run/NAME and
appears at BASE/vmm/ID/root/run/NAME: --incoming unix:/run/NAME (a live
migration into the jail), --serial file:/run/NAME, --log-file /run/NAME,
--metrics file:/run/NAME. The jail directory (with those files) and the
cgroups are removed when the VMM exits, unless --keep.

Options:
  --id ID                the jail's name: 1-64 letters, digits and '-'
  --uid UID, --gid GID   the user the VMM runs as (not 0)
  --user NAME            or a user of the host's user database
  --chroot-base-dir DIR  default ${DEFAULT_CHROOT_BASE}
  --netns PATH           join this network namespace (e.g. /var/run/netns/NAME)
  --new-netns            a new, empty network namespace
  --cgroup KEY=VALUE     write VALUE to the cgroup file KEY (repeatable), for
                         the cpu, memory and pids controllers, e.g.
                         memory.limit_in_bytes=512M (v1), memory.max=512M (v2),
                         pids.max=64, cpu.cfs_quota_us=50000 (v1),
                         cpu.max="50000 100000" (v2)
  --cgroup-version 1|2   the hierarchy to use (default: v2 for a controller
                         the unified hierarchy has, else v1)
  --parent-cgroup PATH   parent of the jail's cgroup (default: the jailer's
                         own cgroup, then vmm)
  --keep                 leave the jail directory (not the cgroups) after exit
  --config FILE.json     the VM's config, as vmm run --config takes it
  -- RUN-OPTIONS         the VM's vmm run options (after the config's)
  -h, --help             show this help

Exit status: the VMM's; 1 when the jail cannot be made (one line saying why),
2 on a usage error.
`;

/** Firecracker's rule for ids: letters, digits and '-', at most 64. */
const ID_RE = /^[A-Za-z0-9-]{1,64}$/;
const VALUE_RE = /^[A-Za-z0-9 _.:+-]{1,64}$/;

function parseId(flag: string, v: string, name: string): number {
  if (!/^\d{1,10}$/.test(v) || Number(v) > 0xfffffffe) throw new ConfigError(`jail: ${flag} '${v}': must be a number from 1 to 4294967294`);
  const n = Number(v);
  if (n === 0) throw new ConfigError(`jail: ${flag} 0: the VMM must not run as ${name} 0 in the jail`);
  return n;
}

function parseCgroup(v: string): CgroupSetting {
  const eq = v.indexOf('=');
  if (eq <= 0) throw new ConfigError(`jail: --cgroup '${v}': expected KEY=VALUE (e.g. pids.max=64)`);
  const file = v.slice(0, eq);
  const value = v.slice(eq + 1);
  const m = /^([a-z]+)\.[a-z][a-z0-9_.]*$/.exec(file);
  if (!m || file.includes('..')) throw new ConfigError(`jail: --cgroup '${v}': '${file}' is not a cgroup file name (CONTROLLER.FILE)`);
  if (!(CGROUP_CONTROLLERS as readonly string[]).includes(m[1]))
    throw new ConfigError(`jail: --cgroup '${v}': controller '${m[1]}' is not one of ${CGROUP_CONTROLLERS.join(', ')}`);
  if (file.endsWith('.procs') || file === `${m[1]}.tasks`)
    throw new ConfigError(`jail: --cgroup '${v}': ${file} is not a limit (the jailer places the VMM itself)`);
  if (!VALUE_RE.test(value)) throw new ConfigError(`jail: --cgroup '${v}': the value must be 1-64 letters, digits, spaces or _ . : + -`);
  return { controller: m[1] as CgroupController, file, value };
}

export type JailCommand = { kind: 'help'; text: string } | { kind: 'jail'; args: JailArgs };

/** Parses `vmm jail ARGS...` (ARGS without the word jail). Throws ConfigError. */
export function parseJailArgs(argv: readonly string[]): JailCommand {
  const dash = argv.indexOf('--');
  const own = dash < 0 ? [...argv] : argv.slice(0, dash);
  const after = dash < 0 ? [] : argv.slice(dash + 1);
  const options = {
    id: { type: 'string' },
    uid: { type: 'string' },
    gid: { type: 'string' },
    user: { type: 'string' },
    'chroot-base-dir': { type: 'string' },
    netns: { type: 'string' },
    'new-netns': { type: 'boolean' },
    cgroup: { type: 'string' },
    'cgroup-version': { type: 'string' },
    'parent-cgroup': { type: 'string' },
    keep: { type: 'boolean' },
    config: { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  } as const;
  const { tokens } = tokenize({ args: own, options, strict: false, allowPositionals: true, tokens: true });
  const seen = new Set<string>();
  const a: Partial<JailArgs> & { cgroups: CgroupSetting[]; config?: string } = { cgroups: [], newNetns: false, keep: false };
  for (const t of tokens) {
    if (t.kind === 'positional')
      throw new ConfigError(`jail: unexpected argument '${t.value}' (the VM's run options go after --; see vmm jail --help)`);
    if (t.kind !== 'option') continue;
    if (!Object.hasOwn(options, t.name)) throw new ConfigError(`jail: unknown option '${t.rawName}' (see vmm jail --help)`);
    if (t.name === 'help') return { kind: 'help', text: JAIL_HELP };
    const isBool = options[t.name as keyof typeof options].type === 'boolean';
    if (isBool) {
      if (t.value !== undefined) throw new ConfigError(`jail: ${t.rawName} takes no value`);
    } else if (t.value === undefined) throw new ConfigError(`jail: ${t.rawName}: missing value`);
    if (t.name !== 'cgroup') {
      if (seen.has(t.name)) throw new ConfigError(`jail: ${t.rawName} given twice`);
      seen.add(t.name);
    }
    const v = t.value ?? '';
    switch (t.name) {
      case 'id':
        if (!ID_RE.test(v)) throw new ConfigError(`jail: --id '${v}': use 1-64 letters, digits and '-' (it names a directory)`);
        a.id = v;
        break;
      case 'uid':
        a.uid = parseId('--uid', v, 'uid');
        break;
      case 'gid':
        a.gid = parseId('--gid', v, 'gid');
        break;
      case 'user':
        if (!/^[A-Za-z_][A-Za-z0-9_.-]{0,31}$/.test(v)) throw new ConfigError(`jail: --user '${v}' is not a user name`);
        a.user = v;
        break;
      case 'chroot-base-dir':
      case 'netns':
      case 'parent-cgroup':
      case 'config': {
        if (v.includes('\0') || v.length > 4000) throw new ConfigError(`jail: ${t.rawName}: not a usable path`);
        if (t.name !== 'config' && !v.startsWith('/')) throw new ConfigError(`jail: ${t.rawName} '${v}': must be an absolute path`);
        if (t.name === 'chroot-base-dir') a.chrootBaseDir = v.replace(/\/+$/, '') || '/';
        else if (t.name === 'netns') a.netns = v;
        else if (t.name === 'parent-cgroup') {
          if (v.split('/').some((p) => p === '..' || p === '.'))
            throw new ConfigError(`jail: --parent-cgroup '${v}': no . or .. components`);
          a.parentCgroup = v;
        } else a.config = v;
        break;
      }
      case 'new-netns':
        a.newNetns = true;
        break;
      case 'keep':
        a.keep = true;
        break;
      case 'cgroup':
        a.cgroups.push(parseCgroup(v));
        break;
      case 'cgroup-version':
        if (v !== '1' && v !== '2') throw new ConfigError(`jail: --cgroup-version '${v}': must be 1 or 2`);
        a.cgroupVersion = Number(v) as 1 | 2;
        break;
    }
  }
  if (a.id === undefined) throw new ConfigError('jail: --id ID is required');
  if (a.user !== undefined && (a.uid !== undefined || a.gid !== undefined))
    throw new ConfigError('jail: give --user NAME or --uid and --gid, not both');
  if (a.user === undefined && (a.uid === undefined || a.gid === undefined))
    throw new ConfigError('jail: the user is required: --uid UID --gid GID, or --user NAME');
  if (a.netns !== undefined && a.newNetns) throw new ConfigError('jail: --netns and --new-netns cannot be combined');
  const files = new Set<string>();
  for (const c of a.cgroups) {
    if (files.has(c.file)) throw new ConfigError(`jail: --cgroup ${c.file} given twice`);
    files.add(c.file);
  }
  if (a.config === undefined && !after.length)
    throw new ConfigError("jail: the VM is missing: --config FILE.json, or vmm run's options after --");
  const runArgs = [...(a.config !== undefined ? ['--config', a.config] : []), ...after];
  return {
    kind: 'jail',
    args: {
      id: a.id,
      uid: a.uid,
      gid: a.gid,
      user: a.user,
      chrootBaseDir: a.chrootBaseDir ?? DEFAULT_CHROOT_BASE,
      netns: a.netns,
      newNetns: a.newNetns!,
      cgroups: a.cgroups,
      cgroupVersion: a.cgroupVersion,
      parentCgroup: a.parentCgroup,
      keep: a.keep!,
      runArgs,
    },
  };
}
