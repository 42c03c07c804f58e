// Snapshot/restore and live migration between real `vmm` processes running the guest kit.
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import * as zlib from 'zlib';
import { describeKvm } from '@tsvmm/kvm-native/testing';
import { PLUGIN_API_VERSION } from '@tsvmm/pci';
import { checkMigLoopImage, migLoopImage, migrateAndWait, qmpConnect, QmpClient, uniq, VmmFleet, waitUntil } from '@tsvmm/testing';

const fleet = new VmmFleet('vmm-mig-');
const tmp = fleet.tmp;
const vmm = (args: string[], wrap?: string[]) => fleet.start(args, wrap);
const client = qmpConnect;
const until = waitUntil;
const image = () => migLoopImage(fleet);
const checkImage = checkMigLoopImage;

async function blkWrites(c: QmpClient): Promise<number> {
  const s = (await c.run('x-query-virtio-status', { path: 'd0' })) as { 'device-info': { writes: number } };
  return s['device-info'].writes;
}

afterEach(() => fleet.killAll());

const LOOP = 'test=mig-blk-loop iters=60 sectors=1 every=10 delay=4000 hold=1';

describeKvm('live migration', () => {
  for (const ioeventfd of ['on', 'off']) {
    it(`moves a guest writing virtio-blk in a loop (ioeventfd=${ioeventfd}): every write lands exactly once`, async () => {
      const disk = image();
      const dev = ['--device', `virtio-blk,id=d0,file=${disk},ioeventfd=${ioeventfd}`, '--cmdline', LOOP];
      const incoming = path.join(tmp, `in-${uniq()}.sock`);
      const dst = vmm([...dev, '--incoming', `unix:${incoming}`]);
      const src = vmm(dev);
      await until('source progress', () => /progress i=20\b/.test(src.out()));
      await until('destination listening', () => fs.existsSync(incoming));
      // QEMU's run states: the destination is 'inmigrate' and refuses cont until its stream is loaded.
      const d = await client(dst);
      expect(await d.run('query-status')).toMatchObject({ status: 'inmigrate', running: false });
      await expect(d.run('cont')).rejects.toThrow(/waiting for its incoming migration stream/);
      const s = await client(src);
      const r = await migrateAndWait(s, `unix:${incoming}`);
      expect(r.status).toBe('completed');
      expect(r.downtime).toEqual(expect.any(Number));
      expect((r.ram as Record<string, number>)['dirty-sync-count']).toBeGreaterThanOrEqual(2);
      expect(await s.run('query-status')).toMatchObject({ status: 'postmigrate', running: false });
      // The source announced that its guest stopped for the last copy, once, and never resumed.
      expect(s.messages.filter((m) => m.event === 'STOP')).toHaveLength(1);
      expect(s.messages.filter((m) => m.event === 'RESUME')).toHaveLength(0);
      await until('destination PASS', () => dst.out().includes('guest-kit: holding'));
      expect(dst.out()).toContain('mig-blk-loop done writes=60');
      expect(await d.run('query-status')).toMatchObject({ status: 'running', running: true });
      // Exactly once: the source's and the destination's device counted 60 writes between them.
      // ioeventfd re-registered on the destination (or, with ioeventfd=off, still off).
      const st = (await d.run('x-query-virtio-status', { path: 'd0' })) as Record<string, unknown>;
      expect(st['host-notifiers-active']).toBe(ioeventfd === 'on');
      expect(st['device-info']).toMatchObject({ aio: 'io_uring' }); // the default engine where the kernel allows it
      const [sw, dw] = [await blkWrites(s), await blkWrites(d)];
      expect(sw).toBeGreaterThanOrEqual(20);
      expect(dw).toBeGreaterThan(0);
      expect(sw + dw).toBe(60);
      expect(src.out()).not.toContain('guest-kit: PASS');
      checkImage(disk, 60);
      s.close();
      d.close();
    }, 60_000);
  }

  it('moves a device with bus mastering off (disabled) and its held-back kick; the destination finishes it', async () => {
    const disk = image();
    const dev = ['--device', `virtio-blk,id=d0,file=${disk}`, '--cmdline', 'test=blk-busmaster spins=400000 rekick=0'];
    const incoming = path.join(tmp, `in-${uniq()}.sock`);
    const dst = vmm([...dev, '--incoming', `unix:${incoming}`]);
    const src = vmm(dev);
    const s = await client(src);
    await until('destination listening', () => fs.existsSync(incoming));
    for (;;) {
      const st = (await s.run('x-query-virtio-status', { path: 'd0' })) as { disabled: boolean; 'bus-master': boolean };
      const q = (await s.run('x-query-virtio-queue-status', { path: 'd0', queue: 0 })) as Record<string, number>;
      if (st.disabled && q['avail-idx'] !== q['last-avail-idx']) break;
      await new Promise((r) => setTimeout(r, 10));
    }
    const r = await migrateAndWait(s, `unix:${incoming}`);
    expect(r.status).toBe('completed');
    expect(await dst.exited).toBe(0);
    expect(dst.out()).toContain('blk-busmaster used_while_disabled=0');
    expect(dst.out()).toContain('guest-kit: PASS test=blk-busmaster');
  }, 60_000);

  it('256 MiB guest dirtying memory: converges under downtime-limit, memory intact on the destination (figures)', async () => {
    const args = ['--memory', '256M', '--cmdline', 'test=mig-mem mb=64 passes=3 delay=10'];
    const incoming = path.join(tmp, `in-${uniq()}.sock`);
    const dst = vmm([...args, '--incoming', `unix:${incoming}`]);
    const src = vmm(args);
    await until('first pass', () => /mig-mem pass=1 /.test(src.out()));
    await until('destination listening', () => fs.existsSync(incoming));
    const s = await client(src);
    await s.run('migrate-set-parameters', { 'downtime-limit': 300 });
    const r = (await migrateAndWait(s, `unix:${incoming}`)) as {
      status: string;
      downtime: number;
      'total-time': number;
      ram: Record<string, number>;
    };
    expect(r.status).toBe('completed');
    expect(await dst.exited).toBe(0);
    expect(dst.out()).toMatch(/mig-mem verified pages=16384 sum=/);
    process.stdout.write(
      `migration figures: 256 MiB guest, 64 MiB region dirtied at ${r.ram['dirty-pages-rate']} pages/s: total ${r['total-time']} ms, downtime ${r.downtime} ms, ` +
        `${(r.ram.transferred / 2 ** 20).toFixed(1)} MiB sent, ${r.ram['dirty-sync-count']} dirty syncs, ${r.ram.mbps} Mbit/s\n`,
    );
  }, 60_000);

  it('refuses a destination without the device: clear error, the source keeps running and finishes', async () => {
    const disk = image();
    const incoming = path.join(tmp, `in-${uniq()}.sock`);
    const dst = vmm(['--cmdline', LOOP, '--incoming', `unix:${incoming}`]);
    const src = vmm(['--device', `virtio-blk,id=d0,file=${disk}`, '--cmdline', LOOP.replace(' hold=1', '')]);
    await until('source progress', () => /progress i=10\b/.test(src.out()));
    await until('destination listening', () => fs.existsSync(incoming));
    const s = await client(src);
    const r = await migrateAndWait(s, `unix:${incoming}`);
    expect(r.status).toBe('failed');
    expect(r['error-desc']).toMatch(/device 'd0' \(virtio-blk\) is not configured on the destination/);
    expect(await dst.exited).toBe(1);
    expect(dst.err()).toMatch(/incoming migration failed: configuration mismatch/);
    expect(dst.out()).not.toContain('mig-blk-loop');
    expect(await s.run('query-status')).toMatchObject({ status: 'running' });
    expect(await src.exited).toBe(0);
    expect(src.out()).toContain('guest-kit: PASS test=mig-blk-loop');
    checkImage(disk, 60);
  }, 60_000);
});

// virtio-net: the source on tap0, the destination on tap1, both ports of one
// bridge in a network namespace whose kernel answers the guest's pings (as two
// hosts on one L2 segment). Needs root (ip netns, /dev/net/tun).
const canNetns = process.getuid?.() === 0 && fs.existsSync('/dev/net/tun');
(canNetns ? describeKvm : describe.skip)('live migration with virtio-net traffic', () => {
  const NS = `vmmmig${process.pid}`;
  const ns = (...a: string[]) => execFileSync('ip', ['netns', 'exec', NS, ...a]);
  beforeAll(() => {
    execFileSync('ip', ['netns', 'add', NS]);
    ns('ip', 'link', 'set', 'lo', 'up');
    ns('ip', 'link', 'add', 'br0', 'type', 'bridge');
    ns('ip', 'link', 'set', 'br0', 'type', 'bridge', 'ageing_time', '0');
    ns('ip', 'addr', 'add', '10.0.2.2/24', 'dev', 'br0');
    ns('ip', 'link', 'set', 'br0', 'up');
    for (const t of ['tap0', 'tap1']) {
      ns('ip', 'tuntap', 'add', t, 'mode', 'tap', 'vnet_hdr');
      ns('ip', 'link', 'set', t, 'master', 'br0');
      ns('ip', 'link', 'set', t, 'up');
    }
  });
  afterAll(() => execFileSync('ip', ['netns', 'del', NS]));

  it.each(['', ',iothread=io0'])(
    'pings keep being answered on the destination (%s)',
    async (opts) => {
      const cmd = ['--cmdline', 'test=net-ping count=150 timeout-ms=300'];
      const incoming = path.join(tmp, `in-${uniq()}.sock`);
      const wrap = ['ip', 'netns', 'exec', NS];
      const dst = vmm([...cmd, '--device', `virtio-net,id=n0,tap=tap1${opts}`, '--incoming', `unix:${incoming}`], wrap);
      const src = vmm([...cmd, '--device', `virtio-net,id=n0,tap=tap0${opts}`], wrap);
      await until('pings', () => /net-ping seq=20 ok/.test(src.out()));
      await until('destination listening', () => fs.existsSync(incoming));
      const s = await client(src);
      const r = await migrateAndWait(s, `unix:${incoming}`);
      expect(r.status).toBe('completed');
      await dst.exited;
      const last = Math.max(...[...src.out().matchAll(/net-ping seq=(\d+)/g)].map((m) => Number(m[1])));
      expect(last).toBeLessThan(150);
      // The destination carries on from where the source stopped; at most the ping in flight at the switch is lost.
      expect(dst.out()).toMatch(/net-ping seq=150 ok/);
      // A serial line can straddle the switch ("net" from the source, "-ping seq=N timeout" from the destination).
      const lost = [...(src.out() + dst.out()).matchAll(/net-ping seq=(\d+) timeout/g)].length;
      expect(lost).toBeLessThanOrEqual(1);
      expect(dst.out()).toMatch(new RegExp(`net-ping received=(${150 - lost})`));
    },
    60_000,
  );
});

/**
 * A compiled run-time plugin (VMM_PLUGIN_PATH) whose device has no saveState:
 * a third-party device this VMM cannot migrate.
 */
function noMigrationPlugin(): string {
  const dir = path.join(tmp, 'rt', 'vmm-rt-nomig');
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(
    path.join(dir, 'package.json'),
    JSON.stringify({
      name: 'vmm-rt-nomig',
      version: '1.0.0',
      main: 'index.js',
      vmmPlugin: { apiVersion: PLUGIN_API_VERSION, deviceTypes: ['rt-nomig'] },
    }),
  );
  fs.writeFileSync(
    path.join(dir, 'index.js'),
    `
exports.plugin = {
  apiVersion: ${PLUGIN_API_VERSION}, name: 'vmm-rt-nomig', version: '1.0.0',
  deviceTypes: [{ type: 'rt-nomig', description: 'a device without migration support', properties: {}, create: (ctx, id) => ({ id, type: 'rt-nomig' }) }],
};
`,
  );
  return path.dirname(dir);
}

describeKvm('migration refused up front', () => {
  it('a device it cannot migrate (a run-time plugin without saveState): QMP error naming it, nothing sent, the guest keeps running; HMP info migrate', async () => {
    const disk = image();
    const src = vmm(
      ['--device', `virtio-blk,id=d0,file=${disk}`, '--device', 'rt-nomig,id=nm0', '--cmdline', LOOP],
      ['env', `VMM_PLUGIN_PATH=${noMigrationPlugin()}`],
    );
    const s = await client(src);
    const r = await s.execute('migrate', { uri: `unix:${path.join(tmp, 'nobody.sock')}` });
    expect(r.error).toMatchObject({
      class: 'GenericError',
      desc: expect.stringMatching(/device 'nm0' \(rt-nomig\) does not support migration/),
    });
    const snap = await s.execute('x-snapshot-save', { file: path.join(tmp, 'never.snap') });
    expect(snap.error).toMatchObject({ desc: expect.stringMatching(/snapshot failed: .*'nm0' \(rt-nomig\)/) });
    expect(fs.existsSync(path.join(tmp, 'never.snap'))).toBe(false);
    expect(await s.run('query-status')).toMatchObject({ status: 'running' });
    expect(await s.run('query-migrate')).toEqual({});
    await s.run('human-monitor-command', { 'command-line': 'migrate_set_downtime 0.05' });
    expect(await s.run('query-migrate-parameters')).toMatchObject({ 'downtime-limit': 50, 'max-bandwidth': 0 });
    await s.run('migrate-set-parameters', { 'max-bandwidth': 1 << 20 });
    expect(await s.run('query-migrate-parameters')).toMatchObject({ 'downtime-limit': 50, 'max-bandwidth': 1 << 20 });
    expect((await s.execute('migrate-set-parameters', { 'max-bandwidth': -1 })).error).toMatchObject({
      desc: expect.stringMatching(/'max-bandwidth' expects bytes per second/),
    });
    await until('guest PASS', () => src.out().includes('guest-kit: holding'));
    s.close();
  }, 60_000);
});

describeKvm('snapshot and restore', () => {
  let snap: string;
  let disk: string;
  // Two vCPUs: the second one's state (waiting for SIPI) travels too.
  const cmd = ['--cpus', '2', '--cmdline', 'test=mig-blk-loop iters=80 sectors=1 every=10'];

  it('x-snapshot-save mid-loop, kill, --restore in a new process: the guest finishes every write once', async () => {
    disk = image();
    snap = path.join(tmp, 'snap.bin');
    const src = vmm(['--device', `virtio-blk,id=d0,file=${disk}`, ...cmd]);
    await until('progress', () => /progress i=30\b/.test(src.out()));
    const s = await client(src);
    await s.run('x-snapshot-save', { file: snap });
    expect(await s.run('query-status')).toMatchObject({ status: 'paused' });
    const before = await blkWrites(s);
    src.proc.kill('SIGKILL');
    await src.exited;
    const t0 = Date.now();
    const dst = vmm(['--device', `virtio-blk,id=d0,file=${disk}`, ...cmd, '--restore', snap]);
    expect(await dst.exited).toBe(0);
    expect(dst.out()).toContain('guest-kit: PASS test=mig-blk-loop');
    // The restored guest continues: no boot banner, the loop goes on from where it was.
    expect(dst.out()).not.toContain('guest-kit: hello');
    expect(dst.out()).not.toMatch(/progress i=10\b/);
    expect(before).toBeGreaterThanOrEqual(30);
    expect(dst.err()).toMatch(/snapshot written by tsvmm \S+ at \d{4}-\d\d-\d\dT[\d:.]+Z \(stream format 2\)/);
    checkImage(disk, 80);
    process.stdout.write(`restore + rest of the guest run: ${Date.now() - t0} ms\n`);
    // The device was bus-master enabled: its state carries no `disabled` field (the rule that keeps old streams loadable).
    const raw = fs.readFileSync(snap).toString('latin1');
    const at = raw.indexOf('device/d0');
    expect(at).toBeGreaterThan(0);
    expect(raw.slice(at, at + 4000)).not.toContain('"disabled"');
    expect(raw).toContain('cpu/1');
  }, 60_000);

  const restoreFails = async (file: string, pattern: RegExp) => {
    const p = vmm(['--device', `virtio-blk,id=d0,file=${disk}`, ...cmd, '--restore', file, '--serial', 'stdio']);
    expect(await p.exited).toBe(1);
    expect(p.err()).toMatch(pattern);
    expect(p.out()).toBe('');
  };

  it('refuses a corrupt section, a wrong format version and an unknown section; the guest never runs', async () => {
    const good = fs.readFileSync(snap);
    const corrupt = Buffer.from(good);
    const at = corrupt.indexOf(Buffer.from('\x53\x00\x05cpu/0', 'latin1')) + 1;
    corrupt[at + 40] ^= 0x55;
    fs.writeFileSync(path.join(tmp, 'corrupt.bin'), corrupt);
    await restoreFails(path.join(tmp, 'corrupt.bin'), /restore failed: corrupt stream: section 'cpu\/0' fails its checksum/);

    const version = Buffer.from(good);
    version.writeUInt32LE(99, 8);
    fs.writeFileSync(path.join(tmp, 'version.bin'), version);
    await restoreFails(path.join(tmp, 'version.bin'), /unsupported stream format version 99/);

    const unknown = Buffer.from(good);
    unknown.write('xerial', unknown.indexOf(Buffer.from('\x53\x00\x06serial', 'latin1')) + 3, 'latin1');
    fs.writeFileSync(path.join(tmp, 'unknown.bin'), unknown);
    await restoreFails(path.join(tmp, 'unknown.bin'), /unknown section 'xerial'/);

    fs.writeFileSync(path.join(tmp, 'short.bin'), good.subarray(0, good.length - 100));
    await restoreFails(path.join(tmp, 'short.bin'), /stream truncated/);

    const one = vmm(['--device', `virtio-blk,id=d0,file=${disk}`, ...cmd.slice(2), '--restore', snap]);
    expect(await one.exited).toBe(1);
    expect(one.err()).toMatch(/configuration mismatch: the source has 2 vCPUs, this VM 1/);

    const p = vmm([...cmd, '--restore', snap]);
    expect(await p.exited).toBe(1);
    expect(p.err()).toMatch(/configuration mismatch: device 'd0' \(virtio-blk\) is not configured on the destination/);
  }, 60_000);

  it('restores a format-1 snapshot written by the first release (fixture): the guest finishes its loop', async () => {
    const dir = path.join(__dirname, 'fixtures/stream-format-1');
    const old = path.join(tmp, 'format1.snap');
    const oldDisk = path.join(tmp, 'format1.img');
    fs.writeFileSync(old, zlib.gunzipSync(fs.readFileSync(path.join(dir, 'snapshot.gz'))));
    fs.writeFileSync(oldDisk, zlib.gunzipSync(fs.readFileSync(path.join(dir, 'disk.img.gz'))));
    expect(fs.readFileSync(old).readUInt32LE(8)).toBe(1);
    checkImage(oldDisk, 30, false); // the fixture's image as it was at the snapshot (a few sectors past 30)
    const p = vmm([
      '--memory',
      '16M',
      '--device',
      `virtio-blk,id=d0,file=${oldDisk}`,
      '--cmdline',
      'test=mig-blk-loop iters=80 sectors=1 every=10',
      '--restore',
      old,
    ]);
    expect(await p.exited).toBe(0);
    expect(p.err()).toContain('reading a format-1 stream');
    expect(p.out()).not.toContain('guest-kit: hello');
    expect(p.out()).toMatch(/mig-blk-loop progress i=40[\s\S]*guest-kit: PASS test=mig-blk-loop/);
    checkImage(oldDisk, 80);
  }, 60_000);

  it('a current snapshot names its writer in the optional source section, which the restore reports', async () => {
    const raw = fs.readFileSync(snap);
    expect(raw.readUInt32LE(8)).toBe(2);
    expect(raw.toString('latin1')).toMatch(/"vmm":"tsvmm","version":"[^"]+","kind":"snapshot"/);
  });
});
