// The exit hand-off between vCPU threads and the JS thread (ExitMailbox in native/vcpu.h), on real
// KVM: several vCPUs exiting in tight loops at once, pause/resume in between, a throwing handler.
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Kvm, KvmRun, uapi as U, Vcpu, VcpuAction, VcpuFaultError, Vm } from '../src';
import { addonCandidates } from '../src/native';
import { describeKvm } from '../src/testing';

const CODE = 0x1000;
const PORT_BASE = 0x4000;

/*
 * Real mode, DX = this vCPU's port, BX = 0:
 *   l: mov ax,bx; out dx,ax; in ax,dx; mov bx,ax; cmp bx,N; jne l; hlt
 * The guest only gets on when each IN returns what its own vCPU's handler answered (the count so far + 1).
 */
function countingLoop(n: number): number[] {
  return [0x89, 0xd8, 0xef, 0xed, 0x89, 0xc3, 0x81, 0xfb, n & 0xff, n >> 8, 0x75, 0xf4, 0xf4];
}

/** A VM without an irqchip (every vCPU runnable, HLT exits) whose vCPUs all run `code` at 0:0x1000. */
function multiVcpuVm(code: number[], count: number): { kvm: Kvm; vm: Vm; vcpus: Vcpu[] } {
  const kvm = Kvm.open();
  const vm = kvm.createVm();
  const ram = vm.addMemoryRegion({ slot: 0, guestPhysAddr: 0, size: 1 << 20 });
  ram.pieces[0].bytes.set(code, CODE);
  const vcpus: Vcpu[] = [];
  for (let i = 0; i < count; i++) {
    const v = vm.createVcpu(i);
    const s = v.getSregs();
    s.cs.base = 0n;
    s.cs.selector = 0;
    v.setSregs(s);
    const r = v.getRegs();
    r.rip = BigInt(CODE);
    r.rflags = 2n;
    r.rdx = BigInt(PORT_BASE + i);
    r.rbx = 0n;
    v.setRegs(r);
    vcpus.push(v);
  }
  return { kvm, vm, vcpus };
}

interface Counter {
  next: number;
  outs: number;
  ins: number;
  wrongPort: number;
  wrongValue: number;
  halted: boolean;
}

/** The handler of one vCPU's loop: checks each OUT against what it answered before. */
function counterHandler(id: number, c: Counter, throwAt?: number): (run: KvmRun) => VcpuAction {
  return (run) => {
    if (run.exitReason === U.KVM_EXIT_HLT) {
      c.halted = true;
      return VcpuAction.Stop;
    }
    if (run.ioPort !== PORT_BASE + id) c.wrongPort++;
    if (run.ioIsOut) {
      c.outs++;
      if (run.ioRead() !== c.next) c.wrongValue++;
      if (throwAt !== undefined && c.outs === throwAt) throw new Error(`device bug on vCPU ${id}`);
    } else {
      c.ins++;
      c.next++;
      run.ioWrite(c.next);
    }
    return VcpuAction.Continue;
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describeKvm('exit hand-off between vCPU threads and JS', () => {
  it('three vCPUs exiting in tight loops, paused and resumed together again and again, each get exactly their own answers', async () => {
    const N = 1500;
    const { kvm, vm, vcpus } = multiVcpuVm(countingLoop(N), 3);
    const counters: Counter[] = vcpus.map(() => ({ next: 0, outs: 0, ins: 0, wrongPort: 0, wrongValue: 0, halted: false }));
    const faults: VcpuFaultError[] = [];
    vcpus.forEach((v, i) => v.start({ onExit: counterHandler(i, counters[i]), onFault: (e) => faults.push(e) }));
    const stopped = Promise.all(vcpus.map((v) => v.whenStopped()));
    let done = false;
    void stopped.then(() => (done = true));

    let pauses = 0;
    let progressWhilePaused = 0;
    while (!done) {
      await sleep(3);
      await Promise.all(vcpus.map((v) => v.pause()));
      if (done) break;
      pauses++;
      const frozen = counters.map((c) => c.outs + c.ins);
      for (const v of vcpus) if (v.state !== 'stopped') expect(v.pauseAcknowledged).toBe(true);
      await sleep(2);
      // No exit is delivered while a vCPU is paused.
      counters.forEach((c, i) => (progressWhilePaused += c.outs + c.ins - frozen[i]));
      vcpus.forEach((v) => v.resume());
    }
    await stopped;

    expect(faults).toEqual([]);
    expect(pauses).toBeGreaterThan(0);
    expect(progressWhilePaused).toBe(0);
    for (const c of counters) {
      expect(c).toEqual({ next: N, outs: N, ins: N, wrongPort: 0, wrongValue: 0, halted: true });
    }
    vm.close();
    kvm.close();
  });

  it('a handler that throws stops only its own vCPU (reported as a fault); the others run to the end', async () => {
    const N = 800;
    const { kvm, vm, vcpus } = multiVcpuVm(countingLoop(N), 3);
    const counters: Counter[] = vcpus.map(() => ({ next: 0, outs: 0, ins: 0, wrongPort: 0, wrongValue: 0, halted: false }));
    const faults: (VcpuFaultError | undefined)[] = [undefined, undefined, undefined];
    vcpus.forEach((v, i) =>
      v.start({ onExit: counterHandler(i, counters[i], i === 1 ? 100 : undefined), onFault: (e) => (faults[i] = e) }),
    );
    await Promise.all(vcpus.map((v) => v.whenStopped()));

    expect(faults[0]).toBeUndefined();
    expect(faults[2]).toBeUndefined();
    expect(faults[1]).toBeInstanceOf(VcpuFaultError);
    expect(faults[1]!.fault.kind).toBe('run-error');
    expect(counters[1]).toMatchObject({ outs: 100, ins: 99, halted: false, wrongValue: 0 });
    for (const i of [0, 2]) expect(counters[i]).toEqual({ next: N, outs: N, ins: N, wrongPort: 0, wrongValue: 0, halted: true });
    vm.close();
    kvm.close();
  });

  it('stop() while a vCPU exits in a tight loop ends the thread, and the event loop stays free meanwhile', async () => {
    const { kvm, vm, vcpus } = multiVcpuVm(countingLoop(0xffff), 1);
    const c: Counter = { next: 0, outs: 0, ins: 0, wrongPort: 0, wrongValue: 0, halted: false };
    vcpus[0].start({ onExit: counterHandler(0, c), onFault: () => undefined });
    // Timers still fire while exits stream in (the JS side polls for the next exit only briefly).
    for (let ticks = 0; ticks < 5; ticks++) await sleep(1);
    while (c.outs < 200) await sleep(1);
    await vcpus[0].stop();
    expect(vcpus[0].state).toBe('stopped');
    const after = c.outs + c.ins;
    await sleep(20);
    expect(c.outs + c.ins).toBe(after);
    expect(c.wrongValue).toBe(0);
    vm.close();
    kvm.close();
  });
});

/*
 * The facade bundled to plain JS (esbuild), so that a child process or a worker can load it; the
 * addon is named through VMM_KVM_NATIVE. A real-mode vCPU exits in a tight loop: l: out dx,ax; jmp l.
 */
const SPIN_EXITS = `
const { Kvm, VcpuAction } = require(process.env.KVM_FACADE);
function startSpinner(onExit) {
  const kvm = Kvm.open();
  const vm = kvm.createVm();
  const ram = vm.addMemoryRegion({ slot: 0, guestPhysAddr: 0, size: 1 << 20 });
  ram.pieces[0].bytes.set([0xef, 0xeb, 0xfd], 0x1000);
  const v = vm.createVcpu(0);
  const s = v.getSregs(); s.cs.base = 0n; s.cs.selector = 0; v.setSregs(s);
  const r = v.getRegs(); r.rip = 0x1000n; r.rflags = 2n; r.rdx = 0x4000n; v.setRegs(r);
  v.start({ onExit, onFault: (e) => console.log('fault ' + e.message) });
}
`;

describeKvm('exit hand-off at the end of a process or a worker', () => {
  let dir: string;
  let env: NodeJS.ProcessEnv;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvm-native-exits-'));
    const facade = path.join(dir, 'facade.js');
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    require('esbuild').buildSync({
      entryPoints: [path.resolve(__dirname, '../src/index.ts')],
      bundle: true,
      platform: 'node',
      outfile: facade,
      logLevel: 'error',
    });
    const addon = addonCandidates().find((p) => fs.existsSync(p));
    env = { ...process.env, KVM_FACADE: facade, VMM_KVM_NATIVE: addon };
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  const child = (script: string) => {
    const r = spawnSync(process.execPath, ['-e', `${SPIN_EXITS}\n${script}`], { env, encoding: 'utf8', timeout: 60_000 });
    return { code: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
  };

  it('process.exit() from inside an exit handler ends the process with its code', () => {
    const r = child(
      `let n = 0; startSpinner(() => { if (++n === 1000) { console.log('exits ' + n); process.exit(7); } return VcpuAction.Continue; });`,
    );
    expect(r).toMatchObject({ code: 7, signal: null });
    expect(r.stdout).toBe('exits 1000\n');
  });

  it('terminating workers whose vCPU exits in a tight loop neither hangs nor crashes the process', () => {
    // Only the workers load the addon here, so Node unloads it with each one: nothing of it may run after.
    const worker = `${SPIN_EXITS}
let n = 0;
startSpinner(() => { if (++n === 300) require('worker_threads').parentPort.postMessage('running'); return VcpuAction.Continue; });`;
    const r = child(`
const { Worker } = require('worker_threads');
let rounds = 0;
function round() {
  const w = new Worker(${JSON.stringify(worker)}, { eval: true });
  w.on('message', () => void w.terminate());
  w.on('error', (e) => console.log('worker error ' + e.message));
  w.on('exit', () => (++rounds < 6 ? round() : console.log('terminated ' + rounds)));
}
round();`);
    expect(r).toMatchObject({ code: 0, signal: null });
    expect(r.stdout).toBe('terminated 6\n');
  });
});
