// Drives the facade against the real /dev/kvm with tiny hand-assembled real-mode guests.
import { EventFd, Kvm, KvmRun, uapi as U, Vcpu, VcpuAction, VcpuFaultError, Vm } from '../src';
import { describeKvm } from '../src/testing';

const CODE = 0x1000;

/** A VM with 1 MiB of RAM and one vCPU in real mode at CS:IP = 0:0x1000, without an irqchip (HLT exits). */
function realModeVm(code: number[]): { kvm: Kvm; vm: Vm; vcpu: Vcpu } {
  const kvm = Kvm.open();
  const vm = kvm.createVm();
  const ram = vm.addMemoryRegion({ slot: 0, guestPhysAddr: 0, size: 1 << 20 });
  ram.pieces[0].bytes.set(code, CODE);
  const vcpu = vm.createVcpu(0);
  const s = vcpu.getSregs();
  s.cs.base = 0n;
  s.cs.selector = 0;
  vcpu.setSregs(s);
  const r = vcpu.getRegs();
  r.rip = BigInt(CODE);
  r.rflags = 2n;
  vcpu.setRegs(r);
  return { kvm, vm, vcpu };
}

function runUntilStop(vcpu: Vcpu, onExit: (run: KvmRun) => VcpuAction): Promise<VcpuFaultError | undefined> {
  return new Promise((resolve) => {
    let fault: VcpuFaultError | undefined;
    vcpu.start({
      onExit,
      onFault: (e) => (fault = e),
    });
    void vcpu.whenStopped().then(() => resolve(fault));
  });
}

describeKvm('kvm facade on /dev/kvm', () => {
  it('reports API 12 and the capabilities the VMM needs', () => {
    const kvm = Kvm.open();
    expect(kvm.apiVersion).toBe(12);
    expect(kvm.checkExtension(U.KVM_CAP_IOEVENTFD)).toBeGreaterThan(0);
    expect(kvm.vcpuMmapSize).toBeGreaterThanOrEqual(U.SIZEOF_kvm_run);
    const cpuid = kvm.supportedCpuid();
    expect(cpuid.find((e) => e.function === 0)?.eax).toBeGreaterThan(0);
    kvm.close();
  });

  it('completes a PIO out/in round trip in JS while the event loop stays free', async () => {
    // mov dx,0x4000; mov al,0x5a; out dx,al; in al,dx; out dx,al; hlt
    const { vm, vcpu } = realModeVm([0xba, 0x00, 0x40, 0xb0, 0x5a, 0xee, 0xec, 0xee, 0xf4]);
    const seen: string[] = [];
    let ticks = 0;
    const timer = setInterval(() => ticks++, 1);
    const fault = await runUntilStop(vcpu, (run) => {
      if (run.exitReason === U.KVM_EXIT_HLT) return VcpuAction.Stop;
      expect(run.ioPort).toBe(0x4000);
      if (run.ioIsOut) seen.push(`out ${run.ioRead().toString(16)}`);
      else {
        seen.push('in');
        run.ioWrite(0xa7);
      }
      return VcpuAction.Continue;
    });
    clearInterval(timer);
    expect(fault).toBeUndefined();
    expect(seen).toEqual(['out 5a', 'in', 'out a7']);
    expect(ticks).toBeGreaterThanOrEqual(0);
    vm.close();
  });

  it('counts ioeventfd writes in the kernel without exits to userspace', async () => {
    // mov cx,50; l: mov dx,0x4010; out dx,al; loop l; mov dx,0x4020; out dx,al; hlt
    const { vm, vcpu } = realModeVm([0xb9, 50, 0, 0xba, 0x10, 0x40, 0xee, 0xe2, 0xfa, 0xba, 0x20, 0x40, 0xee, 0xf4]);
    const efd = EventFd.create();
    vm.ioeventfd({ addr: 0x4010, len: 1, fd: efd.fd, space: 'pio' });
    const ports: number[] = [];
    await runUntilStop(vcpu, (run) => {
      if (run.exitReason === U.KVM_EXIT_HLT) return VcpuAction.Stop;
      ports.push(run.ioPort);
      return VcpuAction.Continue;
    });
    expect(ports).toEqual([0x4020]);
    expect(efd.read()).toBe(50n);
    efd.close();
    vm.close();
  });

  it('pauses and resumes a spinning vCPU', async () => {
    // l: jmp l
    const { vm, vcpu } = realModeVm([0xeb, 0xfe]);
    vcpu.start({ onExit: () => VcpuAction.Stop, onFault: () => undefined });
    await vcpu.pause();
    expect(vcpu.state).toBe('paused');
    expect(vcpu.getRegs().rip).toBe(BigInt(CODE));
    vcpu.resume();
    await vcpu.stop();
    expect(vcpu.state).toBe('stopped');
    vm.close();
  });

  it('a pause right after a resume waits for its own acknowledgement (pause/resume generations)', async () => {
    // l: jmp l
    const { vm, vcpu } = realModeVm([0xeb, 0xfe]);
    vcpu.start({ onExit: () => VcpuAction.Stop, onFault: () => undefined });
    for (let i = 0; i < 50; i++) {
      await vcpu.pause();
      expect(vcpu.pauseAcknowledged).toBe(true);
      expect(vcpu.getRegs().rip).toBe(BigInt(CODE)); // KVM_GET_REGS would block on a running vCPU
      vcpu.resume();
      expect(vcpu.pauseAcknowledged).toBe(false);
      // Pause again before the thread reported "running": the earlier "paused" must not count.
      const p = vcpu.pause();
      if (i % 2) {
        vcpu.resume(); // overtaken: the pending pause ends without pausing
        await p;
        expect(vcpu.pauseAcknowledged).toBe(false);
        await vcpu.pause();
      } else await p;
      expect(vcpu.pauseAcknowledged).toBe(true);
      expect(vcpu.state).toBe('paused');
      vcpu.resume();
    }
    await vcpu.stop();
    expect(vcpu.state).toBe('stopped');
    vm.close();
  });

  it('watches an eventfd on the libuv loop', async () => {
    const efd = EventFd.create();
    const got = new Promise<bigint>((resolve) => efd.watch(resolve));
    efd.write(3);
    expect(await got).toBe(3n);
    efd.close();
  });
});

describeKvm('state save/restore ioctls (migration)', () => {
  it('a pause during an IN exit completes the IN before the registers are read', async () => {
    // mov dx, 0x10; in al, dx; hlt
    const { kvm, vm, vcpu } = realModeVm([0xba, 0x10, 0x00, 0xec, 0xf4]);
    let paused: Promise<void> | undefined;
    const done = runUntilStop(vcpu, (run) => {
      if (run.exitReason === U.KVM_EXIT_IO && !run.ioIsOut) {
        run.ioWrite(0x5a);
        paused = vcpu.pause();
        return VcpuAction.Continue;
      }
      return VcpuAction.Stop;
    });
    while (!paused) await new Promise((r) => setTimeout(r, 5));
    await paused;
    const r = vcpu.getRegs();
    expect(Number(r.rax & 0xffn)).toBe(0x5a);
    expect(Number(r.rip)).toBe(CODE + 4);
    await vcpu.stop();
    await done;
    vm.close();
    kvm.close();
  });

  it('reads and writes back irqchip, PIT, clock, XSAVE/XCRS, vCPU events and the saveable MSRs', () => {
    const kvm = Kvm.open();
    const vm = kvm.createVm();
    vm.addMemoryRegion({ slot: 0, guestPhysAddr: 0, size: 1 << 20 });
    vm.createIrqchip();
    vm.createPit2();
    const v = vm.createVcpu(0);
    for (const chip of [U.KVM_IRQCHIP_PIC_MASTER, U.KVM_IRQCHIP_PIC_SLAVE, U.KVM_IRQCHIP_IOAPIC]) {
      const b = vm.getIrqchip(chip);
      expect(new DataView(b.buffer).getUint32(U.OFF_kvm_irqchip_chip_id, true)).toBe(chip);
      vm.setIrqchip(b);
    }
    vm.setPit2(vm.getPit2());
    const c = vm.getClock();
    vm.setClock(c.clock + 1_000_000n);
    expect(vm.getClock().clock).toBeGreaterThanOrEqual(c.clock + 1_000_000n);
    if (vm.checkExtension(U.KVM_CAP_XSAVE)) v.setXsave(v.getXsave());
    if (vm.checkExtension(U.KVM_CAP_XCRS)) v.setXcrs(v.getXcrs());
    const ev = v.getVcpuEvents();
    v.setVcpuEvents(ev, U.KVM_VCPUEVENT_VALID_NMI_PENDING | U.KVM_VCPUEVENT_VALID_SHADOW);
    const list = kvm.msrIndexList();
    expect(list).toContain(0x10); // IA32_TSC
    const msrs = v.getMsrs([0x10]);
    expect(msrs).toHaveLength(1);
    v.setMsrs([{ index: 0x10, data: 12345678n }]);
    expect(v.getMsrs([0x10])[0].data).toBeGreaterThanOrEqual(12345678n);
    vm.close();
    kvm.close();
  });
});
