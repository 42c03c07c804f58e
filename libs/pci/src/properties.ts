/**
 * Device property schemas: every device type declares its properties once and
 * gets the same parsing and the same clear errors (naming the device and the
 * property) for free, whether the values come from --device or a JSON config.
 */

/**
 * One property of a device type's schema. Every spec has a `description`
 * (shown in errors and docs). `default` fills in an absent property (it must
 * have the spec's type, lie within `min`/`max` and be one of an enum's
 * `values`); `required` makes an absent property an error (not together with a
 * default). `string` values may be constrained by `pattern`, with
 * `patternHint` saying what is expected; `int` takes decimal or 0x hex, `size`
 * also K/M/G/T suffixes; `bool` takes on/off, true/false, yes/no, 1/0.
 * checkDevicePlugin validates specs when a plugin is registered.
 */
export type PropertySpec =
  | { type: 'string'; description: string; default?: string; required?: boolean; pattern?: RegExp; patternHint?: string }
  | { type: 'path'; description: string; default?: string; required?: boolean }
  | { type: 'bool'; description: string; default?: boolean }
  | { type: 'int'; description: string; default?: number; required?: boolean; min?: number; max?: number }
  | { type: 'size'; description: string; default?: number; required?: boolean; min?: number; max?: number }
  | { type: 'enum'; description: string; values: readonly string[]; default?: string; required?: boolean };

/** Property name (lower case, digits, '-'; not `id`) to spec. */
export type PropertySchema = Record<string, PropertySpec>;

export type PropertyValue = string | number | boolean;

export class PropertyError extends Error {
  /**
   * `property`: the property at fault (when one is); `detail`: the message
   * without the `what:` prefix and the property name, so a JSON config can
   * blame its own path instead (`devices[0].num-queues: must be ...`).
   */
  constructor(
    message: string,
    readonly property?: string,
    readonly detail?: string,
  ) {
    super(message);
    this.name = 'PropertyError';
  }
}

/**
 * Names a plain object inherits (`__proto__`, `constructor`, `toString`, ...):
 * never accepted as keys from outside (device properties, QMP arguments,
 * config settings), so no lookup can reach Object.prototype.
 */
export function isPrototypeKey(k: string): boolean {
  return k === '__proto__' || Object.getOwnPropertyNames(Object.prototype).includes(k);
}

/**
 * A value from outside (a property, a QMP argument, a config setting) as an
 * error message shows it: a string in quotes, anything else as JSON (never
 * `[object Object]`); control characters escaped and at most 80 characters,
 * so a hostile value cannot flood or forge log lines.
 */
export function showValue(v: unknown): string {
  let text: string;
  if (typeof v === 'string') text = /^[\x20-\x7e]*$/.test(v) ? `'${v}'` : JSON.stringify(v);
  else {
    try {
      text = JSON.stringify(v, (_k, x: unknown) => (typeof x === 'bigint' ? x.toString() : x)) ?? String(v);
    } catch {
      text = `(unprintable ${typeof v})`; // a cycle
    }
  }
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

/** Parses "256M", "1G", "4096", "0x1000" into bytes. */
export function parseSize(text: string): number | undefined {
  const m = /^(0x[0-9a-f]+|\d+)\s*([kmgt]i?b?|b)?$/i.exec(text.trim());
  if (!m) return undefined;
  const n = Number(m[1]);
  const unit = (m[2] ?? '').toLowerCase()[0];
  const mul = unit === 'k' ? 2 ** 10 : unit === 'm' ? 2 ** 20 : unit === 'g' ? 2 ** 30 : unit === 't' ? 2 ** 40 : 1;
  const v = n * mul;
  return Number.isSafeInteger(v) ? v : undefined;
}

function parseInteger(text: string): number | undefined {
  if (!/^(0x[0-9a-f]+|-?\d+)$/i.test(text.trim())) return undefined;
  const v = Number(text);
  return Number.isSafeInteger(v) ? v : undefined;
}

function parseBool(v: unknown): boolean | undefined {
  if (typeof v === 'boolean') return v;
  if (typeof v !== 'string') return undefined;
  const t = v.toLowerCase();
  if (['on', 'true', 'yes', '1'].includes(t)) return true;
  if (['off', 'false', 'no', '0'].includes(t)) return false;
  return undefined;
}

/**
 * Validates raw properties (strings from the command line, or JSON values)
 * against a schema; fills defaults. `what` names the device in errors, e.g.
 * "device 'disk0' (virtio-blk)".
 */
export function parseProperties(
  what: string,
  schema: PropertySchema,
  raw: Record<string, unknown>,
): Record<string, PropertyValue | undefined> {
  const out: Record<string, PropertyValue | undefined> = {};
  for (const key of Object.keys(raw)) {
    if (isPrototypeKey(key))
      throw new PropertyError(`${what}: '${key}' is not a property name (a reserved name)`, key, 'not a property name (a reserved name)');
    if (!Object.hasOwn(schema, key)) {
      const known = Object.keys(schema);
      const detail = 'unknown property' + (known.length ? ` (known: ${known.join(', ')})` : ' (it takes no properties)');
      throw new PropertyError(`${what}: unknown property '${key}'` + detail.slice('unknown property'.length), key, detail);
    }
  }
  for (const [key, spec] of Object.entries(schema)) {
    const v = Object.hasOwn(raw, key) ? raw[key] : undefined;
    if (v === undefined) {
      if ('required' in spec && spec.required)
        throw new PropertyError(`${what}: property '${key}' is required (${spec.description})`, key, `is required (${spec.description})`);
      out[key] = spec.default;
      continue;
    }
    const bad = (expect: string) =>
      new PropertyError(
        `${what}: property '${key}' must be ${expect}, got ${showValue(v)}`,
        key,
        `must be ${expect}, got ${JSON.stringify(v)}`,
      );
    switch (spec.type) {
      case 'string':
      case 'path': {
        if (typeof v !== 'string' || v.length === 0) throw bad('a non-empty string');
        if (spec.type === 'string' && spec.pattern && !spec.pattern.test(v)) throw bad(spec.patternHint ?? `of the form ${spec.pattern}`);
        out[key] = v;
        break;
      }
      case 'bool': {
        const b = parseBool(v);
        if (b === undefined) throw bad('on or off');
        out[key] = b;
        break;
      }
      case 'int':
      case 'size': {
        const n = typeof v === 'number' ? v : typeof v === 'string' ? (spec.type === 'size' ? parseSize(v) : parseInteger(v)) : undefined;
        if (n === undefined || !Number.isSafeInteger(n)) throw bad(spec.type === 'size' ? 'a size such as 4096, 64K or 1G' : 'an integer');
        if (spec.min !== undefined && n < spec.min) throw bad(`at least ${spec.min}`);
        if (spec.max !== undefined && n > spec.max) throw bad(`at most ${spec.max}`);
        out[key] = n;
        break;
      }
      case 'enum': {
        if (typeof v !== 'string' || !spec.values.includes(v)) throw bad(`one of ${spec.values.join(', ')}`);
        out[key] = v;
        break;
      }
    }
  }
  return out;
}
