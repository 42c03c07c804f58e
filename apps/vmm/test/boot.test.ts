// The `vmm` binary booting the guest kit, as an operator runs it.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as zlib from 'zlib';
import { describeKvm } from '@tsvmm/kvm-native/testing';
import { GUEST_BZIMAGE, GUEST_ELF, lineValues, requireGuestKit, runCli } from './guest-kit';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmm-boot-'));

/** The e820 map the VMM promises for 64 MiB (see machine/layout.ts). */
const E820_64M = [
  { base: '0x0', size: '0x9fc00', type: '1' },
  { base: '0x9fc00', size: '0x400', type: '2' },
  { base: '0xf0000', size: '0x10000', type: '2' },
  { base: '0x100000', size: '0x3f00000', type: '1' },
  { base: '0xfeffc000', size: '0x4000', type: '2' },
];

describeKvm('vmm run (guest kit)', () => {
  beforeAll(requireGuestKit);

  it('boots the PVH guest kit, which prints its banner and finds the host bridge', async () => {
    const r = await runCli(['run', '--kernel', GUEST_ELF, '--cmdline', 'test=pci-scan', '--memory', '64M']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^guest-kit: hello via=pvh\r?\n/);
    expect(lineValues(r.stdout, 'pci: 00:00.0 vendor')).toEqual([{ vendor: '0x8086', device: '0x1237', class: '0x060000', hdr: '0x00' }]);
    expect(r.stdout).toContain('guest-kit: PASS test=pci-scan');
  });

  it('boots the bzImage through the 64-bit boot protocol with the right boot_params', async () => {
    const initrd = path.join(tmp, 'initrd.bin');
    const data = Buffer.alloc(100_000);
    for (let i = 0; i < data.length; i++) data[i] = (i * 7 + (i >> 8)) & 0xff;
    fs.writeFileSync(initrd, data);
    const cmdline = 'test=boot-info console=ttyS0 some.flag=1';
    const r = await runCli(['run', '--kernel', GUEST_BZIMAGE, '--initrd', initrd, '--cmdline', cmdline, '--memory', '64M']);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('guest-kit: hello via=bzimage');
    expect(lineValues(r.stdout, 'guest-kit: cmdline=')[0].cmdline).toBe(cmdline);
    expect(lineValues(r.stdout, 'guest-kit: mem ')).toEqual(E820_64M);
    const mods = lineValues(r.stdout, 'guest-kit: module ');
    expect(mods).toHaveLength(1);
    expect(Number(mods[0].size)).toBe(data.length);
    expect(Number(mods[0].crc32)).toBe(zlib.crc32(data));
    expect(Number(mods[0].addr) % 4096).toBe(0);
    expect(Number(mods[0].addr) + data.length).toBeLessThanOrEqual(64 * 2 ** 20);
  });

  it('hands the PVH guest its initrd as module 0 and the same memory map', async () => {
    const initrd = path.join(tmp, 'mod.bin');
    fs.writeFileSync(initrd, Buffer.from('hello module'));
    const r = await runCli(['run', '--kernel', GUEST_ELF, '--initrd', initrd, '--cmdline', 'test=boot-info', '--memory', '64M']);
    expect(r.code).toBe(0);
    expect(lineValues(r.stdout, 'guest-kit: mem ')).toEqual(E820_64M);
    expect(Number(lineValues(r.stdout, 'guest-kit: module ')[0].crc32)).toBe(zlib.crc32(Buffer.from('hello module')));
  });

  it('ends with the exit-port value as its exit status', async () => {
    const r = await runCli(['run', '--kernel', GUEST_ELF, '--cmdline', 'test=exit code=42', '--serial', 'none']);
    expect(r.code).toBe(42);
    expect(r.stdout).toBe('');
  });

  it('reports an instruction the host cannot emulate with RIP and bytes, and exits non-zero', async () => {
    const r = await runCli(['run', '--kernel', GUEST_ELF, '--cmdline', 'test=emul-fail']);
    expect(r.stdout).toContain('emul-fail: executing unsupported instruction');
    expect(r.code).toBe(113);
    expect(r.stderr).toMatch(/vCPU 0: KVM internal error \(emulation failure\) at RIP 0x[0-9a-f]+, instruction bytes: f3 0f b8/);
  });

  it('writes serial output to a file with --serial file:PATH', async () => {
    const out = path.join(tmp, 'serial.log');
    const r = await runCli(['run', '--kernel', GUEST_ELF, '--cmdline', 'test=pci-scan', '--serial', `file:${out}`]);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe('');
    expect(fs.readFileSync(out, 'latin1')).toContain('guest-kit: PASS test=pci-scan');
  });

  it('takes the same settings from --config FILE.json, with later flags overriding', async () => {
    const cfg = path.join(tmp, 'vm.json');
    fs.writeFileSync(cfg, JSON.stringify({ kernel: GUEST_ELF, cmdline: 'test=exit code=9', memory: '32M', cpus: 2, serial: 'stdio' }));
    expect((await runCli(['run', '--config', cfg])).code).toBe(9);
    expect((await runCli(['run', '--config', cfg, '--cmdline', 'test=exit code=5'])).code).toBe(5);
  });

  it('boots with several vCPUs (APs wait for INIT/SIPI) and shuts them all down', async () => {
    const r = await runCli(['run', '--kernel', GUEST_ELF, '--cmdline', 'test=pci-scan', '--cpus', '4']);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('guest-kit: PASS test=pci-scan');
  });
});

describe('vmm run: bad input is a clear error naming what is wrong', () => {
  it.each([
    [['run', '--kernel', '/nonexistent/bzImage'], 1, 'vmm: --kernel /nonexistent/bzImage: no such file'],
    [['run', '--kernel', '/etc/hostname'], 1, 'not a bzImage (no "HdrS" setup header) nor an ELF kernel'],
    [['run', '--kernel', 'k', '--memory', 'lots'], 2, "vmm: --memory: 'lots' is not a size"],
    [['run', '--kernel', 'k', '--cpus', '0'], 2, "vmm: --cpus: '0' must be an integer from 1 to 64"],
    [['run', '--kernel', 'k', '--serial', 'tcp:1'], 2, "vmm: --serial: 'tcp:1' must be stdio, none or file:PATH"],
    [['run', '--kernel', 'k', '--frobnicate'], 2, "vmm: unknown option '--frobnicate'"],
    [['run', '--kernel', 'k', '--device', 'virtio-nothing,id=d0'], 2, "vmm: --device virtio-nothing: unknown device type 'virtio-nothing'"],
    [['run', '--cmdline', 'x'], 2, 'vmm: --kernel: a kernel (bzImage or PVH ELF) is required'],
    [['run', '--config', '/nonexistent.json'], 2, 'vmm: --config /nonexistent.json: no such file'],
  ])('%j', async (args, code, message) => {
    const r = await runCli(args);
    expect(r.stderr).toContain(message);
    expect(r.code).toBe(code);
  });

  it('prints usage with --help', async () => {
    const r = await runCli(['--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('--kernel PATH');
  });
});

describeKvm('vmm run: how a guest ends', () => {
  it('a triple fault ends the VMM with status 112 and says so', async () => {
    const r = await runCli(['run', '--kernel', GUEST_ELF, '--cmdline', 'test=triple-fault']);
    expect(r.stdout).toContain('triple-fault: now');
    expect(r.code).toBe(112);
    expect(r.stderr).toMatch(/vCPU 0: triple fault \(KVM_EXIT_SHUTDOWN\) at RIP 0x[0-9a-f]+/);
  });

  it('an i8042 reset ends the VMM with status 0 (no reboot)', async () => {
    const r = await runCli(['run', '--kernel', GUEST_ELF, '--cmdline', 'test=reset']);
    expect(r.stdout).toContain('reset: now');
    expect(r.stdout).not.toContain('FAIL');
    expect(r.code).toBe(0);
    expect(r.stderr).toContain('guest requested a reset (i8042)');
  });
});
