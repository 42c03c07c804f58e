/**
 * The Intel MultiProcessor Specification 1.4 tables: how a guest without ACPI
 * finds its CPUs, the IOAPIC and the ISA interrupt wiring.
 */
import { GuestMemory } from '@tsvmm/virtio-core';
import { IOAPIC_ADDR, LAPIC_ADDR, MPTABLE_START } from './layout';

const MPC_CPU = 0;
const MPC_BUS = 1;
const MPC_IOAPIC = 2;
const MPC_INTSRC = 3;
const MPC_LINTSRC = 4;
const MP_IRQ_TYPE_INT = 0;
const MP_IRQ_TYPE_EXTINT = 3;
const MP_IRQ_TYPE_NMI = 1;
const CPU_ENABLED = 1;
const CPU_BOOTPROCESSOR = 2;
const ISA_BUS_ID = 0;
const PCI_BUS_ID = 1;
export const IOAPIC_PINS = 24;

function checksum(b: Uint8Array): number {
  let s = 0;
  for (const x of b) s = (s + x) & 0xff;
  return (0x100 - s) & 0xff;
}

/** Writes the floating pointer and configuration table at 0xF0000. Returns the bytes used. */
export function writeMpTable(mem: GuestMemory, cpus: number): number {
  const entries: number[][] = [];
  const le = (v: number, n: number) => Array.from({ length: n }, (_, i) => (v >>> (8 * i)) & 0xff);
  const cpuSignature = 0x600; // family 6
  const featureFlags = 0x201; // FPU, APIC
  for (let i = 0; i < cpus; i++) {
    entries.push([
      MPC_CPU,
      i,
      0x14,
      CPU_ENABLED | (i === 0 ? CPU_BOOTPROCESSOR : 0),
      ...le(cpuSignature, 4),
      ...le(featureFlags, 4),
      ...le(0, 8),
    ]);
  }
  const bus = (id: number, name: string) => [MPC_BUS, id, ...Buffer.from(name.padEnd(6, ' '), 'latin1')];
  entries.push(bus(PCI_BUS_ID, 'PCI'));
  entries.push(bus(ISA_BUS_ID, 'ISA'));
  const ioapicId = cpus;
  entries.push([MPC_IOAPIC, ioapicId, 0x11, 1, ...le(IOAPIC_ADDR, 4)]);
  // ISA IRQ n -> IOAPIC pin n (KVM's in-kernel IOAPIC wires the PIT to pin 2 as well as 0;
  // Linux's MP parser handles the IRQ0->pin2 override itself when pin 0 is listed).
  for (let irq = 0; irq < 16; irq++) {
    entries.push([MPC_INTSRC, MP_IRQ_TYPE_INT, ...le(0, 2), ISA_BUS_ID, irq, ioapicId, irq]);
  }
  entries.push([MPC_LINTSRC, MP_IRQ_TYPE_EXTINT, ...le(0, 2), ISA_BUS_ID, 0, 0xff, 0]);
  entries.push([MPC_LINTSRC, MP_IRQ_TYPE_NMI, ...le(0, 2), ISA_BUS_ID, 0, 0xff, 1]);

  const body = entries.flat();
  const headerLen = 44;
  const table = new Uint8Array(headerLen + body.length);
  const dv = new DataView(table.buffer);
  table.set(Buffer.from('PCMP', 'latin1'), 0);
  dv.setUint16(4, table.length, true);
  table[6] = 4; // spec revision 1.4
  table.set(Buffer.from('TSVMM   ', 'latin1'), 8); // OEM id (8)
  table.set(Buffer.from('KVM VM      ', 'latin1'), 16); // product id (12)
  dv.setUint16(34, entries.length, true);
  dv.setUint32(36, LAPIC_ADDR, true);
  table.set(body, headerLen);
  table[7] = checksum(table);

  const fpAddr = MPTABLE_START;
  const tableAddr = MPTABLE_START + 16;
  const fp = new Uint8Array(16);
  fp.set(Buffer.from('_MP_', 'latin1'), 0);
  new DataView(fp.buffer).setUint32(4, tableAddr, true);
  fp[8] = 1; // length in 16-byte units
  fp[9] = 4; // revision 1.4
  fp[10] = checksum(fp);
  mem.write(fpAddr, fp);
  mem.write(tableAddr, table);
  return 16 + table.length;
}
