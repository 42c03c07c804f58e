/**
 * readvFrames / writevFrames on real fds: a file (writes land in order, one
 * writev per request), a non-blocking FIFO (EAGAIN ends a read batch, a read
 * longer than its buffers goes on into the spill buffer and ends the batch),
 * and the checks a bad batch meets (EFAULT for its request alone, argument
 * errors before any system call).
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { KvmArgumentError, readvFrames, writevFrames } from '../src';

const EFAULT = os.constants.errno.EFAULT;
const EINVAL = os.constants.errno.EINVAL;

/** A batch from [base index, offset, length] triples per request. */
function batch(requests: [number, number, number][][]) {
  const triples = requests.flat();
  return {
    iov: Float64Array.from(triples.flat()),
    groups: Uint32Array.from(requests.map((r) => r.length)),
    results: new Int32Array(requests.length).fill(-12345),
  };
}

describe('frame I/O: several readv/writev calls in one', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'frame-io-s-net-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('writevFrames writes each request from its (buffer, offset, length) triples, in order, and reports each one', () => {
    const fd = fs.openSync(path.join(dir, 'out'), 'w+');
    try {
      const a = Uint8Array.from({ length: 256 }, (_, i) => i);
      const b = new Uint8Array(4096).fill(0xee);
      const { iov, groups, results } = batch([
        [
          [0, 10, 5],
          [1, 0, 3],
        ],
        [[0, 200, 56]],
        [
          [1, 4000, 96],
          [0, 0, 1],
        ],
      ]);
      expect(writevFrames(fd, [a, b], iov, groups, 3, results)).toBe(3);
      expect([...results]).toEqual([8, 56, 97]);
      const out = fs.readFileSync(path.join(dir, 'out'));
      expect([...out]).toEqual([...a.subarray(10, 15), 0xee, 0xee, 0xee, ...a.subarray(200, 256), ...new Array(96).fill(0xee), 0]);
      // Only `count` requests are done.
      results.fill(-1);
      expect(writevFrames(fd, [a, b], iov, groups, 1, results)).toBe(1);
      expect([...results]).toEqual([8, -1, -1]);
    } finally {
      fs.closeSync(fd);
    }
  });

  it('a triple outside its buffer fails its own request with EFAULT and never reaches the kernel; the others are done', () => {
    const fd = fs.openSync(path.join(dir, 'out'), 'w+');
    try {
      const a = new Uint8Array(100).fill(1);
      const bad: [number, number, number][][] = [
        [[0, 90, 11]], // past the end
        [[1, 0, 1]], // no such buffer
        [[0, -1, 1]],
        [[0, 0.5, 1]],
        [[0, NaN, 1]],
        [[0, 0, Infinity]],
        [[0, 2 ** 53, 1]],
      ];
      for (const req of bad) {
        const { iov, groups, results } = batch([[[0, 0, 2]], req, [[0, 98, 2]]]);
        expect(writevFrames(fd, [a], iov, groups, 3, results)).toBe(3);
        expect([...results]).toEqual([2, -EFAULT, 2]);
      }
      expect(fs.fstatSync(fd).size).toBe(4 * bad.length);
      // More triples than the kernel takes in one call (IOV_MAX): EINVAL for that request.
      const many = batch([Array.from({ length: 1025 }, (): [number, number, number] => [0, 0, 1])]);
      writevFrames(fd, [a], many.iov, many.groups, 1, many.results);
      expect(many.results[0]).toBe(-EINVAL);
      // Groups that name more triples than iov holds: EINVAL, not a read past the array.
      const short = batch([[[0, 0, 1]]]);
      short.groups[0] = 5;
      writevFrames(fd, [a], short.iov, short.groups, 1, short.results);
      expect(short.results[0]).toBe(-EINVAL);
    } finally {
      fs.closeSync(fd);
    }
  });

  it('refuses malformed arguments before any system call', () => {
    const a = new Uint8Array(8);
    const { iov, groups, results } = batch([[[0, 0, 1]]]);
    expect(() => writevFrames(-1, [a], iov, groups, 1, results)).toThrow(KvmArgumentError);
    expect(() => writevFrames(1, [a], iov, groups, 2, results)).toThrow(KvmArgumentError);
    expect(() => writevFrames(1, [a], new Float32Array(3) as unknown as Float64Array, groups, 1, results)).toThrow(KvmArgumentError);
    expect(() => readvFrames(1, [a], iov, new Int32Array(1) as unknown as Uint32Array, 1, results)).toThrow(KvmArgumentError);
    expect(() => readvFrames(1, [a], iov, groups, 1, new Uint32Array(1) as unknown as Int32Array)).toThrow(KvmArgumentError);
    // The addon's own checks (TypeErrors of the addon's realm: matched by message).
    expect(() => writevFrames(1, [new Uint16Array(4) as unknown as Uint8Array], iov, groups, 1, results)).toThrow(
      'bases must be an array of Uint8Arrays',
    );
    expect(() => writevFrames(1, 'x' as unknown as Uint8Array[], iov, groups, 1, results)).toThrow('bases must be an array of Uint8Arrays');
    expect(() => readvFrames(1, [a], iov, groups, 1, results, [] as unknown as Uint8Array)).toThrow('spill must be a Uint8Array');
  });

  it('readvFrames on a non-blocking FIFO: one read per request until it is empty (EAGAIN: no result); a longer read spills and ends the batch', () => {
    const fifo = path.join(dir, 'fifo');
    execFileSync('mkfifo', [fifo]);
    // Read and write ends in one non-blocking open: an empty FIFO reads EAGAIN, not end-of-file.
    const fd = fs.openSync(fifo, fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
    try {
      const ram = new Uint8Array(64);
      const spill = new Uint8Array(32);
      const { iov, groups, results } = batch([[[0, 0, 4]], [[0, 8, 4]], [[0, 16, 4]]]);
      // Nothing there: no request gets a result.
      expect(readvFrames(fd, [ram], iov, groups, 3, results, spill)).toBe(0);
      expect(results[0]).toBe(-12345);
      // A pipe is a byte stream: the first read takes its 4 bytes plus 6 into the spill buffer (a longer "frame"),
      // and the batch ends there.
      fs.writeSync(fd, Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]));
      expect(readvFrames(fd, [ram], iov, groups, 3, results, spill)).toBe(1);
      expect(results[0]).toBe(10);
      expect([...ram.subarray(0, 4)]).toEqual([1, 2, 3, 4]);
      expect([...spill.subarray(0, 6)]).toEqual([5, 6, 7, 8, 9, 10]);
      // Without a spill buffer, each request reads what its own buffers hold, until the FIFO is empty.
      fs.writeSync(fd, Uint8Array.from([11, 12, 13, 14, 15, 16]));
      expect(readvFrames(fd, [ram], iov, groups, 3, results)).toBe(2);
      expect([...results.subarray(0, 2)]).toEqual([4, 2]);
      expect([...ram.subarray(0, 4)]).toEqual([11, 12, 13, 14]);
      expect([...ram.subarray(8, 10)]).toEqual([15, 16]);
      // A bad triple fails its request and ends the batch (nothing read for it).
      fs.writeSync(fd, Uint8Array.from([21, 22]));
      const bad = batch([[[0, 62, 4]]]);
      expect(readvFrames(fd, [ram], bad.iov, bad.groups, 1, bad.results, spill)).toBe(1);
      expect(bad.results[0]).toBe(-EFAULT);
      expect(readvFrames(fd, [ram], iov, groups, 1, results)).toBe(1);
      expect(results[0]).toBe(2);
    } finally {
      fs.closeSync(fd);
    }
  });
});
