module.exports = { displayName: 'virtio-core', ...require('../../jest.preset.js')(__dirname) };
