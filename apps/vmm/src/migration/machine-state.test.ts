// The machine's own sections (machine, cpu/N, serial) from an untrusted stream: parsed and
// checked field by field, each refusal naming the section and the field.
import { uapi as U } from '@tsvmm/kvm-native';
import { parseCpuState, parseMachineDescription, parseSerialState } from './machine-state';
import { MigrationStreamError } from './stream';

const b64 = (n: number) => Buffer.alloc(n).toString('base64');
const cpu = () => ({
  regs: b64(U.SIZEOF_kvm_regs),
  sregs: b64(U.SIZEOF_kvm_sregs),
  fpu: b64(U.SIZEOF_kvm_fpu),
  lapic: b64(U.SIZEOF_kvm_lapic_state),
  events: b64(U.SIZEOF_kvm_vcpu_events),
  msrs: [[0x10, 'ffffffffffffffff']],
  mpState: 0,
  tscKhz: 2000000,
});

describe('machine sections from an untrusted stream', () => {
  it('takes a well-formed vCPU, machine and serial state', () => {
    const c = parseCpuState(cpu(), 'cpu/0');
    expect(c.regs.length).toBe(U.SIZEOF_kvm_regs);
    expect(c.msrs).toEqual([{ index: 0x10, data: 0xffffffffffffffffn }]);
    expect(parseMachineDescription({ memoryBytes: 16 << 20, cpus: 1, devices: [{ id: 'd0', type: 'virtio-blk' }] }).cpus).toBe(1);
    expect(parseSerialState({ ier: 1, lcr: 3, mcr: 0, scr: 0, dll: 1, dlm: 0, fcr: 0, rx: [65] })).toMatchObject({
      ier: 1,
      rx: [65],
      thriPending: false,
    });
  });

  const bad: [string, () => unknown, RegExp][] = [
    ['truncated registers', () => parseCpuState({ ...cpu(), regs: b64(8) }, 'cpu/0'), /^bad stream: cpu\/0\.regs: 8 bytes, expected \d+$/],
    [
      'a missing LAPIC',
      () => parseCpuState({ ...cpu(), lapic: undefined }, 'cpu/1'),
      /^bad stream: cpu\/1\.lapic: expected base64 bytes, got missing$/,
    ],
    [
      'an XSAVE area of the wrong size',
      () => parseCpuState({ ...cpu(), xsave: b64(100) }, 'cpu/0'),
      /cpu\/0\.xsave: 100 bytes, expected \d+/,
    ],
    [
      'an MSR index above 32 bits',
      () => parseCpuState({ ...cpu(), msrs: [[2 ** 32, '0']] }, 'cpu/0'),
      /cpu\/0\.msrs\[0\]\.index: 4294967296 is out of range/,
    ],
    [
      'an MSR value wider than 64 bits',
      () => parseCpuState({ ...cpu(), msrs: [[0x10, '1ffffffffffffffff']] }, 'cpu/0'),
      /cpu\/0\.msrs\[0\]\.data: expected a hexadecimal number/,
    ],
    [
      'an MSR that is not a pair',
      () => parseCpuState({ ...cpu(), msrs: [[0x10]] }, 'cpu/0'),
      /cpu\/0\.msrs\[0\]: expected \[index, "hex value"\]/,
    ],
    ['an unknown MP state', () => parseCpuState({ ...cpu(), mpState: 77 }, 'cpu/0'), /cpu\/0\.mpState: 77 is out of range \(0\.\.9\)/],
    [
      'a fractional vCPU count',
      () => parseMachineDescription({ memoryBytes: 1 << 24, cpus: 1.5, devices: [] }),
      /^bad stream: machine\.cpus: expected an integer, got 1\.5$/,
    ],
    [
      'a device without an id',
      () => parseMachineDescription({ memoryBytes: 1 << 24, cpus: 1, devices: [{ type: 'x' }] }),
      /machine\.devices\[0\]\.id: expected a string, got missing/,
    ],
    ['a machine that is not an object', () => parseMachineDescription([1]), /^bad stream: machine: expected an object, got \[1\]$/],
    [
      'a serial register above 8 bits',
      () => parseSerialState({ ier: 256, lcr: 0, mcr: 0, scr: 0, dll: 0, dlm: 0, fcr: 0 }),
      /serial\.ier: 256 is out of range \(0\.\.255\)/,
    ],
    [
      'a serial FIFO of non-bytes',
      () => parseSerialState({ ier: 0, lcr: 0, mcr: 0, scr: 0, dll: 0, dlm: 0, fcr: 0, rx: [1, -3] }),
      /serial\.rx\[1\]: -3 is out of range/,
    ],
  ];
  it.each(bad)('refuses %s, naming the section and the field', (_what, parse, msg) => {
    expect(parse).toThrow(MigrationStreamError);
    expect(parse).toThrow(msg);
  });
});
