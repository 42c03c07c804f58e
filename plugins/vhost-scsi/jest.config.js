module.exports = { displayName: 'vhost-scsi', ...require('../../jest.preset.js')(__dirname) };
