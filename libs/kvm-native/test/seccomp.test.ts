// The generic seccomp plumbing (native/seccomp.cc): a program given as bytes, TSYNC, the SIGSYS reporter.
// Each case runs in a child Node process, since a filter cannot be removed once installed.
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { addonCandidates } from '../src/native';

const ADDON = addonCandidates().find((p) => fs.existsSync(p)) ?? path.resolve(__dirname, '../build/Release/kvm_native.node');

function child(script: string): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, ['-e', `const native = require(${JSON.stringify(ADDON)});\n${script}`], {
    encoding: 'utf8',
    timeout: 30_000,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

// ld [nr]; jeq getppid (110), trap; ret ALLOW (x86_64 numbers; the addon is built for the host).
const PROGRAM = `
const insn = (code, jt, jf, k) => { const b = Buffer.alloc(8); b.writeUInt16LE(code, 0); b[2] = jt; b[3] = jf; b.writeUInt32LE(k >>> 0, 4); return b; };
const prog = Buffer.concat([insn(0x20, 0, 0, 0), insn(0x15, 0, 1, 110), insn(0x06, 0, 0, 0x00030000), insn(0x06, 0, 0, 0x7fff0000)]);
`;

const describeX64 = process.arch === 'x64' ? describe : describe.skip;

describeX64('seccomp plumbing', () => {
  it('installs a program on every thread (TSYNC, no_new_privs); a trapped call is reported by name and ends the process with 159', () => {
    const r = child(`${PROGRAM}
const { Worker } = require('worker_threads');
// A thread that exists before the filter: TSYNC must cover it.
const w = new Worker('setInterval(() => {}, 1000)', { eval: true });
w.on('online', () => {
  native.seccompSetTrapReporter('test: call ', ' refused', ['read', ...Array(109).fill(''), 'getppid'], 'test: args ');
  native.seccompInstall(prog);
  const fs = require('fs');
  for (const t of fs.readdirSync('/proc/self/task')) {
    const s = fs.readFileSync('/proc/self/task/' + t + '/status', 'utf8');
    process.stdout.write(/^Seccomp:\\s*(\\d)/m.exec(s)[1] + /^NoNewPrivs:\\s*(\\d)/m.exec(s)[1] + ' ');
  }
  process.stdout.write('\\nbefore\\n');
  process.ppid; // getppid(2)
  process.stdout.write('after\\n');
});`);
    expect(r.code).toBe(159);
    const states = r.stdout.split('\n')[0].trim().split(' ');
    expect(states.length).toBeGreaterThanOrEqual(5);
    expect(new Set(states)).toEqual(new Set(['21']));
    expect(r.stdout).toContain('before');
    expect(r.stdout).not.toContain('after');
    expect(r.stderr).toContain('test: call getppid (110) refused\n');
    expect(r.stderr).toMatch(/test: args 0x[0-9a-f]{16} 0x[0-9a-f]{16}\n/);
  });

  it('a number without a name is reported as the number', () => {
    const r = child(`${PROGRAM}
native.seccompSetTrapReporter('test: call ', ' refused', []);
native.seccompInstall(prog);
process.ppid;`);
    expect(r.code).toBe(159);
    expect(r.stderr).toContain('test: call 110 refused\n');
    expect(r.stderr).not.toContain('0x'); // no argsPrefix: no arguments line
  });

  it('refuses programs the kernel cannot take, with the reason, and leaves the process unconfined', () => {
    const r = child(`
const tries = [new Uint8Array(0), new Uint8Array(12), Buffer.alloc(8 * 4097), Buffer.from([0xff, 0xff, 0, 0, 0, 0, 0, 0])];
for (const p of tries) { try { native.seccompInstall(p); console.log('installed'); } catch (e) { console.log(e.code ?? e.constructor.name, e.message); } }
console.log(require('fs').readFileSync('/proc/self/status', 'utf8').match(/^Seccomp:.*$/m)[0]);`);
    expect(r.code).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^RangeError a BPF program is a non-empty multiple of 8 bytes/);
    expect(lines[1]).toMatch(/^RangeError a BPF program is a non-empty multiple of 8 bytes/);
    expect(lines[2]).toMatch(/^EINVAL seccomp failed/);
    expect(lines[3]).toMatch(/^EINVAL seccomp failed/); // an opcode the kernel rejects
    expect(lines[4]).toBe('Seccomp:\t0');
  });
});
