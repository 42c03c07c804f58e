/**
 * The device plugin API, version 1 (docs/plugin-authoring.md is the guide).
 *
 * A plugin is a package whose package.json carries a `vmmPlugin` field
 * ({@link VmmPluginManifest}) and whose entry module exports
 * `plugin: DevicePlugin`. The VMM finds plugin packages by that field (at
 * bundle time for the packages it bundles, at run time for compiled packages
 * installed next to the bundle or on VMM_PLUGIN_PATH), checks the API version
 * and the plugin's schemas ({@link checkDevicePlugin}), binds every plugin under
 * {@link DEVICE_PLUGIN} in its inversify container and resolves `--device TYPE`
 * through the device types they declare.
 *
 * What a plugin may import: `@tsvmm/virtio-core`, `@tsvmm/pci`, the
 * `@tsvmm/kvm-native` facade, shared libraries under libs/ (`@tsvmm/block`,
 * `@tsvmm/scsi`), Node built-ins and its own npm dependencies. Never another
 * plugin and never the VMM app (apps/vmm): tools/plugin-tools checks this.
 */
import type { Vm } from '@tsvmm/kvm-native';
import type { GuestMemory, PollSettings } from '@tsvmm/virtio-core';
import type { GsiRoutes } from './gsi-routes';
import type { IoBus } from './io-bus';
import type { MmioAllocator } from './mmio-allocator';
import type { PciBus } from './pci-bus';
import type { PropertySchema, PropertyValue } from './properties';
import type { VirtioPciDevice } from './virtio-pci';

/**
 * The plugin API this VMM speaks. A plugin (its `apiVersion`) and a plugin
 * package (its package.json `vmmPlugin.apiVersion`) must name exactly this
 * version, or the VMM refuses it with a message naming both versions. The
 * number changes when a change to these types would break existing plugins
 * (a removed or retyped member, a new required member); optional additions
 * keep it.
 */
export const PLUGIN_API_VERSION = 1;

/** inversify multi-inject token under which every plugin is bound. */
export const DEVICE_PLUGIN = Symbol.for('tsvmm.DevicePlugin');

/**
 * The `vmmPlugin` field of a plugin package's package.json. The VMM reads it
 * before it loads any code of the package, so an incompatible package is
 * refused without running it.
 *
 * ```json
 * "vmmPlugin": {
 *   "apiVersion": 1,
 *   "deviceTypes": ["virtio-blk"],
 *   "iothreadPlanes": "src/iothread-plane.ts"
 * }
 * ```
 */
export interface VmmPluginManifest {
  /** PLUGIN_API_VERSION the package was built against. */
  apiVersion: number;
  /** The device TYPE names the package provides (listed without loading its code). */
  deviceTypes: string[];
  /**
   * Worker-thread entry points, by output name: a bundling VMM builds each
   * into `<name>.js` next to its own main.js, where the plugin finds it with
   * `path.join(__dirname, '<name>.js')`. Paths are relative to the package.
   */
  workers?: Record<string, string>;
  /**
   * A module exporting `iothreadPlanes: Record<string, PlaneFactory>` (@tsvmm/virtio-core):
   * the data planes of the plugin's devices on an iothread. A bundling VMM builds one
   * `iothread.js` worker that registers every bundled plugin's planes, so devices of
   * different types share an iothread. Relative to the package.
   */
  iothreadPlanes?: string;
}

/** What a device gets from the machine when it is created. */
export interface DeviceContext {
  /** The KVM VM facade: memory regions, ioeventfd/irqfd, MSI routes. */
  vm: Vm;
  /** Guest RAM (bounds-checked, zero-copy slices). */
  memory: GuestMemory;
  /** The port I/O bus. */
  pio: IoBus;
  /** The MMIO bus. */
  mmio: IoBus;
  /** PCI bus 0: a PCI device attaches itself here (VirtioPciDevice does it in its constructor). */
  pci: PciBus;
  /** KVM GSI routing (MSI routes for MSI-X vectors). */
  gsiRoutes: GsiRoutes;
  /** Allocator for BARs in the 32-bit PCI MMIO window. */
  mmio32: MmioAllocator;
  /** A line for the VMM's log (stderr), without a trailing newline. */
  log(message: string): void;
  /**
   * A device created earlier in the configuration, by id: how a device that sits
   * on another device's bus (scsi-hd on a virtio-scsi adapter) finds its parent.
   */
  device(id: string): Device | undefined;
  /** The settings of `--object iothread,id=ID` (poll-max-ns, poll-grow, poll-shrink); undefined for an undeclared iothread. */
  iothread?(id: string): IoThreadSettings | undefined;
}

/** An iothread object's properties (`--object iothread,id=ID,poll-max-ns=N,poll-grow=G,poll-shrink=S`). */
export interface IoThreadSettings {
  poll: PollSettings;
}

/**
 * A created device. Only `id` and `type` are required; the VMM calls each
 * optional hook when it exists. Virtio plugins usually extend
 * `VirtioPciPluginDevice`, which implements the hooks for the virtio-pci
 * transport.
 */
export interface Device {
  /** The id from `--device TYPE,id=ID` (or the generated `TYPEn`). */
  readonly id: string;
  /** The device TYPE it was created as. */
  readonly type: string;
  /** The VM stopped (false) or resumes (true): e.g. queue notifiers go off while stopped. */
  setRunning?(running: boolean): void;
  /** System reset (QMP system_reset): back to the power-on state. */
  reset?(): void;
  /**
   * The virtio-pci function of a virtio device: the monitor's introspection
   * (x-query-virtio*) and DeviceEvent (x-debug-device-event kick/call,
   * HMP `device_event`) reach the device through it. A device without it is
   * not listed by the virtio commands.
   */
  readonly virtio?: VirtioPciDevice;
  /**
   * Migration: the device's state as plain JSON-serialisable data, taken
   * while the VM is stopped. A virtio device returns at least
   * `VirtioDevice.saveState()` (features, status, queue indices) plus its own
   * fields. Devices without it cannot be migrated.
   */
  saveState?(): unknown;
  /**
   * Migration: restores what `saveState` returned, on a freshly created device
   * with the same properties, before the VM runs. Throws on a state it
   * cannot accept (the migration fails, naming the device).
   */
  loadState?(state: unknown): void;
  /**
   * Migration: parses and checks `state` (from an untrusted stream) without
   * applying anything; throws (a StateError from @tsvmm/virtio-core naming
   * the field) on what loadState would refuse. The destination calls it for
   * every device before it applies the first section. loadState checks again.
   */
  checkState?(state: unknown): void;
  /**
   * Migration: why this device cannot be migrated in its current
   * configuration (e.g. queues a vhost backend owns), or undefined. Asked before
   * a snapshot or migration starts, so the refusal comes before any transfer.
   */
  migrationBlocker?(): string | undefined;
  /**
   * Migration: resolves once the device has no request in flight (the VM is
   * stopped; completions already landed in guest memory), so that the state
   * saveState returns next is complete. Devices without in-flight work omit it.
   */
  drain?(): Promise<void>;
  /**
   * Migration: start logging the guest pages this device writes outside the
   * VMM's `GuestMemory` (KVM's dirty log sees only the guest's own writes, and
   * `GuestMemory` tracking only writes made through it on the main thread):
   * a vhost back-end, a worker thread. Called once RAM transfer begins.
   */
  startDirtyLog?(): Promise<void>;
  /**
   * Migration: guest page frame numbers (guest-physical address / 4096)
   * written since `startDirtyLog` or the previous call; the log is cleared.
   * Called after each pre-copy pass, and once more after `drain` with the
   * VM stopped.
   */
  syncDirtyLog?(): Promise<Iterable<number>>;
  /** Migration: stop logging (the migration completed, failed or was cancelled). */
  stopDirtyLog?(): Promise<void>;
  /** Called when the VM stops for good (close files, release fds). */
  destroy?(): void | Promise<void>;
}

/**
 * The factory of a device type. `props` holds every property of the schema,
 * parsed and validated (defaults filled in; an absent optional property without
 * a default is undefined). It throws an Error for a resource problem (missing
 * file, busy TAP); the VMM prefixes the message with `--device TYPE,id=ID:`
 * unless it starts with `--device` already.
 */
export type DeviceFactory = (ctx: DeviceContext, id: string, props: Record<string, PropertyValue | undefined>) => Device;

/** One `--device TYPE` a plugin provides. */
export interface DeviceType {
  /** The TYPE in --device TYPE,...: lower case, digits and '-', starting with a letter. */
  type: string;
  /** One line for `vmm plugins` and the errors that list device types. */
  description: string;
  /**
   * The properties `--device TYPE,id=ID,key=value,...` (or the JSON config's
   * device object) may set. Parsing, defaults and the errors users see come
   * from here (parseProperties); `id` is reserved for the device id.
   */
  properties: PropertySchema;
  /** Builds the device; see DeviceFactory. */
  create: DeviceFactory;
}

/** What a plugin package's entry module exports as `plugin`. */
export interface DevicePlugin {
  /** PLUGIN_API_VERSION the plugin was built against. */
  apiVersion: number;
  /** The package name (as in its package.json). */
  name: string;
  /** The package version. */
  version: string;
  /** The device types it provides: at least one, each TYPE once across all plugins. */
  deviceTypes: readonly DeviceType[];
}
