export * from './protocol';
export * from './frontend';
