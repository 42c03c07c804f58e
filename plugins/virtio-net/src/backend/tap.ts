/**
 * A Linux TAP device (/dev/net/tun, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR) with
 * the 12-byte virtio-net header on every frame, so guest buffers go to the TAP
 * unchanged. One fd per queue pair (IFF_MULTI_QUEUE when there are several).
 * Reads are non-blocking and driven by libuv readiness.
 */
import * as fs from 'fs';
import { closeFd, dupFd, FdWatch, hostIoctl, readvFrames, writevFrames } from '@tsvmm/kvm-native';
import type { FrameBatch } from '../frame-batch';
import * as N from '../generated/virtio-net-uapi';

export class TapError extends Error {}

export const VNET_HDR_LEN = N.SIZEOF_virtio_net_hdr_mrg_rxbuf;

function ifreq(name: string, flags: number): Uint8Array {
  const b = new Uint8Array(N.SIZEOF_ifreq);
  b.set(Buffer.from(name, 'latin1').subarray(0, N.IFNAMSIZ - 1));
  new DataView(b.buffer).setUint16(N.OFF_ifreq_flags, flags, true);
  return b;
}

export interface TapOptions {
  name?: string;
  /** Already-open TAP fds (a manager opened them): one per queue pair. */
  fds?: number[];
  queues: number;
}

/** ioctl(FIONBIO, &int): sets or clears O_NONBLOCK on an fd (asm-generic/ioctls.h). */
const FIONBIO = 0x5421;

export class Tap {
  readonly fds: number[] = [];
  readonly name: string;
  /** Offloads the TAP accepted (TUNSETOFFLOAD), as TUN_F_* bits. */
  offloadsSupported = 0;

  constructor(opts: TapOptions) {
    if (opts.fds) {
      if (opts.fds.length !== opts.queues) throw new TapError(`fd=: ${opts.fds.length} fd(s) given for ${opts.queues} queue pair(s)`);
      this.fds.push(...opts.fds);
      this.name = opts.name ?? `fd${opts.fds[0]}`;
      for (const fd of this.fds) {
        this.configureFd(fd); // first: it says clearly when the fd is not a TAP
        // A launcher's fd is usually blocking: the frames are read on the event loop, so it must not be.
        const one = new Uint8Array(4);
        new DataView(one.buffer).setInt32(0, 1, true);
        try {
          hostIoctl(fd, FIONBIO, one);
        } catch (e) {
          throw new TapError(`fd=${fd}: cannot make it non-blocking (${(e as Error).message})`);
        }
      }
    } else {
      const name = opts.name!;
      if (!fs.existsSync('/dev/net/tun')) throw new TapError('/dev/net/tun does not exist: load the tun module (modprobe tun)');
      const flags = N.IFF_TAP | N.IFF_NO_PI | N.IFF_VNET_HDR | (opts.queues > 1 ? N.IFF_MULTI_QUEUE : 0);
      for (let i = 0; i < opts.queues; i++) {
        let fd: number;
        try {
          fd = fs.openSync('/dev/net/tun', fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
        } catch (e) {
          this.close();
          throw new TapError(`cannot open /dev/net/tun: ${(e as Error).message}`);
        }
        this.fds.push(fd);
        try {
          hostIoctl(fd, N.TUNSETIFF, ifreq(name, flags));
        } catch (e) {
          this.close();
          const code = (e as { code?: string }).code;
          if (code === 'EPERM' || code === 'EACCES')
            throw new TapError(`tap=${name}: no permission to attach (needs CAP_NET_ADMIN or a TAP owned by this user)`);
          if (code === 'EBUSY') throw new TapError(`tap=${name}: already in use by another process`);
          if (code === 'EINVAL')
            throw new TapError(
              opts.queues > 1
                ? `tap=${name}: queues=${opts.queues} needs a multi-queue TAP (ip tuntap add ${name} mode tap multi_queue), or the TAP has fewer queues`
                : `tap=${name}: the TAP's flags do not match (a multi_queue TAP needs queues>=2?)`,
            );
          throw new TapError(`tap=${name}: ${(e as Error).message}`);
        }
        this.configureFd(fd);
      }
      this.name = name;
    }
  }

  private configureFd(fd: number): void {
    const sz = new Uint8Array(4);
    new DataView(sz.buffer).setInt32(0, VNET_HDR_LEN, true);
    try {
      hostIoctl(fd, N.TUNSETVNETHDRSZ, sz);
    } catch (e) {
      throw new TapError(
        `${this.nameOr(fd)}: TUNSETVNETHDRSZ failed (${(e as Error).message}); the fd must be a TAP opened with IFF_VNET_HDR`,
      );
    }
  }

  private nameOr(fd: number): string {
    return (this as { name?: string }).name ?? `fd ${fd}`;
  }

  /** Asks the TAP to accept these offloads (TUN_F_*); returns whether it did. */
  setOffloads(flags: number): boolean {
    try {
      for (const fd of this.fds) hostIoctl(fd, N.TUNSETOFFLOAD, flags);
      return true;
    } catch {
      return false;
    }
  }

  /** Reads one frame (with its vnet header) into `buf`; 0 when none is waiting. */
  read(queue: number, buf: Uint8Array): number {
    try {
      return fs.readSync(this.fds[queue], buf, 0, buf.length, null);
    } catch (e) {
      const code = (e as { code?: string }).code;
      if (code === 'EAGAIN' || code === 'EWOULDBLOCK') return 0;
      throw e;
    }
  }

  /** Writes one frame (vnet header + data) from guest buffers: the bytes written, or -errno (EAGAIN: the TAP queue is full). */
  write(queue: number, bufs: Uint8Array[]): number {
    try {
      return fs.writevSync(this.fds[queue], bufs);
    } catch (e) {
      const errno = (e as { errno?: number }).errno;
      if (typeof errno === 'number' && errno < 0) return errno;
      throw e;
    }
  }

  /** Writes every frame of the batch, one writev each, in one call: `batch.results[i]` is bytes written or -errno. */
  writeFrames(queue: number, batch: FrameBatch): void {
    writevFrames(this.fds[queue], batch.bases, batch.iov, batch.groups, batch.count, batch.results);
  }

  /**
   * Reads frames into the batch's buffers in order, one readv each, in one
   * call, until the TAP is empty or a frame spilled past its buffers into
   * `spill`; returns how many frames have a result (bytes or -errno) in
   * `batch.results`.
   */
  readFrames(queue: number, batch: FrameBatch, spill: Uint8Array): number {
    return readvFrames(this.fds[queue], batch.bases, batch.iov, batch.groups, batch.count, batch.results, spill);
  }

  watch(queue: number, onReadable: () => void): FdWatch {
    return new FdWatch(this.fds[queue], onReadable);
  }

  /** Duplicates of the queues' descriptors (close-on-exec), for a Tap on another thread (an iothread's plane). */
  dupFds(): number[] {
    return this.fds.map((fd) => dupFd(fd));
  }

  close(): void {
    // closeFd, not fs.closeSync: on an iothread the descriptors were opened by the main thread (Node warns when a worker
    // closes through fs what its fs did not open).
    for (const fd of this.fds.splice(0)) {
      try {
        closeFd(fd);
      } catch {
        // already closed
      }
    }
  }
}
