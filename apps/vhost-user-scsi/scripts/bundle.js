#!/usr/bin/env node
// Bundles the vhost-user-scsi back-end (app + libs) with esbuild into
// apps/vhost-user-scsi/dist/main.js and copies the native addon next to it,
// so `node apps/vhost-user-scsi/bin/vhost-user-scsi.js` needs no TypeScript.
'use strict';
const esbuild = require('esbuild');
const fs = require('fs');
const path = require('path');

const root = path.resolve(__dirname, '../../..');
const outdir = path.join(root, 'apps/vhost-user-scsi/dist');
fs.mkdirSync(outdir, { recursive: true });
const r = esbuild.buildSync({
  entryPoints: [path.join(root, 'apps/vhost-user-scsi/src/main.ts')],
  bundle: true,
  platform: 'node',
  target: 'node18',
  format: 'cjs',
  write: false,
  sourcemap: 'inline',
  tsconfig: path.join(root, 'apps/vhost-user-scsi/tsconfig.json'),
  logLevel: 'error',
});
// Through a temporary name and a rename: a back-end starting during a rebuild reads a whole file.
const out = path.join(outdir, 'main.js');
fs.writeFileSync(`${out}.tmp`, r.outputFiles[0].contents);
fs.renameSync(`${out}.tmp`, out);
const addon = path.join(root, 'libs/kvm-native/build/Release/kvm_native.node');
if (!fs.existsSync(addon)) throw new Error('kvm-native addon not built: node libs/kvm-native/scripts/build-native.js');
fs.copyFileSync(addon, `${path.join(outdir, 'kvm_native.node')}.tmp`);
fs.renameSync(`${path.join(outdir, 'kvm_native.node')}.tmp`, path.join(outdir, 'kvm_native.node'));
