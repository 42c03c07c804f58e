/**
 * virtio-scsi's migration extra state (VirtioScsiExtraState: per-LUN unit
 * attentions and mode parameters, responses held back while bus mastering
 * was off, the driver-written sense_size / cdb_size) as a migration stream
 * or snapshot carries it, JSON from the input, loaded into an adapter with
 * two LUNs over 64 KiB of guest RAM. Expected: a StateError or a plain Error
 * naming what is wrong; a TypeError, RangeError or any other throw is a
 * crash, and so is a state that loads but does not save back (or, saved,
 * no longer loads).
 */
import { ScsiDisk } from '@tsvmm/scsi';
import { GuestMemory, StateError } from '@tsvmm/virtio-core';
import { MemBackend } from '@tsvmm/testing/fuzz';
import { VirtioScsiDevice, VirtioScsiExtraState } from '../src/device';

export const maxLen = 4096;
export const dictionary = [
  '"luns"',
  '"pendingWrites"',
  '"config"',
  '"senseSize"',
  '"cdbSize"',
  '"bufs"',
  '"bytes"',
  '"addr"',
  '"len"',
  '"0"',
  '1e309',
  '-1',
  '0.5',
  'null',
  '[]',
  '{}',
];

const RAM = 64 * 1024;

function adapter(): VirtioScsiDevice {
  const mem = new GuestMemory([{ guestPhysAddr: 0, bytes: new Uint8Array(RAM) }]);
  const dev = new VirtioScsiDevice(mem, { id: 'fuzz-scsi', numQueues: 1, log: () => undefined });
  dev.target.attach(0, new ScsiDisk({ backend: new MemBackend(64 * 1024, false), readonly: false, serial: 'FUZZ0' }));
  dev.target.attach(1, new ScsiDisk({ backend: new MemBackend(64 * 1024, true), readonly: true, serial: 'FUZZ1', logicalBlockSize: 4096 }));
  dev.interrupt = { signalQueue: () => undefined, signalConfig: () => undefined };
  return dev;
}

export async function fuzz(data: Buffer): Promise<void> {
  let raw: unknown;
  try {
    raw = JSON.parse(data.toString('utf8'));
  } catch {
    return; // not JSON: the stream's own parser refuses it before the device sees it
  }
  const dev = adapter();
  dev.loadScsiState(raw as VirtioScsiExtraState | undefined);
  // What loaded must save back and load again (the next migration of the same VM).
  adapter().loadScsiState(JSON.parse(JSON.stringify(dev.saveScsiState() ?? null)) as VirtioScsiExtraState | undefined);
  await dev.destroy();
}

export function isExpected(e: unknown): boolean {
  return e instanceof StateError || (e instanceof Error && e.constructor === Error && e.message.length > 0);
}
