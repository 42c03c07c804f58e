/**
 * The plane factories this plugin gives the VMM's iothread worker
 * (package.json `vmmPlugin.iothreadPlanes`; the bundle registers them with
 * virtio-core's runIoThreadWorker).
 */
import type { PlaneFactory } from '@tsvmm/virtio-core';
import { createBlkPlane } from './dataplane';
import { BLK_PLANE } from './iothread';

export const iothreadPlanes: Record<string, PlaneFactory> = { [BLK_PLANE]: createBlkPlane };
