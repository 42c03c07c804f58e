import { checkDevicePlugin, PluginError } from './plugin-check';
import { DevicePlugin, DeviceType, PLUGIN_API_VERSION } from './plugin';
import { VIRTIO_PCI_DEBUG_PROPERTIES } from './virtio-pci';

const create: DeviceType['create'] = (_ctx, id) => ({ id, type: 'good-dev' });

function plugin(types: unknown[], extra: Record<string, unknown> = {}): unknown {
  return { apiVersion: PLUGIN_API_VERSION, name: '@test/broken', version: '1.2.3', deviceTypes: types, ...extra };
}

function typeWith(properties: unknown, extra: Record<string, unknown> = {}): unknown {
  return { type: 'good-dev', description: 'a device', properties, create, ...extra };
}

function message(p: unknown): string {
  try {
    checkDevicePlugin(p);
  } catch (e) {
    expect(e).toBeInstanceOf(PluginError);
    return (e as Error).message;
  }
  throw new Error('checkDevicePlugin accepted it');
}

describe('checkDevicePlugin', () => {
  it('accepts a well-formed plugin (every property type, the shared virtio-pci properties)', () => {
    const ok: DevicePlugin = {
      apiVersion: PLUGIN_API_VERSION,
      name: '@test/ok',
      version: '0.1.0',
      deviceTypes: [
        {
          type: 'good-dev',
          description: 'a device',
          create,
          properties: {
            file: { type: 'path', description: 'image', required: true },
            serial: {
              type: 'string',
              description: 'serial',
              pattern: /^[A-Z0-9]{1,20}$/,
              patternHint: 'up to 20 upper-case letters or digits',
              default: 'S1',
            },
            readonly: { type: 'bool', description: 'read-only', default: false },
            'num-queues': { type: 'int', description: 'queues', default: 1, min: 1, max: 16 },
            size: { type: 'size', description: 'size', min: 4096 },
            cache: { type: 'enum', description: 'cache', values: ['writeback', 'none'], default: 'none' },
            ...VIRTIO_PCI_DEBUG_PROPERTIES,
          },
        },
      ],
    };
    expect(() => checkDevicePlugin(ok)).not.toThrow();
  });

  it('refuses a plugin built for another API version, naming both versions', () => {
    expect(message(plugin([typeWith({})], { apiVersion: 7 }))).toBe(
      `plugin @test/broken@1.2.3 was built for plugin API 7; this VMM speaks API ${PLUGIN_API_VERSION}`,
    );
  });

  it.each([
    [
      'an unknown property type',
      { q: { type: 'number', description: 'q' } },
      "device type 'good-dev': property 'q': unknown property type 'number' (known: string, path, bool, int, size, enum)",
    ],
    [
      'a default above max',
      { queues: { type: 'int', description: 'queues', default: 32, min: 1, max: 16 } },
      "device type 'good-dev': property 'queues': default 32 is above max 16",
    ],
    [
      'a default below min',
      { size: { type: 'size', description: 'size', default: 512, min: 4096 } },
      "device type 'good-dev': property 'size': default 512 is below min 4096",
    ],
    [
      'min above max',
      { n: { type: 'int', description: 'n', min: 9, max: 3 } },
      "device type 'good-dev': property 'n': min 9 is above max 3",
    ],
    [
      'an enum default that is not a value',
      { cache: { type: 'enum', description: 'cache', values: ['writeback', 'none'], default: 'always' } },
      "device type 'good-dev': property 'cache': default 'always' is not one of its values (writeback, none)",
    ],
    [
      'an empty enum',
      { m: { type: 'enum', description: 'm', values: [] } },
      "device type 'good-dev': property 'm': values must be a non-empty list of non-empty strings, got []",
    ],
    [
      'a bool default that is a string',
      { ro: { type: 'bool', description: 'ro', default: 'off' } },
      "device type 'good-dev': property 'ro': default must be true or false, got 'off'",
    ],
    [
      'a misspelt field',
      { n: { type: 'int', description: 'n', defualt: 3 } },
      "device type 'good-dev': property 'n': unknown field 'defualt' for an int property (known: type, description, default, required, min, max)",
    ],
    ['a missing description', { n: { type: 'int' } }, "device type 'good-dev': property 'n': needs a description (one line for users)"],
    [
      'required with a default',
      { f: { type: 'path', description: 'f', required: true, default: '/x' } },
      "device type 'good-dev': property 'f': is required and has a default '/x'; give one or the other",
    ],
    [
      'a default that fails its pattern',
      { s: { type: 'string', description: 's', pattern: /^\d+$/, default: 'abc' } },
      "device type 'good-dev': property 's': default 'abc' does not match its pattern /^\\d+$/",
    ],
    [
      'a property named id',
      { id: { type: 'string', description: 'x' } },
      "device type 'good-dev': property 'id' is reserved (it names the device)",
    ],
    [
      'an upper-case property name',
      { Queues: { type: 'int', description: 'q' } },
      "device type 'good-dev': property name 'Queues' must be lower-case letters, digits and '-', starting with a letter",
    ],
  ])('names plugin, device type and property for %s', (_what, properties, problem) => {
    expect(message(plugin([typeWith(properties)]))).toBe(`plugin @test/broken@1.2.3: ${problem}`);
  });

  it.each([
    ['no device types', plugin([]), 'plugin @test/broken@1.2.3: deviceTypes must list at least one device type'],
    [
      'a device type declared twice',
      plugin([typeWith({}), typeWith({})]),
      "plugin @test/broken@1.2.3: device type 'good-dev' is declared twice",
    ],
    [
      'a missing create',
      plugin([typeWith({}, { create: undefined })]),
      "plugin @test/broken@1.2.3: device type 'good-dev': has no create(ctx, id, props) factory",
    ],
    [
      'a bad type name',
      plugin([typeWith({}, { type: 'Good Dev' })]),
      "plugin @test/broken@1.2.3: device type 'Good Dev': the type name 'Good Dev' must be lower-case letters, digits and '-', starting with a letter",
    ],
    [
      'missing properties',
      plugin([typeWith(undefined)]),
      "plugin @test/broken@1.2.3: device type 'good-dev': properties must be an object of property specs (use {} for none), got undefined",
    ],
    [
      'no name',
      { apiVersion: 1, deviceTypes: [] },
      'a device plugin must be an object with apiVersion, name, version and deviceTypes; got one without a name (keys: apiVersion, deviceTypes)',
    ],
    ['not an object', undefined, 'a device plugin must be an object with apiVersion, name, version and deviceTypes; got undefined'],
  ])('refuses %s', (_what, p, msg) => {
    expect(message(p)).toBe(msg);
  });

  it('lists every problem, one per line', () => {
    const e = (() => {
      try {
        checkDevicePlugin(
          plugin([
            typeWith({ a: { type: 'float', description: 'a' }, b: { type: 'int', description: 'b', default: 0, min: 1 } }, { create: 3 }),
          ]),
        );
      } catch (err) {
        return err as PluginError;
      }
      throw new Error('accepted');
    })();
    expect(e.problems).toHaveLength(3);
    expect(e.message).toBe(
      [
        'plugin @test/broken@1.2.3 has 3 problems:',
        "  device type 'good-dev': has no create(ctx, id, props) factory",
        "  device type 'good-dev': property 'a': unknown property type 'float' (known: string, path, bool, int, size, enum)",
        "  device type 'good-dev': property 'b': default 0 is below min 1",
      ].join('\n'),
    );
  });
});
