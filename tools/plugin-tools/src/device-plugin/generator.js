// @ts-check
/**
 * `npx nx g @tsvmm/plugin-tools:device-plugin NAME [--virtioId=N] [--description=TEXT]`
 *
 * Creates plugins/NAME: a working virtio echo device (templates.js) that the
 * VMM finds by its package.json `vmmPlugin` field. Plain JS on Nx's generator
 * Tree (tree.read/exists/children/write), so it needs nothing beyond nx itself.
 */
'use strict';
const { pluginFiles } = require('./templates');

const NAME = /^[a-z][a-z0-9-]*$/;

/**
 * @typedef {object} DevicePluginOptions
 * @property {string} name
 * @property {number} [virtioId]
 * @property {string} [description]
 */

/**
 * @typedef {object} GeneratorTree  the part of Nx's Tree the generator uses
 * @property {string} root
 * @property {(path: string) => boolean} exists
 * @property {(path: string) => string[]} children
 * @property {(path: string, encoding: 'utf-8') => string | null} read
 * @property {(path: string, content: string) => void} write
 */

/** "virtio-echo" -> "VirtioEcho" */
function pascalCase(/** @type {string} */ name) {
  return name
    .split('-')
    .filter(Boolean)
    .map((w) => w[0].toUpperCase() + w.slice(1))
    .join('');
}

/** PLUGIN_API_VERSION as libs/pci declares it. */
function apiVersionOf(/** @type {GeneratorTree} */ tree) {
  const src = tree.read('libs/pci/src/plugin.ts', 'utf-8') ?? '';
  const m = /export const PLUGIN_API_VERSION = (\d+);/.exec(src);
  if (!m) throw new Error('device-plugin: cannot find PLUGIN_API_VERSION in libs/pci/src/plugin.ts (is this the tsvmm workspace?)');
  return Number(m[1]);
}

/** Device types already claimed by workspace plugins (their package.json manifests), by type. */
function claimedTypes(/** @type {GeneratorTree} */ tree) {
  /** @type {Map<string, string>} */
  const out = new Map();
  if (!tree.exists('plugins')) return out;
  for (const dir of tree.children('plugins')) {
    const text = tree.read(`plugins/${dir}/package.json`, 'utf-8');
    if (!text) continue;
    try {
      const pkg = JSON.parse(text);
      for (const t of pkg.vmmPlugin?.deviceTypes ?? []) out.set(t, pkg.name ?? dir);
    } catch {
      // Not ours to judge here; discovery reports a broken package.json.
    }
  }
  return out;
}

/**
 * Checks the options and returns the names the templates need.
 * @param {GeneratorTree} tree
 * @param {DevicePluginOptions} options
 */
function normalizeOptions(tree, options) {
  const name = String(options.name ?? '').trim();
  if (!NAME.test(name))
    throw new Error(
      `device-plugin: the name '${name}' must be lower-case letters, digits and '-', starting with a letter (it is the device TYPE too)`,
    );
  if (tree.exists(`plugins/${name}`)) throw new Error(`device-plugin: plugins/${name} exists already`);
  const owner = claimedTypes(tree).get(name);
  if (owner) throw new Error(`device-plugin: device type '${name}' is provided by ${owner} already`);
  const virtioId = options.virtioId ?? 58;
  if (!Number.isInteger(virtioId) || virtioId < 1 || virtioId > 63)
    throw new Error(`device-plugin: --virtioId=${virtioId} must be 1 to 63 (a modern virtio-pci device ID is 0x1040 + ID, at most 0x107f)`);
  return {
    name,
    packageName: `@tsvmm/${name}`,
    className: pascalCase(name),
    virtioId,
    apiVersion: apiVersionOf(tree),
    description: options.description?.trim() || `${name}: a virtio device with one queue that echoes each buffer back (generated skeleton)`,
  };
}

/**
 * @param {GeneratorTree} tree
 * @param {DevicePluginOptions} options
 */
async function devicePluginGenerator(tree, options) {
  const n = normalizeOptions(tree, options);
  for (const [file, content] of Object.entries(pluginFiles(n))) tree.write(`plugins/${n.name}/${file}`, content);
  return () => {
    process.stdout.write(
      `\nplugins/${n.name} is ready: npx nx test ${n.name}\n` +
        `Boot it: npx nx run vmm:build && npx vmm run --kernel tools/guest-kit/build/guest.elf --cmdline test=pci-scan --device ${n.name},id=x\n` +
        `(npm install links ${n.packageName} into node_modules, needed only if something imports it by name.)\n`,
    );
  };
}

module.exports = devicePluginGenerator;
module.exports.default = devicePluginGenerator;
module.exports.devicePluginGenerator = devicePluginGenerator;
module.exports.normalizeOptions = normalizeOptions;
