// The credential calls' argument checks and the /proc status parsing; the drop
// itself runs in a child process (it cannot be undone in the test runner).
import { execFileSync } from 'child_process';
import * as path from 'path';
import { loadNative, lookupUser, parseStatusCredentials, threadCredentials } from '../src';

describe('credentials', () => {
  it('looks users up in the host database; an unknown one is undefined', () => {
    expect(lookupUser('root')).toMatchObject({ uid: 0, gid: 0, groups: expect.arrayContaining([0]) });
    expect(lookupUser('no-such-user-files-slice')).toBeUndefined();
  });

  it('parses the ids and capability sets of a /proc status', () => {
    const c = parseStatusCredentials(
      7,
      'Name:\tnode\nUid:\t65534\t65534\t65534\t65534\nGid:\t1\t2\t3\t4\nGroups:\t5 6 \nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\n',
    );
    expect(c).toEqual({
      tid: 7,
      uid: [65534, 65534, 65534, 65534],
      gid: [1, 2, 3, 4],
      groups: [5, 6],
      capInh: 0n,
      capPrm: 0n,
      capEff: 0n,
      capBnd: 0x1ffffffffffn,
      capAmb: 0n,
    });
    const mine = threadCredentials('self');
    expect(mine.length).toBeGreaterThan(0);
    expect(mine[0].uid[0]).toBe(process.getuid!());
  });

  it('refuses ids that are not 32-bit ids, and group lists that are not arrays of them', () => {
    const n = loadNative();
    expect(() => n.setResUid(-1, 0, 0)).toThrow('ruid must be an id from 0 to 4294967294');
    expect(() => n.setResGid(1.5, 0, 0)).toThrow('rgid must be an id from 0 to 4294967294');
    expect(() => n.setResUid(0xffffffff, 0, 0)).toThrow('ruid must be an id from 0 to 4294967294'); // -1: "unchanged" to the kernel, refused
    expect(() => n.setGroups('0' as unknown as number[])).toThrow('groups must be an array');
    expect(() => n.setGroups([1, -2])).toThrow('groups must hold ids from 0 to 4294967294');
    expect(() => n.chroot(3 as unknown as string)).toThrow('dir must be a string');
  });

  it('a child that drops to 65534 has those ids on every thread and no capabilities left', () => {
    if (process.getuid!() !== 0) throw new Error('needs root (as CI runs)');
    const src = path.resolve(__dirname, '../src/index.ts');
    const script = `
      const c = require(${JSON.stringify(src)});
      c.setGroups([65534]); c.setAllGids(65534); c.dropCapabilityBounding(); c.setAllUids(65534); c.clearCapabilities();
      let back = 'no';
      try { c.setAllUids(0); back = 'yes'; } catch (e) { back = e.code; }
      const t = c.threadCredentials('self');
      console.log(JSON.stringify({ back, threads: t.length, bad: t.filter((x) => x.uid.some((u) => u !== 65534) || x.capEff !== 0n || x.capPrm !== 0n).length,
        bnd: t.find((x) => x.tid === process.pid).capBnd.toString() }));`;
    const out = execFileSync(process.execPath, ['-r', 'ts-node/register/transpile-only', '-e', script], {
      encoding: 'utf8',
      cwd: path.resolve(__dirname, '..'),
    });
    const r = JSON.parse(out.trim().split('\n').pop()!);
    expect(r).toEqual({ back: 'EPERM', threads: expect.any(Number), bad: 0, bnd: '0' });
    expect(r.threads).toBeGreaterThan(1);
  });
});
