'use strict';
/**
 * Byte-level mutations in the style of libFuzzer/AFL: bit flips, random and
 * "interesting" bytes and integers (both endiannesses), insertions, deletions,
 * duplications, copies within the input, splices with another corpus entry and
 * dictionary tokens. Deterministic from the seed of `Rng`.
 */

class Rng {
  constructor(seed) {
    this.s = seed >>> 0 || 0x9e3779b9;
  }
  /** xorshift32: a uint32. */
  u32() {
    let x = this.s;
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    this.s = x >>> 0;
    return this.s;
  }
  /** An integer in [0, n). */
  below(n) {
    return n <= 0 ? 0 : this.u32() % n;
  }
  chance(p) {
    return this.u32() / 0x100000000 < p;
  }
  pick(a) {
    return a[this.below(a.length)];
  }
}

const INTERESTING_8 = [0, 1, 2, 0x0f, 0x10, 0x1f, 0x20, 0x3f, 0x40, 0x7e, 0x7f, 0x80, 0x81, 0xfe, 0xff];
const INTERESTING_16 = [0, 1, 0x10, 0x100, 0x1000, 0x7fff, 0x8000, 0x8001, 0xfff0, 0xfffe, 0xffff];
const INTERESTING_32 = [0, 1, 0x10, 0x1000, 0x10000, 0x100000, 0x7fffffff, 0x80000000, 0xfffffff0, 0xfffffff1, 0xfffffffe, 0xffffffff];

function writeInt(buf, off, value, width, littleEndian) {
  for (let i = 0; i < width; i++) {
    const b = Math.floor(value / 2 ** (8 * i)) & 0xff;
    buf[littleEndian ? off + i : off + width - 1 - i] = b;
  }
}

/**
 * One mutated copy of `input` (a Uint8Array), at most `maxLen` bytes.
 * `other` is another corpus entry for splicing; `dict` a list of Uint8Array tokens.
 */
function mutate(rng, input, maxLen, other, dict) {
  let buf = Buffer.from(input);
  const rounds = 1 + rng.below(rng.chance(0.2) ? 8 : 3);
  for (let r = 0; r < rounds; r++) buf = mutateOnce(rng, buf, maxLen, other, dict);
  return buf.length > maxLen ? buf.subarray(0, maxLen) : buf;
}

function mutateOnce(rng, buf, maxLen, other, dict) {
  const n = buf.length;
  const op = rng.below(dict && dict.length ? 13 : 12);
  switch (op) {
    case 0: // flip a bit
      if (n) buf[rng.below(n)] ^= 1 << rng.below(8);
      return buf;
    case 1: // random byte
      if (n) buf[rng.below(n)] = rng.below(256);
      return buf;
    case 2: // interesting byte
      if (n) buf[rng.below(n)] = rng.pick(INTERESTING_8);
      return buf;
    case 3: // interesting 16-bit integer
      if (n >= 2) writeInt(buf, rng.below(n - 1), rng.pick(INTERESTING_16), 2, rng.chance(0.8));
      return buf;
    case 4: // interesting 32-bit integer
      if (n >= 4) writeInt(buf, rng.below(n - 3), rng.pick(INTERESTING_32), 4, rng.chance(0.8));
      return buf;
    case 5: {
      // add or subtract a small number to a 1/2/4-byte field
      const w = rng.pick([1, 2, 4]);
      if (n < w) return buf;
      const off = rng.below(n - w + 1);
      let v = 0;
      for (let i = 0; i < w; i++) v += buf[off + i] * 2 ** (8 * i);
      v = (v + (rng.chance(0.5) ? 1 : -1) * (1 + rng.below(16)) + 2 ** (8 * w)) % 2 ** (8 * w);
      writeInt(buf, off, v, w, true);
      return buf;
    }
    case 6: {
      // insert random bytes
      if (n >= maxLen) return buf;
      const k = 1 + rng.below(Math.min(16, maxLen - n));
      const ins = Buffer.alloc(k);
      const fill = rng.chance(0.5) ? rng.below(256) : -1;
      for (let i = 0; i < k; i++) ins[i] = fill >= 0 ? fill : rng.below(256);
      const at = rng.below(n + 1);
      return Buffer.concat([buf.subarray(0, at), ins, buf.subarray(at)]);
    }
    case 7: {
      // delete a range
      if (n < 2) return buf;
      const at = rng.below(n);
      const k = 1 + rng.below(Math.min(32, n - at));
      return Buffer.concat([buf.subarray(0, at), buf.subarray(at + k)]);
    }
    case 8: {
      // duplicate a range
      if (!n || n >= maxLen) return buf;
      const at = rng.below(n);
      const k = 1 + rng.below(Math.min(64, n - at, maxLen - n));
      return Buffer.concat([buf.subarray(0, at + k), buf.subarray(at, at + k), buf.subarray(at + k)]);
    }
    case 9: {
      // copy a range over another place
      if (n < 2) return buf;
      const from = rng.below(n);
      const to = rng.below(n);
      const k = 1 + rng.below(Math.min(64, n - from, n - to));
      buf.copy(buf, to, from, from + k);
      return buf;
    }
    case 10: {
      // splice with another input
      if (!other || !other.length) return buf;
      const at = rng.below(n + 1);
      const from = rng.below(other.length);
      const k = 1 + rng.below(other.length - from);
      if (rng.chance(0.5)) return Buffer.concat([buf.subarray(0, at), Buffer.from(other.subarray(from, from + k))]);
      const out = Buffer.from(buf);
      Buffer.from(other.subarray(from, from + k)).copy(out, Math.min(at, Math.max(0, n - 1)));
      return out;
    }
    case 11: {
      // truncate
      if (n < 2) return buf;
      return buf.subarray(0, rng.below(n));
    }
    default: {
      // dictionary token: insert or overwrite
      const tok = rng.pick(dict);
      const at = rng.below(n + 1);
      if (rng.chance(0.5)) return Buffer.concat([buf.subarray(0, at), tok, buf.subarray(at)]);
      const out = Buffer.from(buf.length >= at + tok.length ? buf : Buffer.concat([buf, Buffer.alloc(at + tok.length - n)]));
      Buffer.from(tok).copy(out, at);
      return out;
    }
  }
}

module.exports = { Rng, mutate, INTERESTING_32 };
