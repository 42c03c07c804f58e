/**
 * Guest RAM as JS sees it: one memfd and one host mapping per KVM memory slot
 * (what vhost back-ends, the iothread and migration share), handed to JS as
 * several ArrayBuffers ("pieces"). V8 limits one ArrayBuffer (4 GiB in
 * Node 20), guest RAM goes up to 64 GiB. Pieces end at guest-physical
 * multiples of RAM_PIECE_SIZE, so page-sized and smaller guest buffers never
 * span two of them; GuestMemory (virtio-core) joins them again.
 */
import { checkFd, checkU64 } from './check';
import { KvmArgumentError } from './errors';
import { loadNative } from './native';

/** Guest-physical alignment at which guest RAM is split into ArrayBuffers (1 GiB). */
export const RAM_PIECE_SIZE = 2 ** 30;

/** One ArrayBuffer of guest RAM and the guest-physical address of its first byte. */
export interface RamPiece {
  guestPhysAddr: number;
  bytes: Uint8Array;
}

/** The piece lengths of [gpa, gpa+size): cut at every guest-physical multiple of `piece`. */
export function ramPieceLengths(gpa: number, size: number, piece = RAM_PIECE_SIZE): number[] {
  if (!Number.isSafeInteger(gpa) || !Number.isSafeInteger(size) || gpa < 0 || size <= 0)
    throw new KvmArgumentError(`guest RAM range [${gpa}, +${size}) is not a non-empty safe-integer range`);
  const out: number[] = [];
  for (let a = gpa, end = gpa + size; a < end;) {
    const next = Math.min(end, (Math.floor(a / piece) + 1) * piece);
    out.push(next - a);
    a = next;
  }
  return out;
}

export function toPieces(gpa: number, lengths: readonly number[], buffers: readonly ArrayBuffer[]): RamPiece[] {
  const out: RamPiece[] = [];
  let a = gpa;
  lengths.forEach((n, i) => {
    out.push({ guestPhysAddr: a, bytes: new Uint8Array(buffers[i]) });
    a += n;
  });
  return out;
}

/**
 * Maps `size` bytes of a guest RAM memfd (from `offset`) that the guest sees
 * at `gpa`, MAP_SHARED read/write, as pieces (an iothread worker, a vhost-user
 * back-end). Unmapped when every piece has been collected.
 */
export function mapGuestRam(fd: number, gpa: number, size: number, offset = 0): { address: bigint; pieces: RamPiece[] } {
  checkFd('fd', fd);
  checkU64('offset', offset);
  const lengths = ramPieceLengths(gpa, size);
  const m = loadNative().mmapFd(fd, size, offset, lengths);
  return { address: m.address, pieces: toPieces(gpa, lengths, m.buffers) };
}

/**
 * The parts of [offset, offset+len) of a memfd that hold data, as [start, end)
 * pairs in order; everything else is a hole and reads as zeroes. (Reading a
 * hole through a shared mapping would allocate a page: migration's first pass
 * skips them.)
 */
export function dataExtents(fd: number, offset: number, len: number): [number, number][] {
  checkFd('fd', fd);
  const flat = loadNative().dataExtents(fd, offset, len);
  const out: [number, number][] = [];
  for (let i = 0; i < flat.length; i += 2) out.push([flat[i], flat[i + 1]]);
  return out;
}
