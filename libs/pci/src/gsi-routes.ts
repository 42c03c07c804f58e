/**
 * The VM's GSI routing table. KVM_SET_GSI_ROUTING replaces the whole table, so
 * the default irqchip wiring (GSIs 0-15 to the PIC and IOAPIC, 16-23 to the
 * IOAPIC) is kept here and re-sent with every MSI route change.
 */
import { GsiRoute, uapi as U, Vm } from '@tsvmm/kvm-native';

export const FIRST_MSI_GSI = 24;
const IOAPIC_PINS = 24;

export class GsiRoutes {
  private readonly msi = new Map<number, { addressLo: number; addressHi: number; data: number }>();
  private nextGsi = FIRST_MSI_GSI;
  private readonly free: number[] = [];

  constructor(private readonly vm: Vm) {}

  /** Reserves a GSI for an MSI route (not programmed until setMsi). */
  allocate(): number {
    return this.free.pop() ?? this.nextGsi++;
  }

  release(gsi: number): void {
    if (this.msi.delete(gsi)) this.apply();
    this.free.push(gsi);
  }

  setMsi(gsi: number, msg: { addressLo: number; addressHi: number; data: number }): void {
    if (gsi < FIRST_MSI_GSI) throw new RangeError(`GSI ${gsi} belongs to the irqchip`);
    this.msi.set(gsi, msg);
    this.apply();
  }

  table(): GsiRoute[] {
    const routes: GsiRoute[] = [];
    for (let pin = 0; pin < IOAPIC_PINS; pin++) {
      // As KVM's default table: ISA GSIs reach both the PIC and the IOAPIC.
      if (pin < 16) routes.push({ gsi: pin, type: 'irqchip', irqchip: U.KVM_IRQCHIP_PIC_MASTER + (pin >= 8 ? 1 : 0), pin: pin % 8 });
      routes.push({ gsi: pin, type: 'irqchip', irqchip: U.KVM_IRQCHIP_IOAPIC, pin });
    }
    for (const [gsi, m] of [...this.msi.entries()].sort(([a], [b]) => a - b)) routes.push({ gsi, type: 'msi', ...m });
    return routes;
  }

  apply(): void {
    this.vm.setGsiRouting(this.table());
  }
}
