/**
 * The machine's state as stream sections (docs/migration.md): vCPUs, the
 * in-kernel irqchip and PIT, the KVM clock, COM1, and each device through its
 * saveState/loadState hooks. RAM travels separately (ram.ts).
 *
 * Taken while every vCPU is paused (Machine.pause re-enters KVM_RUN once with
 * immediate_exit so the last I/O exit is complete) and devices are drained.
 */
import { encodeRegs, decodeRegs, encodeSregs, decodeSregs, uapi as U, Vcpu } from '@tsvmm/kvm-native';
import { Machine } from '../machine/machine';
import { encodeSection, jsonPayload, MigrationStreamError, parseJson, Section } from './stream';

const b64 = (b: Uint8Array) => Buffer.from(b).toString('base64');
const unb64 = (s: unknown, what: string): Uint8Array => {
  if (typeof s !== 'string') throw new MigrationStreamError(`${what} is missing`);
  return new Uint8Array(Buffer.from(s, 'base64'));
};

/** What must match between the source and the destination. */
export interface MachineDescription {
  memoryBytes: number;
  cpus: number;
  devices: { id: string; type: string }[];
}

export function describeMachine(m: Machine): MachineDescription {
  return {
    memoryBytes: m.config.memoryBytes,
    cpus: m.vcpus.length,
    devices: m.devices.map((d) => ({ id: d.id, type: d.type })),
  };
}

/** Throws naming the first difference between the stream's machine and this one. */
export function checkMachine(src: MachineDescription, here: MachineDescription): void {
  if (src.memoryBytes !== here.memoryBytes)
    throw new MigrationStreamError(`configuration mismatch: the source has ${src.memoryBytes} bytes of RAM, this VM ${here.memoryBytes}`);
  if (src.cpus !== here.cpus) throw new MigrationStreamError(`configuration mismatch: the source has ${src.cpus} vCPUs, this VM ${here.cpus}`);
  for (const d of src.devices) {
    const h = here.devices.find((x) => x.id === d.id);
    if (!h) throw new MigrationStreamError(`configuration mismatch: device '${d.id}' (${d.type}) is not configured on the destination`);
    if (h.type !== d.type) throw new MigrationStreamError(`configuration mismatch: device '${d.id}' is ${d.type} on the source, ${h.type} here`);
  }
  for (const h of here.devices)
    if (!src.devices.some((d) => d.id === h.id))
      throw new MigrationStreamError(`configuration mismatch: device '${h.id}' (${h.type}) is not on the source`);
}

/** Refuses, before anything is sent, a machine with devices that cannot be migrated. */
export function checkMigratable(m: Machine): void {
  for (const d of m.devices) {
    if (!d.saveState) throw new Error(`device '${d.id}' (${d.type}) does not support migration`);
    const why = d.migrationBlocker?.();
    if (why) throw new Error(`device '${d.id}' (${d.type}) cannot be migrated: ${why}`);
  }
}

// --- vCPUs -----------------------------------------------------------------------

const msrCache = new WeakMap<Machine, number[]>();

/**
 * MSRs KVM lists as saveable and this vCPU actually reads (some listed ones
 * are absent on a given host). Only while the vCPUs are paused: a vCPU ioctl
 * waits for a running vCPU to leave KVM_RUN. Cached per machine.
 */
export function saveableMsrs(m: Machine): number[] {
  const cached = msrCache.get(m);
  if (cached) return cached;
  const v = m.vcpus[0];
  const list = m.kvm.msrIndexList().filter((i) => {
    try {
      return v.getMsrs([i]).length === 1;
    } catch {
      return false;
    }
  });
  msrCache.set(m, list);
  return list;
}

interface CpuState {
  regs: string;
  sregs: string;
  fpu: string;
  xsave?: string;
  xcrs?: string;
  lapic: string;
  msrs: [number, string][];
  events: string;
  mpState: number;
  tscKhz?: number;
}

function saveCpu(v: Vcpu, msrs: number[], caps: { xsave: boolean; xcrs: boolean }): CpuState {
  const s: CpuState = {
    regs: b64(encodeRegs(v.getRegs())),
    sregs: b64(encodeSregs(v.getSregs())),
    fpu: b64(v.getFpu()),
    lapic: b64(v.getLapic()),
    msrs: v.getMsrs(msrs).map((e) => [e.index, e.data.toString(16)]),
    events: b64(v.getVcpuEvents()),
    mpState: v.getMpState(),
  };
  if (caps.xsave) s.xsave = b64(v.getXsave());
  if (caps.xcrs) s.xcrs = b64(v.getXcrs());
  try {
    s.tscKhz = v.getTscKhz();
  } catch {
    // not reported by this host
  }
  return s;
}

/** IA32_TSC_DEADLINE (SDM vol. 4): the LAPIC timer's deadline in TSC-deadline mode. */
const MSR_IA32_TSC_DEADLINE = 0x6e0;

/**
 * Restores a vCPU in the order KVM needs: special registers (APIC base, CRs,
 * EFER) before the MSRs and the LAPIC, the TSC before the other MSRs (the
 * TSC-deadline MSR is relative to it), events and MP state last.
 *
 * IA32_TSC_DEADLINE is written again after the LAPIC: on a fresh vCPU the
 * LAPIC timer is not yet in TSC-deadline mode when the MSRs go in, so KVM
 * ignores the deadline then, and KVM_SET_LAPIC switching LVTT to
 * TSC-deadline mode cancels the timer and clears any deadline. A guest that
 * arms its tick in TSC-deadline mode (Linux) would otherwise wait for a
 * timer interrupt that never comes; the guest kit, which polls, would not
 * notice.
 */
function loadCpu(v: Vcpu, s: CpuState, log: (m: string) => void): void {
  v.setSregs(decodeSregs(unb64(s.sregs, `cpu ${v.id} sregs`)));
  v.setRegs(decodeRegs(unb64(s.regs, `cpu ${v.id} regs`)));
  v.setFpu(unb64(s.fpu, `cpu ${v.id} fpu`));
  if (s.xsave) v.setXsave(unb64(s.xsave, `cpu ${v.id} xsave`));
  if (s.xcrs) v.setXcrs(unb64(s.xcrs, `cpu ${v.id} xcrs`));
  const msrs = s.msrs.map(([index, data]) => ({ index, data: BigInt(`0x${data}`) }));
  const TSC = 0x10;
  msrs.sort((a, b) => (a.index === TSC ? -1 : b.index === TSC ? 1 : 0));
  try {
    v.setMsrs(msrs);
  } catch {
    // One by one, so one MSR this host refuses does not lose the rest.
    const refused: string[] = [];
    for (const e of msrs) {
      try {
        v.setMsrs([e]);
      } catch {
        refused.push(`0x${e.index.toString(16)}`);
      }
    }
    if (refused.length) log(`cpu ${v.id}: KVM refused MSRs ${refused.join(' ')} (left at their reset values)`);
  }
  v.setLapic(unb64(s.lapic, `cpu ${v.id} lapic`));
  const deadline = msrs.find((e) => e.index === MSR_IA32_TSC_DEADLINE);
  if (deadline) {
    try {
      v.setMsrs([deadline]);
    } catch {
      log(`cpu ${v.id}: KVM refused IA32_TSC_DEADLINE after the LAPIC (the guest's next TSC-deadline timer may not fire)`);
    }
  }
  const ev = unb64(s.events, `cpu ${v.id} events`);
  const flags = new DataView(ev.buffer, ev.byteOffset).getUint32(U.OFF_kvm_vcpu_events_flags, true);
  v.setVcpuEvents(ev, flags & (U.KVM_VCPUEVENT_VALID_NMI_PENDING | U.KVM_VCPUEVENT_VALID_SIPI_VECTOR | U.KVM_VCPUEVENT_VALID_SHADOW));
  v.setMpState(s.mpState);
}

// --- whole machine -------------------------------------------------------------------

/**
 * The device-state sections, in the order the destination applies them.
 * The VM must be paused and drained.
 */
export function saveMachineSections(m: Machine, msrs: number[]): Buffer[] {
  const out: Buffer[] = [];
  const push = (name: string, version: number, payload: Buffer) => out.push(...encodeSection(name, version, payload));
  const caps = { xsave: m.vm.checkExtension(U.KVM_CAP_XSAVE) > 0, xcrs: m.vm.checkExtension(U.KVM_CAP_XCRS) > 0 };
  const chips = [U.KVM_IRQCHIP_PIC_MASTER, U.KVM_IRQCHIP_PIC_SLAVE, U.KVM_IRQCHIP_IOAPIC].map((c) => m.vm.getIrqchip(c));
  push('irqchip', 1, Buffer.concat(chips));
  push('pit', 1, Buffer.from(m.vm.getPit2()));
  for (const v of m.vcpus) push(`cpu/${v.id}`, 1, jsonPayload(saveCpu(v, msrs, caps)));
  push('serial', 1, jsonPayload(m.serial.saveState()));
  for (const d of m.devices) {
    if (!d.saveState) throw new Error(`device '${d.id}' (${d.type}) does not support migration`);
    push(`device/${d.id}`, 1, jsonPayload({ type: d.type, state: d.saveState() }));
  }
  const clock = m.vm.getClock();
  push('clock', 1, jsonPayload({ clock: clock.clock.toString(16), flags: clock.flags }));
  return out;
}

/**
 * Applies the device-state sections to a paused machine that was created
 * with the same configuration. Every section is checked (parsed, matched to a
 * vCPU or device) before the first is applied, so a bad stream leaves
 * nothing half-restored.
 */
export function loadMachineSections(m: Machine, sections: Section[], log: (msg: string) => void): void {
  const byName = new Map(sections.map((s) => [s.name, s]));
  const need = (name: string) => {
    const s = byName.get(name);
    if (!s) throw new MigrationStreamError(`the stream has no '${name}' section`);
    return s;
  };
  const irq = need('irqchip').payload;
  if (irq.length !== 3 * U.SIZEOF_kvm_irqchip) throw new MigrationStreamError(`section 'irqchip' has ${irq.length} bytes`);
  const pit = need('pit').payload;
  if (pit.length !== U.SIZEOF_kvm_pit_state2) throw new MigrationStreamError(`section 'pit' has ${pit.length} bytes`);
  const cpus = m.vcpus.map((v) => parseJson<CpuState>(need(`cpu/${v.id}`)));
  const serial = parseJson<Record<string, unknown>>(need('serial'));
  const clock = parseJson<{ clock: string }>(need('clock'));
  const devices = m.devices.map((d) => {
    const s = parseJson<{ type: string; state: unknown }>(need(`device/${d.id}`));
    if (s.type !== d.type) throw new MigrationStreamError(`device '${d.id}' is ${s.type} in the stream, ${d.type} here`);
    if (!d.loadState) throw new MigrationStreamError(`device '${d.id}' (${d.type}) does not support migration`);
    return { d, state: s.state };
  });
  for (const s of sections) {
    const [kind, rest] = s.name.split('/');
    if (kind === 'cpu' && !m.vcpus.some((v) => String(v.id) === rest)) throw new MigrationStreamError(`the stream has '${s.name}' and this VM has no such vCPU`);
    if (kind === 'device' && !m.devices.some((d) => d.id === rest)) throw new MigrationStreamError(`configuration mismatch: device '${rest}' is not configured on the destination`);
  }

  for (let i = 0; i < 3; i++) m.vm.setIrqchip(new Uint8Array(irq.subarray(i * U.SIZEOF_kvm_irqchip, (i + 1) * U.SIZEOF_kvm_irqchip)));
  m.vm.setPit2(new Uint8Array(pit));
  m.vcpus.forEach((v, i) => loadCpu(v, cpus[i], log));
  m.serial.loadState(serial);
  for (const { d, state } of devices) {
    try {
      d.loadState!(state);
    } catch (e) {
      throw new MigrationStreamError(`device '${d.id}': ${(e as Error).message}`);
    }
  }
  m.vm.setClock(BigInt(`0x${clock.clock}`));
}
