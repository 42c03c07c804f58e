/**
 * The checked form of a saved virtio-pci transport (VirtioPciState), parsed
 * from an untrusted stream before anything is applied (docs/migration.md).
 */
import { Fields, int, StateError, virtioUapi as V } from '@tsvmm/virtio-core';
import { PCI_STATUS, PciConfigSpace } from './config-space';

const NO_VECTOR = V.VIRTIO_MSI_NO_VECTOR;

export interface CheckedVirtioPciState {
  config: Uint8Array;
  msixTable: Uint8Array;
  msixPba: Uint8Array;
  queueVectors: number[];
  msixConfig: number;
  deviceFeatureSelect: number;
  driverFeatureSelect: number;
  queueSelect: number;
  isr: number;
}

/** What the state is checked against: the function it is loaded into. */
export interface VirtioPciStateTarget {
  config: PciConfigSpace;
  msix: { vectors: number; table: Uint8Array; pba: Uint8Array };
  numQueues: number;
}

/**
 * Config space of this function's size whose read-only bits (identity,
 * class, capability list, BAR size bits) equal this function's, so only what
 * a guest could have written differs; the MSI-X table and PBA of this
 * function's vector count; one vector per queue; every vector in the MSI-X
 * table or VIRTIO_MSI_NO_VECTOR (what the transport itself stores:
 * out-of-range writes read back as NO_VECTOR).
 */
export function parseVirtioPciState(v: unknown, path: string, here: VirtioPciStateTarget): CheckedVirtioPciState {
  const f = new Fields(v, path);
  const config = f.base64('config', here.config.bytes.length);
  const id = (b: Uint8Array) => (b[0] | (b[1] << 8) | (b[2] << 16) | (b[3] << 24)) >>> 0;
  if (id(config) !== id(here.config.bytes))
    throw new StateError(
      f.at('config'),
      `PCI vendor/device id differs (stream 0x${id(config).toString(16)}, here 0x${id(here.config.bytes).toString(16)})`,
    );
  for (let i = 0; i < config.length; i++) {
    if (i === PCI_STATUS || i === PCI_STATUS + 1) continue; // the device sets status bits itself (interrupt status)
    const fixed = ~(here.config.writeMask[i] | here.config.w1cMask[i]) & 0xff;
    if ((config[i] ^ here.config.bytes[i]) & fixed)
      throw new StateError(
        f.at('config'),
        `byte 0x${i.toString(16)} is 0x${config[i].toString(16)} where this function has read-only 0x${here.config.bytes[i].toString(16)} (another device or device version?)`,
      );
  }
  const msixTable = f.base64('msixTable', here.msix.table.length);
  const msixPba = f.base64('msixPba', here.msix.pba.length);
  const vector = (x: unknown, p: string) => {
    const n = int(x, p, 0, 0xffff);
    if (n !== NO_VECTOR && n >= here.msix.vectors)
      throw new StateError(p, `vector ${n} is outside the MSI-X table of ${here.msix.vectors} (nor VIRTIO_MSI_NO_VECTOR)`);
    return n;
  };
  const raw = f.raw('queueVectors');
  if (Array.isArray(raw) && raw.length !== here.numQueues)
    throw new StateError(f.at('queueVectors'), `the stream has ${raw.length} queues, this device has ${here.numQueues}`);
  const queueVectors = f.array('queueVectors', here.numQueues, vector);
  return {
    config,
    msixTable,
    msixPba,
    queueVectors,
    msixConfig: vector(f.raw('msixConfig'), f.at('msixConfig')),
    deviceFeatureSelect: f.u32('deviceFeatureSelect'),
    driverFeatureSelect: f.u32('driverFeatureSelect'),
    queueSelect: f.u16('queueSelect'),
    isr: f.u8('isr'),
  };
}
