/** Host file operations Node does not offer (for block backends). */
import { checkFd, checkU64 } from './check';
import { loadNative } from './native';

/** Linux fallocate(2) modes. */
export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
export const FALLOC_FL_ZERO_RANGE = 0x10;

/** fallocate(2); throws an errno error (code EOPNOTSUPP when the filesystem cannot). */
export function fallocate(fd: number, mode: number, offset: number, len: number): void {
  checkFd('fd', fd);
  checkU64('offset', offset);
  checkU64('len', len);
  loadNative().fallocate(fd, mode, offset, len);
}
