// Shared Jest settings: every project's jest.config.js spreads this.
const path = require('path');
module.exports = (projectDir) => ({
  rootDir: projectDir,
  testEnvironment: 'node',
  transform: {
    '^.+\\.ts$': ['ts-jest', { tsconfig: path.join(projectDir, 'tsconfig.json') }],
  },
  moduleNameMapper: {
    '^@tsvmm/virtio-core/testing$': path.join(__dirname, 'libs/virtio-core/src/testing.ts'),
    '^@tsvmm/kvm-native/testing$': path.join(__dirname, 'libs/kvm-native/src/testing.ts'),
    '^@tsvmm/testing/fuzz$': path.join(__dirname, 'libs/testing/src/fuzz/index.ts'),
    '^@tsvmm/(kvm-native|virtio-core|pci|block|scsi|virtio-scsi-core|vhost-user|testing)$': path.join(__dirname, 'libs/$1/src/index.ts'),
  },
  testMatch: ['<rootDir>/src/**/*.test.ts', '<rootDir>/test/**/*.test.ts'],
  testTimeout: 60000,
});
