#!/usr/bin/env node
// @ts-check
// Checks the plugin import rule on plugins/* (or the plugin directories given):
//   node tools/plugin-tools/src/check-plugin-imports.js [plugins/NAME ...]
'use strict';
const path = require('path');
const { checkPluginImports, formatViolation } = require('./plugin-imports');

const root = path.resolve(__dirname, '../../..');
const dirs = process.argv.slice(2).map((d) => path.resolve(d));
const violations = checkPluginImports(root, dirs.length ? dirs : undefined);
for (const v of violations) process.stderr.write(`${formatViolation(v)}\n`);
if (violations.length) process.exit(1);
process.stdout.write('plugin imports: ok\n');
