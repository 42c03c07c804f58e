/**
 * The machine's state as stream sections (docs/migration.md): vCPUs, the
 * in-kernel irqchip and PIT, the KVM clock, COM1, and each device through its
 * saveState/loadState hooks. RAM travels separately (ram.ts).
 *
 * Taken while every vCPU is paused (Machine.pause re-enters KVM_RUN once with
 * immediate_exit so the last I/O exit is complete) and devices are drained.
 */
import { encodeRegs, decodeRegs, encodeSregs, decodeSregs, uapi as U, Vcpu } from '@tsvmm/kvm-native';
import { checkRestoredBars, FixedRegion, PciBarFunction, RestoredFunction } from '@tsvmm/pci';
import { Machine } from '../machine/machine';
import {
  HIGH_RAM_START,
  IOAPIC_ADDR,
  KVM_IDENTITY_MAP_ADDR,
  LAPIC_ADDR,
  PCI_MMIO32_BASE,
  PCI_MMIO32_SIZE,
  PCI_MMIO64_BASE,
  PCI_MMIO64_SIZE,
  TEST_MMIO_BASE,
} from '../machine/layout';
import { array, Fields, int, StateError, within } from '@tsvmm/virtio-core';
import { encodeSection, jsonPayload, MigrationStreamError, parseJson, Section } from './stream';

const b64 = (b: Uint8Array) => Buffer.from(b).toString('base64');

/** Runs a section's parser; a StateError becomes a MigrationStreamError naming the section and field. */
export function checkSection<T>(section: string, parse: () => T): T {
  try {
    return within(section, parse);
  } catch (e) {
    if (e instanceof StateError) throw new MigrationStreamError(`bad stream: ${e.message}`);
    throw e;
  }
}

/** The `machine` section, checked. */
export function parseMachineDescription(v: unknown): MachineDescription {
  return checkSection('machine', () => {
    const f = new Fields(v, '');
    return {
      memoryBytes: f.uint('memoryBytes'),
      cpus: f.uint('cpus', 1024),
      devices: f.array('devices', 4096, (d, p) => {
        const e = new Fields(d, p);
        return { id: e.str('id', 256), type: e.str('type', 256) };
      }),
    };
  });
}

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
  if (src.cpus !== here.cpus)
    throw new MigrationStreamError(`configuration mismatch: the source has ${src.cpus} vCPUs, this VM ${here.cpus}`);
  for (const d of src.devices) {
    const h = here.devices.find((x) => x.id === d.id);
    if (!h) throw new MigrationStreamError(`configuration mismatch: device '${d.id}' (${d.type}) is not configured on the destination`);
    if (h.type !== d.type)
      throw new MigrationStreamError(`configuration mismatch: device '${d.id}' is ${d.type} on the source, ${h.type} here`);
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
/** A `cpu/N` section, checked: every KVM structure of its exact size, MSRs as (u32, 64-bit) pairs, a known MP state. */
interface CheckedCpuState {
  regs: Uint8Array;
  sregs: Uint8Array;
  fpu: Uint8Array;
  xsave?: Uint8Array;
  xcrs?: Uint8Array;
  lapic: Uint8Array;
  msrs: { index: number; data: bigint }[];
  events: Uint8Array;
  mpState: number;
}

/** KVM_MP_STATE_RUNNABLE .. KVM_MP_STATE_SUSPENDED (linux/kvm.h). */
const MAX_MP_STATE = 9;
/** More MSRs than any host lists as saveable. */
const MAX_MSRS = 4096;

export function parseCpuState(v: unknown, section: string): CheckedCpuState {
  return checkSection(section, () => {
    const f = new Fields(v, '');
    const s: CheckedCpuState = {
      regs: f.base64('regs', U.SIZEOF_kvm_regs),
      sregs: f.base64('sregs', U.SIZEOF_kvm_sregs),
      fpu: f.base64('fpu', U.SIZEOF_kvm_fpu),
      lapic: f.base64('lapic', U.SIZEOF_kvm_lapic_state),
      events: f.base64('events', U.SIZEOF_kvm_vcpu_events),
      msrs: f.array('msrs', MAX_MSRS, (m, p) => {
        const pair = array(m, p, 2, (x) => x);
        if (pair.length !== 2) throw new StateError(p, 'expected [index, "hex value"]');
        const e = new Fields({ index: pair[0], data: pair[1] }, p);
        return { index: e.u32('index'), data: e.hex('data') };
      }),
      mpState: f.uint('mpState', MAX_MP_STATE),
    };
    const xsave = f.optional('xsave', (g, k) => g.base64(k, U.SIZEOF_kvm_xsave));
    const xcrs = f.optional('xcrs', (g, k) => g.base64(k, U.SIZEOF_kvm_xcrs));
    if (xsave) s.xsave = xsave;
    if (xcrs) s.xcrs = xcrs;
    f.optional('tscKhz', (g, k) => g.u32(k));
    return s;
  });
}

function loadCpu(v: Vcpu, s: CheckedCpuState, log: (m: string) => void): void {
  v.setSregs(decodeSregs(s.sregs));
  v.setRegs(decodeRegs(s.regs));
  v.setFpu(s.fpu);
  if (s.xsave) v.setXsave(s.xsave);
  if (s.xcrs) v.setXcrs(s.xcrs);
  const msrs = s.msrs.map((e) => ({ ...e }));
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
  v.setLapic(s.lapic);
  const deadline = msrs.find((e) => e.index === MSR_IA32_TSC_DEADLINE);
  if (deadline) {
    try {
      v.setMsrs([deadline]);
    } catch {
      log(`cpu ${v.id}: KVM refused IA32_TSC_DEADLINE after the LAPIC (the guest's next TSC-deadline timer may not fire)`);
    }
  }
  const ev = s.events;
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
  const byName = new Map<string, Section>();
  for (const s of sections) {
    if (byName.has(s.name)) throw new MigrationStreamError(`bad stream: section '${s.name}' appears twice`);
    byName.set(s.name, s);
  }
  const need = (name: string) => {
    const s = byName.get(name);
    if (!s) throw new MigrationStreamError(`the stream has no '${name}' section`);
    return s;
  };
  for (const s of sections) {
    const [kind, rest] = s.name.split('/');
    if (kind === 'cpu' && !m.vcpus.some((v) => String(v.id) === rest))
      throw new MigrationStreamError(`the stream has '${s.name}' and this VM has no such vCPU`);
    if (kind === 'device' && !m.devices.some((d) => d.id === rest))
      throw new MigrationStreamError(`configuration mismatch: device '${rest}' is not configured on the destination`);
  }
  const irq = need('irqchip').payload;
  if (irq.length !== 3 * U.SIZEOF_kvm_irqchip)
    throw new MigrationStreamError(`bad stream: section 'irqchip' has ${irq.length} bytes, expected ${3 * U.SIZEOF_kvm_irqchip}`);
  const pit = need('pit').payload;
  if (pit.length !== U.SIZEOF_kvm_pit_state2)
    throw new MigrationStreamError(`bad stream: section 'pit' has ${pit.length} bytes, expected ${U.SIZEOF_kvm_pit_state2}`);
  const cpus = m.vcpus.map((v) => parseCpuState(parseJson(need(`cpu/${v.id}`)), `cpu/${v.id}`));
  const serial = parseSerialState(parseJson(need('serial')));
  const clock = checkSection('clock', () => {
    const f = new Fields(parseJson(need('clock')), '');
    f.optional('flags', (g, k) => g.u32(k));
    return f.hex('clock');
  });
  const devices = m.devices.map((d) => {
    const name = `device/${d.id}`;
    const { type, state } = checkSection(name, () => {
      const f = new Fields(parseJson(need(name)), '');
      return { type: f.str('type', 256), state: f.raw('state') };
    });
    if (type !== d.type) throw new MigrationStreamError(`device '${d.id}' is ${type} in the stream, ${d.type} here`);
    if (!d.loadState) throw new MigrationStreamError(`device '${d.id}' (${d.type}) does not support migration`);
    deviceStep(name, 'state', () => d.checkState?.(state));
    return { d, state, name };
  });
  checkBarLayout(m.vm.memoryRegions, devices);

  // Everything is checked: apply.
  for (let i = 0; i < 3; i++) m.vm.setIrqchip(new Uint8Array(irq.subarray(i * U.SIZEOF_kvm_irqchip, (i + 1) * U.SIZEOF_kvm_irqchip)));
  m.vm.setPit2(new Uint8Array(pit));
  m.vcpus.forEach((v, i) => loadCpu(v, cpus[i], log));
  m.serial.loadState(serial);
  for (const { d, state, name } of devices) deviceStep(name, 'state', () => d.loadState!(state));
  m.vm.setClock(clock);
}

/**
 * The machine's fixed regions a restored BAR may not overlap (RAM as this
 * VM has it, the interrupt controllers, the VMM's own pages) and the edges
 * it may not straddle (the PCI windows' ends, 4 GiB).
 */
export function barLimits(ram: { guestPhysAddr: bigint; size: number }[]): { fixed: FixedRegion[]; edges: { name: string; at: number }[] } {
  const fixed: FixedRegion[] = ram.map((r) => ({
    name: Number(r.guestPhysAddr) === 0 ? 'RAM below 4 GiB' : 'RAM above 4 GiB',
    start: Number(r.guestPhysAddr),
    size: r.size,
  }));
  fixed.push(
    { name: 'the test MMIO page', start: TEST_MMIO_BASE, size: 0x1000 },
    { name: 'the IOAPIC', start: IOAPIC_ADDR, size: 0x1000 },
    { name: 'the LAPIC', start: LAPIC_ADDR, size: 0x1000 },
    { name: "KVM's identity map and TSS", start: KVM_IDENTITY_MAP_ADDR, size: 0x4000 },
  );
  const edges = [
    { name: 'the start of the 32-bit PCI window', at: PCI_MMIO32_BASE },
    { name: 'the end of the 32-bit PCI window', at: PCI_MMIO32_BASE + PCI_MMIO32_SIZE },
    { name: '4 GiB', at: HIGH_RAM_START },
    { name: 'the start of the 64-bit PCI window', at: PCI_MMIO64_BASE },
    { name: 'the end of the 64-bit PCI window', at: PCI_MMIO64_BASE + PCI_MMIO64_SIZE },
  ];
  return { fixed, edges };
}

/**
 * Every restored PCI function's BARs (`transport.config` of a virtio-pci
 * device's state, already checked by its checkState) against the machine's
 * fixed regions and each other, before anything is applied.
 */
export function checkBarLayout(
  ram: { guestPhysAddr: bigint; size: number }[],
  devices: { d: { id: string; virtio?: PciBarFunction }; state: unknown; name: string }[],
): void {
  const functions: RestoredFunction[] = [];
  for (const { d, state, name } of devices) {
    const fn = d.virtio;
    if (!fn) continue;
    const config = checkSection(`${name}.state`, () =>
      new Fields(new Fields(state, '').raw('transport'), 'transport').base64('config', fn.config.bytes.length),
    );
    functions.push({ name: `device '${d.id}'`, path: `${name}.state.transport.config`, fn, config });
  }
  const { fixed, edges } = barLimits(ram);
  try {
    checkRestoredBars(functions, fixed, edges);
  } catch (e) {
    if (e instanceof StateError) throw new MigrationStreamError(`bad stream: ${e.message}`);
    throw e;
  }
}

/** A device's check or load; its errors name the section (and the field, for a StateError). */
function deviceStep(section: string, field: string, f: () => void): void {
  try {
    f();
  } catch (e) {
    if (e instanceof StateError) throw new MigrationStreamError(`bad stream: ${e.under(`${section}.${field}`).message}`);
    throw new MigrationStreamError(`${section}: ${(e as Error).message}`);
  }
}

/** The `serial` section, checked: 8-bit registers, a receive FIFO of bytes. */
export function parseSerialState(v: unknown): Record<string, unknown> {
  return checkSection('serial', () => {
    const f = new Fields(v, '');
    const out: Record<string, unknown> = {};
    for (const k of ['ier', 'lcr', 'mcr', 'scr', 'dll', 'dlm', 'fcr']) out[k] = f.u8(k);
    out.rx = f.optional('rx', (g, k) => g.array(k, 4096, (b, p) => int(b, p, 0, 0xff))) ?? [];
    out.thriPending = f.optional('thriPending', (g, k) => g.bool(k)) ?? false;
    return out;
  });
}
