// @ts-check
/**
 * The plugin import rule, checked on the sources: a device plugin (plugins/*)
 * may import the shared libraries under libs/ (@tsvmm/virtio-core, @tsvmm/pci,
 * the @tsvmm/kvm-native facade, @tsvmm/block, @tsvmm/scsi, ...), Node
 * built-ins, its own files and npm packages it (or the workspace root)
 * depends on; never another plugin, the VMM app or any other workspace
 * package, and no relative path out of its own directory. Like Nx's
 * enforce-module-boundaries lint rule, without needing ESLint.
 *
 * Imports are read with TypeScript's own pre-processor (import/export ... from,
 * import(), require()), so comments and strings do not count.
 */
'use strict';
const fs = require('fs');
const { builtinModules } = require('module');
const path = require('path');
const ts = require('typescript');

const RULE =
  'a plugin may import @tsvmm/virtio-core, @tsvmm/pci, @tsvmm/kvm-native and the other shared libs/*, never another plugin or apps/vmm';
const SOURCE = /\.(ts|tsx|mts|cts|js|mjs|cjs)$/;

/**
 * @typedef {object} ImportViolation
 * @property {string} file       relative to the workspace root
 * @property {number} line       1-based
 * @property {string} specifier  what the file imports
 * @property {string} reason
 */

/** @typedef {{ dir: string, kind: string }} WorkspacePackage */

/** @param {string} file @returns {Record<string, any> | undefined} */
function readJson(file) {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch {
    return undefined;
  }
}

/** @param {string} dir @returns {string[]} */
function subdirs(dir) {
  try {
    return fs
      .readdirSync(dir, { withFileTypes: true })
      .filter((e) => e.isDirectory())
      .map((e) => path.join(dir, e.name));
  } catch {
    return [];
  }
}

/** Workspace packages by name: libs, plugins, apps and tools. @param {string} root */
function workspacePackages(root) {
  /** @type {Map<string, WorkspacePackage>} */
  const out = new Map();
  for (const [group, kind] of [
    ['libs', 'lib'],
    ['plugins', 'plugin'],
    ['apps', 'app'],
    ['tools', 'tool'],
  ]) {
    for (const dir of subdirs(path.join(root, group))) {
      const pkg = readJson(path.join(dir, 'package.json'));
      if (pkg && typeof pkg.name === 'string') out.set(pkg.name, { dir, kind });
    }
  }
  return out;
}

/** The source files of a plugin (src/, test/, anything but node_modules and build output). @param {string} dir @returns {string[]} */
function sourceFiles(dir) {
  /** @type {string[]} */
  const out = [];
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    if (e.name === 'node_modules' || e.name === 'dist' || e.name.startsWith('.')) continue;
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...sourceFiles(p));
    else if (SOURCE.test(e.name) && !e.name.endsWith('.d.ts') && e.name !== 'jest.config.js') out.push(p);
  }
  return out.sort();
}

/** "@scope/name/sub" -> "@scope/name"; "name/sub" -> "name". @param {string} spec */
function packageOf(spec) {
  const parts = spec.split('/');
  return spec.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0];
}

/** @param {string} parent @param {string} child */
const inside = (parent, child) => {
  const rel = path.relative(parent, child);
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
};

/**
 * Every import of the given plugin directories (default: all of plugins/*)
 * that breaks the rule.
 * @param {string} root workspace root
 * @param {string[]} [pluginDirs]
 * @returns {ImportViolation[]}
 */
function checkPluginImports(root, pluginDirs) {
  const packages = workspacePackages(root);
  const rootPkg = readJson(path.join(root, 'package.json')) ?? {};
  const rootDeps = new Set([...Object.keys(rootPkg.dependencies ?? {}), ...Object.keys(rootPkg.devDependencies ?? {})]);
  const dirs = pluginDirs ?? subdirs(path.join(root, 'plugins')).filter((d) => fs.existsSync(path.join(d, 'package.json')));
  /** @type {ImportViolation[]} */
  const out = [];
  for (const dir of dirs) {
    const pkg = readJson(path.join(dir, 'package.json')) ?? {};
    const deps = new Set(
      ['dependencies', 'peerDependencies', 'optionalDependencies', 'devDependencies'].flatMap((k) => Object.keys(pkg[k] ?? {})),
    );
    for (const file of sourceFiles(dir)) {
      const text = fs.readFileSync(file, 'utf8');
      const rel = path.relative(root, file);
      for (const imp of ts.preProcessFile(text, true, true).importedFiles) {
        const spec = imp.fileName;
        const line = text.slice(0, imp.pos).split('\n').length;
        /** @param {string} reason */
        const bad = (reason) => out.push({ file: rel, line, specifier: spec, reason });
        if (spec.startsWith('.')) {
          const target = path.resolve(path.dirname(file), spec);
          if (inside(dir, target)) continue;
          const owner = [...packages.values()].find((p) => inside(p.dir, target));
          bad(
            owner
              ? `reaches into ${path.relative(root, owner.dir)} (${owner.kind === 'plugin' ? 'another plugin' : owner.kind === 'app' ? 'the VMM app' : `a ${owner.kind}`}) by a relative path`
              : 'reaches outside the plugin by a relative path',
          );
          continue;
        }
        if (path.isAbsolute(spec)) {
          bad('is an absolute path');
          continue;
        }
        if (spec.startsWith('node:') || builtinModules.includes(spec) || builtinModules.includes(packageOf(spec))) continue;
        const name = packageOf(spec);
        const ws = packages.get(name);
        if (ws) {
          if (ws.kind === 'lib' || ws.dir === dir) continue;
          bad(
            ws.kind === 'plugin'
              ? `is another plugin (${path.relative(root, ws.dir)})`
              : ws.kind === 'app'
                ? 'is the VMM app'
                : `is a workspace ${ws.kind} (${path.relative(root, ws.dir)})`,
          );
          continue;
        }
        if (name.startsWith('@tsvmm/')) bad('is no workspace library');
        else if (!deps.has(name) && !rootDeps.has(name))
          bad(`is not a dependency in ${path.relative(root, path.join(dir, 'package.json'))}`);
      }
    }
  }
  return out;
}

/** "plugins/x/src/a.ts:3: imports '@tsvmm/vmm', which is the VMM app (rule)". @param {ImportViolation} v */
function formatViolation(v) {
  return `${v.file}:${v.line}: imports '${v.specifier}', which ${v.reason} (${RULE})`;
}

module.exports = { checkPluginImports, formatViolation, RULE };
