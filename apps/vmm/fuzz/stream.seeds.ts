// Seed inputs for stream.fuzz.ts (written by `node tools/fuzz/src/make-seeds.js apps/vmm stream`).
import { GuestMemory, virtioUapi as V } from '@tsvmm/virtio-core';
import { MockDriverQueue } from '@tsvmm/virtio-core/testing';
import { VirtioBlkDevice } from '../../../plugins/virtio-blk/src/device';
import { MemBackend } from '@tsvmm/testing/fuzz';
import { Uart16550 } from '../src/devices/uart16550';
import { encodeHeader, encodeSection, jsonPayload, SECTION_OPTIONAL } from '../src/migration/stream';
import { BarFunction, HERE, RAM_SIZE } from './stream.fuzz';

/** A blk device as a driver left it: a queue at 0x1000 with one request made available and not yet taken. */
function blkState(): unknown {
  const mem = new GuestMemory([{ guestPhysAddr: 0, bytes: new Uint8Array(RAM_SIZE) }]);
  const dev = new VirtioBlkDevice(mem, { id: 'blk0', backend: new MemBackend(64 * 1024, false), numQueues: 1, serial: 'FUZZ' });
  const S = V.VIRTIO_CONFIG_S_ACKNOWLEDGE | V.VIRTIO_CONFIG_S_DRIVER | V.VIRTIO_CONFIG_S_FEATURES_OK;
  dev.writeStatus(S);
  dev.writeDriverFeatures(0, dev.readDeviceFeatures(0));
  dev.writeDriverFeatures(1, dev.readDeviceFeatures(1));
  const drv = new MockDriverQueue(mem, 8, 0x1000);
  drv.program(dev.queues[0]);
  dev.writeStatus(S | V.VIRTIO_CONFIG_S_DRIVER_OK);
  return dev.saveState();
}

/** The BAR function's config space with memory decoding on. */
function barConfig(): Buffer {
  const c = Buffer.from(new BarFunction().config.bytes);
  c.writeUInt16LE(0x0006, 0x04); // PCI_COMMAND: memory decoding, bus mastering
  return c;
}

function ramRun(gpa: number, pages: number, kind: number, data?: Buffer): Buffer {
  const h = Buffer.alloc(13);
  h.writeBigUInt64LE(BigInt(gpa), 0);
  h.writeUInt32LE(pages, 8);
  h[12] = kind;
  return data ? Buffer.concat([h, data]) : h;
}

export function seeds(): Record<string, Uint8Array> {
  const serial = new Uart16550(
    () => undefined,
    () => undefined,
  ).saveState();
  const dev = blkState();
  return {
    'full-stream': Buffer.concat([
      encodeHeader(),
      ...encodeSection(
        'source',
        1,
        jsonPayload({ vmm: 'tsvmm', version: '0.1.0', kind: 'snapshot', created: '2026-01-01T00:00:00Z' }),
        SECTION_OPTIONAL,
      ),
      ...encodeSection('machine', 1, jsonPayload(HERE)),
      ...encodeSection('ram', 1, Buffer.concat([ramRun(0, 1, 0), ramRun(0x1000, 1, 1, Buffer.alloc(4096, 0xab))])),
      ...encodeSection('serial', 1, jsonPayload(serial)),
      ...encodeSection('device/blk0', 1, jsonPayload({ type: 'virtio-blk', state: dev })),
      ...encodeSection('clock', 1, jsonPayload({ clock: '1234abcd' })),
      ...encodeSection('end', 1, Buffer.alloc(0)),
    ]),
    // With the transport's config space: memory decoding on, BAR0 and BAR4 where a VMM puts them.
    'device-with-bars': Buffer.concat([
      encodeHeader(),
      ...encodeSection(
        'device/blk0',
        1,
        jsonPayload({ type: 'virtio-blk', state: { transport: { config: barConfig().toString('base64') }, virtio: dev } }),
      ),
    ]),
    'device-only-v1': Buffer.concat([encodeHeader(1), ...encodeSection('device/blk0', 1, jsonPayload({ type: 'virtio-blk', state: dev }))]),
    'unknown-optional-section': Buffer.concat([
      encodeHeader(),
      ...encodeSection('x-future', 3, jsonPayload({ a: 1 }), SECTION_OPTIONAL),
      ...encodeSection('serial', 1, jsonPayload(serial)),
    ]),
  };
}
