/** Linux eventfds, and watching them on the libuv loop. */
import { checkU64 } from './check';
import { KvmArgumentError } from './errors';
import { loadNative, NativeFdWatcher } from './native';

export class EventFd {
  private closed = false;
  private watcher: NativeFdWatcher | undefined;

  private constructor(readonly fd: number) {}

  /** Adopts an eventfd received from elsewhere (e.g. over a unix socket); closing the EventFd closes it. */
  static adopt(fd: number): EventFd {
    if (!Number.isInteger(fd) || fd < 0) throw new KvmArgumentError(`eventfd fd must be a non-negative integer, got ${fd}`);
    return new EventFd(fd);
  }

  /** A non-blocking, close-on-exec eventfd with the given initial count. */
  static create(initial = 0): EventFd {
    if (!Number.isInteger(initial) || initial < 0 || initial > 0xffffffff)
      throw new KvmArgumentError(`eventfd initial value must be a u32, got ${initial}`);
    return new EventFd(loadNative().eventfd(initial));
  }

  /** Adds `value` (default 1) to the counter: the same thing KVM does for an ioeventfd hit. */
  write(value: number | bigint = 1): void {
    this.assertOpen();
    const v = checkU64('eventfd value', value);
    if (v === 0n || v === 0xffffffffffffffffn) throw new KvmArgumentError('eventfd value must be in [1, 2^64-2]');
    loadNative().eventfdWrite(this.fd, v);
  }

  /** Reads and clears the counter; 0n when nothing was pending. */
  read(): bigint {
    this.assertOpen();
    return loadNative().eventfdRead(this.fd);
  }

  /**
   * Calls `onSignal(count)` on the JS thread each time the counter becomes
   * non-zero (the counter is read and cleared first). One watcher per eventfd.
   */
  watch(onSignal: (count: bigint) => void): void {
    this.assertOpen();
    if (this.watcher) throw new Error(`eventfd ${this.fd} is already watched`);
    const w = new (loadNative().FdWatcher)(this.fd, (err) => {
      if (err) throw err;
      if (this.closed) return;
      const n = loadNative().eventfdRead(this.fd);
      if (n > 0n) onSignal(n);
    });
    w.start();
    this.watcher = w;
  }

  unwatch(): void {
    if (this.watcher) {
      this.watcher.close();
      this.watcher = undefined;
    }
  }

  get watched(): boolean {
    return this.watcher !== undefined;
  }

  close(): void {
    if (this.closed) return;
    this.unwatch();
    this.closed = true;
    loadNative().close(this.fd);
  }

  private assertOpen(): void {
    if (this.closed) throw new Error('eventfd is closed');
  }
}
