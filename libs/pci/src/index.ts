export * from './config-space';
export * from './io-bus';
export * from './pci-bus';
export * from './plugin';
export * from './properties';
