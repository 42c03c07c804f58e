/**
 * virtio-blk's messages to and from its plane on an iothread: the generic
 * protocol of @tsvmm/virtio-core (iothread.ts), with blk's init fields
 * (the image's duplicated descriptors, its options), its extra state (status
 * bytes held back while bus mastering is off) and its counters.
 */
import type { OpenedImage } from '@tsvmm/block';
import { IoThreadChannel, IoThreadFromWorker, IoThreadInit, IoThreadReply, IoThreadToWorker } from '@tsvmm/virtio-core';
import type { BlkCounters, BlkExtraState } from './device';

export { IoThreadHost, ioThreadHost } from '@tsvmm/virtio-core';
export type { WorkerQueueStats } from '@tsvmm/virtio-core';

/** The plane factory's name in the iothread worker (iothread-plane.ts). */
export const BLK_PLANE = 'virtio-blk';

export interface BlkInit extends IoThreadInit {
  file: string;
  /** The image's descriptors, duplicated for the worker (it opens nothing by path: see RawFileBackend's `opened`). */
  fds?: OpenedImage;
  readonly: boolean;
  direct: boolean;
  aio?: 'io_uring' | 'threads';
  numQueues: number;
  serial: string;
}

export type ToWorker = IoThreadToWorker<BlkInit, BlkExtraState>;
export type FromWorker = IoThreadFromWorker<BlkCounters, BlkExtraState>;
export type WorkerReply = IoThreadReply<FromWorker>;

/** The channel of a virtio-blk device to its plane. */
export class BlkIoThread extends IoThreadChannel<ToWorker, FromWorker> {}
