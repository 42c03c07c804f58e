/**
 * The device plugins this VMM has, found by package (package.json `vmmPlugin`),
 * never by a list in the code:
 *
 * - **built in**: a bundle (scripts/bundle.js) imports the plugin packages it
 *   was built with from a generated entry, which calls registerBundledPlugins
 *   before main() runs. The entry also names the workspace plugins left out of
 *   a slim build, so their device types get a "not available in this build" error.
 * - **workspace**: running from sources (Jest, ts-node) there is no generated
 *   entry; the plugins/* packages are found and required directly.
 * - **run time**: compiled packages in node_modules next to the bundle or in a
 *   VMM_PLUGIN_PATH directory are required when the VMM starts. They share the
 *   VMM's own @tsvmm/pci, @tsvmm/virtio-core and @tsvmm/kvm-native (one copy of
 *   the classes and of the native addon); other libraries they bundle themselves.
 *
 * Nothing of a package runs before its manifest names this VMM's API version.
 */
import * as path from 'path';
import * as kvmNative from '@tsvmm/kvm-native';
import * as pci from '@tsvmm/pci';
import { checkDevicePlugin, DevicePlugin, PLUGIN_API_VERSION, PluginError } from '@tsvmm/pci';
import * as virtioCore from '@tsvmm/virtio-core';
import { describeRefusal, PluginPackage, pluginPathFromEnv, RefusedPackage, scanPluginPackages, shortName } from './plugin-discovery';

export type PluginOrigin = 'built-in' | 'workspace' | 'run-time';

/** What a plugin package declares, as `vmm plugins` shows it. */
export interface PluginPackageInfo {
  name: string;
  version: string;
  description: string;
  apiVersion: number;
  deviceTypes: string[];
}

export interface LoadedPlugin {
  plugin: DevicePlugin;
  origin: PluginOrigin;
  package: PluginPackageInfo;
  /** Where it was loaded from (run-time and workspace plugins). */
  dir?: string;
}

/** A plugin package that was found but cannot be used. */
export interface PluginProblem {
  package: PluginPackageInfo;
  origin: PluginOrigin;
  dir?: string;
  message: string;
}

export interface PluginCatalog {
  plugins: LoadedPlugin[];
  problems: PluginProblem[];
  /** Plugin packages the bundle was built without (slim builds). */
  leftOut: PluginPackageInfo[];
  /** Short names of the built-in plugins when running as a bundle; undefined from sources. */
  builtWith?: string[];
}

/** What a bundle's generated entry registers. */
export interface BundledPlugins {
  /** The bundle's directory: run-time plugins are looked for in its node_modules. */
  dir: string;
  plugins: { module: unknown; package: PluginPackageInfo }[];
  leftOut: PluginPackageInfo[];
}

let bundled: BundledPlugins | undefined;

/** Called by the generated bundle entry (scripts/bundle.js) before main() runs. */
export function registerBundledPlugins(b: BundledPlugins): void {
  bundled = b;
}

/** The repository root when running from sources (apps/vmm/src/..). */
const WORKSPACE_ROOT = path.resolve(__dirname, '../../..');

function infoOf(p: PluginPackage): PluginPackageInfo {
  return {
    name: p.name,
    version: p.version,
    description: p.description,
    apiVersion: p.manifest.apiVersion,
    deviceTypes: [...p.manifest.deviceTypes],
  };
}

function refusedInfo(r: RefusedPackage): PluginPackageInfo {
  return { name: r.name, version: r.version, description: '', apiVersion: NaN, deviceTypes: r.deviceTypes };
}

let hostModulesShared = false;

/**
 * Makes `require('@tsvmm/pci')` (and virtio-core, kvm-native) from a
 * run-time plugin return the bundle's own module, so the plugin's classes are
 * the VMM's classes. Under Jest the module registry already does this.
 */
function shareHostModules(): void {
  if (hostModulesShared || !bundled) return;
  hostModulesShared = true;
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const Module = require('module') as { _load: (request: string, parent: unknown, isMain: boolean) => unknown };
  const host: Record<string, unknown> = { '@tsvmm/pci': pci, '@tsvmm/virtio-core': virtioCore, '@tsvmm/kvm-native': kvmNative };
  const load = Module._load;
  Module._load = function (request, parent, isMain) {
    return Object.prototype.hasOwnProperty.call(host, request) ? host[request] : load.call(this, request, parent, isMain);
  };
}

/** The `plugin` export of a loaded entry, checked against its manifest. */
function pluginOf(mod: unknown, info: PluginPackageInfo): DevicePlugin {
  const plugin = (mod as { plugin?: unknown } | undefined)?.plugin;
  if (plugin === undefined) throw new Error('its entry module does not export `plugin` (a DevicePlugin)');
  checkDevicePlugin(plugin);
  const declared = [...info.deviceTypes].sort().join(', ');
  const actual = plugin.deviceTypes
    .map((t) => t.type)
    .sort()
    .join(', ');
  if (declared !== actual)
    throw new Error(`package.json vmmPlugin.deviceTypes (${declared}) differs from the device types the plugin declares (${actual})`);
  return plugin;
}

/**
 * Finds and loads every plugin: the bundle's, or the workspace's when running
 * from sources, plus run-time packages. Problems (wrong API version, broken
 * manifest or schema, an entry that throws) are collected, not thrown: `vmm
 * plugins` lists them, `vmm run` refuses to start with any.
 */
export function loadPluginCatalog(env: NodeJS.ProcessEnv = process.env): PluginCatalog {
  const catalog: PluginCatalog = { plugins: [], problems: [], leftOut: [] };
  const names = new Set<string>();
  const add = (load: () => unknown, info: PluginPackageInfo, origin: PluginOrigin, dir?: string) => {
    const problem = (message: string) => catalog.problems.push({ package: info, origin, dir, message });
    const who = `plugin package ${info.name}@${info.version}${dir ? ` (${dir})` : ''}`;
    if (names.has(info.name)) return problem(`${who}: a plugin package of that name is loaded already`);
    let mod: unknown;
    try {
      mod = load();
    } catch (e) {
      return problem(`${who}: loading its entry failed: ${(e as Error).message}`);
    }
    try {
      catalog.plugins.push({ plugin: pluginOf(mod, info), origin, package: info, dir });
      names.add(info.name);
    } catch (e) {
      // PluginError messages name the plugin already.
      problem(e instanceof PluginError ? e.message : `${who}: ${(e as Error).message}`);
    }
  };
  const scanAndLoad = (roots: string[], origin: PluginOrigin) => {
    const scan = scanPluginPackages(roots, PLUGIN_API_VERSION);
    for (const r of scan.refused) catalog.problems.push({ package: refusedInfo(r), origin, dir: r.dir, message: describeRefusal(r) });
    if (origin === 'run-time' && scan.packages.length) shareHostModules();
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    for (const p of scan.packages) add(() => require(p.entry), infoOf(p), origin, p.dir);
  };
  if (bundled) {
    for (const b of bundled.plugins) add(() => b.module, b.package, 'built-in');
    catalog.leftOut = bundled.leftOut;
    catalog.builtWith = bundled.plugins.map((b) => shortName(b.package.name));
    scanAndLoad([path.join(bundled.dir, 'node_modules'), ...pluginPathFromEnv(env)], 'run-time');
    // A left-out plugin installed as a run-time package is not missing any more.
    catalog.leftOut = catalog.leftOut.filter((p) => !names.has(p.name));
  } else {
    scanAndLoad([path.join(WORKSPACE_ROOT, 'plugins')], 'workspace');
    scanAndLoad(pluginPathFromEnv(env), 'run-time');
  }
  return catalog;
}

/** The usable plugins (for tests and callers that do not report problems). */
export function loadPlugins(env: NodeJS.ProcessEnv = process.env): DevicePlugin[] {
  return loadPluginCatalog(env).plugins.map((p) => p.plugin);
}
