/**
 * The inversify container: the configuration, the device plugins (bound under
 * DEVICE_PLUGIN, multi-inject) and the registry that resolves a --device TYPE
 * to the plugin that provides it.
 */
import 'reflect-metadata';
import { Container } from 'inversify';
import {
  checkDevicePlugin,
  Device,
  DeviceContext,
  DevicePlugin,
  DeviceType,
  DEVICE_PLUGIN,
  parseProperties,
  PluginError,
  PropertyError,
} from '@tsvmm/pci';
import { ConfigError, DeviceConfig, devicePropertyError, deviceWhere, VmConfig } from './config';

export const TYPES = {
  Config: Symbol.for('tsvmm.Config'),
  DeviceRegistry: Symbol.for('tsvmm.DeviceRegistry'),
  MissingDeviceTypes: Symbol.for('tsvmm.MissingDeviceTypes'),
};

/** Device types this VMM knows of but was built without (a slim bundle). */
export interface MissingDeviceTypes {
  /** Short names of the plugins the bundle was built with. */
  builtWith: readonly string[];
  /** The plugin packages left out, with the device types they declare. */
  leftOut: readonly { name: string; deviceTypes: readonly string[] }[];
}

/** A device could not be created from valid properties (its file, TAP or similar failed). */
export class DeviceSetupError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DeviceSetupError';
  }
}

export class DeviceRegistry {
  private readonly byType = new Map<string, { plugin: DevicePlugin; type: DeviceType }>();

  /**
   * Checks each plugin (API version, device types, property schemas: a
   * PluginError names the plugin, type and property) and indexes its types.
   */
  constructor(
    readonly plugins: readonly DevicePlugin[],
    private readonly missing?: MissingDeviceTypes,
  ) {
    for (const plugin of plugins) {
      checkDevicePlugin(plugin);
      for (const type of plugin.deviceTypes) {
        const prev = this.byType.get(type.type);
        if (prev) throw new PluginError(`device type '${type.type}' is provided by both ${prev.plugin.name} and ${plugin.name}`);
        this.byType.set(type.type, { plugin, type });
      }
    }
  }

  get types(): string[] {
    return [...this.byType.keys()].sort();
  }

  /** The type's plugin, for `--device TYPE,help`. */
  pluginOf(type: string): DevicePlugin | undefined {
    return this.byType.get(type)?.plugin;
  }

  /** `where` names the device in errors (default `--device TYPE`). */
  lookup(type: string, where = `--device ${type}`): DeviceType {
    const t = this.byType.get(type);
    if (t) return t.type;
    const leftOut = this.missing?.leftOut.find((p) => p.deviceTypes.includes(type));
    if (leftOut && this.missing) {
      const built = this.missing.builtWith.length ? `built with: ${this.missing.builtWith.join(', ')}` : 'built without device plugins';
      throw new ConfigError(
        `${where}: device type '${type}' is not available in this build (${built}); it comes from plugin ${leftOut.name}`,
      );
    }
    const known = this.types;
    throw new ConfigError(
      `${where}: unknown device type '${type}'` + (known.length ? ` (available: ${known.join(', ')})` : ' (no device plugins are loaded)'),
    );
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
      // A plugin that names the device itself says `--device TYPE,id=ID: ...`; a config file's device is blamed on its JSON path.
      const own = `--device ${d.type},id=${d.id}: `;
      if (msg.startsWith(own)) throw new DeviceSetupError(`${deviceWhere(d)}: ${msg.slice(own.length)}`);
      throw new DeviceSetupError(msg.startsWith('--device') ? msg : `${deviceWhere(d)}: ${msg}`);
    }
  }

  /** Creates devices in configuration order, lazily: each exists before the next is created. */
  *createAll(ctx: DeviceContext, devices: readonly DeviceConfig[]): Generator<Device> {
    for (const d of devices) yield this.create(ctx, d);
  }

  private parse(d: DeviceConfig) {
    const type = this.lookup(d.type, d.origin ? `${deviceWhere(d)}.type` : undefined);
    try {
      return { type, props: parseProperties(deviceWhere(d), type.properties, d.props) };
    } catch (e) {
      if (e instanceof PropertyError) throw devicePropertyError(d, e);
      throw new ConfigError((e as Error).message);
    }
  }
}

/**
 * Builds the container for one VM from its configuration and the available
 * plugins (and, for a slim bundle, the device types it was built without).
 */
export function buildContainer(config: VmConfig, plugins: readonly DevicePlugin[], missing?: MissingDeviceTypes): Container {
  const c = new Container();
  c.bind<VmConfig>(TYPES.Config).toConstantValue(config);
  for (const p of plugins) c.bind<DevicePlugin>(DEVICE_PLUGIN).toConstantValue(p);
  if (missing) c.bind<MissingDeviceTypes>(TYPES.MissingDeviceTypes).toConstantValue(missing);
  c.bind<DeviceRegistry>(TYPES.DeviceRegistry)
    .toDynamicValue(
      (ctx) =>
        new DeviceRegistry(
          ctx.container.isBound(DEVICE_PLUGIN) ? ctx.container.getAll<DevicePlugin>(DEVICE_PLUGIN) : [],
          ctx.container.isBound(TYPES.MissingDeviceTypes) ? ctx.container.get<MissingDeviceTypes>(TYPES.MissingDeviceTypes) : undefined,
        ),
    )
    .inSingletonScope();
  return c;
}
