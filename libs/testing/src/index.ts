export * from './run';
export { QmpClient } from './qmp-client';
