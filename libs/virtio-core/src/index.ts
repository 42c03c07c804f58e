export * from './guest-memory';
