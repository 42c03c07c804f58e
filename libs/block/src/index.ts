export { RawFileBackend, BackendOpenError, skipBytes } from './raw-file';
export type { BlockBackend, FileIo } from './raw-file';
