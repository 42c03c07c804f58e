#!/usr/bin/env node
// Bundles the VMM (app + libs + device plugins) with esbuild into OUTDIR/main.js,
// builds the plugins' worker threads (and the iothread worker with their data planes) next to it and copies the native addon, so
// the bundle runs with plain `node OUTDIR/main.js run ...` (or `npx vmm` for
// apps/vmm/dist) and needs no TypeScript at run time.
//
//   node apps/vmm/scripts/bundle.js                          every plugin -> apps/vmm/dist
//   node apps/vmm/scripts/bundle.js --plugins=virtio-blk     a slim build -> dist/vmm-virtio-blk
//   node apps/vmm/scripts/bundle.js --plugins=a,b --outdir=DIR
//   (npx nx run vmm:bundle --plugins=... passes its arguments through)
//
// Plugins are found by package, not listed here: every plugins/*/package.json
// and node_modules package with a "vmmPlugin" field (apps/vmm/src/plugin-discovery.ts).
// A generated entry imports the chosen packages' entries and registers them
// (apps/vmm/src/plugins.ts registerBundledPlugins), then exports main.
'use strict';
const esbuild = require('esbuild');
const fs = require('fs');
const Module = require('module');
const path = require('path');

const root = path.resolve(__dirname, '../../..');
const USAGE = `usage: node apps/vmm/scripts/bundle.js [--plugins=NAME,...] [--outdir=DIR]
  --plugins  the plugin packages to build in (short name like virtio-blk, or the package
             name); default: all that are found. --plugins= (empty) builds none.
  --outdir   where main.js, worker scripts and kvm_native.node go; default apps/vmm/dist
             for a full build, dist/vmm-NAME+NAME for a slim one
`;

function fail(message) {
  process.stderr.write(`bundle: ${message}\n`);
  process.exit(1);
}

function parseArgs(argv) {
  const out = { plugins: undefined, outdir: undefined };
  for (let i = 0; i < argv.length; i++) {
    let a = argv[i];
    let v;
    const eq = a.indexOf('=');
    if (a.startsWith('--') && eq > 0) {
      v = a.slice(eq + 1);
      a = a.slice(0, eq);
    }
    if (a === '--help' || a === '-h') {
      process.stdout.write(USAGE);
      process.exit(0);
    }
    if (a !== '--plugins' && a !== '--outdir') fail(`unknown argument '${argv[i]}'\n${USAGE}`);
    if (v === undefined) v = argv[++i];
    if (v === undefined) fail(`${a} needs a value`);
    if (a === '--plugins')
      out.plugins = v
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean);
    else out.outdir = path.resolve(v);
  }
  return out;
}

/** Compiles plugin-discovery.ts and the API version (plugin.ts has only type imports) in memory. */
function loadDiscovery() {
  const r = esbuild.buildSync({
    stdin: {
      contents: "export * from './apps/vmm/src/plugin-discovery'; export { PLUGIN_API_VERSION } from './libs/pci/src/plugin';",
      resolveDir: root,
      sourcefile: 'discovery-for-bundle.ts',
      loader: 'ts',
    },
    bundle: true,
    platform: 'node',
    format: 'cjs',
    write: false,
    logLevel: 'error',
  });
  const m = new Module(path.join(root, 'discovery-for-bundle.js'));
  m._compile(r.outputFiles[0].text, m.id);
  return m.exports;
}

/**
 * Writes esbuild's output files through a temporary name and a rename, so a
 * VMM starting while the bundle is rebuilt reads the old or the new file,
 * never half of one.
 */
function writeAtomically(result) {
  for (const f of result.outputFiles) {
    const tmp = `${f.path}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, f.contents);
    fs.renameSync(tmp, f.path);
  }
}

const buildOptions = (tsconfig) => ({
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'cjs',
  sourcemap: true,
  tsconfig,
  external: ['*.node'],
  logLevel: 'warning',
  write: false,
});

function main() {
  const args = parseArgs(process.argv.slice(2));
  const d = loadDiscovery();
  const scan = d.scanPluginPackages([path.join(root, 'plugins'), path.join(root, 'node_modules')], d.PLUGIN_API_VERSION);
  scan.packages.sort((a, b) => d.shortName(a.name).localeCompare(d.shortName(b.name)));
  const matches = (p, want) => want === p.name || want === d.shortName(p.name) || want === path.basename(p.dir);

  let chosen = scan.packages;
  if (args.plugins) {
    for (const want of args.plugins) {
      if (scan.packages.some((p) => matches(p, want))) continue;
      const refused = scan.refused.find((r) => want === r.name || want === d.shortName(r.name) || want === path.basename(r.dir));
      if (refused) fail(d.describeRefusal(refused));
      fail(`--plugins: no plugin package '${want}' (found: ${scan.packages.map((p) => d.shortName(p.name)).join(', ') || 'none'})`);
    }
    chosen = scan.packages.filter((p) => args.plugins.some((w) => matches(p, w)));
  } else if (scan.refused.length) {
    fail(`cannot build every plugin:\n  ${scan.refused.map(d.describeRefusal).join('\n  ')}`);
  }
  const leftOut = [...scan.packages.filter((p) => !chosen.includes(p)), ...scan.refused];
  const names = chosen.map((p) => d.shortName(p.name));
  const outdir =
    args.outdir ?? (args.plugins ? path.join(root, 'dist', `vmm-${names.join('+') || 'none'}`) : path.resolve(__dirname, '../dist'));
  fs.mkdirSync(outdir, { recursive: true });

  const info = (p) => ({
    name: p.name,
    version: p.version,
    description: p.description || '',
    apiVersion: p.manifest ? p.manifest.apiVersion : NaN,
    deviceTypes: p.manifest ? p.manifest.deviceTypes : p.deviceTypes,
  });
  const entry = [
    "import { registerBundledPlugins } from './apps/vmm/src/plugins';",
    ...chosen.map((p, i) => `import * as plugin${i} from ${JSON.stringify(p.entry)};`),
    "import { main, runAndExit } from './apps/vmm/src/main';",
    'export { main };',
    'registerBundledPlugins({',
    '  dir: __dirname,',
    `  plugins: [${chosen.map((p, i) => `{ module: plugin${i}, package: ${JSON.stringify(info(p))} }`).join(', ')}],`,
    `  leftOut: ${JSON.stringify(leftOut.map(info))},`,
    '});',
    'if (require.main === module) runAndExit(process.argv.slice(2));',
  ].join('\n');
  const tsconfig = path.join(root, 'tsconfig.base.json');
  writeAtomically(
    esbuild.buildSync({
      ...buildOptions(tsconfig),
      stdin: { contents: entry, resolveDir: root, sourcefile: 'vmm-bundle-entry.ts', loader: 'ts' },
      outfile: path.join(outdir, 'main.js'),
    }),
  );
  // Worker-thread entry points the chosen plugins declare (vmmPlugin.workers), built next to main.js.
  for (const p of chosen) {
    for (const [name, file] of Object.entries(p.manifest.workers || {})) {
      writeAtomically(
        esbuild.buildSync({
          ...buildOptions(tsconfig),
          entryPoints: [path.resolve(p.dir, file)],
          outfile: path.join(outdir, `${name}.js`),
        }),
      );
    }
  }
  // The iothread worker (virtio-core's runIoThreadWorker) with every chosen plugin's data planes
  // (vmmPlugin.iothreadPlanes), so devices of any bundled type share an iothread.
  const withPlanes = chosen.filter((p) => p.manifest.iothreadPlanes);
  if (withPlanes.length) {
    const workerEntry = [
      "import { runIoThreadWorker } from './libs/virtio-core/src/iothread-worker';",
      ...withPlanes.map(
        (p, i) => `import { iothreadPlanes as planes${i} } from ${JSON.stringify(path.resolve(p.dir, p.manifest.iothreadPlanes))};`,
      ),
      `runIoThreadWorker({ ${withPlanes.map((_, i) => `...planes${i}`).join(', ')} });`,
    ].join('\n');
    writeAtomically(
      esbuild.buildSync({
        ...buildOptions(tsconfig),
        stdin: { contents: workerEntry, resolveDir: root, sourcefile: 'iothread-worker-entry.ts', loader: 'ts' },
        outfile: path.join(outdir, 'iothread.js'),
      }),
    );
  }
  const addon = path.join(root, 'libs/kvm-native/build/Release/kvm_native.node');
  if (!fs.existsSync(addon)) fail(`${addon} is missing; build it first (node libs/kvm-native/scripts/build-native.js)`);
  // Copy then rename: a running VMM keeps its mapping of the old file (overwriting in place would SIGBUS it).
  const tmpAddon = path.join(outdir, `.kvm_native.node.${process.pid}`);
  fs.copyFileSync(addon, tmpAddon);
  fs.renameSync(tmpAddon, path.join(outdir, 'kvm_native.node'));
  const kib = (f) => `${Math.round(fs.statSync(path.join(outdir, f)).size / 1024)} KiB`;
  process.stdout.write(
    `bundle: ${path.relative(process.cwd(), path.join(outdir, 'main.js')) || 'main.js'} (${kib('main.js')}) with ${names.join(', ') || 'no device plugins'}` +
      (leftOut.length ? `; left out: ${leftOut.map((p) => d.shortName(p.name)).join(', ')}` : '') +
      '\n',
  );
}

main();
