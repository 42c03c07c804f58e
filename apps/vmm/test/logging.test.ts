// The VMM's log as an operator reads it: text lines with a timestamp and a
// level on stderr by default; JSON lines (level, time, msg, and device and
// queue for a device's line) in a --log-file on request; --log-level filters.
// The device line comes from a guest that breaks its virtio-blk device.
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { describeKvm } from '@tsvmm/kvm-native/testing';
import { GUEST_ELF, requireGuestKit, VMM_BIN } from './guest-kit';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvmm-setup-log-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function vmm(args: string[]) {
  return spawnSync(process.execPath, [VMM_BIN, ...args], { encoding: 'utf8', timeout: 60_000 });
}

/** Boots the guest kit's blk-hostile test (an out-of-RAM buffer: d0 needs reset, then recovers). */
function hostileBlk(extra: string[]) {
  requireGuestKit();
  const img = path.join(tmp, `d0-${Math.random().toString(36).slice(2)}.img`);
  fs.writeFileSync(img, Buffer.alloc(256 * 1024));
  const r = vmm([
    'run',
    '--kernel',
    GUEST_ELF,
    '--memory',
    '64M',
    '--serial',
    'stdio',
    '--cmdline',
    'test=blk-hostile kind=oob',
    '--device',
    `virtio-blk,id=d0,file=${img}`,
    ...extra,
  ]);
  expect(r.stdout).toContain('guest-kit: PASS test=blk-hostile');
  expect(r.status).toBe(0);
  return r;
}

describeKvm('logging', () => {
  it('text on stderr by default: ISO timestamp, level, the device line', () => {
    const r = hostileBlk([]);
    expect(r.stderr).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z WARN  d0: guest error, device needs reset: /m);
  });

  it('--log-format json --log-file: JSON lines with level, time, device; nothing on stderr', () => {
    const file = path.join(tmp, 'vmm.jsonl');
    const r = hostileBlk(['--log-format', 'json', '--log-file', file]);
    expect(r.stderr).not.toContain('needs reset');
    const records = fs
      .readFileSync(file, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    const line = records.find((x) => String(x.msg).includes('device needs reset'));
    expect(line).toMatchObject({ level: 'warn', device: 'd0', pid: expect.any(Number) });
    expect(Number.isNaN(Date.parse(String(line!.time)))).toBe(false);
  });

  it('--log-level error hides the warning; --log-level warn keeps it', () => {
    expect(hostileBlk(['--log-level', 'error']).stderr).not.toContain('needs reset');
    expect(hostileBlk(['--log-level=warn']).stderr).toContain('WARN  d0: guest error, device needs reset');
  });
});

describe('logging flags: bad values', () => {
  it.each([
    [['--log-level', 'loud'], 2, "--log-level: 'loud' must be one of trace, debug, info, warn, error, fatal, silent"],
    [['--log-format', 'xml'], 2, "--log-format: 'xml' must be text or json"],
    [['--log-file'], 2, '--log-file: missing value'],
    [
      ['--log-file', path.join(os.tmpdir(), 'tsvmm-setup-no-such-dir', 'vmm.log')],
      1,
      `--log-file ${path.join(os.tmpdir(), 'tsvmm-setup-no-such-dir', 'vmm.log')}: no such directory`,
    ],
  ])('%j: exit %d, names the flag', (args, status, message) => {
    const r = vmm(['run', '--kernel', GUEST_ELF, ...(args as string[])]);
    expect(r.stderr).toBe(`vmm: ${message}\n`);
    expect(r.status).toBe(status);
  });
});
