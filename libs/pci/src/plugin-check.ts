/**
 * Checks a DevicePlugin before the VMM uses it: the API version, the shape of
 * the plugin and of each device type, and every property schema (known
 * property types, defaults of the right type and inside min/max or the enum's
 * values, no typos in field names). A plugin author sees a mistake when the
 * plugin is registered, named by plugin, device type and property, instead of
 * as an odd parse error on some later command line.
 */
import { DevicePlugin, PLUGIN_API_VERSION } from './plugin';

/** A plugin the VMM refuses to register (wrong API version or a broken declaration). */
export class PluginError extends Error {
  constructor(
    message: string,
    /** The individual problems (one line each). */
    readonly problems: readonly string[] = [message],
  ) {
    super(message);
    this.name = 'PluginError';
  }
}

/** Device TYPE and property names: `virtio-blk`, `num-queues`. */
const NAME = /^[a-z][a-z0-9-]*$/;

export const PROPERTY_TYPES = ['string', 'path', 'bool', 'int', 'size', 'enum'] as const;

/** The fields each property type may have (the PropertySpec union, spelled out for run time). */
const FIELDS: Record<(typeof PROPERTY_TYPES)[number], readonly string[]> = {
  string: ['type', 'description', 'default', 'required', 'pattern', 'patternHint'],
  path: ['type', 'description', 'default', 'required'],
  bool: ['type', 'description', 'default'],
  int: ['type', 'description', 'default', 'required', 'min', 'max'],
  size: ['type', 'description', 'default', 'required', 'min', 'max'],
  enum: ['type', 'description', 'values', 'default', 'required'],
};

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const show = (v: unknown) => (typeof v === 'string' ? `'${v}'` : v instanceof RegExp ? String(v) : (JSON.stringify(v) ?? String(v)));

/** Problems of one property spec, each phrased to follow "property 'NAME': ". */
function propertyProblems(spec: unknown): string[] {
  if (!isObject(spec)) return [`must be an object like { type: 'int', description: '...' }, got ${show(spec)}`];
  const type = spec.type;
  if (typeof type !== 'string' || !(PROPERTY_TYPES as readonly string[]).includes(type))
    return [`unknown property type ${show(type)} (known: ${PROPERTY_TYPES.join(', ')})`];
  const t = type as (typeof PROPERTY_TYPES)[number];
  const out: string[] = [];
  const unknown = Object.keys(spec).filter((k) => !FIELDS[t].includes(k));
  if (unknown.length)
    out.push(
      `unknown field${unknown.length > 1 ? 's' : ''} ${unknown.map(show).join(', ')} for ${/^[aeiu]/.test(t) ? 'an' : 'a'} ${t} property (known: ${FIELDS[t].join(', ')})`,
    );
  if (typeof spec.description !== 'string' || !spec.description.trim()) out.push('needs a description (one line for users)');
  if (spec.required !== undefined && typeof spec.required !== 'boolean')
    out.push(`required must be true or false, got ${show(spec.required)}`);
  const d = spec.default;
  if (spec.required === true && d !== undefined) out.push(`is required and has a default ${show(d)}; give one or the other`);
  switch (t) {
    case 'string':
    case 'path':
      if (d !== undefined && (typeof d !== 'string' || d === '')) out.push(`default must be a non-empty string, got ${show(d)}`);
      if (t === 'string') {
        if (spec.pattern !== undefined && !(spec.pattern instanceof RegExp))
          out.push(`pattern must be a RegExp, got ${show(spec.pattern)}`);
        if (spec.patternHint !== undefined && typeof spec.patternHint !== 'string')
          out.push(`patternHint must be a string, got ${show(spec.patternHint)}`);
        if (spec.pattern instanceof RegExp && typeof d === 'string' && d !== '' && !spec.pattern.test(d))
          out.push(`default ${show(d)} does not match its pattern ${spec.pattern}`);
      }
      break;
    case 'bool':
      if (d !== undefined && typeof d !== 'boolean') out.push(`default must be true or false, got ${show(d)}`);
      break;
    case 'int':
    case 'size': {
      const intOk = (v: unknown) => typeof v === 'number' && Number.isSafeInteger(v);
      for (const k of ['min', 'max', 'default'] as const)
        if (spec[k] !== undefined && !intOk(spec[k])) out.push(`${k} must be an integer, got ${show(spec[k])}`);
      const min = intOk(spec.min) ? (spec.min as number) : undefined;
      const max = intOk(spec.max) ? (spec.max as number) : undefined;
      if (min !== undefined && max !== undefined && min > max) out.push(`min ${min} is above max ${max}`);
      if (intOk(d) && min !== undefined && (d as number) < min) out.push(`default ${show(d)} is below min ${min}`);
      if (intOk(d) && max !== undefined && (d as number) > max) out.push(`default ${show(d)} is above max ${max}`);
      break;
    }
    case 'enum': {
      const values = spec.values;
      if (!Array.isArray(values) || values.length === 0 || values.some((v) => typeof v !== 'string' || v === '')) {
        out.push(`values must be a non-empty list of non-empty strings, got ${show(values)}`);
        break;
      }
      const dup = values.find((v, i) => values.indexOf(v) !== i);
      if (dup !== undefined) out.push(`value ${show(dup)} is listed twice`);
      if (d !== undefined && !values.includes(d)) out.push(`default ${show(d)} is not one of its values (${values.join(', ')})`);
      break;
    }
  }
  return out;
}

/**
 * Throws PluginError unless `plugin` is a DevicePlugin for API
 * `apiVersion` whose device types and property schemas are well formed.
 * Every problem is reported, each naming the plugin, the device type and the
 * property.
 */
export function checkDevicePlugin(plugin: unknown, apiVersion = PLUGIN_API_VERSION): asserts plugin is DevicePlugin {
  if (!isObject(plugin) || typeof plugin.name !== 'string' || !plugin.name)
    throw new PluginError(
      `a device plugin must be an object with apiVersion, name, version and deviceTypes; got ${isObject(plugin) ? `one without a name (keys: ${Object.keys(plugin).join(', ') || 'none'})` : show(plugin)}`,
    );
  const who = `plugin ${plugin.name}${typeof plugin.version === 'string' ? `@${plugin.version}` : ''}`;
  // The API version first: a plugin for another API may legitimately look different.
  if (plugin.apiVersion !== apiVersion)
    throw new PluginError(`${who} was built for plugin API ${show(plugin.apiVersion)}; this VMM speaks API ${apiVersion}`);
  const problems: string[] = [];
  if (typeof plugin.version !== 'string' || !plugin.version)
    problems.push(`version must be a non-empty string, got ${show(plugin.version)}`);
  const types = plugin.deviceTypes;
  if (!Array.isArray(types) || types.length === 0) problems.push('deviceTypes must list at least one device type');
  else {
    const seen = new Set<string>();
    types.forEach((t: unknown, i) => {
      if (!isObject(t)) {
        problems.push(`deviceTypes[${i}] must be an object with type, description, properties and create, got ${show(t)}`);
        return;
      }
      const name = t.type;
      const where = typeof name === 'string' && name ? `device type '${name}'` : `deviceTypes[${i}]`;
      if (typeof name !== 'string' || !NAME.test(name))
        problems.push(`${where}: the type name ${show(name)} must be lower-case letters, digits and '-', starting with a letter`);
      else if (seen.has(name)) problems.push(`${where} is declared twice`);
      else seen.add(name);
      if (typeof t.description !== 'string' || !t.description.trim())
        problems.push(`${where}: needs a description (one line for \`vmm plugins\`)`);
      if (typeof t.create !== 'function') problems.push(`${where}: has no create(ctx, id, props) factory`);
      if (!isObject(t.properties)) {
        problems.push(`${where}: properties must be an object of property specs (use {} for none), got ${show(t.properties)}`);
        return;
      }
      for (const [key, spec] of Object.entries(t.properties)) {
        if (key === 'id') problems.push(`${where}: property 'id' is reserved (it names the device)`);
        else if (!NAME.test(key))
          problems.push(`${where}: property name ${show(key)} must be lower-case letters, digits and '-', starting with a letter`);
        for (const p of propertyProblems(spec)) problems.push(`${where}: property '${key}': ${p}`);
      }
    });
  }
  if (problems.length === 1) throw new PluginError(`${who}: ${problems[0]}`, problems);
  if (problems.length > 1) throw new PluginError(`${who} has ${problems.length} problems:\n  ${problems.join('\n  ')}`, problems);
}
