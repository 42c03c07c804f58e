module.exports = { displayName: 'plugin-tools', ...require('../../jest.preset.js')(__dirname), testTimeout: 120000 };
