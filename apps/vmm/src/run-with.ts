/**
 * --run-with user=USER|UID:GID[,chroot=DIR] (docs/security.md#run-with): once
 * the VMM holds everything it needs (/dev/kvm and the VM, images, TAPs, the
 * serial file, the monitor and --incoming sockets, a --restore file), it
 * chroots if asked, then sets groups, gid and uid and drops every capability.
 *
 * The order matters: the user is looked up before the chroot (the host's
 * user database is outside it); the bounding set is emptied while the VMM
 * still has CAP_SETPCAP; setresuid comes last, and going from uid 0 to
 * another uid empties every thread's permitted and effective sets. glibc
 * applies setgroups/setresgid/setresuid to every thread (Node's libuv pool
 * and V8's threads exist already); the bounding and ambient sets are the
 * calling thread's, and matter only at execve.
 */
import * as fs from 'fs';
import {
  chroot,
  clearCapabilities,
  dropCapabilityBounding,
  lookupUser,
  setAllGids,
  setAllUids,
  setGroups,
  threadCredentials,
  UserIds,
} from '@tsvmm/kvm-native';
import { RunWith } from './config';
import { confinement } from './host-files';

export class RunWithError extends Error {}

/** The ids --run-with names: a user from the user database, or UID:GID (groups: just GID). */
export function resolveRunWith(r: RunWith): UserIds {
  if (r.uid !== undefined && r.gid !== undefined) return { uid: r.uid, gid: r.gid, groups: [r.gid] };
  const u = lookupUser(r.user);
  if (!u) throw new RunWithError(`--run-with user=${r.user}: no such user (give a user name from the host's user database, or UID:GID)`);
  if (u.uid === 0 || u.gid === 0) throw new RunWithError(`--run-with user=${r.user}: that user has uid or gid 0, which would drop nothing`);
  return u;
}

/**
 * Drops to `r` (see the file comment); throws RunWithError saying which step
 * failed and why. `sockets`: the unix sockets the VMM listens on (QMP,
 * --incoming), made over to the new user first (lchown, mode kept at 0600
 * or its mode=), so the unprivileged VMM can remove them when it ends and a
 * peer VMM running as the same user can connect to its --incoming socket.
 */
export function dropPrivileges(r: RunWith, log: (m: string) => void, sockets: readonly string[] = []): UserIds {
  const ids = resolveRunWith(r);
  for (const s of sockets) {
    try {
      fs.lchownSync(s, ids.uid, ids.gid);
    } catch (e) {
      throw new RunWithError(`--run-with: handing socket ${s} to uid ${ids.uid}: ${(e as Error).message}`);
    }
  }
  const step = (what: string, f: () => void) => {
    try {
      f();
    } catch (e) {
      const code = (e as { code?: string }).code;
      const hint =
        code === 'EPERM'
          ? ' (dropping privileges needs a VMM started as root, or with CAP_SETUID, CAP_SETGID, CAP_SETPCAP and, for chroot, CAP_SYS_CHROOT)'
          : '';
      throw new RunWithError(`--run-with: ${what}: ${(e as Error).message}${hint}`);
    }
  };
  if (r.chroot) {
    const dir = r.chroot;
    let st: fs.Stats;
    try {
      st = fs.statSync(dir);
    } catch (e) {
      throw new RunWithError(`--run-with chroot=${dir}: ${(e as Error).message}`);
    }
    if (!st.isDirectory()) throw new RunWithError(`--run-with chroot=${dir}: not a directory`);
    step(`chroot ${dir}`, () => chroot(dir));
    confinement.chroot = dir;
  }
  step(`setgroups ${ids.groups.join(',')}`, () => setGroups(ids.groups));
  step(`setresgid ${ids.gid}`, () => setAllGids(ids.gid));
  step('dropping the capability bounding set', () => dropCapabilityBounding());
  step(`setresuid ${ids.uid}`, () => setAllUids(ids.uid));
  step('clearing capabilities', () => clearCapabilities());
  verify(ids);
  log(
    `running as uid ${ids.uid}, gid ${ids.gid}, groups ${ids.groups.join(',')}${r.chroot ? `, chroot ${r.chroot}` : ''}, no capabilities`,
  );
  return ids;
}

/** Fails closed: every thread must have the new ids and no capability left. */
function verify(ids: UserIds): void {
  if (process.getuid!() !== ids.uid || process.geteuid!() !== ids.uid || process.getgid!() !== ids.gid || process.getegid!() !== ids.gid)
    throw new RunWithError(`--run-with: the ids did not change (uid ${process.getuid!()}, gid ${process.getgid!()})`);
  let tasks;
  try {
    tasks = threadCredentials('self');
  } catch {
    return; // no /proc (inside a chroot without one): the ids above are checked, setresuid emptied the sets
  }
  for (const t of tasks) {
    if (t.uid.some((u) => u !== ids.uid) || t.gid.some((g) => g !== ids.gid) || t.capEff !== 0n || t.capPrm !== 0n)
      throw new RunWithError(`--run-with: thread ${t.tid} kept uids ${t.uid.join(' ')} / capabilities ${t.capEff.toString(16)}`);
  }
}
