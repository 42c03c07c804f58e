/**
 * virtio-scsi's control, event and request queues against guest memory built
 * from the input (layout: libs/testing/src/fuzz/virtio-input.ts), with two SCSI
 * disks on in-memory backends (LUN 0 read-write, LUN 1 read-only with 4 KiB
 * blocks). A guest mistake may break the device or earn a SCSI/virtio error
 * response; a throw, an unhandled rejection, a disk asked for bytes beyond
 * its end, or a drain that never ends (hang) is a crash.
 *
 * Input byte 0 bits 3-7: bits 3-4 the queue on the layout (0 control, 1 event,
 * 2 and 3 request queue 0); bit 5 the driver writes cdb_size and sense_size
 * from guest address CONFIG (two u32); bit 6 reset while commands are in flight.
 */
import { ScsiDisk } from '@tsvmm/scsi';
import { GuestMemoryError } from '@tsvmm/virtio-core';
import { VirtioScsiDevice } from '../src/device';
import * as S from '../src/generated/virtio-scsi-uapi';
import { MemBackend } from '@tsvmm/testing/fuzz';
import { bringUp, guestFromInput, settle, strictLog } from '@tsvmm/testing/fuzz';

export const maxLen = 0x3000;
export const CONFIG = 0x3f00;

export async function fuzz(data: Buffer): Promise<void> {
  const g = guestFromInput(data);
  const problems: string[] = [];
  const dev = new VirtioScsiDevice(g.mem, { id: 'fuzz-scsi', numQueues: 1, log: strictLog(problems) });
  dev.target.attach(0, new ScsiDisk({ backend: new MemBackend(64 * 1024, false), readonly: false, serial: 'FUZZ0' }));
  dev.target.attach(1, new ScsiDisk({ backend: new MemBackend(64 * 1024, true), readonly: true, serial: 'FUZZ1', logicalBlockSize: 4096 }));
  dev.interrupt = { signalQueue: () => undefined, signalConfig: () => undefined };
  const queue = Math.min(g.extra & 3, 2);
  if (g.extra & 4) {
    dev.writeConfig(S.OFF_virtio_scsi_config_cdb_size, 4, g.mem.readU32(CONFIG));
    dev.writeConfig(S.OFF_virtio_scsi_config_sense_size, 4, g.mem.readU32(CONFIG + 4));
  }
  bringUp(dev, g, queue);
  dev.notify(queue);
  if (g.extra & 8) dev.reset();
  await settle();
  await dev.drain();
  if (problems.length) throw new Error(`device reported a host-side failure: ${problems.join('; ')}`);
}

export function isExpected(e: unknown): boolean {
  return e instanceof GuestMemoryError;
}
