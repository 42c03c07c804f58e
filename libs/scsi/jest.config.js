module.exports = { displayName: 'scsi', ...require('../../jest.preset.js')(__dirname) };
