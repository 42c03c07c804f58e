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

/** An ioctl on a host fd that is not KVM's (TAP, vhost): `arg` is an integer or a struct buffer. */
export function hostIoctl(fd: number, request: number, arg?: number | Uint8Array): number {
  checkFd('fd', fd);
  return loadNative().ioctl(fd, request, arg);
}

/** Calls `onReadable` on the JS thread whenever `fd` is readable (libuv poll), until stop(). */
export class FdWatch {
  private w: ReturnType<typeof makeWatcher> | undefined;
  private active = false;

  constructor(
    readonly fd: number,
    private readonly onReadable: () => void,
  ) {
    checkFd('fd', fd);
  }

  start(): void {
    if (this.active) return;
    this.w ??= makeWatcher(this.fd, (err) => {
      // libuv reports POLLERR (e.g. a peer that hung up with data unread) as
      // an error and stops the poll itself: the owner's next read sees the
      // error (or EOF) and ends the connection, so hand it over as readable.
      if (err) this.active = false;
      this.onReadable();
    });
    this.w.start();
    this.active = true;
  }

  stop(): void {
    if (!this.active) return;
    this.w!.stop();
    this.active = false;
  }

  get watching(): boolean {
    return this.active;
  }

  close(): void {
    this.w?.close();
    this.w = undefined;
    this.active = false;
  }
}

function makeWatcher(fd: number, cb: (err: Error | undefined) => void) {
  return new (loadNative().FdWatcher)(fd, (err) => cb(err ?? undefined));
}
