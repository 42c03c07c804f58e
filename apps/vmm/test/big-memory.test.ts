// Guest RAM beyond one V8 ArrayBuffer (4 GiB in Node 20), through the real `vmm` binary: `--memory 8G`
// used to abort the VMM ("free(): double free detected"). RAM above 3 GiB sits at 4 GiB; the VMM holds
// it as 1 GiB host buffers, so the guest kit (test=mem-high) also has virtio-blk read into a buffer
// that crosses 5 GiB (two buffers on the host) and one near 8 GiB, and write from the crossing one.
// An 8 GiB guest is also snapshot/restored and live-migrated mid-rounds (the words above 4 GiB must arrive).
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { describeKvm } from '@tsvmm/kvm-native/testing';
import { migrateAndWait, qmpConnect, VmmFleet, waitUntil } from '@tsvmm/testing';
import { GUEST_BZIMAGE, GUEST_ELF, lineValues, requireGuestKit, runCli } from './guest-kit';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmm-bigmem-'));
const SECTOR = 512;

/** The guest kit's disk pattern: byte i of sector s is (s * 31 + i * 7 + seed) & 0xff. */
function pattern(first: number, sectors: number, seed: number): Buffer {
  const b = Buffer.alloc(sectors * SECTOR);
  for (let s = 0; s < sectors; s++) for (let i = 0; i < SECTOR; i++) b[s * SECTOR + i] = ((first + s) * 31 + i * 7 + seed) & 0xff;
  return b;
}

function disk(name: string): string {
  const f = path.join(tmp, name);
  const img = Buffer.alloc(256 * SECTOR, 0xee);
  pattern(8, 32, 3).copy(img, 8 * SECTOR); // what the guest reads, into its buffers above 4 GiB
  fs.writeFileSync(f, img);
  return f;
}

async function memHighWithDisk(kernel: string, img: string, extra = ''): Promise<string> {
  requireGuestKit();
  const r = await runCli(
    [
      'run',
      '--kernel',
      kernel,
      '--memory',
      '8G',
      '--serial',
      'stdio',
      '--cmdline',
      'test=mem-high blk=1 lba=8 seed=3 wlba=100',
      '--device',
      `virtio-blk,id=d0,file=${img}${extra}`,
    ],
    120_000,
  );
  expect(r.stderr).not.toMatch(/double free|Aborted|core dumped/);
  expect(r.stdout).toContain('guest-kit: PASS test=mem-high');
  expect(r.code).toBe(0);
  return r.stdout;
}

function expectDiskWritten(img: string): void {
  const after = fs.readFileSync(img);
  expect(after.subarray(100 * SECTOR, 116 * SECTOR).equals(pattern(100, 16, 4))).toBe(true); // written from above 4 GiB
  expect(after.subarray(8 * SECTOR, 40 * SECTOR).equals(pattern(8, 32, 3))).toBe(true); // read data untouched
  expect(after.subarray(116 * SECTOR).every((x) => x === 0xee)).toBe(true); // nothing written past the request
}

describeKvm('guest RAM above 4 GiB (--memory 8G and 64G)', () => {
  it('--memory 8G: RAM at 4 GiB in the memory map; the guest writes and reads it; virtio-blk reads and writes buffers there, across a host-buffer split', async () => {
    const img = disk('main.img');
    const out = await memHighWithDisk(GUEST_ELF, img);
    // 3 GiB below the PCI hole, the other 5 GiB from 4 GiB.
    expect(lineValues(out, 'guest-kit: mem ')).toEqual(
      expect.arrayContaining([
        { base: '0x100000', size: '0xbff00000', type: '1' },
        { base: '0x100000000', size: '0x140000000', type: '1' },
      ]),
    );
    expect(out).toContain('mem-high cpu write-read ok words=6 top=0x200000000');
    // 4 KiB each side of 5 GiB (two host buffers), and 16 KiB below the top of what the guest maps.
    expect(out).toContain('mem-high blk-read cross-5g ok addr=0x13ffff000 bytes=8192');
    expect(out).toContain('mem-high blk-read near-top ok addr=0x1ffffc000 bytes=8192');
    expect(out).toContain('mem-high blk-write cross-5g ok lba=100 sectors=16');
    expectDiskWritten(img);
  }, 180_000);

  it('--memory 8G with the virtio-blk data plane in an iothread (its own mapping of guest RAM), bzImage entry', async () => {
    const img = disk('iothread.img');
    const out = await memHighWithDisk(GUEST_BZIMAGE, img, ',iothread=io0');
    expect(out).toContain('guest-kit: hello via=bzimage');
    expect(out).toContain('mem-high blk-read cross-5g ok addr=0x13ffff000');
    expectDiskWritten(img);
  }, 180_000);

  it('--memory 64G (the documented maximum) starts, puts RAM up to 68 GiB in the memory map and runs the guest above 4 GiB', async () => {
    requireGuestKit();
    const r = await runCli(['run', '--kernel', GUEST_ELF, '--memory', '64G', '--serial', 'stdio', '--cmdline', 'test=mem-high'], 120_000);
    expect(r.stdout).toContain('guest-kit: mem base=0x100000000 size=0xf40000000 type=1');
    expect(r.stdout).toContain('mem-high ram-above-4g end=0x1040000000');
    expect(r.stdout).toContain('guest-kit: PASS test=mem-high');
    expect(r.code).toBe(0);
  }, 180_000);
});

describeKvm('snapshot and restore of RAM above 4 GiB', () => {
  const fleet = new VmmFleet('vmm-bigmem-snap-');
  afterEach(() => fleet.killAll());

  it('--memory 8G: x-snapshot-save mid-rounds, kill, --restore: the words above 4 GiB (one across 5 GiB) come back; the save reads no untouched RAM', async () => {
    requireGuestKit();
    const snap = fleet.file('bigmem.snap');
    const args = ['--memory', '8G', '--serial', 'stdio', '--cmdline', 'test=mem-high rounds=16 delay=20000'];
    const src = fleet.start(args);
    await waitUntil('round 3', () => /mem-high round=3\b/.test(src.out()), 60_000);
    const s = await qmpConnect(src);
    await s.run('x-snapshot-save', { file: snap });
    // An 8 GiB guest that touched a few MiB: saving it must not fault in the rest of its RAM.
    const rssKiB = Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${src.proc.pid}/status`, 'utf8'))![1]);
    expect(rssKiB).toBeLessThan(512 * 1024);
    expect(fs.statSync(snap).size).toBeLessThan(64 * 2 ** 20);
    s.close();
    src.proc.kill('SIGKILL');
    await src.exited;
    const dst = fleet.start([...args, '--restore', snap]);
    expect(await dst.exited).toBe(0);
    expect(dst.out()).toContain('guest-kit: PASS test=mem-high');
    expect(dst.out()).not.toContain('guest-kit: hello'); // it continued, it did not boot again
    expect(dst.out()).toContain('mem-high round=16');
    expect(dst.out()).not.toMatch(/mem-high round=1\n/);
  }, 180_000);

  it('--memory 8G: live migration mid-rounds over a unix socket: the words above 4 GiB arrive, then the destination does virtio-blk I/O into buffers there', async () => {
    requireGuestKit();
    const img = disk('migrate.img');
    const sock = path.join(fleet.tmp, `in-hardening-${Date.now()}.sock`);
    const args = [
      '--memory',
      '8G',
      '--serial',
      'stdio',
      '--device',
      `virtio-blk,id=d0,file=${img}`,
      '--cmdline',
      'test=mem-high rounds=16 delay=20000 blk=1 lba=8 seed=3 wlba=100',
    ];
    const dst = fleet.start([...args, '--incoming', `unix:${sock}`]);
    const src = fleet.start(args);
    await waitUntil('round 3', () => /mem-high round=3\b/.test(src.out()), 60_000);
    await waitUntil('destination listening', () => fs.existsSync(sock));
    const s = await qmpConnect(src);
    const r = await migrateAndWait(s, `unix:${sock}`);
    expect(r).toMatchObject({ status: 'completed' });
    // 8 GiB of guest RAM of which a few MiB were ever written: only those travel.
    expect((r.ram as { transferred: number }).transferred).toBeLessThan(64 * 2 ** 20);
    expect(await s.run('query-status')).toMatchObject({ status: 'postmigrate', running: false });
    s.close();
    expect(await dst.exited).toBe(0);
    const out = dst.out();
    expect(out).not.toContain('guest-kit: hello'); // it continued, it did not boot again
    expect(out).toContain('mem-high round=16'); // each round checked the last one's words above 4 GiB (one across 5 GiB)
    expect(out).not.toMatch(/mismatch/);
    expect(out).toContain('mem-high blk-read cross-5g ok addr=0x13ffff000 bytes=8192');
    expect(out).toContain('mem-high blk-write cross-5g ok lba=100 sectors=16');
    expect(out).toContain('guest-kit: PASS test=mem-high');
    expectDiskWritten(img);
    expect(src.out()).not.toContain('mem-high round=16'); // it moved mid-rounds
    expect(src.out()).not.toContain('guest-kit: PASS'); // the source stayed paused
  }, 180_000);
});
