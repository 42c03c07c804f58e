// --metrics file:PATH: Prometheus text format with per-queue counters, devices
// needing reset and vCPU exits by reason. A VM started paused (-S) shows its
// virtio-blk queue at zero; after `cont` (HMP on stdin) the guest kit's blk-rw
// test does I/O and the file written at exit shows the counters moved.
import { spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { describeKvm } from '@tsvmm/kvm-native/testing';
import { GUEST_ELF, requireGuestKit, VMM_BIN } from './guest-kit';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvmm-setup-metrics-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** The value of one sample line, e.g. value(text, 'tsvmm_virtqueue_chains_total{device="d0",queue="0"}'). */
function value(text: string, sample: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${sample} `));
  return line === undefined ? undefined : Number(line.slice(sample.length + 1));
}

describeKvm('metrics', () => {
  // With iothread= the worker takes the chains and sends the interrupts: the metrics read its values.
  it.each([
    ['in-process', [], ''],
    ['iothread', ['--object', 'iothread,id=io0'], ',iothread=io0'],
  ])('%s: a paused VM shows zeros; after cont and virtio-blk I/O the counters have moved', async (name, objects, extra) => {
    requireGuestKit();
    const img = path.join(tmp, `d0-${name}.img`);
    fs.writeFileSync(img, Buffer.alloc(1024 * 1024));
    const file = path.join(tmp, `vmm-${name}.prom`);
    const serial = path.join(tmp, `serial-${name}.txt`);
    const args = [
      'run',
      '--kernel',
      GUEST_ELF,
      '--memory',
      '64M',
      '--cmdline',
      'test=blk-rw lba=8 sectors=32 chunk=8',
      ...objects,
      '--device',
      `virtio-blk,id=d0,file=${img}${extra}`,
    ];
    const p = spawn(
      process.execPath,
      [VMM_BIN, ...args, '-S', '--monitor', 'stdio', '--serial', `file:${serial}`, '--metrics', `file:${file},interval=0.1`],
      {
        stdio: ['pipe', 'pipe', 'pipe'],
      },
    );
    let stderr = '';
    let stdout = '';
    p.stderr.on('data', (d) => (stderr += d));
    p.stdout.on('data', (d) => (stdout += d));
    const exited = new Promise<number | null>((resolve) => p.on('close', resolve));

    // Wait for a write that has the device (created while the VM is paused).
    let paused = '';
    for (let i = 0; i < 300 && !paused.includes('device="d0"'); i++) {
      await new Promise((r) => setTimeout(r, 100));
      paused = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
    }
    expect(paused).toContain('# TYPE tsvmm_virtqueue_chains_total counter');
    expect(value(paused, 'tsvmm_virtqueue_chains_total{device="d0",queue="0"}')).toBe(0);
    expect(value(paused, 'tsvmm_virtio_device_needs_reset{device="d0"}')).toBe(0);

    // HMP lines run in order: the device's fields, then cont.
    p.stdin.write('info virtio-status d0\ncont\n');
    const code = await exited;
    // Nothing on stderr but the iothread's start (no Node warning either: the worker closes the image
    // descriptors it was handed with close(2), not fs.closeSync, which warns about unmanaged fds).
    const known = /^\S+ INFO  iothread io0: worker thread started\n/gm;
    expect(stderr.replace(known, '')).toBe('');
    const guest = fs.readFileSync(serial, 'latin1');
    expect(guest).toContain('guest-kit: PASS test=blk-rw');
    expect(code).toBe(0);

    // device-info in kebab-case like the rest of the reply; the camelCase name stays as a deprecated alias.
    expect(stdout).toMatch(/device-info: \{.*"bytes-read":0,"bytesRead":0/);
    expect(stdout).toContain('"io-errors":0,"ioErrors":0');

    const done = fs.readFileSync(file, 'utf8');
    // blk-rw: 4 writes and 4 reads of 8 sectors, then a FLUSH when negotiated (virtio-blk offers it).
    expect(value(done, 'tsvmm_virtqueue_chains_total{device="d0",queue="0"}')).toBe(9);
    expect(value(done, 'tsvmm_virtqueue_kicks_total{device="d0",queue="0",path="eventfd"}')).toBeGreaterThan(0);
    // Every interrupt the guest counted was sent (and counted) by the copy that completed the requests.
    const guestIrqs = Number(/blk-rw interrupts=(\d+)/.exec(guest)![1]);
    expect(guestIrqs).toBeGreaterThan(0);
    expect(value(done, 'tsvmm_virtqueue_interrupts_total{device="d0",queue="0",outcome="injected"}')).toBe(guestIrqs);
    expect(value(done, 'tsvmm_vcpu_exits_total{reason="io"}')).toBeGreaterThan(value(paused, 'tsvmm_vcpu_exits_total{reason="io"}') ?? 0);
    // No temporary file left beside it.
    expect(fs.readdirSync(tmp).filter((f) => f.endsWith('.tmp'))).toEqual([]);
  });
});

describe('--metrics: bad values', () => {
  const missing = path.join(os.tmpdir(), 'tsvmm-setup-no-such-dir', 'vmm.prom');
  it.each([
    [['--metrics', '/tmp/x.prom'], 2, "--metrics: '/tmp/x.prom' must be file:PATH[,interval=SECONDS]"],
    [['--metrics', 'file:'], 2, "--metrics: 'file:' must be file:PATH[,interval=SECONDS]"],
    [['--metrics', 'file:/tmp/x.prom,every=3'], 2, "--metrics: unknown option 'every=3' (it takes interval=SECONDS)"],
    [['--metrics', 'file:/tmp/x.prom,interval=0'], 2, '--metrics: interval=0 must be from 0.1 to 3600 seconds'],
    [['--metrics', `file:${missing}`], 1, `--metrics file:${missing}: no such directory`],
  ])('%j: exit %d, names the flag', (args, status, message) => {
    requireGuestKit();
    const r = spawnSync(
      process.execPath,
      [VMM_BIN, 'run', '--kernel', GUEST_ELF, '--memory', '64M', '--serial', 'none', ...(args as string[])],
      {
        encoding: 'utf8',
        timeout: 60_000,
      },
    );
    expect(r.stderr).toBe(`vmm: ${message}\n`);
    expect(r.status).toBe(status);
  });
});
