// The real-Linux suite (nx run vmm:e2e-linux): boots tools/linux-guest's kernel on the VMM.
const base = require('../../jest.preset.js')(__dirname);
module.exports = {
  ...base,
  displayName: 'vmm e2e-linux',
  testMatch: ['<rootDir>/e2e-linux/**/*.test.ts'],
  testTimeout: 400000,
  maxWorkers: 1,
  // A line per test as it starts and ends (each boots Linux for minutes).
  reporters: ['default', '<rootDir>/e2e-linux/progress-reporter.js'],
};
