// A saved virtio-pci function from an untrusted stream: every transport field is checked
// (config space read-only bits, MSI-X table size, vectors) before anything is applied.
import { Kvm, Vm } from '@tsvmm/kvm-native';
import { describeKvm } from '@tsvmm/kvm-native/testing';
import { SplitVirtqueue, StateError, VirtioDevice, virtioUapi as V } from '@tsvmm/virtio-core';
import { fakeMemory } from '@tsvmm/virtio-core/testing';
import { GsiRoutes } from './gsi-routes';
import { IoBus } from './io-bus';
import { MmioAllocator } from './mmio-allocator';
import { PciBus } from './pci-bus';
import { VirtioPciDevice } from './virtio-pci';

class Dev extends VirtioDevice {
  constructor() {
    super(fakeMemory(1 << 20), { id: 'd0', deviceId: 8, numQueues: 2, queueMaxSize: 16, features: 0n });
  }
  readConfig(): number {
    return 0;
  }
  protected processQueue(_q: SplitVirtqueue): void {}
}

describeKvm('virtio-pci state from an untrusted stream', () => {
  let kvm: Kvm;
  let vm: Vm;
  const make = () => {
    const mmio = new IoBus('mmio');
    const pci = new VirtioPciDevice(
      new Dev(),
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
    return { pci, mmio };
  };
  let saved: { t: any; d: any };

  beforeAll(() => {
    kvm = Kvm.open();
    vm = kvm.createVm();
    vm.createIrqchip();
    const { pci, mmio } = make();
    pci.configWrite(0x04, 2, 0x6);
    pci.configWrite(pci.msix.capOffset + 2, 2, 0x8000);
    const bar = pci.barAddress(4)!;
    const common = (off: number, size: number, v: number) => mmio.write(bar + off, size, v);
    common(V.OFF_virtio_pci_common_cfg_device_status, 1, V.VIRTIO_CONFIG_S_ACKNOWLEDGE | V.VIRTIO_CONFIG_S_DRIVER);
    common(V.OFF_virtio_pci_common_cfg_driver_feature_select, 4, 1);
    common(V.OFF_virtio_pci_common_cfg_driver_feature, 4, 1); // VERSION_1
    common(V.OFF_virtio_pci_common_cfg_device_status, 1, 0xb);
    common(V.OFF_virtio_pci_common_cfg_queue_select, 2, 0);
    common(V.OFF_virtio_pci_common_cfg_queue_desc, 4, 0x10000);
    common(V.OFF_virtio_pci_common_cfg_queue_driver, 4, 0x10400);
    common(V.OFF_virtio_pci_common_cfg_queue_device, 4, 0x10800);
    common(V.OFF_virtio_pci_common_cfg_queue_msix_vector, 2, 1);
    common(V.OFF_virtio_pci_common_cfg_queue_enable, 2, 1);
    common(V.OFF_virtio_pci_common_cfg_device_status, 1, 0xf);
    saved = JSON.parse(JSON.stringify({ t: pci.saveState(), d: pci.device.saveState() }));
    pci.destroy();
  });
  afterAll(() => {
    vm.close();
    kvm.close();
  });

  it('a saved function loads into a fresh one', () => {
    const { pci } = make();
    pci.loadState(saved.t, saved.d);
    expect(pci.device.queues[0].active).toBe(true);
    pci.destroy();
  });

  const bad: [string, (t: any) => void, RegExp][] = [
    [
      'a queue vector outside the MSI-X table',
      (t) => (t.queueVectors[0] = 100),
      /^transport\.queueVectors\[0\]: vector 100 is outside the MSI-X table of 3 \(nor VIRTIO_MSI_NO_VECTOR\)$/,
    ],
    ['a negative vector', (t) => (t.queueVectors[1] = -1), /transport\.queueVectors\[1\]: -1 is out of range/],
    ['a config vector outside the table', (t) => (t.msixConfig = 3), /transport\.msixConfig: vector 3 is outside the MSI-X table/],
    ['a fractional vector', (t) => (t.msixConfig = 0.5), /transport\.msixConfig: expected an integer, got 0\.5/],
    ['one vector per queue missing', (t) => t.queueVectors.pop(), /transport\.queueVectors: the stream has 1 queues, this device has 2/],
    [
      'an MSI-X table of another size',
      (t) => (t.msixTable = Buffer.alloc(32).toString('base64')),
      /transport\.msixTable: 32 bytes, expected 48/,
    ],
    ['a config space that is not base64', (t) => (t.config = '!!!'), /transport\.config: expected base64 bytes/],
    [
      'a truncated config space',
      (t) => (t.config = Buffer.from(t.config, 'base64').subarray(0, 64).toString('base64')),
      /transport\.config: 64 bytes, expected 256/,
    ],
    ['another device id', (t) => (t.config = patched(t.config, 2, 0x99)), /transport\.config: PCI vendor\/device id differs/],
    [
      'a changed read-only class code',
      (t) => (t.config = patched(t.config, 0x0b, 0x02)),
      /transport\.config: byte 0xb is 0x2 where this function has read-only 0x1/,
    ],
    ['an ISR above 8 bits', (t) => (t.isr = 256), /transport\.isr: 256 is out of range \(0\.\.255\)/],
    ['a missing queue select', (t) => delete t.queueSelect, /transport\.queueSelect: expected an integer, got missing/],
    ['a transport that is not an object', (t) => (t.__replace = 7), /transport: expected an object, got 7/],
  ];
  it.each(bad)('refuses %s, naming the field, before applying anything', (_what, breakIt, msg) => {
    let t = JSON.parse(JSON.stringify(saved.t));
    breakIt(t);
    if (t.__replace !== undefined) t = t.__replace;
    const { pci } = make();
    const before = Buffer.from(pci.config.bytes);
    let err: unknown;
    try {
      pci.loadState(t, saved.d);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(StateError);
    expect((err as Error).message).toMatch(msg);
    expect(Buffer.from(pci.config.bytes).equals(before)).toBe(true);
    expect(pci.device.status).toBe(0);
    pci.destroy();
  });

  it('refuses a bad device part before the transport is applied', () => {
    const d = JSON.parse(JSON.stringify(saved.d));
    d.queues[0].lastAvailIdx = -1;
    const { pci } = make();
    const before = Buffer.from(pci.config.bytes);
    expect(() => pci.loadState(saved.t, d)).toThrow(/^virtio\.queues\[0\]\.lastAvailIdx: -1 is out of range/);
    expect(Buffer.from(pci.config.bytes).equals(before)).toBe(true);
    pci.destroy();
  });
});

function patched(b64: string, off: number, value: number): string {
  const b = Buffer.from(b64, 'base64');
  b[off] = value;
  return b.toString('base64');
}
