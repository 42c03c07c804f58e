// Facade argument checking and struct layouts: no KVM needed.
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import {
  decodeRegs,
  decodeSregs,
  encodeGsiRouting,
  encodeIoeventfd,
  encodeRegs,
  encodeSregs,
  EventFd,
  Kvm,
  KvmArgumentError,
  KvmUnavailableError,
  REG_NAMES,
  uapi as U,
  VcpuFaultError,
} from '../src';
import { checkU64 } from '../src/check';

describe('encodeIoeventfd', () => {
  it('encodes a PIO ioeventfd with datamatch', () => {
    const b = encodeIoeventfd({ addr: 0x4010, len: 4, fd: 7, space: 'pio', datamatch: 0x1234 }, false);
    const dv = new DataView(b.buffer);
    expect(b.byteLength).toBe(U.SIZEOF_kvm_ioeventfd);
    expect(dv.getBigUint64(U.OFF_kvm_ioeventfd_addr, true)).toBe(0x4010n);
    expect(dv.getBigUint64(U.OFF_kvm_ioeventfd_datamatch, true)).toBe(0x1234n);
    expect(dv.getUint32(U.OFF_kvm_ioeventfd_len, true)).toBe(4);
    expect(dv.getInt32(U.OFF_kvm_ioeventfd_fd, true)).toBe(7);
    expect(dv.getUint32(U.OFF_kvm_ioeventfd_flags, true)).toBe(U.KVM_IOEVENTFD_FLAG_PIO | U.KVM_IOEVENTFD_FLAG_DATAMATCH);
  });

  it('sets the deassign flag and leaves PIO off for MMIO', () => {
    const b = encodeIoeventfd({ addr: 0xfe001000n, len: 0, fd: 3, space: 'mmio' }, true);
    expect(new DataView(b.buffer).getUint32(U.OFF_kvm_ioeventfd_flags, true)).toBe(U.KVM_IOEVENTFD_FLAG_DEASSIGN);
  });

  it.each([
    [{ addr: 0x10000, len: 1, fd: 3, space: 'pio' }, /port must be <= 0xffff/],
    [{ addr: 0x10, len: 8, fd: 3, space: 'pio' }, /port ioeventfd len/],
    [{ addr: 0x10, len: 3, fd: 3, space: 'mmio' }, /len must be 0, 1, 2, 4 or 8/],
    [{ addr: 0x10, len: 1, fd: 3, space: 'pio', datamatch: 0x100 }, /does not fit in 1 bytes/],
    [{ addr: 0x10, len: 0, fd: 3, space: 'mmio', datamatch: 1 }, /datamatch needs a fixed len/],
    [{ addr: -1, len: 4, fd: 3, space: 'mmio' }, /addr must be a non-negative/],
    [{ addr: 0x10, len: 4, fd: -1, space: 'mmio' }, /fd must be in/],
    [{ addr: 0x10, len: 4, fd: 3, space: 'dma' }, /space must be pio or mmio/],
  ])('rejects %j', (opts, msg) => {
    expect(() => encodeIoeventfd(opts as never, false)).toThrow(KvmArgumentError);
    expect(() => encodeIoeventfd(opts as never, false)).toThrow(msg);
  });
});

describe('struct codecs', () => {
  it('round-trips kvm_regs', () => {
    const r = decodeRegs(new Uint8Array(U.SIZEOF_kvm_regs));
    REG_NAMES.forEach((n, i) => (r[n] = BigInt(i + 1) << 40n));
    expect(decodeRegs(encodeRegs(r))).toEqual(r);
    expect(new DataView(encodeRegs(r).buffer).getBigUint64(16 * 8, true)).toBe(17n << 40n); // rip is field 16
  });

  it('round-trips kvm_sregs', () => {
    const s = decodeSregs(new Uint8Array(U.SIZEOF_kvm_sregs));
    s.cs = { ...s.cs, base: 0x1000n, limit: 0xffffffff, selector: 0x10, type: 11, present: 1, s: 1, l: 1, g: 1 };
    s.cr0 = 0x80050033n;
    s.efer = 0xd01n;
    s.gdt = { base: 0x500n, limit: 0x1f };
    expect(decodeSregs(encodeSregs(s))).toEqual(s);
  });

  it('encodes GSI routes of both kinds', () => {
    const b = encodeGsiRouting([
      { gsi: 24, type: 'msi', addressLo: 0xfee00000, addressHi: 0, data: 0x40 },
      { gsi: 4, type: 'irqchip', irqchip: U.KVM_IRQCHIP_IOAPIC, pin: 4 },
    ]);
    const dv = new DataView(b.buffer);
    expect(dv.getUint32(0, true)).toBe(2);
    const e1 = U.OFF_kvm_irq_routing_entries + U.SIZEOF_kvm_irq_routing_entry;
    expect(dv.getUint32(U.OFF_kvm_irq_routing_entries + U.OFF_kvm_irq_routing_entry_msi_data, true)).toBe(0x40);
    expect(dv.getUint32(e1 + U.OFF_kvm_irq_routing_entry_type, true)).toBe(U.KVM_IRQ_ROUTING_IRQCHIP);
    expect(dv.getUint32(e1 + U.OFF_kvm_irq_routing_entry_irqchip_pin, true)).toBe(4);
  });
});

describe('argument checks', () => {
  it('checkU64 rejects unsafe numbers and out-of-range bigints', () => {
    expect(() => checkU64('x', 2 ** 60)).toThrow(/safe integer/);
    expect(() => checkU64('x', 1n << 64n)).toThrow(/64 bits/);
    expect(() => checkU64('x', '1')).toThrow(/number or bigint/);
    expect(checkU64('x', 5)).toBe(5n);
  });

  it('EventFd.create rejects a bad initial value before touching the kernel', () => {
    expect(() => EventFd.create(-1)).toThrow(/u32/);
    expect(() => EventFd.create(1.5)).toThrow(/u32/);
  });

  it('Kvm.open names a missing device node', () => {
    const missing = path.join(os.tmpdir(), `no-such-kvm-${process.pid}`);
    let err: unknown;
    try {
      Kvm.open(missing);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(KvmUnavailableError);
    expect((err as KvmUnavailableError).reason).toBe('missing');
    expect((err as Error).message).toContain(`${missing} does not exist`);
  });

  it('describes a vCPU fault with RIP and instruction bytes', () => {
    const e = new VcpuFaultError(
      0,
      { kind: 'internal-error', suberror: 1, suberrorName: 'emulation failure', data: [] },
      0x100234n,
      Uint8Array.from([0xf3, 0x0f, 0xb8, 0xc0]),
    );
    expect(e.message).toBe('vCPU 0: KVM internal error (emulation failure) at RIP 0x100234, instruction bytes: f3 0f b8 c0');
  });
});

describe('generated UAPI constants', () => {
  it('match the installed <linux/kvm.h>', () => {
    const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'uapi-')), 'kvm-uapi.ts');
    execFileSync('bash', [path.resolve(__dirname, '../../../tools/uapi-gen/generate.sh'), 'kvm', out]);
    expect(fs.readFileSync(out, 'utf8')).toBe(fs.readFileSync(path.resolve(__dirname, '../src/generated/kvm-uapi.ts'), 'utf8'));
  });
});
