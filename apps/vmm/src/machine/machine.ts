/**
 * The machine: KVM VM, guest RAM, in-kernel irqchip and PIT, the port and
 * MMIO buses with the platform devices, PCI bus 0, the loaded kernel, and the
 * vCPU threads. `run()` resolves with how the guest ended.
 */
import * as fs from 'fs';
import { Kvm, KvmRun, uapi as U, Vcpu, VcpuAction, VcpuFaultError, Vm } from '@tsvmm/kvm-native';
import { Device, DeviceContext, GsiRoutes, IoBus, MmioAllocator, PCI_CONF1_ADDRESS_PORT, PciBus, PciHostBridge } from '@tsvmm/pci';
import { DEFAULT_POLL_SETTINGS, GuestMemory, ioThreadHosts, LogRateLimiter, PollSettings } from '@tsvmm/virtio-core';
import { VmConfig } from '../config';
import { CmosRtc } from '../devices/cmos-rtc';
import { ExitPort, I8042Command, Sink } from '../devices/platform';
import { Uart16550 } from '../devices/uart16550';
import { cpuidFor, setupBootVcpu } from './cpu-setup';
import { KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR, PCI_MMIO32_BASE, PCI_MMIO32_SIZE, ramLayout } from './layout';
import { BootEntry, KernelImageError, loadKernel, LoadRequest } from './loader';
import { writeMpTable } from './mptable';

export const COM1_PORT = 0x3f8;
export const COM1_IRQ = 4;
export const EXIT_PORT = 0xf4;

export type MachineExitReason = 'exit-port' | 'power-off' | 'reset' | 'fault' | 'stopped';

export interface MachineExit {
  reason: MachineExitReason;
  /** Process exit status the CLI uses. */
  code: number;
  message: string;
  fault?: VcpuFaultError;
}

export const EXIT_CODE_TRIPLE_FAULT = 112;
export const EXIT_CODE_INTERNAL_ERROR = 113;
export const EXIT_CODE_ENTRY_FAILURE = 114;
export const EXIT_CODE_VMM_ERROR = 1;
/** Distinct MMIO addresses counted in ExitStats.perMmio; later ones only in the totals. */
export const MAX_MMIO_STATS = 4096;
/** KVM exit reasons by name, for the exit counters. */
const EXIT_REASON_NAMES: Record<number, string> = {
  [U.KVM_EXIT_IO]: 'io',
  [U.KVM_EXIT_MMIO]: 'mmio',
  [U.KVM_EXIT_SYSTEM_EVENT]: 'system-event',
  [U.KVM_EXIT_HLT]: 'hlt',
};

/** Distinct exit-path errors logged one by one; later kinds share one entry (LogRateLimiter's maxKinds). */
const MAX_LOGGED_ERRORS = 64;

export interface MachineOptions {
  config: VmConfig;
  /** Where COM1's output goes (the CLI wires stdio or a file). */
  serialOut?: (bytes: Uint8Array) => void;
  /** Creates the configured --device instances once the buses exist. */
  /** Creates the configured devices; yielded one by one so later ones can find earlier ones (ctx.device). */
  createDevices?: (ctx: DeviceContext) => Iterable<Device>;
  log?: (message: string) => void;
  kvm?: Kvm;
}

export interface ExitStats {
  pio: number;
  mmio: number;
  /** Exits per port, for the ports that were hit. */
  perPort: Map<number, number>;
  /** Exits per MMIO address, for the first MAX_MMIO_STATS addresses hit (bounded whatever the guest does). */
  perMmio: Map<number, number>;
}

export class Machine {
  readonly kvm: Kvm;
  readonly vm: Vm;
  readonly memory: GuestMemory;
  readonly pio = new IoBus('pio');
  readonly mmio = new IoBus('mmio');
  readonly pci = new PciBus();
  readonly mmio32 = new MmioAllocator(PCI_MMIO32_BASE, PCI_MMIO32_SIZE);
  readonly vcpus: Vcpu[] = [];
  readonly serial: Uart16550;
  readonly devices: Device[] = [];
  boot: BootEntry;
  private readonly loadRequest: Omit<LoadRequest, 'memory'>;
  readonly gsiRoutes: GsiRoutes;
  readonly stats: ExitStats = { pio: 0, mmio: 0, perPort: new Map(), perMmio: new Map() };
  /** ms since process start when the guest wrote its first serial byte. */
  firstSerialByteAt: number | undefined;

  private exit: MachineExit | undefined;
  private resolveRun: ((e: MachineExit) => void) | undefined;
  private readonly runPromise: Promise<MachineExit>;
  private readonly serialOut: (bytes: Uint8Array) => void;
  private readonly log: (m: string) => void;
  /**
   * Errors on the exit path (an unexpected exit reason, a device that threw):
   * each kind logged once, repeats counted and summarised at most every 10 s
   * and when the run ends.
   */
  private readonly exitErrors = new LogRateLimiter((m) => this.log(m), {
    burst: 1,
    refill: false,
    maxKinds: MAX_LOGGED_ERRORS,
    lastOfBurst: () => '',
    summary: (kind, n) =>
      kind === LogRateLimiter.OVERFLOW_KIND
        ? `${n} more exit-handling error(s) of further kinds (more than ${MAX_LOGGED_ERRORS - 1} kinds; not logged one by one)`
        : `${kind}: ${n} more time(s)`,
  });
  /** vCPU exits handled, by KVM exit reason number (a plain array: counted on every exit). */
  private readonly exitsByReason: number[] = [];
  private started = false;
  private paused = false;
  /** pause()/resume() request count: a pause overtaken by a resume leaves the devices alone. */
  private runGen = 0;
  private pausing: Promise<void> | undefined;
  private devicesStopped = false;
  private ownsKvm: boolean;

  /**
   * The iothreads: those declared (--object iothread) in order, then any a
   * device started by name alone; each with its poll settings and, while its
   * worker runs (started by the first device naming it), the worker's
   * kernel thread id and the devices on it.
   */
  iothreads(): { id: string; poll: PollSettings; threadId?: number; devices: string[] }[] {
    const c = this.opts.config;
    const hosts = ioThreadHosts(this.vm);
    const ids = [...(c.iothreads ?? [])];
    for (const id of hosts.keys()) if (!ids.includes(id)) ids.push(id);
    return ids.map((id) => {
      const h = hosts.get(id);
      const live = h?.alive ? h : undefined;
      return { id, poll: c.iothreadPoll?.[id] ?? DEFAULT_POLL_SETTINGS, threadId: live?.threadId, devices: live?.devices ?? [] };
    });
  }

  constructor(private readonly opts: MachineOptions) {
    const c = opts.config;
    this.log = opts.log ?? ((m) => process.stderr.write(`vmm: ${m}\n`));
    this.serialOut = opts.serialOut ?? (() => undefined);
    this.runPromise = new Promise((resolve) => (this.resolveRun = resolve));

    const kernel = readFileOrThrow('--kernel', c.kernel);
    const initrd = c.initrd ? readFileOrThrow('--initrd', c.initrd) : undefined;

    this.ownsKvm = !opts.kvm;
    this.kvm = opts.kvm ?? Kvm.open();
    this.vm = this.kvm.createVm();
    try {
      // TSS and identity-map pages are needed by VMX hosts for real mode; harmless elsewhere.
      this.vm.setIdentityMapAddr(KVM_IDENTITY_MAP_ADDR);
      this.vm.setTssAddr(KVM_TSS_ADDR);
      this.vm.createIrqchip();
      this.vm.createPit2(U.KVM_PIT_SPEAKER_DUMMY);
      this.gsiRoutes = new GsiRoutes(this.vm);

      const layout = ramLayout(c.memoryBytes);
      const regions = layout.regions.map((r) =>
        this.vm.addMemoryRegion({ slot: r.slot, guestPhysAddr: r.guestPhysAddr, size: r.size, name: `guest-ram-${r.slot}` }),
      );
      // Each region comes as 1 GiB host buffers (a V8 ArrayBuffer is at most 4 GiB); GuestMemory joins them.
      this.memory = new GuestMemory(regions.flatMap((r) => r.pieces));

      // Platform devices.
      this.serial = new Uart16550(
        (b) => this.onSerialByte(b),
        (level) => this.vm.irqLine(COM1_IRQ, level),
      );
      this.pio.unclaimed.log = this.log;
      this.mmio.unclaimed.log = this.log;
      this.pio.register(COM1_PORT, 8, 'serial0 (16550A)', this.serial);
      this.pio.register(0x60, 1, 'i8042-data', new Sink());
      this.pio.register(
        0x64,
        1,
        'i8042',
        new I8042Command(() =>
          this.requestExit({ reason: 'reset', code: 0, message: 'guest requested a reset (i8042); this VMM does not reboot' }),
        ),
      );
      this.pio.register(
        EXIT_PORT,
        4,
        'exit-port',
        new ExitPort((code) => this.requestExit({ reason: 'exit-port', code, message: `guest wrote ${code} to the exit port` })),
      );
      this.pio.register(0x80, 1, 'post-code', new Sink());

      this.pio.register(0x70, 2, 'cmos-rtc', new CmosRtc(c.memoryBytes));
      this.pio.register(PCI_CONF1_ADDRESS_PORT, 8, 'pci-conf1', this.pci.conf1);
      this.pci.attach(new PciHostBridge(), 0);
      this.pci.onResetControl = () =>
        this.requestExit({ reason: 'reset', code: 0, message: 'guest requested a reset (port 0xcf9); this VMM does not reboot' });

      // Guest-visible boot data.
      writeMpTable(this.memory, c.cpus);
      this.loadRequest = { kernel, kernelPath: c.kernel, initrd, cmdline: c.cmdline, lowRamEnd: layout.lowRamEnd, e820: layout.e820 };
      this.boot = loadKernel({ ...this.loadRequest, memory: this.memory });

      const ctx: DeviceContext = {
        vm: this.vm,
        memory: this.memory,
        pio: this.pio,
        mmio: this.mmio,
        pci: this.pci,
        gsiRoutes: this.gsiRoutes,
        mmio32: this.mmio32,
        log: this.log,
        device: (id) => this.devices.find((d) => d.id === id),
        iothread: (id) => {
          const poll = c.iothreadPoll?.[id];
          return poll && { poll };
        },
      };
      // One at a time, so a device can find the ones configured before it (its bus).
      if (opts.createDevices) for (const d of opts.createDevices(ctx)) this.devices.push(d);

      const cpuid = this.kvm.supportedCpuid();
      for (let i = 0; i < c.cpus; i++) {
        const v = this.vm.createVcpu(i);
        v.setCpuid(cpuidFor(cpuid, i, c.cpus));
        if (i === 0) setupBootVcpu(v, this.memory, this.boot);
        // Application processors wait for INIT/SIPI in the in-kernel LAPIC.
        this.vcpus.push(v);
      }
    } catch (e) {
      this.vm.close();
      if (this.ownsKvm) this.kvm.close();
      throw e;
    }
  }

  /**
   * Starts every vCPU (unless `startPaused`: then the first resume() does);
   * resolves when the guest ends (exit port, power-off, reset, fault) or stop() is called.
   */
  run(opts: { startPaused?: boolean } = {}): Promise<MachineExit> {
    if (opts.startPaused && !this.started) {
      this.paused = true;
      this.devicesStopped = true;
      for (const d of this.devices) d.setRunning?.(false);
      return this.runPromise;
    }
    this.startVcpus();
    return this.runPromise;
  }

  private startVcpus(): void {
    if (!this.started) {
      this.started = true;
      for (const v of this.vcpus) {
        v.start({
          onExit: (run) => this.onExit(run),
          onFault: (f) => this.onFault(f),
        });
      }
    }
  }

  /**
   * Stops the vCPUs (QMP `stop`): devices drop their host notifiers while the
   * VM is stopped. A second pause() while one is under way waits for the same
   * one (never returns while a vCPU still runs); a resume() that overtakes a
   * pause wins (the pause then resolves without stopping the devices).
   */
  pause(): Promise<void> {
    if (this.exit) return Promise.resolve();
    if (this.paused) return this.pausing ?? Promise.resolve();
    this.paused = true;
    const gen = ++this.runGen;
    const p = (async () => {
      await Promise.all(this.vcpus.map((v) => v.pause()));
      if (gen !== this.runGen || this.exit) return;
      this.devicesStopped = true;
      for (const d of this.devices) d.setRunning?.(false);
    })();
    this.pausing = p;
    void p.finally(() => {
      if (this.pausing === p) this.pausing = undefined;
    });
    return p;
  }

  /** Resumes a paused VM (QMP `cont`): notifiers first, then the vCPUs. */
  resume(): void {
    if (this.exit || !this.paused) return;
    this.paused = false;
    this.runGen++;
    this.pausing = undefined;
    if (this.devicesStopped) {
      this.devicesStopped = false;
      for (const d of this.devices) d.setRunning?.(true);
    }
    if (!this.started) this.startVcpus();
    else for (const v of this.vcpus) v.resume();
  }

  /**
   * System reset (QMP system_reset): devices back to power-on state, the
   * kernel and boot data reloaded, the boot vCPU at its entry point, the APs
   * waiting for INIT/SIPI. The in-kernel irqchip keeps its state.
   */
  async reset(): Promise<void> {
    if (this.exit) return;
    const wasPaused = this.paused;
    await this.pause();
    for (const d of this.devices) d.reset?.();
    writeMpTable(this.memory, this.vcpus.length);
    this.boot = loadKernel({ ...this.loadRequest, memory: this.memory });
    this.vcpus.forEach((v, i) => {
      if (i === 0) {
        v.setMpState(U.KVM_MP_STATE_RUNNABLE);
        setupBootVcpu(v, this.memory, this.boot);
      } else v.setMpState(U.KVM_MP_STATE_UNINITIALIZED);
    });
    if (!wasPaused) this.resume();
  }

  /** vCPU exits handled, by KVM exit reason (--metrics). */
  get exitCounts(): Map<string, number> {
    const m = new Map<string, number>();
    this.exitsByReason.forEach((n, r) => {
      if (n) m.set(r === 64 ? 'other' : (EXIT_REASON_NAMES[r] ?? String(r)), n);
    });
    return m;
  }

  get config(): VmConfig {
    return this.opts.config;
  }

  get isPaused(): boolean {
    return this.paused;
  }

  /** Ends the VM from the host side. */
  stop(message = 'stopped by the VMM'): Promise<MachineExit> {
    this.requestExit({ reason: 'stopped', code: 0, message });
    return this.runPromise;
  }

  /** Ends the run: stops all vCPUs, releases devices and the VM, then resolves run(). */
  requestExit(exit: MachineExit): void {
    if (this.exit) return;
    this.exit = exit;
    this.pio.unclaimed.flush();
    this.mmio.unclaimed.flush();
    this.exitErrors.flush();
    void (async () => {
      await Promise.all(this.vcpus.map((v) => v.stop()));
      for (const d of this.devices) {
        try {
          await d.destroy?.();
        } catch (e) {
          this.log(`device ${d.id}: destroy failed: ${(e as Error).message}`);
        }
      }
      this.vm.close();
      if (this.ownsKvm) this.kvm.close();
      this.resolveRun!(exit);
    })();
  }

  get exited(): MachineExit | undefined {
    return this.exit;
  }

  private onSerialByte(b: number): void {
    if (this.firstSerialByteAt === undefined) this.firstSerialByteAt = performance.now();
    this.serialOut(Uint8Array.of(b));
  }

  private onFault(f: VcpuFaultError): void {
    const code =
      f.fault.kind === 'shutdown'
        ? EXIT_CODE_TRIPLE_FAULT
        : f.fault.kind === 'fail-entry'
          ? EXIT_CODE_ENTRY_FAILURE
          : f.fault.kind === 'internal-error'
            ? EXIT_CODE_INTERNAL_ERROR
            : EXIT_CODE_VMM_ERROR;
    this.requestExit({ reason: 'fault', code, message: f.message, fault: f });
  }

  private onExit(run: KvmRun): VcpuAction {
    const reason = run.exitReason;
    // KVM's exit reasons are small numbers; anything else shares slot 64 ('other') rather than growing the array.
    const slot = reason < 64 ? reason : 64;
    this.exitsByReason[slot] = (this.exitsByReason[slot] ?? 0) + 1;
    try {
      switch (reason) {
        case U.KVM_EXIT_IO:
          this.onPio(run);
          break;
        case U.KVM_EXIT_MMIO:
          this.onMmio(run);
          break;
        case U.KVM_EXIT_SYSTEM_EVENT: {
          const t = run.systemEventType;
          if (t === U.KVM_SYSTEM_EVENT_RESET) this.requestExit({ reason: 'reset', code: 0, message: 'guest requested a reset' });
          else if (t === U.KVM_SYSTEM_EVENT_SHUTDOWN) this.requestExit({ reason: 'power-off', code: 0, message: 'guest powered off' });
          else this.requestExit({ reason: 'fault', code: EXIT_CODE_VMM_ERROR, message: `guest crashed (system event ${t})` });
          return VcpuAction.Stop;
        }
        case U.KVM_EXIT_HLT:
          this.requestExit({ reason: 'power-off', code: 0, message: 'guest halted' });
          return VcpuAction.Stop;
        default:
          this.exitErrors.log(`ignoring unexpected exit ${reason}`, `ignoring unexpected exit ${reason}`);
      }
    } catch (e) {
      // A device must never take the VMM down because of what a guest did.
      this.exitErrors.log(
        `device error during exit handling: ${String((e as Error).message).slice(0, 200)}`,
        () => `device error during exit handling: ${(e as Error).stack ?? String(e)}`,
      );
    }
    return this.exit ? VcpuAction.Stop : VcpuAction.Continue;
  }

  private onPio(run: KvmRun): void {
    const port = run.ioPort;
    const size = run.ioSize;
    const count = run.ioCount;
    this.stats.pio++;
    this.stats.perPort.set(port, (this.stats.perPort.get(port) ?? 0) + 1);
    if (run.ioIsOut) {
      for (let i = 0; i < count; i++) this.pio.write(port, size, run.ioRead(i));
    } else {
      for (let i = 0; i < count; i++) run.ioWrite(Number(this.pio.read(port, size)), i);
    }
  }

  private onMmio(run: KvmRun): void {
    const addr = Number(run.mmioAddress);
    const len = run.mmioLength;
    this.stats.mmio++;
    const seen = this.stats.perMmio.get(addr);
    if (seen !== undefined || this.stats.perMmio.size < MAX_MMIO_STATS) this.stats.perMmio.set(addr, (seen ?? 0) + 1);
    // Unclaimed accesses are counted and logged (rate-limited) by the bus.
    if (run.mmioIsWrite) {
      this.mmio.write(addr, len, len === 8 ? run.mmioRead() : Number(run.mmioRead()));
    } else {
      const v = this.mmio.read(addr, len);
      run.mmioWrite(typeof v === 'bigint' ? v : BigInt(v >>> 0));
    }
  }
}

function readFileOrThrow(flag: string, path: string): Uint8Array {
  try {
    return fs.readFileSync(path);
  } catch (e) {
    const code = (e as { code?: string }).code;
    const why =
      code === 'ENOENT'
        ? 'no such file'
        : code === 'EACCES'
          ? 'permission denied'
          : code === 'EISDIR'
            ? 'is a directory'
            : (e as Error).message;
    throw new KernelImageError(`${flag} ${path}: ${why}`);
  }
}
