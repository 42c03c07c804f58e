export { RawFileBackend, BackendOpenError, skipBytes, chooseAio, ioUringFileIo, AIO_MODES } from './raw-file';
export type { AioMode, BlockBackend, FileIo, OpenedImage } from './raw-file';
