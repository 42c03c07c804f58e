export * from './run';
export { QmpClient } from './qmp-client';
export * from './migration';
export * from './stall';
