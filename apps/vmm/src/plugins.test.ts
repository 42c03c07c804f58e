// Plugin discovery from sources: the workspace's plugins/* by package.json, and
// run-time packages on VMM_PLUGIN_PATH (refused before their code runs when the
// manifest names another API version).
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { PLUGIN_API_VERSION } from '@tsvmm/pci';
import { loadPluginCatalog } from './plugins';
import { formatPluginReport, pluginReport } from './plugins-report';
import { scanPluginPackages } from './plugin-discovery';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmm-plugins-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** A compiled (plain JS) plugin package in `dir`. */
function writePackage(dir: string, manifest: unknown, indexJs: string, main = 'index.js'): string {
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(
    path.join(dir, 'package.json'),
    JSON.stringify({ name: path.basename(dir), version: '2.0.0', main, vmmPlugin: manifest }),
  );
  fs.writeFileSync(path.join(dir, 'index.js'), indexJs);
  return dir;
}

const pluginJs = (name: string, properties: string, type = 'rt-dev') => `
const { PLUGIN_API_VERSION } = require('@tsvmm/pci');
exports.plugin = {
  apiVersion: PLUGIN_API_VERSION, name: '${name}', version: '2.0.0',
  deviceTypes: [{ type: '${type}', description: 'a run-time test device', properties: ${properties}, create: (ctx, id) => ({ id, type: '${type}' }) }],
};`;

describe('plugin discovery from sources', () => {
  it('finds the workspace plugin packages by their vmmPlugin field, every one usable', () => {
    const c = loadPluginCatalog({});
    expect(c.problems).toEqual([]);
    expect(c.builtWith).toBeUndefined();
    const names = c.plugins.map((p) => p.package.name);
    expect(names).toEqual(expect.arrayContaining(['@tsvmm/virtio-blk', '@tsvmm/virtio-net']));
    for (const p of c.plugins) {
      expect(p.origin).toBe('workspace');
      expect(p.package.apiVersion).toBe(PLUGIN_API_VERSION);
      expect(p.plugin.deviceTypes.map((t) => t.type).sort()).toEqual([...p.package.deviceTypes].sort());
    }
    const blk = c.plugins.find((p) => p.package.name === '@tsvmm/virtio-blk')!;
    expect(blk.dir).toBe(fs.realpathSync(path.resolve(__dirname, '../../../plugins/virtio-blk')));
    // The data planes the bundle's iothread worker registers (virtio-blk's and virtio-scsi's).
    const scan = scanPluginPackages([path.resolve(__dirname, '../../../plugins')], PLUGIN_API_VERSION);
    const planes = Object.fromEntries(scan.packages.map((p) => [p.name, p.manifest.iothreadPlanes]));
    expect(planes).toMatchObject({ '@tsvmm/virtio-blk': 'src/iothread-plane.ts', '@tsvmm/virtio-scsi': 'src/iothread-plane.ts' });
  });

  it('refuses a package whose manifest names another plugin API without loading its code', () => {
    const dir = writePackage(
      path.join(tmp, 'api2', 'vmm-plugin-future'),
      { apiVersion: PLUGIN_API_VERSION + 1, deviceTypes: ['future-dev'] },
      "globalThis.__futureLoaded = true; throw new Error('must not be loaded');",
    );
    const c = loadPluginCatalog({ VMM_PLUGIN_PATH: path.dirname(dir) });
    expect((globalThis as { __futureLoaded?: boolean }).__futureLoaded).toBeUndefined();
    expect(c.problems.map((p) => p.message)).toEqual([
      `plugin package vmm-plugin-future@2.0.0 (${fs.realpathSync(dir)}): built for plugin API ${PLUGIN_API_VERSION + 1}; this VMM speaks plugin API ${PLUGIN_API_VERSION}`,
    ]);
    expect(formatPluginReport(pluginReport(c))).toContain(`Refused:\n  plugin package vmm-plugin-future@2.0.0`);
  });

  it('loads a compiled package from VMM_PLUGIN_PATH (a package directory itself) as a run-time plugin', () => {
    const dir = writePackage(
      path.join(tmp, 'rt-good'),
      { apiVersion: PLUGIN_API_VERSION, deviceTypes: ['rt-dev'] },
      pluginJs('rt-good', "{ n: { type: 'int', description: 'n', default: 1, min: 0, max: 4 } }"),
    );
    const c = loadPluginCatalog({ VMM_PLUGIN_PATH: `/nonexistent:${dir}` });
    expect(c.problems).toEqual([]);
    const rt = c.plugins.find((p) => p.package.name === 'rt-good')!;
    expect(rt.origin).toBe('run-time');
    expect(formatPluginReport(pluginReport(c))).toMatch(
      /rt-good 2\.0\.0 {2}plugin API 1 {2}loaded at run time \(.*rt-good\)\n {2}rt-dev +a run-time test device/,
    );
  });

  it.each([
    [
      'a broken schema',
      { apiVersion: PLUGIN_API_VERSION, deviceTypes: ['rt-dev'] },
      pluginJs('rt-schema', "{ queues: { type: 'int', description: 'q', default: 64, max: 16 } }"),
      "plugin rt-schema@2.0.0: device type 'rt-dev': property 'queues': default 64 is above max 16",
    ],
    [
      'device types that differ from the manifest',
      { apiVersion: PLUGIN_API_VERSION, deviceTypes: ['rt-dev', 'rt-other'] },
      pluginJs('rt-types', '{}'),
      'package.json vmmPlugin.deviceTypes (rt-dev, rt-other) differs from the device types the plugin declares (rt-dev)',
    ],
    [
      'an entry that throws',
      { apiVersion: PLUGIN_API_VERSION, deviceTypes: ['rt-dev'] },
      "throw new Error('boom at load');",
      'loading its entry failed: boom at load',
    ],
    [
      'no plugin export',
      { apiVersion: PLUGIN_API_VERSION, deviceTypes: ['rt-dev'] },
      'exports.other = 1;',
      'its entry module does not export `plugin` (a DevicePlugin)',
    ],
    [
      'a malformed manifest',
      { apiVersion: 'one', deviceTypes: [] },
      '',
      'package.json "vmmPlugin.apiVersion" must be an integer, got "one"; package.json "vmmPlugin.deviceTypes" must list',
    ],
    [
      'an iothreadPlanes that is not a module path',
      { apiVersion: PLUGIN_API_VERSION, deviceTypes: ['rt-dev'], iothreadPlanes: { 'rt-dev': 'x.js' } },
      '',
      'package.json "vmmPlugin.iothreadPlanes" must be the path of a module exporting iothreadPlanes',
    ],
  ])('reports %s with a clear message', (what, manifest, js, expected) => {
    const dir = writePackage(path.join(tmp, 'bad', what.replace(/\W+/g, '-')), manifest, js);
    const c = loadPluginCatalog({ VMM_PLUGIN_PATH: dir });
    expect(c.problems).toHaveLength(1);
    expect(c.problems[0].message).toContain(expected);
  });

  it('finds scoped packages in a node_modules directory once, however often they are reachable', () => {
    const nm = path.join(tmp, 'nm', 'node_modules');
    const real = writePackage(path.join(nm, '@acme', 'vmm-echo'), { apiVersion: PLUGIN_API_VERSION, deviceTypes: ['acme-echo'] }, '');
    writePackage(path.join(nm, 'not-a-plugin'), undefined, '');
    fs.symlinkSync(real, path.join(nm, 'echo-link'));
    const scan = scanPluginPackages([nm, real], PLUGIN_API_VERSION);
    expect(scan.refused).toEqual([]);
    expect(scan.packages.map((p) => [p.name, p.dir])).toEqual([['vmm-echo', fs.realpathSync(real)]]);
  });
});
