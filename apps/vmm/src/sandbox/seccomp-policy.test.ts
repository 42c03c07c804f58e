import * as fs from 'fs';
import { uapi } from '@tsvmm/kvm-native';
import {
  buildFilter,
  checkPolicy,
  hostPolicy,
  SandboxError,
  SeccompPolicy,
  SECCOMP_RET_ALLOW,
  SECCOMP_RET_ERRNO,
  SECCOMP_RET_KILL_PROCESS,
  SECCOMP_RET_TRAP,
} from './seccomp';
import policyX86_64 from './seccomp-x86_64.json';
import syscallsX86_64 from './syscalls-x86_64.json';

const policy = policyX86_64 as SeccompPolicy;
const table = syscallsX86_64 as { arch: string; syscalls: Record<string, number> };
const nr = (name: string) => table.syscalls[name];
const AUDIT_ARCH_X86_64 = 0xc000003e;
const PID = 4242;

/** Runs a classic-BPF seccomp program over one struct seccomp_data, as the kernel would. */
function evaluate(prog: Uint8Array, call: { nr: number; arch?: number; args?: number[] }): number {
  const data = Buffer.alloc(64);
  data.writeInt32LE(call.nr, 0);
  data.writeUInt32LE(call.arch ?? AUDIT_ARCH_X86_64, 4);
  (call.args ?? []).forEach((a, i) => data.writeBigUInt64LE(BigInt(a), 16 + 8 * i));
  const dv = new DataView(prog.buffer, prog.byteOffset, prog.byteLength);
  let acc = 0;
  for (let pc = 0; pc < prog.length / 8; pc++) {
    const code = dv.getUint16(pc * 8, true);
    const jt = dv.getUint8(pc * 8 + 2);
    const jf = dv.getUint8(pc * 8 + 3);
    const k = dv.getUint32(pc * 8 + 4, true);
    switch (code) {
      case 0x20:
        acc = data.readUInt32LE(k);
        break;
      case 0x05:
        pc += k;
        break;
      case 0x15:
        pc += acc === k ? jt : jf;
        break;
      case 0x35:
        pc += acc >= k ? jt : jf;
        break;
      case 0x45:
        pc += (acc & k) !== 0 ? jt : jf;
        break;
      case 0x06:
        return k;
      default:
        throw new Error(`unexpected BPF opcode 0x${code.toString(16)} at ${pc}`);
    }
  }
  throw new Error('fell off the end of the program');
}

describe('seccomp allow-list (x86_64)', () => {
  const prog = buildFilter(policy, table, PID);
  const ioctl = (req: number) => evaluate(prog, { nr: nr('ioctl'), args: [3, req] });

  it('the syscall table is the one in the installed Linux UAPI header', () => {
    const header = '/usr/include/x86_64-linux-gnu/asm/unistd_64.h';
    const fromHeader: Record<string, number> = {};
    for (const m of fs.readFileSync(header, 'utf8').matchAll(/^#define __NR_(\w+) (\d+)$/gm)) fromHeader[m[1]] = Number(m[2]);
    expect(table.syscalls).toEqual(fromHeader);
  });

  it('has no problems: every name a system call, listed once, with a reason; nothing always denied is allowed', () => {
    expect(checkPolicy(policy, table)).toEqual([]);
    expect(policy.allow.length).toBeGreaterThan(50);
    expect(policy.alwaysDenied.map((d) => d.name)).toEqual(
      expect.arrayContaining([
        'execve',
        'execveat',
        'fork',
        'vfork',
        'ptrace',
        'mount',
        'bpf',
        'kexec_load',
        'kexec_file_load',
        'init_module',
        'finit_module',
        'delete_module',
      ]),
    );
  });

  it('KVM ioctl request numbers are the ones kvm-native uses', () => {
    const ioctls = policy.allow.find((e) => e.name === 'ioctl')!.allowValues!;
    const known = uapi as unknown as Record<string, number>;
    let compared = 0;
    for (const v of ioctls.filter((x) => x.name.startsWith('KVM_'))) {
      if (known[v.name] === undefined) continue;
      expect([v.name, parseInt(v.value, 16)]).toEqual([v.name, known[v.name]]);
      compared++;
    }
    expect(compared).toBeGreaterThan(10);
  });

  it('allows the calls Node and the VMM make after start-up', () => {
    for (const name of ['read', 'write', 'futex', 'epoll_pwait', 'mmap', 'openat', 'pwritev', 'accept4', 'io_uring_enter', 'exit_group'])
      expect([name, evaluate(prog, { nr: nr(name) })]).toEqual([name, SECCOMP_RET_ALLOW]);
  });

  it('stops execve, fork and the other always-denied calls (TRAP: the reporter logs and exits)', () => {
    for (const d of policy.alwaysDenied) expect([d.name, evaluate(prog, { nr: nr(d.name) })]).toEqual([d.name, SECCOMP_RET_TRAP]);
    expect(evaluate(prog, { nr: 9999 })).toBe(SECCOMP_RET_TRAP);
  });

  it('ioctl: KVM, TAP and tty requests by number, nothing else', () => {
    expect(ioctl(uapi.KVM_RUN)).toBe(SECCOMP_RET_ALLOW);
    expect(ioctl(uapi.KVM_IRQFD)).toBe(SECCOMP_RET_ALLOW);
    expect(ioctl(uapi.KVM_GET_DIRTY_LOG)).toBe(SECCOMP_RET_ALLOW);
    expect(ioctl(0x400454d0 /* TUNSETOFFLOAD */)).toBe(SECCOMP_RET_ALLOW);
    expect(ioctl(uapi.KVM_CREATE_VM)).toBe(SECCOMP_RET_TRAP); // no new VMs once sandboxed
    expect(ioctl(0x5412 /* TIOCSTI: push input into a terminal */)).toBe(SECCOMP_RET_TRAP);
    expect(ioctl(0x400454ca /* TUNSETIFF: attach another interface */)).toBe(SECCOMP_RET_TRAP);
  });

  it('clone makes threads only; clone3 gets ENOSYS so glibc falls back to clone', () => {
    const CLONE_THREAD_FLAGS = 0x3d0f00; // glibc pthread_create
    const FORK_FLAGS = 0x1200011; // glibc fork: CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID | SIGCHLD
    expect(evaluate(prog, { nr: nr('clone'), args: [CLONE_THREAD_FLAGS] })).toBe(SECCOMP_RET_ALLOW);
    expect(evaluate(prog, { nr: nr('clone'), args: [FORK_FLAGS] })).toBe(SECCOMP_RET_TRAP);
    expect(evaluate(prog, { nr: nr('clone3') })).toBe(SECCOMP_RET_ERRNO | 38);
  });

  it('signals only to the VMM itself; the SIGSYS reporter cannot be replaced', () => {
    expect(evaluate(prog, { nr: nr('tgkill'), args: [PID, 17, 34] })).toBe(SECCOMP_RET_ALLOW);
    expect(evaluate(prog, { nr: nr('tgkill'), args: [1, 1, 9] })).toBe(SECCOMP_RET_TRAP);
    expect(evaluate(prog, { nr: nr('kill'), args: [1, 9] })).toBe(SECCOMP_RET_TRAP);
    expect(evaluate(prog, { nr: nr('rt_sigaction'), args: [34] })).toBe(SECCOMP_RET_ALLOW);
    expect(evaluate(prog, { nr: nr('rt_sigaction'), args: [31 /* SIGSYS */] })).toBe(SECCOMP_RET_TRAP);
    expect(evaluate(prog, { nr: nr('prctl'), args: [15 /* PR_SET_NAME */] })).toBe(SECCOMP_RET_ALLOW);
    expect(evaluate(prog, { nr: nr('prctl'), args: [38 /* PR_SET_NO_NEW_PRIVS */] })).toBe(SECCOMP_RET_TRAP);
  });

  it('sockets: unix only', () => {
    expect(evaluate(prog, { nr: nr('socket'), args: [1 /* AF_UNIX */, 1] })).toBe(SECCOMP_RET_ALLOW);
    expect(evaluate(prog, { nr: nr('socket'), args: [2 /* AF_INET */, 1] })).toBe(SECCOMP_RET_TRAP);
    expect(evaluate(prog, { nr: nr('socket'), args: [16 /* AF_NETLINK */, 3] })).toBe(SECCOMP_RET_TRAP);
  });

  it('kills another calling convention: a foreign architecture and x32', () => {
    expect(evaluate(prog, { nr: nr('read'), arch: 0x40000003 /* AUDIT_ARCH_I386 */ })).toBe(SECCOMP_RET_KILL_PROCESS);
    expect(evaluate(prog, { nr: 0x40000000 | nr('read') })).toBe(SECCOMP_RET_KILL_PROCESS);
  });

  it('a broken policy is refused with its problems named', () => {
    const bad: SeccompPolicy = {
      ...policy,
      allow: [
        ...policy.allow,
        { name: 'execve', reason: 'oops' },
        { name: 'read', reason: 'twice' },
        { name: 'no_such_call', reason: 'x' },
        { name: 'openat', reason: '' },
      ],
    };
    const problems = checkPolicy(bad, table);
    expect(problems).toEqual(
      expect.arrayContaining([
        'execve: always denied, yet listed as allowed',
        'read: listed twice',
        'no_such_call: not a system call on x86_64',
        'openat: no reason given',
      ]),
    );
    expect(() => buildFilter(bad, table, PID)).toThrow(SandboxError);
  });

  it('other architectures are refused with a clear message', () => {
    expect(() => hostPolicy('arm64')).toThrow('--sandbox on: no seccomp allow-list for arm64');
  });
});
