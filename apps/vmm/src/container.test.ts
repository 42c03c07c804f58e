import { DevicePlugin, PLUGIN_API_VERSION, PluginError } from '@tsvmm/pci';
import { buildContainer, DeviceRegistry, MissingDeviceTypes, TYPES } from './container';
import { defaultConfig } from './config';

const fixture: DevicePlugin = {
  apiVersion: PLUGIN_API_VERSION,
  name: 'fixture-plugin',
  version: '0.0.1',
  deviceTypes: [
    {
      type: 'fixture-dev',
      description: 'a device for registry tests',
      properties: {
        size: { type: 'size', description: 'a size', default: 4096 },
        mode: { type: 'enum', description: 'mode', values: ['a', 'b'] },
      },
      create: (_ctx, id, props) => ({ id, type: 'fixture-dev', props }) as never,
    },
  ],
};

function registry(plugins: DevicePlugin[], missing?: MissingDeviceTypes) {
  return buildContainer(defaultConfig(), plugins, missing).get<DeviceRegistry>(TYPES.DeviceRegistry);
}

describe('DeviceRegistry (from the inversify container)', () => {
  it('resolves a device type to the plugin bound under DEVICE_PLUGIN', () => {
    const r = registry([fixture]);
    expect(r.types).toEqual(['fixture-dev']);
    expect(r.create({} as never, { type: 'fixture-dev', id: 'd0', props: { size: '8K', mode: 'b' } })).toEqual({
      id: 'd0',
      type: 'fixture-dev',
      props: { size: 8192, mode: 'b' },
    });
  });

  it.each([
    [{ type: 'nope', id: 'd0', props: {} }, "--device nope: unknown device type 'nope' (available: fixture-dev)"],
    [
      { type: 'fixture-dev', id: 'd0', props: { colour: 'red' } },
      "--device fixture-dev,id=d0: unknown property 'colour' (known: size, mode)",
    ],
    [{ type: 'fixture-dev', id: 'd0', props: { mode: 'c' } }, "--device fixture-dev,id=d0: property 'mode' must be one of a, b, got 'c'"],
  ])('rejects %j', (d, msg) => {
    expect(() => registry([fixture]).validate([d])).toThrow(msg);
  });

  it('refuses a plugin built for another API version', () => {
    expect(() => registry([{ ...fixture, apiVersion: 99 }])).toThrow(/built for plugin API 99; this VMM speaks API 1/);
  });

  it('refuses two plugins claiming one device type', () => {
    expect(() => registry([fixture, { ...fixture, name: 'other' }])).toThrow(/provided by both fixture-plugin and other/);
  });

  it('refuses a plugin with a broken schema at registration, naming plugin, device type and property', () => {
    const broken = {
      ...fixture,
      deviceTypes: [
        {
          ...fixture.deviceTypes[0],
          properties: { ...fixture.deviceTypes[0].properties, size: { type: 'size', description: 'a size', default: 1, min: 512 } },
        },
      ],
    } as DevicePlugin;
    expect(() => registry([broken])).toThrow(PluginError);
    expect(() => registry([broken])).toThrow(
      "plugin fixture-plugin@0.0.1: device type 'fixture-dev': property 'size': default 1 is below min 512",
    );
  });

  it('refuses a plugin declaring one device type twice', () => {
    expect(() => registry([{ ...fixture, deviceTypes: [fixture.deviceTypes[0], fixture.deviceTypes[0]] }])).toThrow(
      "plugin fixture-plugin@0.0.1: device type 'fixture-dev' is declared twice",
    );
  });

  it('says a device type of a plugin left out of a slim build is not available in this build', () => {
    const r = registry([fixture], { builtWith: ['fixture'], leftOut: [{ name: '@tsvmm/virtio-net', deviceTypes: ['virtio-net'] }] });
    expect(() => r.validate([{ type: 'virtio-net', id: 'n0', props: {} }])).toThrow(
      "--device virtio-net: device type 'virtio-net' is not available in this build (built with: fixture); it comes from plugin @tsvmm/virtio-net",
    );
    expect(() => r.validate([{ type: 'virtio-nothing', id: 'n0', props: {} }])).toThrow(
      "unknown device type 'virtio-nothing' (available: fixture-dev)",
    );
  });
});
