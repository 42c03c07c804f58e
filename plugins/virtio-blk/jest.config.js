module.exports = { displayName: 'virtio-blk', ...require('../../jest.preset.js')(__dirname) };
