/**
 * The device plugin packages built into this VMM. Imported statically so the
 * esbuild bundle contains them. (Discovery by package.json `vmmPlugin` is the
 * plugin-packaging issue's work.)
 */
import { DevicePlugin } from '@tsvmm/pci';
import { plugin as virtioBlk } from '@tsvmm/virtio-blk';
import { plugin as virtioNet } from '@tsvmm/virtio-net';

export const BUILTIN_PLUGINS: readonly DevicePlugin[] = [virtioBlk, virtioNet];

export function loadPlugins(): DevicePlugin[] {
  return [...BUILTIN_PLUGINS];
}
