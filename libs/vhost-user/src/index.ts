export * from './protocol';
export * from './frontend';
export * from './dirty-log';
