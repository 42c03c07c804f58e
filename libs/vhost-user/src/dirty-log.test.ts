// The vhost dirty log bitmap: the back-end's marks seen by the front-end through a shared memfd
// (two separate MAP_SHARED mappings of one fd, as the VMM and the back-end process have), with the
// native atomic OR and fetch-and-clear.
import { closeFd, createSharedMemory, mapSharedFd } from '@tsvmm/kvm-native';
import { decodeLogDescription, encodeLogDescription } from './protocol';
import { DirtyLogReader, DirtyLogWriter, logSizeFor, VHOST_F_LOG_ALL, VHOST_LOG_PAGE, VHOST_VRING_F_LOG } from './dirty-log';

function shared(bytes: number): { front: Uint8Array; back: Uint8Array; close(): void } {
  const m = createSharedMemory('dirty-log-test', bytes);
  const other = mapSharedFd(m.fd, bytes, 0);
  return { front: new Uint8Array(m.buffer), back: new Uint8Array(other.buffer), close: () => closeFd(m.fd) };
}

describe('dirty log', () => {
  it('constants are the UAPI values; the size covers [0, end) in whole u64 words', () => {
    expect(VHOST_F_LOG_ALL).toBe(26);
    expect(VHOST_VRING_F_LOG).toBe(0);
    expect(VHOST_LOG_PAGE).toBe(4096);
    expect(logSizeFor(64 << 20)).toBe((64 << 20) / 4096 / 8); // 16384 pages -> 2048 bytes
    expect(logSizeFor(1)).toBe(8);
    expect(logSizeFor(65 * 4096)).toBe(16);
  });

  it('marks written by one mapping are taken (and cleared) through the other: page numbers, ascending', () => {
    const m = shared(logSizeFor(1 << 20));
    try {
      const w = new DirtyLogWriter(m.back);
      const r = new DirtyLogReader(m.front);
      w.mark(0x0, 1); // page 0
      w.mark(0x3f000 + 4095, 2); // pages 63 and 64: across a u64 word
      w.mark(100 * 4096 + 17, 3 * 4096); // pages 100..103
      w.mark(5 * 4096, 0); // nothing
      expect(m.front[0]).toBe(1); // page 0 is bit 0 of byte 0 (little-endian words)
      expect(m.front[8]).toBe(1); // page 64
      expect(m.front[7]).toBe(0x80); // page 63
      expect(r.take()).toEqual([0, 63, 64, 100, 101, 102, 103]);
      expect(r.take()).toEqual([]);
      expect(m.back.every((b) => b === 0)).toBe(true);
      w.mark(255 * 4096, 4096);
      expect(r.take()).toEqual([255]);
    } finally {
      m.close();
    }
  });

  it('a whole word at once, and ranges beyond the log are clipped and counted, never thrown', () => {
    const m = shared(16);
    const w = new DirtyLogWriter(m.back);
    const r = new DirtyLogReader(m.front);
    w.mark(64 * 4096, 64 * 4096); // pages 64..127: the second word entirely
    expect(Buffer.from(m.front.subarray(8)).equals(Buffer.alloc(8, 0xff))).toBe(true);
    w.mark(126 * 4096, 10 * 4096); // 126..135: only 126, 127 fit
    w.mark(1 << 30, 4096);
    w.mark(-4096, 4096);
    expect(w.outOfRange).toBe(2);
    expect(r.take()).toEqual(Array.from({ length: 64 }, (_, i) => 64 + i));
    m.close();
  });

  it('refuses a bitmap that is not whole aligned u64 words', () => {
    expect(() => new DirtyLogWriter(new Uint8Array(12))).toThrow(/whole, aligned u64 words/);
    expect(() => new DirtyLogReader(new Uint8Array(new ArrayBuffer(24), 4, 16))).toThrow(/whole, aligned u64 words/);
  });

  it('SET_LOG_BASE payload: mmap_size, mmap_offset as little-endian u64', () => {
    const b = encodeLogDescription({ mmapSize: 2048n, mmapOffset: 4096n });
    expect(Array.from(b)).toEqual([0, 8, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0]);
    expect(decodeLogDescription(b)).toEqual({ mmapSize: 2048n, mmapOffset: 4096n });
    expect(() => decodeLogDescription(new Uint8Array(8))).toThrow(/log description payload of 8 bytes/);
  });
});
