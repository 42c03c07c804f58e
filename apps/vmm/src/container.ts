/**
 * The inversify container: the configuration, the device plugins (bound under
 * DEVICE_PLUGIN, multi-inject) and the registry that resolves a --device TYPE
 * to the plugin that provides it.
 */
import 'reflect-metadata';
import { Container } from 'inversify';
import {
  Device, DeviceContext, DevicePlugin, DeviceType, DEVICE_PLUGIN, parseProperties, PLUGIN_API_VERSION,
} from '@tsvmm/pci';
import { ConfigError, DeviceConfig, VmConfig } from './config';

export const TYPES = {
  Config: Symbol.for('tsvmm.Config'),
  DeviceRegistry: Symbol.for('tsvmm.DeviceRegistry'),
};

/** A device could not be created from valid properties (its file, TAP or similar failed). */
export class DeviceSetupError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DeviceSetupError';
  }
}

export class DeviceRegistry {
  private readonly byType = new Map<string, { plugin: DevicePlugin; type: DeviceType }>();

  constructor(readonly plugins: readonly DevicePlugin[]) {
    for (const plugin of plugins) {
      if (plugin.apiVersion !== PLUGIN_API_VERSION)
        throw new ConfigError(
          `plugin ${plugin.name}@${plugin.version} was built for plugin API ${plugin.apiVersion}; this VMM speaks API ${PLUGIN_API_VERSION}`,
        );
      for (const type of plugin.deviceTypes) {
        const prev = this.byType.get(type.type);
        if (prev) throw new ConfigError(`device type '${type.type}' is provided by both ${prev.plugin.name} and ${plugin.name}`);
        this.byType.set(type.type, { plugin, type });
      }
    }
  }

  get types(): string[] {
    return [...this.byType.keys()].sort();
  }

  lookup(type: string): DeviceType {
    const t = this.byType.get(type);
    if (!t) {
      const known = this.types;
      throw new ConfigError(
        `--device ${type}: unknown device type '${type}'` + (known.length ? ` (available: ${known.join(', ')})` : ' (no device plugins are loaded)'),
      );
    }
    return t.type;
  }

  /** Checks every configured device's type and properties before anything is created. */
  validate(devices: readonly DeviceConfig[]): void {
    for (const d of devices) this.parse(d);
  }

  create(ctx: DeviceContext, d: DeviceConfig): Device {
    const { type, props } = this.parse(d);
    try {
      return type.create(ctx, d.id, props);
    } catch (e) {
      // A plugin reports bad resources (missing file, busy TAP, bad MAC) by throwing: say which device.
      const msg = (e as Error).message;
      throw new DeviceSetupError(msg.startsWith('--device') ? msg : `--device ${d.type},id=${d.id}: ${msg}`);
    }
  }

  /** Creates devices in configuration order, lazily: each exists before the next is created. */
  *createAll(ctx: DeviceContext, devices: readonly DeviceConfig[]): Generator<Device> {
    for (const d of devices) yield this.create(ctx, d);
  }

  private parse(d: DeviceConfig) {
    const type = this.lookup(d.type);
    try {
      return { type, props: parseProperties(`--device ${d.type},id=${d.id}`, type.properties, d.props) };
    } catch (e) {
      throw new ConfigError((e as Error).message);
    }
  }
}

/** Builds the container for one VM from its configuration and the available plugins. */
export function buildContainer(config: VmConfig, plugins: readonly DevicePlugin[]): Container {
  const c = new Container();
  c.bind<VmConfig>(TYPES.Config).toConstantValue(config);
  for (const p of plugins) c.bind<DevicePlugin>(DEVICE_PLUGIN).toConstantValue(p);
  c.bind<DeviceRegistry>(TYPES.DeviceRegistry)
    .toDynamicValue((ctx) => new DeviceRegistry(ctx.container.isBound(DEVICE_PLUGIN) ? ctx.container.getAll<DevicePlugin>(DEVICE_PLUGIN) : []))
    .inSingletonScope();
  return c;
}
