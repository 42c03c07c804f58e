/**
 * Process credentials: the syscalls a VMM needs to give up its privileges
 * (chroot, groups, gid, uid, capabilities) and to read what it holds. Node has
 * process.setuid/setgid but neither setgroups with arbitrary ids, chroot nor
 * capabilities. Generic plumbing: which to call, and when, is the caller's.
 */
import * as fs from 'fs';
import { loadNative } from './native';

export interface UserIds {
  uid: number;
  gid: number;
  /** Supplementary groups (with the primary gid). */
  groups: number[];
}

/** The uid, gid and groups of a user in the host's user database (/etc/passwd, NSS); undefined when unknown. */
export function lookupUser(name: string): UserIds | undefined {
  return loadNative().lookupUser(name) ?? undefined;
}

export function chroot(dir: string): void {
  loadNative().chroot(dir);
}

export function setGroups(gids: number[]): void {
  loadNative().setGroups(gids);
}

/** setresgid(gid, gid, gid) for every thread. */
export function setAllGids(gid: number): void {
  loadNative().setResGid(gid, gid, gid);
}

/** setresuid(uid, uid, uid) for every thread: from root to another uid, this also empties every thread's permitted and effective capabilities. */
export function setAllUids(uid: number): void {
  loadNative().setResUid(uid, uid, uid);
}

/** Empties the calling thread's capability bounding and ambient sets (needs CAP_SETPCAP: call it before setAllUids). */
export function dropCapabilityBounding(): void {
  loadNative().dropCapabilityBounding();
}

/** Empties the calling thread's effective, permitted and inheritable capabilities. */
export function clearCapabilities(): void {
  loadNative().clearCapabilities();
}

export interface TaskCredentials {
  tid: number;
  uid: number[];
  gid: number[];
  groups: number[];
  capInh: bigint;
  capPrm: bigint;
  capEff: bigint;
  capBnd: bigint;
  capAmb: bigint;
}

/** Parses the Uid/Gid/Groups/Cap* lines of a /proc/PID/status or /proc/PID/task/TID/status text. */
export function parseStatusCredentials(tid: number, text: string): TaskCredentials {
  const line = (k: string) => new RegExp(`^${k}:\\s*(.*)$`, 'm').exec(text)?.[1]?.trim() ?? '';
  const nums = (k: string) => line(k).split(/\s+/).filter(Boolean).map(Number);
  const cap = (k: string) => BigInt(`0x${line(k) || '0'}`);
  return {
    tid,
    uid: nums('Uid'),
    gid: nums('Gid'),
    groups: nums('Groups'),
    capInh: cap('CapInh'),
    capPrm: cap('CapPrm'),
    capEff: cap('CapEff'),
    capBnd: cap('CapBnd'),
    capAmb: cap('CapAmb'),
  };
}

/** The credentials of every thread of process `pid` (/proc/PID/task/TID/status). */
export function threadCredentials(pid: number | 'self' = 'self'): TaskCredentials[] {
  const dir = `/proc/${pid}/task`;
  const out: TaskCredentials[] = [];
  for (const t of fs.readdirSync(dir)) {
    try {
      out.push(parseStatusCredentials(Number(t), fs.readFileSync(`${dir}/${t}/status`, 'utf8')));
    } catch {
      // the thread ended meanwhile
    }
  }
  return out;
}
