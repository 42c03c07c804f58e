/** Monitor commands: argument schemas (checked the way QEMU's QAPI does) and handlers. */
import { isPrototypeKey, showValue } from '@tsvmm/pci';

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
  { name: 'bool', 'meta-type': 'builtin', 'json-type': 'boolean' },
  { name: 'any', 'meta-type': 'builtin', 'json-type': 'value' },
  { name: '[any]', 'meta-type': 'array', 'element-type': 'any' },
];

/**
 * query-qmp-schema, generated from the argument specs: each command with an
 * object type of its arguments (`<command>-arg`; optional members carry
 * `default: null` as QEMU's do), enum types for enum arguments, and the
 * builtins they use. Return types are not specified here, so every command
 * returns `any`. QEMU hides type names behind numbers; clients must not rely
 * on them either way.
 */
export function qmpSchema(registry: CommandRegistry): SchemaInfo[] {
  const commands: Command[] = [
    {
      name: 'qmp_capabilities',
      args: { enable: { type: 'array', optional: true } },
      help: 'leave capabilities negotiation',
      run: () => ({}),
    },
    ...registry.all(),
  ];
  const out: SchemaInfo[] = [];
  const types: SchemaInfo[] = [];
  for (const c of commands.sort((a, b) => a.name.localeCompare(b.name))) {
    const argType = `${c.name}-arg`;
    out.push({ name: c.name, 'meta-type': 'command', 'arg-type': argType, 'ret-type': 'any', 'allow-oob': false });
    const members = Object.entries(c.args).map(([name, f]) => {
      let type: string = f.type === 'array' ? '[any]' : f.type;
      if (f.type === 'enum') {
        type = `${c.name}-${name}-enum`;
        types.push({ name: type, 'meta-type': 'enum', values: [...f.values!], members: f.values!.map((v) => ({ name: v })) });
      }
      return f.optional ? { name, type, default: null } : { name, type };
    });
    types.push({ name: argType, 'meta-type': 'object', members });
  }
  return [...out, ...types, ...SCHEMA_BUILTINS];
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
