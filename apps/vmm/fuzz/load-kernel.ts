/**
 * Shared by the elf and bzimage fuzz targets: loadKernel() on the input as the
 * kernel file, into 4 MiB of guest RAM (reused between inputs), with a small
 * initrd when the input's last byte is odd. KernelImageError (a clear message
 * naming the file) is the expected answer to a bad image; anything else thrown,
 * or a loop that never ends, is a crash.
 */
import { GuestMemory } from '@tsvmm/virtio-core';
import { KernelImageError, loadKernel } from '../src/machine/loader';

const RAM = 4 * 1024 * 1024;
const ram = new Uint8Array(RAM);
const memory = new GuestMemory([{ guestPhysAddr: 0, bytes: ram }]);
const initrd = new Uint8Array(8192).fill(0x5a);

export function fuzzKernel(data: Buffer): void {
  const odd = data.length > 0 && (data[data.length - 1] & 1) === 1;
  const entry = loadKernel({
    kernel: data,
    kernelPath: 'fuzz-kernel',
    cmdline: 'console=ttyS0 fuzz',
    initrd: odd ? initrd : undefined,
    memory,
    lowRamEnd: RAM,
    e820: [
      { addr: 0, size: 0x9fc00, type: 1 },
      { addr: 0x100000, size: RAM - 0x100000, type: 1 },
    ],
  });
  if (!Number.isSafeInteger(entry.rip) || entry.rip < 0 || entry.rip >= RAM)
    throw new Error(`entry point 0x${entry.rip.toString(16)} outside guest RAM`);
}

export function isExpected(e: unknown): boolean {
  return e instanceof KernelImageError;
}
