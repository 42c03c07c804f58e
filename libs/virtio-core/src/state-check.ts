/**
 * Parsing untrusted saved state (snapshot files, incoming migration streams).
 *
 * A loadState first turns its `unknown` input into a typed, checked value
 * with these helpers, then applies it: a field of the wrong type or out of
 * range is a StateError naming the field by its path (e.g.
 * `virtio.queues[0].lastAvailIdx`), and nothing has been applied yet.
 */

export class StateError extends Error {
  constructor(
    /** Where in the state: `section.field[index].field`. */
    readonly path: string,
    /** What is wrong with it. */
    readonly problem: string,
  ) {
    super(path ? `${path}: ${problem}` : problem);
    this.name = 'StateError';
  }

  /** The same error, its path under `prefix` (a section or device name). */
  under(prefix: string): StateError {
    return new StateError(this.path ? `${prefix}.${this.path}` : prefix, this.problem);
  }
}

const show = (v: unknown): string => {
  if (v === undefined) return 'missing';
  let s: string;
  try {
    s = JSON.stringify(v) ?? String(v);
  } catch {
    s = String(v);
  }
  return s.length > 40 ? `${s.slice(0, 40)}...` : s;
};

const join = (path: string, key: string | number): string => (typeof key === 'number' ? `${path}[${key}]` : path ? `${path}.${key}` : key);

/** A JSON object with string keys (not null, not an array). */
export function record(v: unknown, path: string): Record<string, unknown> {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new StateError(path, `expected an object, got ${show(v)}`);
  return v as Record<string, unknown>;
}

/** A view of one object's fields, each read checked and named. */
export class Fields {
  readonly obj: Record<string, unknown>;
  constructor(
    v: unknown,
    readonly path: string,
  ) {
    this.obj = record(v, path);
  }

  at(key: string): string {
    return join(this.path, key);
  }

  has(key: string): boolean {
    return this.obj[key] !== undefined;
  }

  raw(key: string): unknown {
    return this.obj[key];
  }

  /** An integer in [min, max]. */
  int(key: string, min: number, max: number): number {
    return int(this.obj[key], this.at(key), min, max);
  }

  /** An integer in [0, max]. */
  uint(key: string, max = Number.MAX_SAFE_INTEGER): number {
    return int(this.obj[key], this.at(key), 0, max);
  }

  u8(key: string): number {
    return this.uint(key, 0xff);
  }

  u16(key: string): number {
    return this.uint(key, 0xffff);
  }

  u32(key: string): number {
    return this.uint(key, 0xffffffff);
  }

  bool(key: string): boolean {
    const v = this.obj[key];
    if (typeof v !== 'boolean') throw new StateError(this.at(key), `expected true or false, got ${show(v)}`);
    return v;
  }

  str(key: string, maxLength = 1 << 20): string {
    const v = this.obj[key];
    if (typeof v !== 'string') throw new StateError(this.at(key), `expected a string, got ${show(v)}`);
    if (v.length > maxLength) throw new StateError(this.at(key), `string of ${v.length} characters is longer than ${maxLength}`);
    return v;
  }

  /** A hexadecimal string of at most `bits` bits (how 64-bit values travel in JSON). */
  hex(key: string, bits = 64): bigint {
    return hex(this.obj[key], this.at(key), bits);
  }

  /** Base64 bytes, of exactly `length` bytes when given, at most `max` otherwise. */
  base64(key: string, length?: number, max = 1 << 20): Uint8Array {
    return base64(this.obj[key], this.at(key), length, max);
  }

  /** An array of at most `max` elements, each parsed by `each`. */
  array<T>(key: string, max: number, each: (v: unknown, path: string, i: number) => T): T[] {
    return array(this.obj[key], this.at(key), max, each);
  }

  /** One of the listed values. */
  oneOf<T extends string | number | boolean>(key: string, values: readonly T[]): T {
    const v = this.obj[key];
    if (!values.includes(v as T))
      throw new StateError(this.at(key), `${show(v)} is not one of ${values.map((x) => JSON.stringify(x)).join(', ')}`);
    return v as T;
  }

  /** `parse(value)` when the field is present, `undefined` when it is absent (older streams). */
  optional<T>(key: string, parse: (f: this, key: string) => T): T | undefined {
    return this.obj[key] === undefined ? undefined : parse(this, key);
  }
}

export function int(v: unknown, path: string, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v)) throw new StateError(path, `expected an integer, got ${show(v)}`);
  if (v < min || v > max) throw new StateError(path, `${v} is out of range (${min}..${max})`);
  return v;
}

export function hex(v: unknown, path: string, bits = 64): bigint {
  if (typeof v !== 'string' || !/^[0-9a-fA-F]{1,16}$/.test(v)) throw new StateError(path, `expected a hexadecimal number, got ${show(v)}`);
  const n = BigInt(`0x${v}`);
  if (n >> BigInt(bits) !== 0n) throw new StateError(path, `0x${v} is wider than ${bits} bits`);
  return n;
}

export function base64(v: unknown, path: string, length?: number, max = 1 << 20): Uint8Array {
  if (typeof v !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(v) || v.length % 4 !== 0)
    throw new StateError(path, `expected base64 bytes, got ${show(v)}`);
  if ((v.length / 4) * 3 > max + 2) throw new StateError(path, `more than ${max} bytes`);
  const b = new Uint8Array(Buffer.from(v, 'base64'));
  if (length !== undefined && b.length !== length) throw new StateError(path, `${b.length} bytes, expected ${length}`);
  if (b.length > max) throw new StateError(path, `${b.length} bytes is more than ${max}`);
  return b;
}

export function array<T>(v: unknown, path: string, max: number, each: (v: unknown, path: string, i: number) => T): T[] {
  if (!Array.isArray(v)) throw new StateError(path, `expected an array, got ${show(v)}`);
  if (v.length > max) throw new StateError(path, `${v.length} elements, at most ${max}`);
  return v.map((x, i) => each(x, join(path, i), i));
}

/** Runs `parse`, turning a StateError into one under `prefix`. */
export function within<T>(prefix: string, parse: () => T): T {
  try {
    return parse();
  } catch (e) {
    if (e instanceof StateError) throw e.under(prefix);
    throw e;
  }
}
