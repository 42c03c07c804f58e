/** Monitor commands: argument schemas (checked the way QEMU's QAPI does) and handlers. */
import { isPrototypeKey, showValue } from '@tsvmm/pci';
import { QMP_EVENTS } from './events';
import { EMPTY, QMembers, QType } from './qapi-types';

export { isPrototypeKey };

export type ArgType = 'str' | 'int' | 'bool' | 'array' | 'enum';

export interface ArgField {
  type: ArgType;
  optional?: boolean;
  values?: readonly string[];
}

export type ArgSpec = Record<string, ArgField>;

export class CommandError extends Error {
  constructor(
    message: string,
    readonly errorClass: 'GenericError' | 'CommandNotFound' | 'DeviceNotFound' | 'DeviceNotActive' | 'KVMMissingCap' = 'GenericError',
  ) {
    super(message);
  }
}

export interface Command {
  name: string;
  args: ArgSpec;
  /** One-line help for query-commands documentation and HMP help. */
  help: string;
  /** What it returns (query-qmp-schema's ret-type); EMPTY for `{}`. */
  returns: QType;
  run(args: Record<string, unknown>): unknown | Promise<unknown>;
  /**
   * Changes the run state (stop, cont, reset, quit, snapshot, migrate, HMP):
   * runs only when no other such command runs, VMM-wide (Monitor.serialize).
   */
  exclusive?: boolean;
  /**
   * Checked when the command is dispatched, before it waits for its turn:
   * throws CommandError to refuse it, or returns `{ answer }` to reply at once.
   */
  admit?(args: Record<string, unknown>): { answer: unknown } | undefined;
}

export class CommandRegistry {
  private readonly map = new Map<string, Command>();

  add(c: Command): void {
    this.map.set(c.name, c);
  }

  get(name: string): Command | undefined {
    return this.map.get(name);
  }

  names(): string[] {
    return ['qmp_capabilities', ...this.map.keys()].sort();
  }

  all(): Command[] {
    return [...this.map.values()];
  }
}

/** One entry of query-qmp-schema (QEMU's SchemaInfo, as far as this monitor uses it). */
export type SchemaInfo = { name: string; 'meta-type': string } & Record<string, unknown>;

const SCHEMA_BUILTINS: SchemaInfo[] = [
  { name: 'str', 'meta-type': 'builtin', 'json-type': 'string' },
  { name: 'int', 'meta-type': 'builtin', 'json-type': 'int' },
  { name: 'number', 'meta-type': 'builtin', 'json-type': 'number' },
  { name: 'bool', 'meta-type': 'builtin', 'json-type': 'boolean' },
  { name: 'null', 'meta-type': 'builtin', 'json-type': 'null' },
  { name: 'any', 'meta-type': 'builtin', 'json-type': 'value' },
];

/**
 * query-qmp-schema, generated from the declarations: each command with an
 * object type of its arguments (`<command>-arg`; optional members carry
 * `default: null` as QEMU's do) and the type of what it returns
 * (`<command>-ret`, a builtin, or an array type `[T]`), each event with the
 * object type of its data (`<EVENT>-data`), the object, array, enum and
 * alternate types these use, and the builtins. Nested types are named after
 * their place (`x-query-virtio-queue-status-ret-stall`). QEMU hides type
 * names behind numbers; clients must not rely on them either way.
 */
export function qmpSchema(registry: CommandRegistry): SchemaInfo[] {
  const commands: Command[] = [
    {
      name: 'qmp_capabilities',
      args: { enable: { type: 'array', optional: true } },
      help: 'leave capabilities negotiation',
      returns: EMPTY,
      run: () => ({}),
    },
    ...registry.all(),
  ];
  const entities: SchemaInfo[] = [];
  const types = new Map<string, SchemaInfo>();
  const define = (info: SchemaInfo) => {
    if (!types.has(info.name)) types.set(info.name, info);
    return info.name;
  };
  /** The schema name of `t`, defining it (and what it uses) on the way; `ctx` names anonymous types. */
  const typeName = (t: QType, ctx: string): string => {
    if (typeof t === 'string') return t;
    if ('array' in t) {
      const el = typeName(t.array, `${ctx}-element`);
      return define({ name: `[${el}]`, 'meta-type': 'array', 'element-type': el });
    }
    if ('enum' in t) return define({ name: ctx, 'meta-type': 'enum', values: [...t.enum], members: t.enum.map((v) => ({ name: v })) });
    if ('alternate' in t)
      return define({ name: ctx, 'meta-type': 'alternate', members: t.alternate.map((a, i) => ({ type: typeName(a, `${ctx}-${i}`) })) });
    return objectType(t.object, ctx);
  };
  const objectType = (members: QMembers, name: string): string => {
    const list = Object.entries(members).map(([m, f]) => {
      const type = typeName(f.type, `${name}-${m}`);
      return f.optional ? { name: m, type, default: null } : { name: m, type };
    });
    return define({ name, 'meta-type': 'object', members: list });
  };
  for (const c of commands.sort((a, b) => a.name.localeCompare(b.name))) {
    const argType = `${c.name}-arg`;
    const members = Object.entries(c.args).map(([name, f]) => {
      let type: string = f.type === 'array' ? typeName({ array: 'any' }, '') : f.type;
      if (f.type === 'enum') type = typeName({ enum: f.values! }, `${c.name}-${name}-enum`);
      return f.optional ? { name, type, default: null } : { name, type };
    });
    define({ name: argType, 'meta-type': 'object', members });
    const retType = typeName(c.returns, `${c.name}-ret`);
    entities.push({ name: c.name, 'meta-type': 'command', 'arg-type': argType, 'ret-type': retType, 'allow-oob': false });
  }
  for (const [name, data] of Object.entries(QMP_EVENTS).sort(([a], [b]) => a.localeCompare(b)))
    entities.push({ name, 'meta-type': 'event', 'arg-type': objectType(data, `${name}-data`) });
  return [...entities, ...types.values(), ...SCHEMA_BUILTINS];
}

const TYPE_NAMES: Record<ArgType, string> = { str: 'string', int: 'integer', bool: 'boolean', array: 'array', enum: 'string' };

/** Throws CommandError with QEMU's wording for a missing, mistyped or unexpected argument. */
export function checkArguments(spec: ArgSpec, args: Record<string, unknown>): void {
  for (const k of Object.keys(args)) {
    if (isPrototypeKey(k)) throw new CommandError(`Parameter '${k}' is unexpected (a reserved name)`);
    if (!Object.hasOwn(spec, k)) throw new CommandError(`Parameter '${k}' is unexpected`);
  }
  for (const [k, f] of Object.entries(spec)) {
    const v = Object.hasOwn(args, k) ? args[k] : undefined;
    if (v === undefined) {
      if (!f.optional) throw new CommandError(`Parameter '${k}' is missing`);
      continue;
    }
    const ok =
      f.type === 'str' || f.type === 'enum'
        ? typeof v === 'string'
        : f.type === 'int'
          ? typeof v === 'number' && Number.isInteger(v)
          : f.type === 'bool'
            ? typeof v === 'boolean'
            : Array.isArray(v);
    if (!ok) throw new CommandError(`Invalid parameter type for '${k}', expected: ${TYPE_NAMES[f.type]}`);
    if (f.type === 'enum' && !f.values!.includes(v as string))
      throw new CommandError(`Parameter '${k}' does not accept value ${showValue(v)} (expected one of: ${f.values!.join(', ')})`);
  }
}
