/**
 * The value types of QMP command returns and event data, as query-qmp-schema
 * reports them (QEMU's SchemaInfo: builtins, objects, arrays, enums,
 * alternates). Each command declares `returns` and each event its data
 * (events.ts); the schema is generated from those declarations.
 */
export type QType =
  | 'str'
  | 'int'
  | 'number'
  | 'bool'
  | 'null'
  | 'any'
  | { array: QType }
  | { enum: readonly string[] }
  | { object: QMembers }
  /** One of several types (QEMU's alternate), e.g. an age in ms or null. */
  | { alternate: readonly QType[] };

export interface QMember {
  type: QType;
  optional?: boolean;
}

export type QMembers = Record<string, QMember>;

/** Shorthands for declarations. */
export const q = {
  req: (type: QType): QMember => ({ type }),
  opt: (type: QType): QMember => ({ type, optional: true }),
  obj: (members: QMembers): QType => ({ object: members }),
  arr: (type: QType): QType => ({ array: type }),
  enum: (values: readonly string[]): QType => ({ enum: values }),
  orNull: (type: QType): QType => ({ alternate: [type, 'null'] }),
};

/** An empty object: what a command without a result returns (`{}`). */
export const EMPTY: QType = { object: {} };

/**
 * Why `value` does not fit `type` (a path and what was expected), or
 * undefined when it does. Object members not declared are refused, so a
 * declaration cannot silently fall behind what the code sends.
 */
export function mismatch(type: QType, value: unknown, path = '$'): string | undefined {
  if (typeof type === 'string') {
    const ok =
      type === 'any' ||
      (type === 'str' && typeof value === 'string') ||
      (type === 'int' && Number.isInteger(value)) ||
      (type === 'number' && typeof value === 'number') ||
      (type === 'bool' && typeof value === 'boolean') ||
      (type === 'null' && value === null);
    return ok ? undefined : `${path}: expected ${type}, got ${JSON.stringify(value)}`;
  }
  if ('array' in type) {
    if (!Array.isArray(value)) return `${path}: expected an array`;
    for (let i = 0; i < value.length; i++) {
      const m = mismatch(type.array, value[i], `${path}[${i}]`);
      if (m) return m;
    }
    return undefined;
  }
  if ('enum' in type)
    return typeof value === 'string' && type.enum.includes(value) ? undefined : `${path}: expected one of ${type.enum.join('|')}`;
  if ('alternate' in type)
    return type.alternate.some((t) => mismatch(t, value, path) === undefined)
      ? undefined
      : `${path}: no alternative fits ${JSON.stringify(value)}`;
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return `${path}: expected an object`;
  const v = value as Record<string, unknown>;
  for (const k of Object.keys(v)) if (!Object.hasOwn(type.object, k)) return `${path}.${k}: not declared`;
  for (const [k, m] of Object.entries(type.object)) {
    if (!Object.hasOwn(v, k)) {
      if (m.optional) continue;
      return `${path}.${k}: missing`;
    }
    const r = mismatch(m.type, v[k], `${path}.${k}`);
    if (r) return r;
  }
  return undefined;
}
