// Interop with a front-end this project did not write: QEMU's vhost-user-scsi-pci drives the
// vhost-user-scsi back-end, with the guest kit inside QEMU running its scsi-* tests.
import { ChildProcess, execFileSync, spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { describeKvm } from '@tsvmm/kvm-native/testing';

const ROOT = path.resolve(__dirname, '../../..');
const BIN = path.join(ROOT, 'apps/vhost-user-scsi/bin/vhost-user-scsi.js');
const GUEST = path.join(ROOT, 'tools/guest-kit/build/guest.elf');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vus-qemu-'));
// One test boots QEMU three times; on a loaded 2-CPU host (CI runs two suites at once) that can pass a minute.
jest.setTimeout(180_000);

const patternByte = (o: number, seed: number) => (Math.floor(o / 512) * 31 + (o % 512) * 7 + seed) & 0xff;

function haveQemu(): boolean {
  try {
    execFileSync('qemu-system-x86_64', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

interface Backend {
  proc: ChildProcess;
  socket: string;
  err: () => string;
  closed: Promise<unknown>;
}

async function startBackend(luns: string[]): Promise<Backend> {
  const socket = path.join(tmp, `vu-${Math.random().toString(36).slice(2, 8)}.sock`);
  const proc = spawn(process.execPath, [BIN, '--socket', socket, ...luns.flatMap((l) => ['--lun', l])], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  proc.stderr!.on('data', (d) => (err += d));
  const closed = new Promise((r) => proc.on('close', r));
  const deadline = Date.now() + 15_000;
  while (!fs.existsSync(socket)) {
    if (Date.now() > deadline || proc.exitCode !== null) throw new Error(`back-end did not start: ${err}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return { proc, socket, err: () => err, closed };
}

/** QEMU with shared memfd guest RAM and vhost-user-scsi-pci on the back-end's socket; resolves with the guest kit's exit code. */
function qemu(socket: string, cmdline: string): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(
      'qemu-system-x86_64',
      [
        '-enable-kvm',
        '-nographic',
        '-no-reboot',
        '-m',
        '128',
        '-object',
        'memory-backend-memfd,id=m,size=128M,share=on',
        '-numa',
        'node,memdev=m',
        '-chardev',
        `socket,id=c,path=${socket}`,
        '-device',
        'vhost-user-scsi-pci,chardev=c,disable-legacy=on,romfile=',
        '-kernel',
        GUEST,
        '-append',
        cmdline,
        '-device',
        'isa-debug-exit,iobase=0xf4,iosize=4',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (out += d));
    const t = setTimeout(() => p.kill('SIGKILL'), 60_000);
    p.on('error', reject);
    p.on('close', (code) => {
      clearTimeout(t);
      // isa-debug-exit: QEMU exits with (code << 1) | 1.
      resolve({ code: code === null ? null : code >> 1, out });
    });
  });
}

describeKvm('QEMU 7.2 vhost-user-scsi-pci driving the vhost-user-scsi back-end (guest kit inside QEMU)', () => {
  let be: Backend | undefined;
  beforeAll(() => {
    if (!haveQemu()) throw new Error('qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)');
    for (const f of [GUEST, path.join(ROOT, 'apps/vhost-user-scsi/dist/main.js')])
      if (!fs.existsSync(f)) throw new Error(`${f} missing: build first`);
  });
  afterEach(async () => {
    be?.proc.kill('SIGKILL');
    await be?.closed;
    be = undefined;
  });
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

  const twoLuns = async () => {
    const a = path.join(tmp, `a-${Date.now()}.img`);
    const b = path.join(tmp, `b-${Date.now()}.img`);
    fs.writeFileSync(a, Buffer.alloc(16 << 20));
    fs.writeFileSync(b, Buffer.alloc(4 << 20, 0x3c));
    be = await startBackend([`0:file=${a},serial=SER0`, `1:file=${b},readonly=on,serial=SER1`]);
    return { a, b, be };
  };

  const pass = (r: { code: number | null; out: string }, test: string) => {
    if (r.code !== 0 || !r.out.includes(`guest-kit: PASS test=${test}`))
      throw new Error(`guest failed (exit ${r.code}):\n${r.out}\n${be?.err()}`);
  };

  it('scan: both LUNs, INQUIRY, VPD serials and capacities as the back-end serves them', async () => {
    const { be } = await twoLuns();
    const r = await qemu(be.socket, 'test=scsi-scan strict=1');
    pass(r, 'scsi-scan');
    expect(r.out).toContain("scsi-vpd lun=0 page=0x80 serial='SER0'");
    expect(r.out).toContain("scsi-vpd lun=1 page=0x80 serial='SER1'");
    expect(r.out).toContain('scsi-capacity lun=0 blocks=32768 block_size=512');
    expect(be.err()).toMatch(/ring 2 started: size 128/);
  });

  it('READ/WRITE of every CDB size: the image the back-end writes holds the pattern', async () => {
    const { a, be } = await twoLuns();
    const r = await qemu(be.socket, 'test=scsi-rw lun=0 lba=100 blocks=48 seed=7 strict=1');
    pass(r, 'scsi-rw');
    const img = fs.readFileSync(a);
    for (let o = 100 * 512; o < 148 * 512; o++) if (img[o] !== patternByte(o, 7)) throw new Error(`image byte ${o} is ${img[o]}`);
  });

  it('error sense, task management and MSI-X masking pass with strict SPC answers', async () => {
    const { be } = await twoLuns();
    pass(await qemu(be.socket, 'test=scsi-errors strict=1'), 'scsi-errors');
    pass(await qemu(be.socket, 'test=scsi-tmf strict=1'), 'scsi-tmf'); // the back-end takes the next QEMU after the last one left
    pass(await qemu(be.socket, 'test=scsi-msix-mask blocks=8'), 'scsi-msix-mask');
  });
});
