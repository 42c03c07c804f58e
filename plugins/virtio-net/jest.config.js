module.exports = { displayName: 'virtio-net', ...require('../../jest.preset.js')(__dirname) };
