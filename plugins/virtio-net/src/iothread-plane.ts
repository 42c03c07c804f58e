/**
 * The plane factories this plugin gives the VMM's iothread worker
 * (package.json `vmmPlugin.iothreadPlanes`; the bundle registers them with
 * virtio-core's runIoThreadWorker).
 */
import type { PlaneFactory } from '@tsvmm/virtio-core';
import { createNetPlane, NET_PLANE } from './dataplane';

export const iothreadPlanes: Record<string, PlaneFactory> = { [NET_PLANE]: createNetPlane };
