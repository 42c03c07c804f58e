// The vhost handover in VirtioPciDevice on a real KVM VM (no vCPU): who owns a queue's notifier,
// DeviceEvent kick into the backend's eventfd, the VMM standing in while kicks are dropped, and
// the call eventfd a backend gets (the MSI-X irqfd, pending in the PBA while masked).
import { EventFd, Kvm, Vm } from '@tsvmm/kvm-native';
import { describeKvm } from '@tsvmm/kvm-native/testing';
import { SplitVirtqueue, VirtioDevice, virtioUapi as V } from '@tsvmm/virtio-core';
import { fakeMemory } from '@tsvmm/virtio-core/testing';
import { GsiRoutes } from './gsi-routes';
import { IoBus } from './io-bus';
import { MmioAllocator } from './mmio-allocator';
import { PciBus } from './pci-bus';
import { VirtioPciDevice } from './virtio-pci';

class CountingDevice extends VirtioDevice {
  readonly processed: number[] = [];
  constructor() {
    super(fakeMemory(1 << 20), { id: 't0', deviceId: 8, numQueues: 2, queueMaxSize: 16, features: 0n });
  }
  readConfig(): number {
    return 0;
  }
  protected processQueue(q: SplitVirtqueue): void {
    this.processed.push(q.index);
  }
}

const settle = () => new Promise((r) => setTimeout(r, 30));

describeKvm('VirtioPciDevice: queue notifiers handed to a vhost backend', () => {
  let kvm: Kvm;
  let vm: Vm;
  let dev: CountingDevice;
  let pci: VirtioPciDevice;
  let mmio: IoBus;
  const closeMe: EventFd[] = [];

  beforeEach(() => {
    kvm = Kvm.open();
    vm = kvm.createVm();
    vm.createIrqchip();
    dev = new CountingDevice();
    mmio = new IoBus('mmio');
    pci = new VirtioPciDevice(
      dev,
      {
        vm,
        pci: new PciBus(),
        mmio,
        gsiRoutes: new GsiRoutes(vm),
        mmio32: new MmioAllocator(0xc0000000, 0x10000000),
        log: () => undefined,
      },
      { classCode: 0x010000 },
    );
    // What firmware and the driver do: memory decode and bus mastering on, MSI-X enabled, queues ready, DRIVER_OK.
    pci.configWrite(0x04, 2, 0x6);
    pci.configWrite(pci.msix.capOffset + 2, 2, 0x8000);
    const bar = pci.barAddress(4)!;
    const common = (off: number, size: number, v: number) => mmio.write(bar + off, size, v);
    common(V.OFF_virtio_pci_common_cfg_device_status, 1, V.VIRTIO_CONFIG_S_ACKNOWLEDGE | V.VIRTIO_CONFIG_S_DRIVER);
    common(V.OFF_virtio_pci_common_cfg_driver_feature_select, 4, 1);
    common(V.OFF_virtio_pci_common_cfg_driver_feature, 4, 1); // VERSION_1
    common(V.OFF_virtio_pci_common_cfg_device_status, 1, 0xb);
    for (let q = 0; q < 2; q++) {
      common(V.OFF_virtio_pci_common_cfg_queue_select, 2, q);
      common(V.OFF_virtio_pci_common_cfg_queue_desc, 4, 0x10000 + q * 0x1000);
      common(V.OFF_virtio_pci_common_cfg_queue_driver, 4, 0x10400 + q * 0x1000);
      common(V.OFF_virtio_pci_common_cfg_queue_device, 4, 0x10800 + q * 0x1000);
      common(V.OFF_virtio_pci_common_cfg_queue_msix_vector, 2, q + 1);
      common(V.OFF_virtio_pci_common_cfg_queue_enable, 2, 1);
    }
    // MSI-X entries 1 and 2 (queue 0 and 1): an address, unmasked.
    for (const v of [1, 2]) {
      pci.msix.tableDevice.write(v * 16, 4, 0xfee00000);
      pci.msix.tableDevice.write(v * 16 + 8, 4, 0x40 + v);
      pci.msix.tableDevice.write(v * 16 + 12, 4, 0);
    }
    common(V.OFF_virtio_pci_common_cfg_device_status, 1, 0xf);
  });

  afterEach(() => {
    pci.destroy();
    for (const e of closeMe.splice(0)) e.close();
    vm.close();
    kvm.close();
  });

  it("the VMM owns both notifiers until a backend takes queue 1; handing it back restores the VMM's ioeventfd", () => {
    expect([pci.queueNotifierKind(0), pci.queueNotifierKind(1)]).toEqual(['own', 'own']);
    const kick = EventFd.create();
    closeMe.push(kick);
    pci.setBackendKicks([undefined, kick]);
    expect([pci.queueNotifierKind(0), pci.queueNotifierKind(1)]).toEqual(['own', 'backend']);
    expect(pci.backendKick(1)).toBe(kick);
    pci.setBackendKicks(undefined);
    expect(pci.queueNotifierKind(1)).toBe('own');
    expect(kick.read()).toBe(0n); // the VMM never reads the backend's eventfd
  });

  it("DeviceEvent kick on a backend-owned queue writes the backend's kick eventfd, not the VMM's device", async () => {
    const kick = EventFd.create();
    closeMe.push(kick);
    pci.setBackendKicks([undefined, kick]);
    pci.kick(1);
    await settle();
    expect(kick.read()).toBe(1n);
    expect(dev.processed).toEqual([]);
    expect(dev.counters[1].debugEvents).toBe(1);
  });

  it('dropping kicks puts the VMM in front of the backend until the count runs out, then the backend owns the notifier again', async () => {
    const kick = EventFd.create();
    closeMe.push(kick);
    pci.setBackendKicks([undefined, kick]);
    dev.faults[1].dropKicks = 1;
    await settle();
    expect(pci.queueNotifierKind(1)).toBe('interposed');
    dev.notify(1, 'ioeventfd'); // what the interposed eventfd's watcher does for a guest kick
    expect(dev.counters[1].kicksDropped).toBe(1);
    await settle();
    expect(pci.queueNotifierKind(1)).toBe('backend');
  });

  it('DeviceEvent kick always reaches the device: a pending kick drop takes only guest kicks (own ioeventfd and interposed)', async () => {
    dev.faults[0].dropKicks = 1;
    pci.kick(0);
    await settle();
    expect(dev.processed).toEqual([0]);
    expect(dev.counters[0]).toMatchObject({ kicksDropped: 0, kicksEventfd: 1, debugEvents: 1 });
    expect(dev.faults[0].dropKicks).toBe(1); // still armed for the guest's next kick
    dev.notify(0, 'ioeventfd');
    expect(dev.counters[0].kicksDropped).toBe(1);
    expect(dev.processed).toEqual([0]);
    // A vhost queue while its kicks are dropped: the VMM stands in, and the operator's kick still goes through.
    const kick = EventFd.create();
    closeMe.push(kick);
    pci.setBackendKicks([undefined, kick]);
    dev.faults[1].dropKicks = 1;
    await settle();
    expect(pci.queueNotifierKind(1)).toBe('interposed');
    pci.kick(1);
    expect(dev.processed).toEqual([0, 1]);
    expect(dev.counters[1]).toMatchObject({ kicksDropped: 0, debugEvents: 1 });
    expect(dev.faults[1].dropKicks).toBe(1);
  });

  it("a backend's call eventfd is the queue vector's irqfd: masked, a signal sets the PBA bit; unmasking clears it (delivered)", async () => {
    const call = pci.queueCallEventFd(0);
    expect(call).toBe(pci.msix.eventFd(1));
    pci.msix.tableDevice.write(1 * 16 + 12, 4, 1); // mask entry 1
    call.write(1); // the backend completes I/O
    expect(Number(pci.msix.pbaDevice.read(0, 8)) & 0x2).toBe(0x2);
    pci.msix.tableDevice.write(1 * 16 + 12, 4, 0); // unmask: delivered through KVM
    expect(pci.msix.pending(1)).toBe(false);
    expect(pci.msix.counters.delivered).toBeGreaterThan(0);
  });

  it('a queue without a vector gets a VMM-watched call eventfd that raises the queue interrupt the ordinary way', async () => {
    const bar = pci.barAddress(4)!;
    mmio.write(bar + V.OFF_virtio_pci_common_cfg_queue_select, 2, 1);
    let changed = -1;
    pci.onCallEventFdChanged = (q) => (changed = q);
    mmio.write(bar + V.OFF_virtio_pci_common_cfg_queue_msix_vector, 2, 0xffff);
    expect(changed).toBe(1);
    const call = pci.queueCallEventFd(1);
    expect(call).not.toBe(pci.msix.eventFd(2));
    call.write(1);
    await settle();
    expect(pci.isrStatus & 1).toBe(1);
  });
});
