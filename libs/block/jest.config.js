module.exports = { displayName: 'block', ...require('../../jest.preset.js')(__dirname) };
