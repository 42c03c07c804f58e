/**
 * The device plugin API (version 1). A plugin package exports a DevicePlugin;
 * the VMM binds it under DEVICE_PLUGIN in its inversify container and looks
 * device types up by name. Plugins may import @tsvmm/virtio-core, @tsvmm/pci
 * and @tsvmm/kvm-native; never another plugin or the VMM app.
 */
import type { Vm } from '@tsvmm/kvm-native';
import type { GuestMemory } from '@tsvmm/virtio-core';
import type { GsiRoutes } from './gsi-routes';
import type { IoBus } from './io-bus';
import type { MmioAllocator } from './mmio-allocator';
import type { PciBus } from './pci-bus';
import type { PropertySchema, PropertyValue } from './properties';
import type { VirtioPciDevice } from './virtio-pci';

export const PLUGIN_API_VERSION = 1;

/** inversify multi-inject token under which every plugin is bound. */
export const DEVICE_PLUGIN = Symbol.for('tsvmm.DevicePlugin');

/** What a device gets from the machine when it is created. */
export interface DeviceContext {
  vm: Vm;
  memory: GuestMemory;
  pio: IoBus;
  mmio: IoBus;
  pci: PciBus;
  /** KVM GSI routing (MSI routes for MSI-X vectors). */
  gsiRoutes: GsiRoutes;
  /** Allocator for BARs in the 32-bit PCI MMIO window. */
  mmio32: MmioAllocator;
  log(message: string): void;
  /**
   * A device created earlier in the configuration, by id: how a device that sits
   * on another device's bus (scsi-hd on a virtio-scsi adapter) finds its parent.
   */
  device(id: string): Device | undefined;
}

/** A created device. */
export interface Device {
  readonly id: string;
  readonly type: string;
  /** The VM stopped (false) or resumes (true): e.g. queue notifiers go off while stopped. */
  setRunning?(running: boolean): void;
  /** System reset (QMP system_reset): back to the power-on state. */
  reset?(): void;
  /**
   * The virtio-pci function of a virtio device: the monitor's introspection
   * (x-query-virtio*) and DeviceEvent (x-debug-device-event kick/call) reach
   * the device through it.
   */
  readonly virtio?: VirtioPciDevice;
  /** Called when the VM stops for good (close files, release fds). */
  destroy?(): void | Promise<void>;
}

export interface DeviceType {
  /** The TYPE in --device TYPE,... */
  type: string;
  description: string;
  properties: PropertySchema;
  create(ctx: DeviceContext, id: string, props: Record<string, PropertyValue | undefined>): Device;
}

export interface DevicePlugin {
  /** PLUGIN_API_VERSION the plugin was built against. */
  apiVersion: number;
  name: string;
  version: string;
  deviceTypes: readonly DeviceType[];
}
