/**
 * Finding device plugin packages by the `vmmPlugin` field of their
 * package.json, without loading any of their code: the field names the plugin
 * API version and the device types, so an incompatible package is refused
 * before it runs.
 *
 * Used three ways: by scripts/bundle.js to choose the packages a bundle
 * contains (plugins/* and node_modules), by the VMM from sources (Jest,
 * ts-node) for the workspace's plugins/*, and by a bundled VMM for compiled
 * packages installed next to it or on VMM_PLUGIN_PATH. It imports only fs and
 * path so bundle.js can compile it on its own.
 */
import * as fs from 'fs';
import * as path from 'path';
import type { VmmPluginManifest } from '@tsvmm/pci';

/** A package.json that declares a usable plugin. */
export interface PluginPackage {
  name: string;
  version: string;
  description: string;
  /** The package directory (real path). */
  dir: string;
  /** The entry module (package.json `main`, default index.js), absolute. */
  entry: string;
  manifest: VmmPluginManifest;
}

/** A package.json that declares a plugin the VMM will not load, and why. */
export interface RefusedPackage {
  name: string;
  version: string;
  dir: string;
  /** As declared (possibly empty when the manifest is malformed). */
  deviceTypes: string[];
  reason: string;
}

export interface PackageScan {
  packages: PluginPackage[];
  refused: RefusedPackage[];
}

/** "plugin package NAME@VERSION (DIR): REASON". */
export function describeRefusal(r: RefusedPackage): string {
  return `plugin package ${r.name}@${r.version} (${r.dir}): ${r.reason}`;
}

export function isRefused(p: PluginPackage | RefusedPackage): p is RefusedPackage {
  return 'reason' in p;
}

/** The short name used by `--plugins=` and in messages: the package name without its scope. */
export function shortName(packageName: string): string {
  return packageName.replace(/^@[^/]+\//, '');
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** What is wrong with a `vmmPlugin` value (empty when nothing). */
function manifestProblems(m: unknown): string[] {
  if (!isObject(m)) return ['package.json "vmmPlugin" must be an object like {"apiVersion": 1, "deviceTypes": ["my-dev"]}'];
  const out: string[] = [];
  if (!Number.isInteger(m.apiVersion))
    out.push(`package.json "vmmPlugin.apiVersion" must be an integer, got ${JSON.stringify(m.apiVersion)}`);
  const types = m.deviceTypes;
  if (!Array.isArray(types) || types.length === 0 || types.some((t) => typeof t !== 'string' || !t))
    out.push('package.json "vmmPlugin.deviceTypes" must list the device type names the plugin provides');
  if (m.workers !== undefined && (!isObject(m.workers) || Object.values(m.workers).some((w) => typeof w !== 'string')))
    out.push('package.json "vmmPlugin.workers" must map worker names to entry paths');
  if (m.iothreadPlanes !== undefined && (typeof m.iothreadPlanes !== 'string' || !m.iothreadPlanes))
    out.push('package.json "vmmPlugin.iothreadPlanes" must be the path of a module exporting iothreadPlanes');
  return out;
}

/** Node's resolution of a package entry: the file, then .js/.ts, then an index in the directory. */
function resolveEntry(dir: string, main: string): string | undefined {
  const base = path.resolve(dir, main);
  for (const c of [base, `${base}.js`, `${base}.ts`, path.join(base, 'index.js'), path.join(base, 'index.ts')])
    if (fs.existsSync(c) && fs.statSync(c).isFile()) return c;
  return undefined;
}

/**
 * Reads `dir/package.json`: undefined when it is not a plugin package, a
 * PluginPackage when it is one for `apiVersion`, a RefusedPackage otherwise.
 */
export function readPluginPackage(dir: string, apiVersion: number): PluginPackage | RefusedPackage | undefined {
  let pkg: unknown;
  try {
    pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8'));
  } catch {
    return undefined;
  }
  if (!isObject(pkg) || pkg.vmmPlugin === undefined) return undefined;
  const real = fs.realpathSync(dir);
  const name = typeof pkg.name === 'string' && pkg.name ? pkg.name : path.basename(real);
  const version = typeof pkg.version === 'string' ? pkg.version : '0.0.0';
  const m = pkg.vmmPlugin as Record<string, unknown>;
  const declared = isObject(m) && Array.isArray(m.deviceTypes) ? m.deviceTypes.filter((t): t is string => typeof t === 'string') : [];
  const refuse = (reason: string): RefusedPackage => ({ name, version, dir: real, deviceTypes: declared, reason });
  const problems = manifestProblems(m);
  if (problems.length) return refuse(problems.join('; '));
  if (m.apiVersion !== apiVersion)
    return refuse(`built for plugin API ${m.apiVersion as number}; this VMM speaks plugin API ${apiVersion}`);
  const main = typeof pkg.main === 'string' ? pkg.main : 'index.js';
  const entry = resolveEntry(real, main);
  if (!entry) return refuse(`its entry ${main} does not exist (is the package built?)`);
  return {
    name,
    version,
    dir: real,
    entry,
    description: typeof pkg.description === 'string' ? pkg.description : '',
    manifest: {
      apiVersion,
      deviceTypes: declared,
      ...(m.workers ? { workers: m.workers as Record<string, string> } : {}),
      ...(m.iothreadPlanes ? { iothreadPlanes: m.iothreadPlanes as string } : {}),
    },
  };
}

/** The package directories of a node_modules-style directory (one level, and one more under @scope/). */
export function packageDirs(dir: string): string[] {
  let names: string[];
  try {
    names = fs.readdirSync(dir).sort();
  } catch {
    return [];
  }
  const out: string[] = [];
  for (const n of names) {
    if (n.startsWith('.')) continue;
    const p = path.join(dir, n);
    if (n.startsWith('@')) out.push(...packageDirs(p));
    else if (fs.existsSync(path.join(p, 'package.json'))) out.push(p);
  }
  return out;
}

/**
 * The plugin packages under `roots`. A root is either a package directory
 * itself or a directory of packages (plugins/, node_modules/). A package
 * reached twice (a workspace package is also a node_modules symlink; a copy of
 * the workspace links to the original's node_modules) counts once, by name:
 * the earlier root wins.
 */
export function scanPluginPackages(roots: readonly string[], apiVersion: number): PackageScan {
  const seen = new Set<string>();
  const scan: PackageScan = { packages: [], refused: [] };
  for (const root of roots) {
    const dirs = fs.existsSync(path.join(root, 'package.json')) ? [root] : packageDirs(root);
    for (const d of dirs) {
      const found = readPluginPackage(d, apiVersion);
      if (!found || seen.has(found.dir) || seen.has(`name:${found.name}`)) continue;
      seen.add(found.dir);
      seen.add(`name:${found.name}`);
      if (isRefused(found)) scan.refused.push(found);
      else scan.packages.push(found);
    }
  }
  return scan;
}

/** VMM_PLUGIN_PATH: directories separated by ':' (empty entries ignored). */
export function pluginPathFromEnv(env: NodeJS.ProcessEnv = process.env): string[] {
  return (env.VMM_PLUGIN_PATH ?? '')
    .split(':')
    .filter(Boolean)
    .map((p) => path.resolve(p));
}
