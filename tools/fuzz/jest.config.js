module.exports = { displayName: 'fuzz-harness', ...require('../../jest.preset.js')(__dirname) };
