module.exports = { displayName: 'kvm-native', ...require('../../jest.preset.js')(__dirname) };
