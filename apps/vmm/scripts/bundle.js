#!/usr/bin/env node
// Bundles the VMM (app + libs + plugins) into apps/vmm/dist/main.js with esbuild
// and puts the native addon next to it, so `npx vmm` needs no TypeScript at run time.
const esbuild = require('esbuild');
const fs = require('fs');
const path = require('path');

const root = path.resolve(__dirname, '../../..');
const outdir = path.resolve(__dirname, '../dist');
fs.mkdirSync(outdir, { recursive: true });
esbuild.buildSync({
  entryPoints: [path.resolve(__dirname, '../src/main.ts')],
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'cjs',
  outfile: path.join(outdir, 'main.js'),
  sourcemap: true,
  tsconfig: path.join(root, 'tsconfig.base.json'),
  external: ['*.node'],
  logLevel: 'warning',
});
// Worker-thread entry points of plugins (e.g. virtio-blk's iothread), bundled next to main.js.
const workers = { 'virtio-blk-iothread': 'plugins/virtio-blk/src/iothread-worker.ts' };
for (const [name, entry] of Object.entries(workers)) {
  esbuild.buildSync({
    entryPoints: [path.join(root, entry)],
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'cjs',
    outfile: path.join(outdir, `${name}.js`),
    sourcemap: true,
    tsconfig: path.join(root, 'tsconfig.base.json'),
    external: ['*.node'],
    logLevel: 'warning',
  });
}
const addon = path.join(root, 'libs/kvm-native/build/Release/kvm_native.node');
if (!fs.existsSync(addon)) {
  console.error(`bundle: ${addon} is missing; build it first (node libs/kvm-native/scripts/build-native.js)`);
  process.exit(1);
}
// Copy then rename: a running VMM keeps its mapping of the old file (overwriting in place would SIGBUS it).
const tmpAddon = path.join(outdir, `.kvm_native.node.${process.pid}`);
fs.copyFileSync(addon, tmpAddon);
fs.renameSync(tmpAddon, path.join(outdir, 'kvm_native.node'));
