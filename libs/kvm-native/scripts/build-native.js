#!/usr/bin/env node
// Builds the kvm-native addon with cmake-js (the project's own build step; npm
// does not run dependency install scripts). Output: libs/kvm-native/build/Release/kvm_native.node
const { execFileSync } = require('child_process');
const path = require('path');
const root = path.resolve(__dirname, '..');
const cmakeJs = require.resolve('cmake-js/bin/cmake-js');
execFileSync(process.execPath, [cmakeJs, 'build', '-d', root, '-O', path.join(root, 'build'), '-m', '-p', '2', '-l', 'error'], {
  stdio: 'inherit',
  cwd: root,
});
