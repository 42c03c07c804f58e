/** Argument checks for the facade: a bad value is a KvmArgumentError naming it, never an ioctl on garbage. */
import { KvmArgumentError } from './errors';

export function checkInt(name: string, v: unknown, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v)) throw new KvmArgumentError(`${name} must be an integer, got ${String(v)}`);
  if (v < min || v > max) throw new KvmArgumentError(`${name} must be in [${min}, ${max}], got ${v}`);
  return v;
}

export const checkU8 = (name: string, v: unknown) => checkInt(name, v, 0, 0xff);
export const checkU16 = (name: string, v: unknown) => checkInt(name, v, 0, 0xffff);
export const checkU32 = (name: string, v: unknown) => checkInt(name, v, 0, 0xffffffff);
export const checkFd = (name: string, v: unknown) => checkInt(name, v, 0, 0x7fffffff);

/** Accepts a safe-integer number or a bigint; returns a bigint in [0, 2^64). */
export function checkU64(name: string, v: unknown): bigint {
  if (typeof v === 'number') {
    if (!Number.isSafeInteger(v) || v < 0) throw new KvmArgumentError(`${name} must be a non-negative safe integer, got ${v}`);
    return BigInt(v);
  }
  if (typeof v === 'bigint') {
    if (v < 0n || v >= 1n << 64n) throw new KvmArgumentError(`${name} must fit in 64 bits, got ${v}`);
    return v;
  }
  throw new KvmArgumentError(`${name} must be a number or bigint, got ${typeof v}`);
}

export const PAGE_SIZE = 4096;

export function checkPageAligned(name: string, v: bigint): bigint {
  if (v % BigInt(PAGE_SIZE) !== 0n) throw new KvmArgumentError(`${name} must be 4 KiB aligned, got 0x${v.toString(16)}`);
  return v;
}
