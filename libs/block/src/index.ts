export { RawFileBackend, BackendOpenError } from './raw-file';
export type { BlockBackend } from './raw-file';
