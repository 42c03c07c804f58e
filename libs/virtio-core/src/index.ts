export * from './chain-io';
export * from './device';
export * from './guest-memory';
export * from './virtqueue';
export * from './state-check';
export * from './virtio-state';
export * from './rate-limit';
export * from './stall';
export * as virtioUapi from './generated/virtio-uapi';
