// @ts-check
/** @tsvmm/plugin-tools: the device-plugin generator and the plugin import-rule check. */
'use strict';
module.exports = {
  devicePluginGenerator: require('./device-plugin/generator'),
  ...require('./plugin-imports'),
};
