module.exports = { displayName: 'vhost-user', ...require('../../jest.preset.js')(__dirname) };
