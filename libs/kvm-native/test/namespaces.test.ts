// spawnInNamespaces and its helpers on the real kernel (no KVM needed): a child
// goes through its namespaces, mounts, pivot_root and id change, and says which
// step failed; the argument checks of the native call.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { deviceNumbers, loadNative, mknodChar, NsSpawnError, spawnInNamespaces } from '../src';

const asRoot = () => {
  if (process.getuid!() !== 0) throw new Error('namespaces and mknod need root (as CI runs the tests)');
};

describe('namespaces', () => {
  let dir: string;
  beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvm-native-ns-'))));
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('decodes device numbers as glibc does, and makes a node with them', () => {
    asRoot();
    expect(deviceNumbers(fs.statSync('/dev/null').rdev)).toEqual({ major: 1, minor: 3 });
    // makedev(0x12345, 0x6789a): the low 12 bits of the major and 8 of the minor in the low word, the rest above.
    expect(deviceNumbers(0x120006783459an)).toEqual({ major: 0x12345, minor: 0x6789a });
    const p = path.join(dir, 'null');
    mknodChar(p, 0o600, 1, 3);
    const st = fs.statSync(p);
    expect(st.isCharacterDevice()).toBe(true);
    expect(st.rdev).toBe(fs.statSync('/dev/null').rdev);
    fs.writeFileSync(p, 'discarded');
    expect(() => mknodChar(p, 0o600, 1, 3)).toThrow(/mknod failed: EEXIST/);
  });

  it('a child goes through every step up to execve inside the new root, as the new user, and names the step that failed', async () => {
    asRoot();
    fs.chmodSync(dir, 0o755); // the new root: searchable by the user the child becomes
    const ok = spawnInNamespaces({
      namespaces: ['mount', 'pid', 'ipc', 'uts', 'net'],
      hostname: 'ns-test',
      root: dir,
      uid: 65534,
      gid: 65534,
      groups: [65534],
      file: '/no-such-program',
      argv: ['x'],
    });
    // The child reached execve: every namespace, the pivot_root and the drop to 65534 worked; the program is not in the root.
    expect(() => ok.start()).toThrow(new NsSpawnError('execve: ENOENT', 'execve', 'ENOENT'));
    expect(await ok.wait()).toBe(127);
    // With an init as PID 1: the program's execve happens in its child, whose failure is reported the same way.
    const withInit = spawnInNamespaces({
      namespaces: ['mount', 'pid'],
      init: true,
      root: dir,
      uid: 65534,
      gid: 65534,
      groups: [],
      file: '/nope',
      argv: ['x'],
    });
    expect(() => withInit.start()).toThrow('execve: ENOENT');
    expect(await withInit.wait()).toBe(127);

    fs.mkdirSync(path.join(dir, 'm'));
    const badMount = spawnInNamespaces({
      namespaces: ['mount'],
      root: dir,
      mounts: [{ kind: 'bind', source: path.join(dir, 'missing'), target: path.join(dir, 'm'), readOnly: true }],
      uid: 65534,
      gid: 65534,
      groups: [],
      file: '/x',
      argv: ['x'],
    });
    expect(() => badMount.start()).toThrow(`mount ${path.join(dir, 'missing')} on ${path.join(dir, 'm')}: ENOENT`);
    expect(await badMount.wait()).toBe(127);
    // Nothing was mounted on the host side.
    expect(fs.readFileSync('/proc/self/mountinfo', 'utf8')).not.toContain(dir);

    // A child never started ends without doing anything.
    const aborted = spawnInNamespaces({ namespaces: ['mount'], root: dir, uid: 1, gid: 1, groups: [], file: '/x', argv: ['x'] });
    aborted.abort();
    expect(await aborted.wait()).toBe(127);
  });

  it('checks its arguments', () => {
    const base = { namespaces: ['mount' as const], root: dir, uid: 1, gid: 1, groups: [], file: '/x', argv: ['x'] };
    expect(() => spawnInNamespaces({ ...base, namespaces: ['pid'] })).toThrow('the mount namespace is required');
    expect(() => spawnInNamespaces({ ...base, namespaces: ['mount', 'time' as 'pid'] })).toThrow("unknown namespace 'time'");
    expect(() => spawnInNamespaces({ ...base, argv: [] })).toThrow('argv must not be empty');
    expect(() => spawnInNamespaces({ ...base, uid: -1 })).toThrow('uid must be an id');
    expect(() => spawnInNamespaces({ ...base, file: 'a\0b' })).toThrow('must not hold a NUL byte');
    expect(() => spawnInNamespaces({ ...base, keepFds: [1] })).toThrow('fd must be an integer from 3');
    expect(() => spawnInNamespaces({ ...base, mounts: [{ kind: 'overlay' as 'bind', target: '/x' }] })).toThrow(
      'kind must be bind or proc',
    );
    expect(() => loadNative().nsSpawn(null as never)).toThrow('nsSpawn(spec: object)');
    expect(() => spawnInNamespaces({ ...base, init: true })).toThrow('init needs a new PID namespace');
    expect(() => loadNative().waitPid('1' as never)).toThrow('pid must be a number');
  });
});
