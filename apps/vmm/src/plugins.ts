/**
 * The device plugin packages this VMM build knows. Each exports `plugin`
 * (a DevicePlugin). Until package discovery lands, the list is explicit.
 */
import { DevicePlugin } from '@tsvmm/pci';

export const PLUGIN_PACKAGES: readonly string[] = [];

export function loadPlugins(packages: readonly string[] = PLUGIN_PACKAGES): DevicePlugin[] {
  return packages.map((name) => {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const mod = require(name) as { plugin?: DevicePlugin };
    if (!mod.plugin) throw new Error(`package ${name} does not export a device plugin`);
    return mod.plugin;
  });
}
