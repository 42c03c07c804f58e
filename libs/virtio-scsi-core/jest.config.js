module.exports = { displayName: 'virtio-scsi-core', ...require('../../jest.preset.js')(__dirname) };
