module.exports = { displayName: 'pci', ...require('../../jest.preset.js')(__dirname) };
