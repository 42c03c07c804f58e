/**
 * The migration stream loader on the input as a stream (or snapshot file):
 * header, sections (framing, checksum, versions), their JSON, and what the
 * destination does with each section that needs no KVM: RAM runs into guest
 * memory, the machine description check, the serial port's state, and a
 * virtio-blk device's state (its PCI BARs through the restored layout check,
 * then VirtioDevice.loadState), after which the
 * restored device is kicked on every queue as a running guest would.
 * Expected: MigrationStreamError and validation errors with a message
 * (plain Error); TypeError, RangeError, SyntaxError and the like are crashes.
 */
import { crc32 } from 'zlib';
import { GuestMemory } from '@tsvmm/virtio-core';
import type { MemoryRegion } from '@tsvmm/kvm-native';
import { VirtioBlkDevice } from '../../../plugins/virtio-blk/src/device';
import { MemBackend } from '@tsvmm/testing/fuzz';
import { settle } from '@tsvmm/testing/fuzz';
import { Uart16550 } from '../src/devices/uart16550';
import { IoBus, PciBarFunction } from '@tsvmm/pci';
import {
  checkBarLayout,
  checkMachine,
  MachineDescription,
  parseMachineDescription,
  parseSerialState,
} from '../src/migration/machine-state';
import { applyRamSection } from '../src/migration/ram';
import { ByteSource, checkSectionKnown, MigrationStreamError, parseJson, readHeader, readSection } from '../src/migration/stream';

export const maxLen = 32768;
export const dictionary = [
  'TSVMMIG\n',
  'device/blk0',
  'serial',
  'machine',
  'ram',
  'cpu/0',
  'clock',
  'end',
  'source',
  '"queues"',
  '"status"',
  '"deviceFeatures"',
  'null',
  '[]',
  '{}',
  '1e309',
  '-1',
  '0.5',
];

export const RAM_SIZE = 64 * 1024;
export const HERE: MachineDescription = { memoryBytes: 256 * 2 ** 20, cpus: 1, devices: [{ id: 'blk0', type: 'virtio-blk' }] };

class BufferSource implements ByteSource {
  private pos = 0;
  constructor(private readonly b: Buffer) {}
  async read(n: number): Promise<Buffer> {
    if (this.pos + n > this.b.length) throw new MigrationStreamError(`stream truncated (wanted ${n} bytes at offset ${this.pos})`);
    const out = this.b.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }
}

/** What a validation error looks like: our own classes, or a plain Error with a message. */
function isEngineError(e: unknown): boolean {
  return (
    e instanceof TypeError || e instanceof RangeError || e instanceof SyntaxError || e instanceof ReferenceError || !(e instanceof Error)
  );
}

async function loadDevice(state: unknown): Promise<void> {
  const bytes = new Uint8Array(RAM_SIZE);
  const mem = new GuestMemory([{ guestPhysAddr: 0, bytes }]);
  const dev = new VirtioBlkDevice(mem, { id: 'blk0', backend: new MemBackend(64 * 1024, false), numQueues: 1, serial: 'FUZZ' });
  dev.interrupt = { signalQueue: () => undefined, signalConfig: () => undefined };
  const s = state as { virtio?: unknown } | null;
  try {
    dev.loadState((s && typeof s === 'object' && 'virtio' in s ? s.virtio : s) as never);
  } catch (e) {
    if (isEngineError(e)) throw e;
    return;
  }
  for (let i = 0; i < dev.queues.length; i++) dev.notify(i);
  dev.setDisabled(false);
  await settle();
  await dev.drain();
}

/** A virtio-pci-like function (4 KiB 32-bit BAR0, 16 KiB 64-bit BAR4) for the restored BAR layout check. */
export class BarFunction extends PciBarFunction {
  constructor() {
    super('blk0', { vendorId: 0x1af4, deviceId: 0x1042, classCode: 0x018000 }, new IoBus('mmio'));
    const none = { read: () => 0, write: () => undefined };
    this.addBar({ index: 0, size: 0x1000, kind: 'mem32', device: none }, 0xc0000000);
    this.addBar({ index: 4, size: 0x4000, kind: 'mem64', device: none }, 0xc0004000);
  }
}

/** The device state's config space through the BAR layout check (machine-state's checkBarLayout). */
function checkBars(name: string, state: unknown): void {
  try {
    checkBarLayout([{ guestPhysAddr: 0n, size: HERE.memoryBytes }], [{ d: { id: 'blk0', virtio: new BarFunction() }, state, name }]);
  } catch (e) {
    if (!(e instanceof MigrationStreamError)) throw e;
  }
}

/**
 * A copy of the stream with every section's checksum recomputed, so that
 * mutated payloads reach the JSON and the loaders (the raw input is tried too).
 */
function withChecksums(data: Buffer): Buffer {
  const b = Buffer.from(data);
  if (b.length < 16) return b;
  const format = b.readUInt32LE(8);
  let o = 16;
  for (;;) {
    const fixed = format >= 2 ? 3 : 2;
    if (o + fixed > b.length) break;
    const nameLen = b[o + fixed - 1];
    const h = o + fixed + nameLen;
    if (h + 12 > b.length) break;
    const len = b.readUInt32LE(h + 4);
    if (h + 12 + len > b.length) break;
    b.writeUInt32LE(crc32(b.subarray(h + 12, h + 12 + len)) >>> 0, h + 8);
    o = h + 12 + len;
  }
  return b;
}

export async function fuzz(data: Buffer): Promise<void> {
  await load(data);
  await load(withChecksums(data));
}

async function load(data: Buffer): Promise<void> {
  const src = new BufferSource(data);
  const ram: MemoryRegion = {
    slot: 0,
    guestPhysAddr: 0n,
    size: RAM_SIZE,
    fd: -1,
    hostAddress: 0n,
    pieces: [{ guestPhysAddr: 0, bytes: new Uint8Array(RAM_SIZE) }],
    flags: 0,
  };
  try {
    const format = await readHeader(src);
    for (let n = 0; n < 64; n++) {
      const s = await readSection(src, format);
      const kind = checkSectionKnown(s);
      if (kind === undefined) continue;
      if (kind === 'end') break;
      if (kind === 'ram') applyRamSection(s.payload, [ram]);
      else if (kind === 'machine') checkMachine(parseMachineDescription(parseJson(s)), HERE);
      else if (kind === 'serial') {
        try {
          new Uart16550(
            () => undefined,
            () => undefined,
          ).loadState(parseSerialState(parseJson(s)));
        } catch (e) {
          if (isEngineError(e)) throw e;
        }
      } else if (kind === 'device') {
        const d = parseJson(s) as { type: string; state: unknown } | null;
        if (s.name === 'device/blk0' && d && d.type === 'virtio-blk') {
          checkBars(s.name, d.state);
          await loadDevice(d.state);
        }
      } else if (kind === 'cpu' || kind === 'clock' || kind === 'source') parseJson(s);
    }
  } catch (e) {
    if (!(e instanceof MigrationStreamError)) throw e;
  }
}
