module.exports = { displayName: 'virtio-scsi', ...require('../../jest.preset.js')(__dirname) };
