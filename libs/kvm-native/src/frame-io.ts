/**
 * Several readv/writev calls on one fd in one call into the addon: for
 * datagram-like fds (a TAP gives and takes one frame per call), where one
 * N-API crossing per batch instead of per frame is what counts. Generic
 * plumbing: no device logic.
 *
 * Buffers are named, not passed as views, so a caller builds a batch without
 * allocating: `bases` is a fixed list of Uint8Arrays (e.g. guest RAM's
 * buffers), `iov` holds (base index, byte offset, length) triples, and
 * `groups[i]` is how many consecutive triples make request i. The addon
 * checks every triple against its base; a bad one fails its request with
 * EFAULT (more than IOV_MAX triples in a request, or more than 2 GiB: EINVAL)
 * and never reaches the kernel.
 */
import { checkFd } from './check';
import { KvmArgumentError } from './errors';
import { loadNative } from './native';

function checkBatch(iov: Float64Array, groups: Uint32Array, count: number, results: Int32Array): void {
  if (!(iov instanceof Float64Array)) throw new KvmArgumentError('iov must be a Float64Array');
  if (!(groups instanceof Uint32Array)) throw new KvmArgumentError('groups must be a Uint32Array');
  if (!(results instanceof Int32Array)) throw new KvmArgumentError('results must be an Int32Array');
  if (!Number.isInteger(count) || count < 0 || count > groups.length || count > results.length)
    throw new KvmArgumentError(`count must be an integer in [0, ${Math.min(groups.length, results.length)}], got ${count}`);
}

/**
 * One writev(2) per request, every request tried, in order: results[i] is
 * the bytes written or -errno (EAGAIN, EIO, EINVAL... for that request
 * alone). Returns `count`.
 */
export function writevFrames(
  fd: number,
  bases: Uint8Array[],
  iov: Float64Array,
  groups: Uint32Array,
  count: number,
  results: Int32Array,
): number {
  checkFd('fd', fd);
  checkBatch(iov, groups, count, results);
  return loadNative().writevFrames(fd, bases, iov, groups, count, results);
}

/**
 * One readv(2) per request, in order, into the request's buffers followed by
 * `spill` (when given), until:
 * - the fd has nothing more (EAGAIN): that request gets no result;
 * - a read fails: results[i] = -errno;
 * - a read spilled (returned more bytes than the request's own buffers
 *   hold): the rest is at the start of `spill`, and nothing more is read.
 * results[i] is the bytes read. Returns how many requests got a result.
 */
export function readvFrames(
  fd: number,
  bases: Uint8Array[],
  iov: Float64Array,
  groups: Uint32Array,
  count: number,
  results: Int32Array,
  spill?: Uint8Array,
): number {
  checkFd('fd', fd);
  checkBatch(iov, groups, count, results);
  return loadNative().readvFrames(fd, bases, iov, groups, count, results, spill ?? null);
}
