module.exports = { displayName: 'vhost-user-scsi', ...require('../../jest.preset.js')(__dirname) };
