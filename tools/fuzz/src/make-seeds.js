#!/usr/bin/env node
'use strict';
/**
 * Writes the seed corpus of a package's targets from <project>/fuzz/<target>.seeds.ts
 * (export function seeds(): Record<string, Uint8Array>) into fuzz/corpus/<target>/.
 *
 *   node tools/fuzz/src/make-seeds.js <project-dir> [target ...]
 */
const fs = require('fs');
const path = require('path');
const os = require('os');

const WS = path.resolve(__dirname, '../../..');
const [dirArg, ...wanted] = process.argv.slice(2);
if (!dirArg) {
  console.error('usage: make-seeds.js <project-dir> [target ...]');
  process.exit(2);
}
const fuzzDir = path.join(path.resolve(WS, dirArg), 'fuzz');
(async () => {
  for (const f of fs
    .readdirSync(fuzzDir)
    .filter((f) => f.endsWith('.seeds.ts'))
    .sort()) {
    const name = f.slice(0, -'.seeds.ts'.length);
    if (wanted.length && !wanted.includes(name)) continue;
    const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'tsvmm-fuzz-seeds-')), `${name}.js`);
    require('esbuild').buildSync({
      entryPoints: [path.join(fuzzDir, f)],
      outfile: out,
      bundle: true,
      platform: 'node',
      format: 'cjs',
      logLevel: 'error',
      tsconfig: path.join(WS, 'tsconfig.base.json'),
      external: ['*.node'],
    });
    const seeds = await require(out).seeds();
    const dir = path.join(fuzzDir, 'corpus', name);
    fs.mkdirSync(dir, { recursive: true });
    for (const [k, v] of Object.entries(seeds)) fs.writeFileSync(path.join(dir, k), Buffer.from(v));
    fs.rmSync(path.dirname(out), { recursive: true, force: true });
    console.log(`${path.relative(WS, dir)}: ${Object.keys(seeds).length} seeds`);
  }
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
