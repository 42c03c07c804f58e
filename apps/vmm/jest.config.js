module.exports = { displayName: 'vmm', ...require('../../jest.preset.js')(__dirname) };
