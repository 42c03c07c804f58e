/**
 * `--sandbox on`: the seccomp-BPF policy. The allow-list is data
 * (seccomp-<arch>.json, each entry with its reason); this module checks it,
 * assembles it into a classic-BPF program and hands that to kvm-native's
 * generic plumbing (no_new_privs + SECCOMP_FILTER_FLAG_TSYNC). See
 * docs/security.md, section "Seccomp sandbox".
 */
import { loadNative } from '@tsvmm/kvm-native';
import policyX86_64 from './seccomp-x86_64.json';
import syscallsX86_64 from './syscalls-x86_64.json';

export interface ValueEntry {
  name: string;
  /** A number ("0x..." or decimal), or "pid": the VMM's own process id, filled in when the filter is built. */
  value: string;
  reason: string;
}

export interface AllowEntry {
  name: string;
  reason: string;
  /** With one of the argument checks below: the argument's index (its low 32 bits are compared). */
  arg?: number;
  /** Allowed only when the argument is one of these (ioctl requests, prctl options, kill's pid). */
  allowValues?: ValueEntry[];
  /** Allowed unless the argument is one of these. */
  denyValues?: ValueEntry[];
  /** Allowed only when these bits are all set in the argument (clone's CLONE_THREAD). */
  requireBits?: ValueEntry;
}

export interface ErrnoEntry {
  name: string;
  errno: string;
  reason: string;
}

export interface SeccompPolicy {
  arch: string;
  /** AUDIT_ARCH_* of the architecture: any other calling convention is killed. */
  auditArch: string;
  allow: AllowEntry[];
  errno: ErrnoEntry[];
  alwaysDenied: { name: string; reason: string }[];
}

export interface SyscallTable {
  arch: string;
  syscalls: Record<string, number>;
}

/** The policy and syscall table for this host's architecture, or why there is none. */
export function hostPolicy(arch: string = process.arch): { policy: SeccompPolicy; table: SyscallTable } {
  if (arch === 'x64') return { policy: policyX86_64 as SeccompPolicy, table: syscallsX86_64 as SyscallTable };
  throw new SandboxError(`--sandbox on: no seccomp allow-list for ${arch} (apps/vmm/src/sandbox has x86_64 only)`);
}

export class SandboxError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SandboxError';
  }
}

const ERRNO: Record<string, number> = { EPERM: 1, ENOENT: 2, EACCES: 13, EINVAL: 22, ENOSYS: 38 };

// Classic BPF (linux/filter.h, linux/bpf_common.h) and seccomp (linux/seccomp.h).
const BPF_LD_W_ABS = 0x20;
const BPF_JMP_JA = 0x05;
const BPF_JEQ_K = 0x15;
const BPF_JGE_K = 0x35;
const BPF_JSET_K = 0x45;
const BPF_RET_K = 0x06;
export const SECCOMP_RET_KILL_PROCESS = 0x80000000;
export const SECCOMP_RET_TRAP = 0x00030000;
export const SECCOMP_RET_ERRNO = 0x00050000;
export const SECCOMP_RET_ALLOW = 0x7fff0000;
/** Offsets in struct seccomp_data. */
const DATA_NR = 0;
const DATA_ARCH = 4;
const dataArgLow = (i: number) => 16 + 8 * i; // little-endian: the low word first
/** x32 system calls have this bit set in nr on x86_64. */
const X32_SYSCALL_BIT = 0x40000000;

interface Insn {
  code: number;
  jt: number;
  jf: number;
  k: number;
  /** A `ja` to this label, resolved at the end. */
  to?: string;
}

/** A tiny assembler: conditional jumps only ever skip one instruction; far jumps are `ja` to a label. */
class Asm {
  readonly insns: Insn[] = [];
  private readonly labels = new Map<string, number>();
  private n = 0;
  label(): string {
    return `L${this.n++}`;
  }
  place(l: string): void {
    this.labels.set(l, this.insns.length);
  }
  ld(offset: number): void {
    this.insns.push({ code: BPF_LD_W_ABS, jt: 0, jf: 0, k: offset });
  }
  ret(k: number): void {
    this.insns.push({ code: BPF_RET_K, jt: 0, jf: 0, k: k >>> 0 });
  }
  ja(to: string): void {
    this.insns.push({ code: BPF_JMP_JA, jt: 0, jf: 0, k: 0, to });
  }
  /** if (A op k) goto to. */
  jumpIf(code: number, k: number, to: string): void {
    this.insns.push({ code, jt: 0, jf: 1, k: k >>> 0 });
    this.ja(to);
  }
  bytes(): Uint8Array {
    const out = new Uint8Array(this.insns.length * 8);
    const dv = new DataView(out.buffer);
    this.insns.forEach((ins, i) => {
      let k = ins.k;
      if (ins.to !== undefined) {
        const at = this.labels.get(ins.to);
        if (at === undefined) throw new Error(`seccomp assembler: label ${ins.to} never placed`);
        k = at - (i + 1);
        if (k < 0) throw new Error('seccomp assembler: backward jump');
      }
      // struct sock_filter { __u16 code; __u8 jt; __u8 jf; __u32 k; } in host (little-endian) order
      dv.setUint16(i * 8, ins.code, true);
      dv.setUint8(i * 8 + 2, ins.jt);
      dv.setUint8(i * 8 + 3, ins.jf);
      dv.setUint32(i * 8 + 4, k >>> 0, true);
    });
    return out;
  }
}

function parseValue(v: ValueEntry, pid: number, where: string): number {
  if (v.value === 'pid') return pid;
  const n = /^0x[0-9a-f]+$/i.test(v.value) ? parseInt(v.value, 16) : /^\d+$/.test(v.value) ? Number(v.value) : NaN;
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff)
    throw new SandboxError(`${where}: value '${v.value}' of ${v.name} is not a 32-bit number`);
  return n;
}

/** Checks a policy against its syscall table; returns the problems (empty when sound). */
export function checkPolicy(policy: SeccompPolicy, table: SyscallTable): string[] {
  const problems: string[] = [];
  const seen = new Set<string>();
  const listed = [...policy.allow.map((e) => e.name), ...policy.errno.map((e) => e.name)];
  for (const name of listed) {
    if (!Object.hasOwn(table.syscalls, name)) problems.push(`${name}: not a system call on ${table.arch}`);
    if (seen.has(name)) problems.push(`${name}: listed twice`);
    seen.add(name);
  }
  for (const d of policy.alwaysDenied) if (seen.has(d.name)) problems.push(`${d.name}: always denied, yet listed as allowed`);
  for (const e of [...policy.allow, ...policy.errno, ...policy.alwaysDenied]) if (!e.reason) problems.push(`${e.name}: no reason given`);
  for (const e of policy.allow) {
    const checks = [e.allowValues, e.denyValues, e.requireBits].filter((x) => x !== undefined).length;
    if (checks > 1) problems.push(`${e.name}: more than one argument check`);
    if (checks === 1 && (e.arg === undefined || e.arg < 0 || e.arg > 5)) problems.push(`${e.name}: an argument check needs arg 0-5`);
    for (const v of [...(e.allowValues ?? []), ...(e.denyValues ?? []), ...(e.requireBits ? [e.requireBits] : [])])
      if (!v.reason) problems.push(`${e.name} ${v.name}: no reason given`);
  }
  for (const e of policy.errno) if (!Object.hasOwn(ERRNO, e.errno)) problems.push(`${e.name}: unknown errno ${e.errno}`);
  return problems;
}

/**
 * Assembles the filter: wrong architecture or x32 → KILL_PROCESS; listed
 * calls → ALLOW (after their argument check) or ERRNO; everything else →
 * TRAP, which the SIGSYS reporter turns into a log line and an exit.
 * Syscall numbers are searched as a binary tree (about log2(n) compares).
 */
export function buildFilter(policy: SeccompPolicy, table: SyscallTable, pid: number): Uint8Array {
  const problems = checkPolicy(policy, table);
  if (problems.length) throw new SandboxError(`seccomp policy for ${policy.arch}: ${problems.join('; ')}`);
  const a = new Asm();
  const KILL = a.label();
  const TRAP = a.label();
  const ALLOW = a.label();
  a.ld(DATA_ARCH);
  a.jumpIf(BPF_JEQ_K, parseInt(policy.auditArch, 16), 'arch-ok');
  a.ja(KILL);
  a.place('arch-ok');
  a.ld(DATA_NR);
  a.jumpIf(BPF_JGE_K, X32_SYSCALL_BIT, KILL);

  interface Rule {
    nr: number;
    label: string;
    emit: () => void;
  }
  const rules: Rule[] = [];
  for (const e of policy.allow) {
    const where = `${policy.arch} ${e.name}`;
    const label = e.arg === undefined ? ALLOW : a.label();
    rules.push({
      nr: table.syscalls[e.name],
      label,
      emit: () => {
        if (e.arg === undefined) return;
        a.place(label);
        a.ld(dataArgLow(e.arg));
        if (e.allowValues) {
          for (const v of e.allowValues) a.jumpIf(BPF_JEQ_K, parseValue(v, pid, where), ALLOW);
          a.ja(TRAP);
        } else if (e.denyValues) {
          for (const v of e.denyValues) a.jumpIf(BPF_JEQ_K, parseValue(v, pid, where), TRAP);
          a.ja(ALLOW);
        } else if (e.requireBits) {
          const bits = parseValue(e.requireBits, pid, where);
          // JSET tests any bit: one bit per requireBits entry keeps "all set" exact.
          if (bits === 0 || (bits & (bits - 1)) !== 0) throw new SandboxError(`${where}: requireBits must be a single bit`);
          a.jumpIf(BPF_JSET_K, bits, ALLOW);
          a.ja(TRAP);
        }
      },
    });
  }
  for (const e of policy.errno) {
    const label = a.label();
    rules.push({
      nr: table.syscalls[e.name],
      label,
      emit: () => {
        a.place(label);
        a.ret(SECCOMP_RET_ERRNO | ERRNO[e.errno]);
      },
    });
  }
  rules.sort((x, y) => x.nr - y.nr);
  const tree = (rs: Rule[]): void => {
    if (rs.length <= 4) {
      for (const r of rs) a.jumpIf(BPF_JEQ_K, r.nr, r.label);
      a.ja(TRAP);
      return;
    }
    const mid = rs.length >> 1;
    const hi = a.label();
    a.jumpIf(BPF_JGE_K, rs[mid].nr, hi);
    tree(rs.slice(0, mid));
    a.place(hi);
    tree(rs.slice(mid));
  };
  tree(rules);
  for (const r of rules) r.emit();
  a.place(ALLOW);
  a.ret(SECCOMP_RET_ALLOW);
  a.place(TRAP);
  a.ret(SECCOMP_RET_TRAP);
  a.place(KILL);
  a.ret(SECCOMP_RET_KILL_PROCESS);
  const prog = a.bytes();
  if (prog.length / 8 > 4096) throw new SandboxError(`seccomp filter has ${prog.length / 8} instructions (at most 4096)`);
  return prog;
}

/** The first words of the line the SIGSYS reporter writes before the syscall's name. */
export const SANDBOX_LOG_PREFIX = 'vmm: sandbox: system call ';
export const SANDBOX_LOG_SUFFIX = ' is not allowed under --sandbox on; the VMM stops';

/**
 * Sets no_new_privs and installs the filter on every thread of the process
 * (TSYNC); threads created later inherit it. Irreversible.
 */
export function enterSandbox(): { instructions: number } {
  const { policy, table } = hostPolicy();
  const prog = buildFilter(policy, table, process.pid);
  const names: string[] = [];
  for (const [name, nr] of Object.entries(table.syscalls)) names[nr] = name;
  const native = loadNative();
  native.seccompSetTrapReporter(
    SANDBOX_LOG_PREFIX,
    SANDBOX_LOG_SUFFIX,
    Array.from(names, (n) => n ?? ''),
    'vmm: sandbox: arguments ',
  );
  native.seccompInstall(prog);
  return { instructions: prog.length / 8 };
}

/** The exit status of a VMM stopped by the sandbox (128 + SIGSYS). */
export const SANDBOX_EXIT_STATUS = 159;
