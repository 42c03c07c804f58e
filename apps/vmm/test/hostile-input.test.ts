// Crafted kernels and crafted snapshot / migration streams given to the real `vmm`:
// each is refused with exit status 1 and one line naming the field, promptly (a hang
// would time the test out), and the guest never runs.
import * as fs from 'fs';
import * as net from 'net';
import * as path from 'path';
import * as zlib from 'zlib';
import { describeKvm } from '@tsvmm/kvm-native/testing';
import { qmpConnect, uniq, VmmFleet, waitUntil } from '@tsvmm/testing';
import { encodeHeader, encodeSection, MigrationStreamError, readHeader, readSection, Section } from '../src/migration/stream';
import { GUEST_BZIMAGE, GUEST_ELF, runCli } from './guest-kit';

const fleet = new VmmFleet('vmm-loaders-');
afterEach(() => fleet.killAll());

describeKvm('crafted kernels', () => {
  const elf = fs.readFileSync(GUEST_ELF);
  const bz = fs.readFileSync(GUEST_BZIMAGE);

  const cases: [string, () => Buffer, RegExp][] = [
    [
      'an ELF note with namesz 0xFFFFFFF1 (and descsz 0)',
      () => withPvhNote(elf, 0xfffffff1, 0),
      /not a valid kernel: program header \d+ note at offset 0x[0-9a-f]+ n_namesz 0xfffffff1 runs past the end of the segment/,
    ],
    [
      'an ELF cut inside its program headers',
      () => elf.subarray(0, 100),
      /not a valid kernel: program headers .* runs past the end of the file \(100 bytes\): truncated ELF/,
    ],
    ['a bzImage shorter than its setup header', () => bz.subarray(0, 0x220), /not a valid kernel: setup header is cut short/],
    [
      'a bzImage whose setup_sects points past the file',
      () => Buffer.concat([bz.subarray(0, 0x1f1), Buffer.from([0xff]), bz.subarray(0x1f2, 0x4000)]),
      /not a valid kernel: setup_sects 255/,
    ],
  ];
  it.each(cases)(
    'vmm run refuses %s: exit 1, the field named, no stack trace',
    async (_what, image, msg) => {
      const file = path.join(fleet.tmp, `kernel-${uniq()}`);
      fs.writeFileSync(file, image());
      const r = await runCli(['run', '--kernel', file, '--serial', 'none'], 60_000);
      expect(r.stderr).toMatch(msg);
      expect(r.code).toBe(1);
      expect(r.stderr).not.toMatch(/RangeError|    at /);
    },
    90_000,
  );
});

describeKvm('crafted snapshot and migration streams', () => {
  // The format-1 fixture (a guest-kit loop with virtio-blk d0, 16 MiB) as a base to tamper with.
  const dir = path.join(__dirname, 'fixtures/stream-format-1');
  const fixture = zlib.gunzipSync(fs.readFileSync(path.join(dir, 'snapshot.gz')));
  const args = (disk: string) => [
    '--memory',
    '16M',
    '--device',
    `virtio-blk,id=d0,file=${disk}`,
    '--cmdline',
    'test=mig-blk-loop iters=80 sectors=1 every=10',
  ];
  const disk = () => {
    const f = path.join(fleet.tmp, `disk-${uniq()}.img`);
    fs.writeFileSync(f, zlib.gunzipSync(fs.readFileSync(path.join(dir, 'disk.img.gz'))));
    return f;
  };
  let sections: Section[];
  beforeAll(async () => {
    sections = await readAll(fixture);
  });

  /** The fixture re-encoded (format 2) with one section's JSON changed by `edit`. */
  const tampered = (name: string, edit: (v: any) => void): Buffer =>
    Buffer.concat([
      encodeHeader(),
      ...sections.flatMap((s) => {
        if (s.name !== name) return encodeSection(s.name, s.version, s.payload);
        const v = JSON.parse(s.payload.toString());
        edit(v);
        return encodeSection(s.name, s.version, Buffer.from(JSON.stringify(v)));
      }),
    ]);

  const restoreRefuses = async (stream: Buffer, msg: RegExp) => {
    const file = path.join(fleet.tmp, `crafted-${uniq()}.snap`);
    fs.writeFileSync(file, stream);
    const p = fleet.start([...args(disk()), '--restore', file, '--serial', 'stdio']);
    expect(await p.exited).toBe(1);
    expect(p.err()).toMatch(msg);
    expect(p.err()).not.toMatch(/TypeError|RangeError|    at /);
    expect(p.out()).toBe(''); // the guest never ran
  };

  it('--restore refuses a queue with lastAvailIdx -1 (which used to abort the VMM when it resumed)', async () => {
    await restoreRefuses(
      tampered('device/d0', (d) => (d.state.virtio.queues[0].lastAvailIdx = -1)),
      /^vmm: restore failed: bad stream: device\/d0\.state\.virtio\.queues\[0\]\.lastAvailIdx: -1 is out of range \(0\.\.65535\)$/m,
    );
  }, 60_000);

  it('--restore refuses a queue vector outside the MSI-X table and a vCPU with truncated registers', async () => {
    await restoreRefuses(
      tampered('device/d0', (d) => (d.state.transport.queueVectors[0] = 0x7ff)),
      /restore failed: bad stream: device\/d0\.state\.transport\.queueVectors\[0\]: vector 2047 is outside the MSI-X table/,
    );
    await restoreRefuses(
      tampered('cpu/0', (c) => (c.regs = c.regs.slice(0, 8))),
      /restore failed: bad stream: cpu\/0\.regs: 6 bytes, expected \d+/,
    );
  }, 60_000);

  it('--restore refuses PCI BARs placed over the LAPIC, over RAM or over another BAR, before applying anything', async () => {
    /** d0's config space with BAR register `reg` (0..5) set to `value`. */
    const withBar = (reg: number, value: number) =>
      tampered('device/d0', (d) => {
        const c = Buffer.from(d.state.transport.config, 'base64');
        c.writeUInt32LE(value >>> 0, 0x10 + reg * 4);
        d.state.transport.config = c.toString('base64');
      });
    // BAR4 (64-bit, 16 KiB at 0xc0004000 in the fixture) moved onto the LAPIC, then into low RAM.
    await restoreRefuses(
      withBar(4, 0xfee00004),
      /^vmm: restore failed: bad stream: device\/d0\.state\.transport\.config: BAR4 0xfee00000-0xfee03fff overlaps the LAPIC \(0xfee00000-0xfee00fff\)$/m,
    );
    await restoreRefuses(
      withBar(4, 0x00100004),
      /restore failed: bad stream: device\/d0\.state\.transport\.config: BAR4 0x100000-0x103fff overlaps RAM below 4 GiB \(0x0-0xffffff\)/,
    );
    // BAR0 moved onto BAR4.
    await restoreRefuses(
      withBar(0, 0xc0004000),
      /restore failed: bad stream: device\/d0\.state\.transport\.config: BAR4 0xc0004000-0xc0007fff overlaps device 'd0' BAR0 \(0xc0004000-0xc000[0-9a-f]{4}\)/,
    );
  }, 90_000);

  it('--restore refuses a fractional device status, a huge queue size, a missing field and a duplicated section', async () => {
    await restoreRefuses(
      tampered('device/d0', (d) => (d.state.virtio.status = 15.5)),
      /restore failed: bad stream: device\/d0\.state\.virtio\.status: expected an integer, got 15\.5/,
    );
    await restoreRefuses(
      tampered('device/d0', (d) => (d.state.virtio.queues[0].size = 2 ** 31 - 1)),
      /device\/d0\.state\.virtio\.queues\[0\]\.size: 2147483647 is out of range \(0\.\.65535\)/,
    );
    await restoreRefuses(
      tampered('serial', (v) => delete v.lcr),
      /restore failed: bad stream: serial\.lcr: expected an integer, got missing/,
    );
    const cpu0 = sections.find((s) => s.name === 'cpu/0')!;
    const twice = Buffer.concat([
      encodeHeader(),
      ...sections.flatMap((s) => [
        ...(s.name === 'end' ? encodeSection(cpu0.name, 1, cpu0.payload) : []),
        ...encodeSection(s.name, s.version, s.payload),
      ]),
    ]);
    await restoreRefuses(twice, /restore failed: bad stream: section 'cpu\/0' appears twice/);
  }, 90_000);

  it('--incoming refuses a section declaring 4 GiB before allocating it, and answers the source', async () => {
    const sock = path.join(fleet.tmp, `in-${uniq()}.sock`);
    const p = fleet.start([...args(disk()), '--incoming', `unix:${sock}`]);
    await waitUntil('destination listening', () => fs.existsSync(sock));
    const machine = sections.find((s) => s.name === 'machine')!;
    const huge = encodeSection('ram', 1, Buffer.alloc(0))[0];
    huge.writeUInt32LE(0xffffffff, 3 + 3 + 4); // the payload length field
    const answer = await new Promise<string>((resolve, reject) => {
      const c = net.createConnection(sock);
      let text = '';
      c.on('data', (d) => {
        text += d;
        if (text.includes('\n')) c.end(); // as the source does once it has the answer
      });
      c.on('close', () => resolve(text));
      c.on('error', reject);
      c.write(Buffer.concat([encodeHeader(), ...encodeSection('machine', 1, machine.payload), huge]));
    });
    expect(answer).toMatch(/^ERR corrupt stream: section 'ram' declares 4294967295 bytes \(at most \d+\)\n/);
    expect(await p.exited).toBe(1);
    expect(p.err()).toMatch(/incoming migration failed: corrupt stream: section 'ram' declares 4294967295 bytes/);
    expect(p.out()).toBe('');
  }, 60_000);
});

describeKvm('a stalled incoming migration', () => {
  const dir = path.join(__dirname, 'fixtures/stream-format-1');
  const fixture = zlib.gunzipSync(fs.readFileSync(path.join(dir, 'snapshot.gz')));

  it('--incoming ...,timeout=2: a source that sends a valid start and then nothing fails the migration (MIGRATION failed, ERR, one line, exit 1)', async () => {
    const sections = await readAll(fixture);
    const disk = path.join(fleet.tmp, `disk-hardening-${uniq()}.img`);
    fs.writeFileSync(disk, Buffer.alloc(1 << 20));
    const sock = path.join(fleet.tmp, `in-hardening-${uniq()}.sock`);
    const p = fleet.start([
      '--memory',
      '16M',
      '--device',
      `virtio-blk,id=d0,file=${disk}`,
      '--serial',
      'none',
      '--incoming',
      `unix:${sock},timeout=2`,
    ]);
    const qmp = await qmpConnect(p);
    await waitUntil('destination listening', () => fs.existsSync(sock));
    const machine = sections.find((s) => s.name === 'machine')!;
    const ram = sections.find((s) => s.name === 'ram')!;
    let answer = '';
    const c = net.createConnection(sock);
    c.on('data', (d) => {
      answer += d;
      if (answer.includes('\n')) c.end(); // as the source does once it has the answer
    });
    c.on('error', () => undefined);
    // A valid header, machine and RAM section, then the start of the next section's header: the source hangs there.
    c.write(
      Buffer.concat([
        encodeHeader(),
        ...encodeSection('machine', 1, machine.payload),
        ...encodeSection('ram', ram.version, ram.payload),
        Buffer.from([0x53]),
      ]),
    );
    expect((await qmp.event('MIGRATION')).data).toEqual({ status: 'active' });
    // Stalled, the destination is in a defined state: still waiting, nothing run.
    expect(await qmp.run('query-status')).toMatchObject({ status: 'inmigrate', running: false });
    // ... holding what it was sent (16 MiB of RAM went into the guest's memfd), not a growing backlog.
    const rssKiB = Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${p.proc.pid}/status`, 'utf8'))![1]);
    expect(rssKiB).toBeLessThan(256 * 1024);
    const failed = await qmp.waitFor((m) => m.event === 'MIGRATION' && (m.data as { status: string }).status === 'failed', 30_000);
    expect(failed.data).toEqual({ status: 'failed' });
    expect(await p.exited).toBe(1);
    expect(answer).toMatch(/^ERR the source sent nothing for 2 s \(stream stalled after \d+ bytes; --incoming timeout=2\)\n$/);
    expect(p.err()).toMatch(
      /^vmm: incoming migration failed: the source sent nothing for 2 s \(stream stalled after \d+ bytes; --incoming timeout=2\)$/m,
    );
    expect(p.out()).toBe('');
    c.destroy();
  }, 90_000);
});

/** Every section of a stream held in memory. */
async function readAll(b: Buffer): Promise<Section[]> {
  let pos = 0;
  const src = {
    async read(n: number) {
      if (pos + n > b.length) throw new MigrationStreamError('stream truncated');
      pos += n;
      return b.subarray(pos - n, pos);
    },
  };
  const format = await readHeader(src);
  const out: Section[] = [];
  for (;;) {
    const s = await readSection(src, format);
    out.push(s);
    if (s.name === 'end') return out;
  }
}

/** The guest kit ELF with its PVH note's namesz and descsz replaced. */
function withPvhNote(elf: Buffer, namesz: number, descsz: number): Buffer {
  const c = Buffer.from(elf);
  const phoff = Number(c.readBigUInt64LE(32));
  const phentsize = c.readUInt16LE(54);
  for (let i = 0; i < c.readUInt16LE(56); i++) {
    const o = phoff + i * phentsize;
    if (c.readUInt32LE(o) !== 4) continue;
    const off = Number(c.readBigUInt64LE(o + 8));
    const size = Number(c.readBigUInt64LE(o + 32));
    for (let p = off; p + 12 <= off + size;) {
      const n = c.readUInt32LE(p);
      const d = c.readUInt32LE(p + 4);
      if (c.readUInt32LE(p + 8) === 18) {
        c.writeUInt32LE(namesz, p);
        c.writeUInt32LE(descsz, p + 4);
        return c;
      }
      p += 12 + Math.ceil(n / 4) * 4 + Math.ceil(d / 4) * 4;
    }
  }
  throw new Error('the guest kit ELF has no PVH note');
}
