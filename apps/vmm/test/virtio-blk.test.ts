// virtio-blk inside the machine: where kicks travel (ioeventfd vs exit path), and
// DeviceEvent `call` honouring MSI-X masking. In-process so the test can look inside.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { describeKvm } from '@tsvmm/kvm-native/testing';
import { VirtioBlkPci } from '@tsvmm/virtio-blk';
import { defaultConfig, VmConfig } from '../src/config';
import { buildContainer, DeviceRegistry, TYPES } from '../src/container';
import { Machine } from '../src/machine/machine';
import { Monitor } from '../src/monitor/monitor';
import { loadPlugins } from '../src/plugins';
import { GUEST_ELF, requireGuestKit } from './guest-kit';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmm-blk-'));

function bootBlk(cmdline: string, deviceProps: Record<string, string>) {
  requireGuestKit();
  const img = path.join(tmp, `${Math.random().toString(36).slice(2)}.img`);
  fs.writeFileSync(img, Buffer.alloc(1024 * 512));
  const config: VmConfig = {
    ...defaultConfig(),
    kernel: GUEST_ELF,
    cmdline,
    memoryBytes: 64 * 2 ** 20,
    serial: { kind: 'none' },
    devices: [{ type: 'virtio-blk', id: 'd0', props: { file: img, ...deviceProps } }],
  };
  const registry = buildContainer(config, loadPlugins()).get<DeviceRegistry>(TYPES.DeviceRegistry);
  let out = '';
  const logs: string[] = [];
  const machine = new Machine({
    config,
    serialOut: (b) => (out += Buffer.from(b).toString('latin1')),
    createDevices: (ctx) => registry.createAll(ctx, config.devices),
    log: (m) => logs.push(m),
  });
  const dev = machine.devices[0] as VirtioBlkPci;
  return { machine, dev, out: () => out, logs, monitor: new Monitor(machine, (m) => logs.push(m)) };
}

/** Queue 0's doorbell: BAR4 (as programmed in config space) + the notify region. */
function notifyAddress(dev: VirtioBlkPci): number {
  const cfg = dev.transport.config;
  return ((cfg.getU32(0x20) & ~0xf) >>> 0) + cfg.getU32(0x24) * 2 ** 32 + 0x3000;
}

async function until(pred: () => boolean, what: string, ms = 30_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describeKvm('virtio-blk in the machine', () => {
  it('ioeventfd=on: every kick arrives through the eventfd and none exits to userspace', async () => {
    const g = bootBlk('test=blk-rw lba=8 sectors=32', { ioeventfd: 'on' });
    const exit = await g.machine.run();
    expect(exit.code).toBe(0);
    const c = g.dev.blk.counters[0];
    expect(c.kicksEventfd).toBeGreaterThan(0);
    expect(c.kicksExit).toBe(0);
    const notify = notifyAddress(g.dev);
    expect(g.machine.stats.perMmio.get(notify)).toBeUndefined();
    expect(g.machine.stats.mmio).toBeGreaterThan(0); // config-space traffic did exit: the counter works
  });

  it('ioeventfd=off: every kick is a notify write handled in the exit path', async () => {
    const g = bootBlk('test=blk-rw lba=8 sectors=32', { ioeventfd: 'off' });
    const exit = await g.machine.run();
    expect(exit.code).toBe(0);
    const c = g.dev.blk.counters[0];
    expect(c.kicksEventfd).toBe(0);
    expect(c.kicksExit).toBeGreaterThan(0);
    expect(g.machine.stats.perMmio.get(notifyAddress(g.dev))).toBe(c.kicksExit);
  });

  it('call on a masked vector sets its PBA bit and is delivered when the vector is unmasked', async () => {
    const g = bootBlk('test=blk-get-id', {});
    const blk = g.dev.blk;
    blk.faults[0].dropInterrupts = 1;
    const done = g.machine.run();
    await until(() => blk.counters[0].interruptsDropped === 1, 'the dropped interrupt');
    await g.monitor.stop();
    const pci = g.dev.transport;
    const vector = pci.queueVector(0);
    const ctrl = pci.barAddress(0)! + vector * 16 + 12;
    // Mask the vector through the MSI-X table, as the guest would.
    g.machine.mmio.write(ctrl, 4, 1);
    expect(pci.msix.vectorMasked(vector)).toBe(true);
    g.monitor.deviceEvent('d0', 'call', 0);
    expect(pci.msix.pending(vector)).toBe(true);
    expect(pci.msix.counters.pended).toBeGreaterThanOrEqual(1);
    const delivered = pci.msix.counters.delivered;
    g.machine.mmio.write(ctrl, 4, 0);
    expect(pci.msix.pending(vector)).toBe(false);
    expect(pci.msix.counters.delivered).toBe(delivered + 1);
    g.monitor.cont();
    const exit = await done;
    expect(exit.code).toBe(0);
    expect(g.out()).toContain('guest-kit: PASS test=blk-get-id');
    expect(g.logs).toContain('x-debug-device-event: call on device d0 queue 0');
  });

  it('a paused VM has no queue notifiers; cont restores them', async () => {
    // blk-get-id with its one kick dropped: the driver is at DRIVER_OK and waiting.
    const g2 = bootBlk('test=blk-get-id', {});
    g2.dev.blk.faults[0].dropKicks = 1;
    const done = g2.machine.run();
    await until(() => g2.dev.blk.counters[0].kicksDropped === 1, 'the dropped kick');
    expect(g2.dev.transport.hostNotifiersActive).toBe(true);
    await g2.monitor.stop();
    expect(g2.dev.transport.hostNotifiersActive).toBe(false);
    g2.monitor.cont();
    expect(g2.dev.transport.hostNotifiersActive).toBe(true);
    g2.monitor.deviceEvent('d0', 'kick', 0);
    expect((await done).code).toBe(0);
    expect(g2.dev.blk.counters[0].kicksEventfd).toBe(1);
  });
});
