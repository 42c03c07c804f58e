// The exit paths and interrupt plumbing, driven by the guest kit on real KVM.
import { spawn } from 'child_process';
import { EventFd } from '@tsvmm/kvm-native';
import { describeKvm } from '@tsvmm/kvm-native/testing';
import { GUEST_ELF, guestKit, lineValues, requireGuestKit, VMM_BIN } from './guest-kit';

const PIO_ECHO = 0x4000;
const IOEVENTFD_PORT = 0x4010;
const SYNC_PORT = 0x4020;
const TEST_MMIO = 0xfe000000;
const IOEVENTFD_MMIO = 0xfe001000;

describeKvm('guest exits handled in JS', () => {
  it('PIO: the guest reads back what the JS handler answered, for 1, 2 and 4-byte accesses', async () => {
    const g = guestKit('test=pio-echo');
    const seen: { size: number; value: number }[] = [];
    let last = 0;
    g.machine.pio.register(PIO_ECHO, 4, 'echo', {
      read: (_o, size) => ((~last >>> 0) & (size === 4 ? 0xffffffff : (1 << (size * 8)) - 1)) >>> 0,
      write: (_o, size, v) => {
        last = Number(v);
        seen.push({ size, value: last });
      },
    });
    const { exit, serial } = await g.run();
    expect(exit.code).toBe(0);
    const lines = lineValues(serial, 'pio-echo');
    expect(lines.length).toBeGreaterThanOrEqual(3);
    expect(lines.length).toBe(seen.length);
    for (const [i, l] of lines.entries()) {
      const size = Number(l.size);
      const mask = size === 4 ? 0xffffffff : (1 << (size * 8)) - 1;
      expect(seen[i]).toEqual({ size, value: Number(l.wrote) });
      expect(Number(l.read)).toBe(((~Number(l.wrote) >>> 0) & mask) >>> 0);
    }
    expect(new Set(lines.map((l) => l.size))).toEqual(new Set(['1', '2', '4']));
  });

  it('MMIO: 1, 2, 4 and 8-byte accesses reach the JS handler and complete', async () => {
    const g = guestKit('test=mmio-echo');
    let last = 0n;
    g.machine.mmio.register(TEST_MMIO, 0x1000, 'echo', {
      read: (_o, size) => (last + 1n) & ((1n << BigInt(size * 8)) - 1n),
      write: (_o, _size, v) => void (last = BigInt(v)),
    });
    const { exit, serial } = await g.run();
    expect(exit.code).toBe(0);
    const lines = lineValues(serial, 'mmio-echo');
    expect(new Set(lines.map((l) => l.size))).toEqual(new Set(['1', '2', '4', '8']));
    for (const l of lines) {
      const mask = (1n << BigInt(Number(l.size) * 8)) - 1n;
      expect(BigInt(l.read)).toBe((BigInt(l.wrote) + 1n) & mask);
    }
  });
});

describeKvm('ioeventfd', () => {
  const N = 500;

  it.each([
    ['pio', 'ioeventfd', IOEVENTFD_PORT],
    ['mmio', 'ioeventfd-mmio', IOEVENTFD_MMIO],
  ] as const)('%s: the eventfd counts every write and none reaches userspace', async (space, test, addr) => {
    const g = guestKit(`test=${test} count=${N}`);
    const efd = EventFd.create();
    g.machine.vm.ioeventfd({ addr, len: 4, fd: efd.fd, space });
    let synced = -1;
    const userWrites: number[] = [];
    g.machine.pio.register(SYNC_PORT, 4, 'sync', { read: () => 0, write: (_o, _s, v) => void (synced = Number(v)) });
    if (space === 'pio')
      g.machine.pio.register(IOEVENTFD_PORT, 4, 'notify', { read: () => 0, write: (_o, _s, v) => void userWrites.push(Number(v)) });
    else g.machine.mmio.register(IOEVENTFD_MMIO, 4, 'notify', { read: () => 0, write: (_o, _s, v) => void userWrites.push(Number(v)) });
    const { exit, serial } = await g.run();
    expect(exit.code).toBe(0);
    expect(serial).toContain(`${test} writes=${N}`);
    expect(synced).toBe(N);
    expect(efd.read()).toBe(BigInt(N));
    expect(userWrites).toEqual([]);
    if (space === 'pio') expect(g.machine.stats.perPort.get(IOEVENTFD_PORT)).toBeUndefined();
    else expect(g.machine.stats.mmio).toBe(0);
    efd.close();
  });

  it('datamatch: only matching writes signal, the others exit to userspace', async () => {
    const g = guestKit(`test=ioeventfd-datamatch count=${N}`);
    const efd = EventFd.create();
    g.machine.vm.ioeventfd({ addr: IOEVENTFD_PORT, len: 4, fd: efd.fd, space: 'pio', datamatch: 0x1234 });
    const userWrites: number[] = [];
    g.machine.pio.register(IOEVENTFD_PORT, 4, 'notify', { read: () => 0, write: (_o, _s, v) => void userWrites.push(Number(v)) });
    g.machine.pio.register(SYNC_PORT, 4, 'sync', { read: () => 0, write: () => undefined });
    const { exit } = await g.run();
    expect(exit.code).toBe(0);
    expect(efd.read()).toBe(BigInt(N));
    expect(userWrites.length).toBe(N);
    expect(new Set(userWrites)).toEqual(new Set([0x5678]));
    efd.close();
  });
});

describeKvm('interrupt injection', () => {
  const N = 5;

  /** Injects one interrupt each time the guest reports it is ready for the next (sync port). */
  function injectOnSync(g: ReturnType<typeof guestKit>, inject: (k: number) => void): number[] {
    const syncs: number[] = [];
    g.machine.pio.register(SYNC_PORT, 4, 'sync', {
      read: () => 0,
      write: (_o, _s, v) => {
        const k = Number(v);
        syncs.push(k);
        if (k < N) setImmediate(() => inject(k + 1));
      },
    });
    return syncs;
  }

  it('irqfd with an MSI GSI route: the guest counts every interrupt', async () => {
    const g = guestKit(`test=irq-msi count=${N}`);
    const gsi = g.machine.gsiRoutes.allocate();
    g.machine.gsiRoutes.setMsi(gsi, { addressLo: 0xfee00000, addressHi: 0, data: 0x40 });
    const efd = EventFd.create();
    g.machine.vm.irqfd(efd.fd, gsi);
    const syncs = injectOnSync(g, () => efd.write(1));
    const { exit, serial } = await g.run();
    expect(exit.code).toBe(0);
    expect(serial).toContain(`irq-msi received=${N}`);
    expect(syncs).toEqual([0, 1, 2, 3, 4, 5]);
    efd.close();
  });

  it('KVM_SIGNAL_MSI: the guest counts every interrupt', async () => {
    const g = guestKit(`test=irq-msi count=${N}`);
    const delivered: number[] = [];
    injectOnSync(g, () => delivered.push(g.machine.vm.signalMsi({ addressLo: 0xfee00000, addressHi: 0, data: 0x40 })));
    const { exit, serial } = await g.run();
    expect(exit.code).toBe(0);
    expect(serial).toContain(`irq-msi received=${N}`);
    expect(delivered).toEqual([1, 1, 1, 1, 1]);
  });

  it('KVM_IRQ_LINE through the IOAPIC: the guest counts every edge', async () => {
    const g = guestKit(`test=irq-ioapic count=${N} gsi=10`);
    injectOnSync(g, () => {
      g.machine.vm.irqLine(10, true);
      g.machine.vm.irqLine(10, false);
    });
    const { exit, serial } = await g.run();
    expect(exit.code).toBe(0);
    expect(serial).toContain(`irq-ioapic received=${N}`);
  });

  it('irqfd on an IOAPIC GSI keeps working after MSI routes were added', async () => {
    const g = guestKit(`test=irq-ioapic count=${N} gsi=11`);
    g.machine.gsiRoutes.setMsi(g.machine.gsiRoutes.allocate(), { addressLo: 0xfee00000, addressHi: 0, data: 0x40 });
    const efd = EventFd.create();
    g.machine.vm.irqfd(efd.fd, 11);
    injectOnSync(g, () => efd.write(1));
    const { exit, serial } = await g.run();
    expect(exit.code).toBe(0);
    expect(serial).toContain(`irq-ioapic received=${N}`);
    efd.close();
  });
});

describeKvm('pause and resume', () => {
  it('a paused VM makes no progress and finishes after resume', async () => {
    const g = guestKit('test=exit-bench count=30000');
    let exits = 0;
    g.machine.pio.register(0x4030, 4, 'bench', { read: () => 0, write: () => void exits++ });
    const done = g.run();
    while (exits < 100) await new Promise((r) => setTimeout(r, 5));
    await g.machine.pause();
    expect(g.machine.vcpus[0].state).toBe('paused');
    const frozen = exits;
    await new Promise((r) => setTimeout(r, 200));
    expect(exits).toBe(frozen);
    g.machine.resume();
    const { exit, serial } = await done;
    expect(exit.code).toBe(0);
    expect(exits).toBe(30000);
    expect(serial).toContain('exit-bench done count=30000');
  });
});

describeKvm('exits when the VMM shares one CPU', () => {
  it('under taskset -c 0 (the vCPU and JS threads never spin) every exit completes and is accounted for', async () => {
    requireGuestKit();
    const N = 3000;
    const args = [VMM_BIN, 'run', '--kernel', GUEST_ELF, '--cmdline', `test=exit-bench count=${N}`, '--serial', 'stdio'];
    const r = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve, reject) => {
      const p = spawn('taskset', ['-c', '0', process.execPath, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      p.stdout.on('data', (d) => (stdout += d));
      p.stderr.on('data', (d) => (stderr += d));
      const t = setTimeout(() => p.kill('SIGKILL'), 120_000);
      p.on('error', reject);
      p.on('close', (code) => {
        clearTimeout(t);
        resolve({ code, stdout, stderr });
      });
    });
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`exit-bench done count=${N}`);
    // Port 0x4030 is claimed by nobody in the CLI: every write is counted by the unclaimed-I/O accounting.
    expect(r.stderr).toContain(`totals reads=0 writes=${N} in 1 hole(s)`);
  }, 150_000);
});
