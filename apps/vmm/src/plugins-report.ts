/** `vmm plugins`: what the plugin catalog holds, as text or JSON. */
import { checkDevicePlugin, PLUGIN_API_VERSION } from '@tsvmm/pci';
import { LoadedPlugin, PluginCatalog, PluginOrigin } from './plugins';

const ORIGIN: Record<PluginOrigin, string> = { 'built-in': 'built in', workspace: 'from source', 'run-time': 'loaded at run time' };

export interface PluginReport {
  apiVersion: number;
  /** Short names of the bundle's plugins; absent when running from sources. */
  builtWith?: string[];
  plugins: {
    name: string;
    version: string;
    apiVersion: number;
    origin: PluginOrigin;
    dir?: string;
    deviceTypes: { type: string; description: string }[];
  }[];
  leftOut: { name: string; version: string; deviceTypes: string[] }[];
  problems: { name: string; version: string; origin: PluginOrigin; message: string }[];
}

/** Registry-level problems (a broken schema) are reported per plugin here rather than thrown. */
function schemaProblem(p: LoadedPlugin): string | undefined {
  try {
    checkDevicePlugin(p.plugin);
    return undefined;
  } catch (e) {
    return (e as Error).message;
  }
}

export function pluginReport(catalog: PluginCatalog): PluginReport {
  const problems = catalog.problems.map((p) => ({
    name: p.package.name,
    version: p.package.version,
    origin: p.origin,
    message: p.message,
  }));
  for (const p of catalog.plugins) {
    const m = schemaProblem(p);
    if (m) problems.push({ name: p.package.name, version: p.package.version, origin: p.origin, message: m });
  }
  return {
    apiVersion: PLUGIN_API_VERSION,
    ...(catalog.builtWith ? { builtWith: catalog.builtWith } : {}),
    plugins: catalog.plugins.map((p) => ({
      name: p.package.name,
      version: p.package.version,
      apiVersion: p.plugin.apiVersion,
      origin: p.origin,
      ...(p.dir && p.origin !== 'built-in' ? { dir: p.dir } : {}),
      deviceTypes: p.plugin.deviceTypes.map((t) => ({ type: t.type, description: t.description.split('\n')[0] })),
    })),
    leftOut: catalog.leftOut.map((p) => ({ name: p.name, version: p.version, deviceTypes: p.deviceTypes })),
    problems,
  };
}

export function formatPluginReport(r: PluginReport): string {
  const lines: string[] = [];
  lines.push(
    `Plugin API ${r.apiVersion}; ` +
      (r.builtWith
        ? `bundle built with: ${r.builtWith.length ? r.builtWith.join(', ') : 'no device plugins'}`
        : 'running from sources (workspace plugins)'),
    '',
  );
  if (!r.plugins.length) lines.push('No device plugins.');
  const width = Math.max(12, ...r.plugins.flatMap((p) => p.deviceTypes.map((t) => t.type.length)));
  for (const p of r.plugins) {
    lines.push(`${p.name} ${p.version}  plugin API ${p.apiVersion}  ${ORIGIN[p.origin]}${p.dir ? ` (${p.dir})` : ''}`);
    for (const t of p.deviceTypes) lines.push(`  ${t.type.padEnd(width)}  ${t.description}`);
  }
  if (r.leftOut.length) {
    lines.push('', 'Not in this build:');
    for (const p of r.leftOut) lines.push(`  ${p.name} ${p.version} (${p.deviceTypes.join(', ')})`);
  }
  if (r.problems.length) {
    lines.push('', 'Refused:');
    for (const p of r.problems) lines.push(`  ${p.message.replace(/\n/g, '\n  ')}`);
  }
  return lines.join('\n') + '\n';
}
