export * from './errors';
export * from './eventfd';
export * from './kvm';
export * from './run';
export * from './structs';
export { loadNative, addonCandidates } from './native';
export type { NativeAddon } from './native';
export * as uapi from './generated/kvm-uapi';
export * from './host-file';
