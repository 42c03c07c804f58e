// @ts-check
/**
 * The files of a new device plugin package, as strings: a virtio device with
 * one queue that echoes each chain's device-readable bytes into its
 * device-writable buffers, the DevicePlugin that exposes it as
 * `--device NAME`, a unit test, a guest-kit test and the package boilerplate.
 */
'use strict';

/**
 * @typedef {object} PluginNames
 * @property {string} name - the directory under plugins/, the device TYPE and the Nx project
 * @property {string} packageName - the npm package name, at-tsvmm-slash-name
 * @property {string} className - PascalCase of the name
 * @property {number} virtioId - the virtio device ID
 * @property {number} apiVersion - PLUGIN_API_VERSION of the workspace
 * @property {string} description - one line
 */

const hex = (/** @type {number} */ n, /** @type {number} */ w) => `0x${n.toString(16).padStart(w, '0')}`;

/**
 * @param {PluginNames} n
 * @returns {Record<string, string>} file contents by path relative to the plugin directory
 */
function pluginFiles(n) {
  const pciDeviceId = hex(0x1040 + n.virtioId, 4);
  const json = (/** @type {unknown} */ v) => JSON.stringify(v, null, 2) + '\n';
  return {
    'package.json': json({
      name: n.packageName,
      version: '0.1.0',
      private: true,
      description: n.description,
      main: 'src/index.ts',
      types: 'src/index.ts',
      vmmPlugin: { apiVersion: n.apiVersion, deviceTypes: [n.name] },
    }),
    'project.json': json({
      name: n.name,
      $schema: '../../node_modules/nx/schemas/project-schema.json',
      projectType: 'library',
      sourceRoot: `plugins/${n.name}/src`,
      tags: ['scope:plugin'],
      implicitDependencies: ['vmm', 'guest-kit'],
      targets: {
        test: { dependsOn: [{ projects: ['vmm', 'guest-kit'], target: 'build' }] },
        typecheck: {},
      },
    }),
    'tsconfig.json': json({ extends: '../../tsconfig.base.json', include: ['src/**/*.ts', 'test/**/*.ts'] }),
    'jest.config.js': `module.exports = { displayName: '${n.name}', ...require('../../jest.preset.js')(__dirname) };\n`,

    'src/defs.ts': `/** Identity of the ${n.name} device. */

/**
 * Virtio device ID. ${n.virtioId} is assigned to no device type by the virtio
 * specification or Linux (include/uapi/linux/virtio_ids.h), so no guest driver
 * binds to it; pick the spec's ID when the device implements a standard type.
 * Its modern virtio-pci device ID is 0x1040 + ID = ${pciDeviceId}.
 */
export const VIRTIO_ID = ${n.virtioId};

/** PCI class code: unassigned class ("device does not fit any defined class"). */
export const PCI_CLASS_OTHER = 0xff0000;

/** Descriptors per queue (a power of two). */
export const QUEUE_SIZE = 256;
`,

    'src/device.ts': `/**
 * The ${n.name} device: one virtqueue; every chain's device-readable bytes are
 * copied into its device-writable buffers (as many as fit) and the chain is
 * returned with the number of bytes written. A starting point: replace
 * processQueue with the device's own request handling.
 */
import { gather, GuestMemory, scatter, SplitVirtqueue, VirtioDevice } from '@tsvmm/virtio-core';
import { QUEUE_SIZE, VIRTIO_ID } from './defs';

export interface ${n.className}Options {
  id: string;
  /** Offer VIRTIO_RING_F_EVENT_IDX (default true). */
  eventIdx?: boolean;
  log?: (message: string) => void;
}

export class ${n.className}Device extends VirtioDevice {
  /** Bytes echoed since creation (shown by x-query-virtio-status). */
  echoedBytes = 0;

  constructor(memory: GuestMemory, opts: ${n.className}Options) {
    super(memory, { id: opts.id, deviceId: VIRTIO_ID, numQueues: 1, queueMaxSize: QUEUE_SIZE, features: 0n, eventIdx: opts.eventIdx, log: opts.log });
  }

  /** No device configuration space. */
  readConfig(_offset: number, _size: number): number {
    return 0;
  }

  protected processQueue(q: SplitVirtqueue): void {
    let completed = 0;
    for (let chain = this.popChain(q); chain; chain = this.popChain(q)) {
      const data = gather(this.memory, chain.readable, 0, Math.min(chain.readableLength, chain.writableLength));
      const written = scatter(this.memory, chain.writable, data);
      this.echoedBytes += written;
      this.pushUsed(q, chain.head, written);
      completed++;
    }
    if (completed) this.signalUsed(q);
  }

  override deviceInfo(): Record<string, unknown> {
    return { 'echoed-bytes': this.echoedBytes };
  }
}
`,

    'src/index.ts': `/**
 * The ${n.name} plugin: \`--device ${n.name},id=ID[,ioeventfd=on|off][,event-idx=on|off]\`.
 * ${n.description}
 */
import {
  DeviceContext, DevicePlugin, PLUGIN_API_VERSION, PropertyValue, VIRTIO_PCI_DEBUG_PROPERTIES, VirtioPciDevice, VirtioPciPluginDevice,
} from '@tsvmm/pci';
import { PCI_CLASS_OTHER } from './defs';
import { ${n.className}Device } from './device';

export { ${n.className}Device } from './device';
export type { ${n.className}Options } from './device';
export { VIRTIO_ID, PCI_CLASS_OTHER, QUEUE_SIZE } from './defs';

/** The created device: the virtio device behind its virtio-pci function. */
export class ${n.className}Pci extends VirtioPciPluginDevice {
  readonly type = '${n.name}';
  constructor(
    id: string,
    readonly device: ${n.className}Device,
    transport: VirtioPciDevice,
  ) {
    super(id, transport);
  }
}

export function create${n.className}(ctx: DeviceContext, id: string, props: Record<string, PropertyValue | undefined>): ${n.className}Pci {
  const device = new ${n.className}Device(ctx.memory, { id, eventIdx: props['event-idx'] as boolean, log: ctx.log });
  const transport = new VirtioPciDevice(device, ctx, { classCode: PCI_CLASS_OTHER, ioeventfd: props.ioeventfd as boolean });
  transport.stall = { ms: props['stall-ms'] as number, policy: props['stall-policy'] as 'none' | 'kick' };
  return new ${n.className}Pci(id, device, transport);
}

export const plugin: DevicePlugin = {
  apiVersion: PLUGIN_API_VERSION,
  name: '${n.packageName}',
  version: '0.1.0',
  deviceTypes: [
    {
      type: '${n.name}',
      description: ${JSON.stringify(n.description)},
      properties: {
        ioeventfd: { type: 'bool', description: 'queue notifications through KVM ioeventfd (off: through the exit path)', default: true },
        'event-idx': { type: 'bool', description: 'offer VIRTIO_RING_F_EVENT_IDX', default: true },
        ...VIRTIO_PCI_DEBUG_PROPERTIES,
      },
      create: create${n.className},
    },
  ],
};
`,

    'src/device.test.ts': `// ${n.className}Device against a fake guest memory and a driver-side mock queue; the plugin's declaration.
import { virtioUapi as V } from '@tsvmm/virtio-core';
import { fakeMemory, MockDriverQueue } from '@tsvmm/virtio-core/testing';
import { checkDevicePlugin, parseProperties } from '@tsvmm/pci';
import { ${n.className}Device } from './device';
import { plugin } from './index';

function setup() {
  const mem = fakeMemory(1 << 20);
  const dev = new ${n.className}Device(mem, { id: 'x' });
  const irqs: number[] = [];
  dev.interrupt = { signalQueue: (q) => irqs.push(q), signalConfig: () => undefined };
  const drv = new MockDriverQueue(mem, 16);
  const S = V.VIRTIO_CONFIG_S_ACKNOWLEDGE | V.VIRTIO_CONFIG_S_DRIVER;
  dev.writeStatus(S);
  dev.writeDriverFeatures(0, dev.readDeviceFeatures(0));
  dev.writeDriverFeatures(1, dev.readDeviceFeatures(1));
  dev.writeStatus(S | V.VIRTIO_CONFIG_S_FEATURES_OK);
  drv.program(dev.queues[0]);
  dev.writeStatus(S | V.VIRTIO_CONFIG_S_FEATURES_OK | V.VIRTIO_CONFIG_S_DRIVER_OK);
  return { mem, dev, drv, irqs };
}

describe('${n.className}Device', () => {
  it('copies the readable bytes of a chain into its writable buffers and returns the count', () => {
    const { mem, dev, drv, irqs } = setup();
    mem.write(0x40000, Buffer.from('hello, '));
    mem.write(0x40100, Buffer.from('device'));
    const head = drv.addChain([{ addr: 0x40000, len: 7 }, { addr: 0x40100, len: 6 }, { addr: 0x50000, len: 4, write: true }, { addr: 0x50100, len: 64, write: true }]);
    dev.notify(0);
    expect(drv.takeUsed()).toEqual([{ id: head, len: 13 }]);
    expect(Buffer.from(mem.slice(0x50000, 4)).toString()).toBe('hell');
    expect(Buffer.from(mem.slice(0x50100, 9)).toString()).toBe('o, device');
    expect(irqs).toEqual([0]);
    expect(dev.deviceInfo()).toEqual({ 'echoed-bytes': 13 });
  });

  it('echoes only what fits, and a chain without writable buffers completes with 0', () => {
    const { mem, dev, drv } = setup();
    mem.write(0x40000, Buffer.from('0123456789'));
    const a = drv.addChain([{ addr: 0x40000, len: 10 }, { addr: 0x50000, len: 3, write: true }]);
    const b = drv.addChain([{ addr: 0x40000, len: 10 }]);
    dev.notify(0);
    expect(drv.takeUsed()).toEqual([{ id: a, len: 3 }, { id: b, len: 0 }]);
    expect(Buffer.from(mem.slice(0x50000, 3)).toString()).toBe('012');
  });

  it('marks itself needs-reset on a corrupt chain instead of throwing', () => {
    const { dev, drv } = setup();
    drv.addChain([{ addr: 0xfff00000, len: 16 }]);
    expect(() => dev.notify(0)).not.toThrow();
    expect(dev.broken).toBe(true);
  });
});

describe('the ${n.name} plugin', () => {
  it('has a valid declaration and schema defaults', () => {
    expect(() => checkDevicePlugin(plugin)).not.toThrow();
    const type = plugin.deviceTypes[0];
    expect(type.type).toBe('${n.name}');
    expect(parseProperties('--device ${n.name},id=x', type.properties, {})).toEqual({ ioeventfd: true, 'event-idx': true, 'stall-ms': undefined, 'stall-policy': 'none' });
  });
});
`,

    'test/guest.test.ts': `// The guest kit's PCI scan sees the ${n.name} device, booted through the real \`vmm\` binary.
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { describeKvm } from '@tsvmm/kvm-native/testing';
import { VIRTIO_ID } from '../src/defs';

const ROOT = path.resolve(__dirname, '../../..');
const VMM = process.env.VMM_BUNDLE ?? path.join(ROOT, 'apps/vmm/dist/main.js');
const GUEST = path.join(ROOT, 'tools/guest-kit/build/guest.elf');

describeKvm('${n.name} seen by the guest kit', () => {
  beforeAll(() => {
    if (!fs.existsSync(GUEST) || !fs.existsSync(VMM)) throw new Error('build the guest kit and the vmm first (npx nx test ${n.name} does)');
  });

  it('test=pci-scan lists a virtio function with its device ID', () => {
    const r = spawnSync(process.execPath, [VMM, 'run', '--kernel', GUEST, '--memory', '64M', '--cmdline', 'test=pci-scan', '--device', '${n.name},id=x'], {
      encoding: 'utf8', timeout: 60_000,
    });
    if (r.status !== 0) throw new Error(\`vmm exited \${r.status}:\\n\${r.stdout}\\n\${r.stderr}\`);
    const device = (0x1040 + VIRTIO_ID).toString(16).padStart(4, '0');
    expect(r.stdout).toMatch(new RegExp(\`pci: 00:[0-9a-f]{2}\\\\.0 vendor=0x1af4 device=0x\${device} class=0xff0000\`));
    expect(r.stdout).toContain('guest-kit: PASS test=pci-scan');
  });
});
`,

    'README.md': `# ${n.packageName}

${n.description}

\`\`\`sh
npx nx test ${n.name}                      # unit tests, then the guest kit boots with the device
npx vmm run --kernel tools/guest-kit/build/guest.elf --cmdline test=pci-scan --device ${n.name},id=x
npx nx run vmm:bundle --plugins=${n.name}  # a VMM with only this plugin (dist/vmm-${n.name}/main.js)
\`\`\`

| | |
|---|---|
| device type | \`${n.name}\` |
| virtio device ID | ${n.virtioId} (PCI ${hex(0x1af4, 4)}:${pciDeviceId}), see \`src/defs.ts\` |
| PCI class | 0xff0000 (unassigned) |
| queues | 1: each chain's device-readable bytes are copied into its device-writable buffers |
| properties | \`ioeventfd=on\\|off\`, \`event-idx=on\\|off\`, \`stall-ms=N\`, \`stall-policy=none\\|kick\` |

## Layout

- \`src/defs.ts\`: virtio ID, PCI class, queue size.
- \`src/device.ts\`: the device model (a \`VirtioDevice\` from \`@tsvmm/virtio-core\`): replace \`processQueue\`.
- \`src/index.ts\`: \`plugin\` (the \`DevicePlugin\`): device type, property schema, factory.
- \`src/device.test.ts\`: unit tests with a fake guest memory and a mock driver queue.
- \`test/guest.test.ts\`: boots the guest kit (\`test=pci-scan\`) with the device through the VMM bundle.

Imports: \`@tsvmm/virtio-core\`, \`@tsvmm/pci\`, \`@tsvmm/kvm-native\` and shared
libraries under libs/; never another plugin or apps/vmm. See
[docs/plugin-authoring.md](../../docs/plugin-authoring.md).
`,
  };
}

module.exports = { pluginFiles };
