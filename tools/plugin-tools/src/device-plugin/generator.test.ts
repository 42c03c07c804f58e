// The device-plugin generator, end to end in a temporary copy of the workspace
// (node_modules symlinked, so the real tree is never touched): `nx g` creates the
// plugin, Nx sees the new project, it type-checks and keeps the import rule, the
// VMM bundle picks it up by its package.json, its own Jest suite passes (unit
// tests and the guest-kit boot), and `vmm run` boots the guest kit with it.
import { execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { describeKvm } from '@tsvmm/kvm-native/testing';
import { checkPluginImports, formatViolation } from '../plugin-imports';
import devicePluginGenerator = require('./generator');

const ROOT = path.resolve(__dirname, '../../../..');
const NAME = 'echo-gen';
/** Child processes without colours (Nx sets FORCE_COLOR for its tasks), and any left stripped. */
const PLAIN_ENV = { ...process.env, FORCE_COLOR: '0', NX_DAEMON: 'false', NX_NO_CLOUD: 'true' };
// eslint-disable-next-line no-control-regex
const plain = (s: string) => s.replace(/\x1b\[[0-9;]*m/g, '');

/** A Tree over the real workspace that only records writes (for the generator's refusals). */
function recordingTree(root: string) {
  const written = new Map<string, string>();
  return {
    written,
    tree: {
      root,
      exists: (p: string) => written.has(p) || fs.existsSync(path.join(root, p)),
      children: (p: string) => fs.readdirSync(path.join(root, p)),
      read: (p: string) => (fs.existsSync(path.join(root, p)) ? fs.readFileSync(path.join(root, p), 'utf8') : null),
      write: (p: string, content: string) => void written.set(p, content),
    },
  };
}

/** Copies the files git knows of (tracked and untracked-but-not-ignored) plus the build outputs a boot needs. */
function copyWorkspace(to: string): void {
  const files = execFileSync('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], { cwd: ROOT, encoding: 'utf8' })
    .split('\0')
    .filter(Boolean);
  const outputs = ['libs/kvm-native/build/Release/kvm_native.node', 'tools/guest-kit/build/guest.elf'];
  for (const f of [...new Set([...files, ...outputs])]) {
    const from = path.join(ROOT, f);
    if (!fs.existsSync(from) || !fs.statSync(from).isFile()) continue; // deleted in the working tree
    fs.mkdirSync(path.dirname(path.join(to, f)), { recursive: true });
    fs.copyFileSync(from, path.join(to, f));
  }
  fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(to, 'node_modules'));
}

describe('device-plugin generator options', () => {
  it.each([
    [
      { name: 'Echo' },
      "device-plugin: the name 'Echo' must be lower-case letters, digits and '-', starting with a letter (it is the device TYPE too)",
    ],
    [{ name: 'virtio-blk' }, 'device-plugin: plugins/virtio-blk exists already'],
    [
      { name: 'echo', virtioId: 64 },
      'device-plugin: --virtioId=64 must be 1 to 63 (a modern virtio-pci device ID is 0x1040 + ID, at most 0x107f)',
    ],
  ])('refuses %j', async (opts, msg) => {
    const { tree, written } = recordingTree(ROOT);
    await expect(devicePluginGenerator(tree, opts)).rejects.toThrow(msg);
    expect(written.size).toBe(0);
  });

  it('refuses a name whose device type another plugin declares', async () => {
    const ws = fs.mkdtempSync(path.join(os.tmpdir(), 'gen-claimed-'));
    try {
      fs.mkdirSync(path.join(ws, 'plugins/storage'), { recursive: true });
      fs.writeFileSync(
        path.join(ws, 'plugins/storage/package.json'),
        JSON.stringify({ name: '@x/storage', vmmPlugin: { apiVersion: 1, deviceTypes: ['scsi-hd'] } }),
      );
      await expect(devicePluginGenerator(recordingTree(ws).tree, { name: 'scsi-hd' })).rejects.toThrow(
        "device type 'scsi-hd' is provided by @x/storage already",
      );
    } finally {
      fs.rmSync(ws, { recursive: true, force: true });
    }
  });

  it('writes the package files with the workspace API version and the chosen virtio ID', async () => {
    const { tree, written } = recordingTree(ROOT);
    await devicePluginGenerator(tree, { name: 'my-echo', virtioId: 60 });
    expect([...written.keys()].sort()).toEqual(
      [
        'README.md',
        'jest.config.js',
        'package.json',
        'project.json',
        'src/defs.ts',
        'src/device.test.ts',
        'src/device.ts',
        'src/index.ts',
        'test/guest.test.ts',
        'tsconfig.json',
      ].map((f) => `plugins/my-echo/${f}`),
    );
    expect(JSON.parse(written.get('plugins/my-echo/package.json')!)).toMatchObject({
      name: '@tsvmm/my-echo',
      vmmPlugin: { apiVersion: 1, deviceTypes: ['my-echo'] },
    });
    expect(written.get('plugins/my-echo/src/defs.ts')).toContain('export const VIRTIO_ID = 60;');
    expect(written.get('plugins/my-echo/src/index.ts')).toContain('export class MyEchoPci extends VirtioPciPluginDevice');
  });
});

describeKvm('device-plugin generator in a workspace copy', () => {
  const ws = fs.mkdtempSync(path.join(os.tmpdir(), 'gen-ws-'));
  const run = (cmd: string, args: string[], env: Record<string, string> = {}) => {
    const r = spawnSync(cmd, args, { cwd: ws, encoding: 'utf8', timeout: 110_000, env: { ...PLAIN_ENV, ...env } });
    if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}:\n${r.stdout}\n${r.stderr}`);
    return plain(r.stdout);
  };
  const bin = (name: string) => path.join(ROOT, 'node_modules/.bin', name);

  beforeAll(() => copyWorkspace(ws));
  afterAll(() => fs.rmSync(ws, { recursive: true, force: true }));

  it('nx g creates plugins/NAME, a project Nx knows with its test and typecheck targets', () => {
    const out = run(bin('nx'), ['g', '@tsvmm/plugin-tools:device-plugin', NAME, '--no-interactive']);
    expect(out).toContain(`CREATE plugins/${NAME}/package.json`);
    const project = JSON.parse(run(bin('nx'), ['show', 'project', NAME, '--json']));
    expect(Object.keys(project.targets).sort()).toEqual(expect.arrayContaining(['test', 'typecheck']));
    expect(project.implicitDependencies).toEqual(['vmm', 'guest-kit']);
    expect(project.tags).toContain('scope:plugin');
  });

  it('type-checks and keeps the plugin import rule', () => {
    run(bin('tsc'), ['-p', `plugins/${NAME}/tsconfig.json`, '--noEmit']);
    expect(checkPluginImports(ws, [path.join(ws, 'plugins', NAME)]).map(formatViolation)).toEqual([]);
  });

  it('is bundled into the VMM by discovery, and its own suite passes (unit tests and the guest-kit boot)', () => {
    expect(run(process.execPath, ['apps/vmm/scripts/bundle.js'])).toContain(NAME);
    const out = run(process.execPath, ['apps/vmm/dist/main.js', 'plugins']);
    expect(out).toMatch(new RegExp(`@tsvmm/${NAME} 0\\.1\\.0 {2}plugin API 1 {2}built in\\n {2}${NAME} +${NAME}: a virtio device`));
    const jest = spawnSync(
      process.execPath,
      [path.join(ROOT, 'node_modules/jest/bin/jest.js'), '--config', `plugins/${NAME}/jest.config.js`, '--ci'],
      {
        cwd: ws,
        encoding: 'utf8',
        timeout: 110_000,
        env: PLAIN_ENV,
      },
    );
    if (jest.status !== 0) throw new Error(`the generated suite failed:\n${jest.stdout}\n${jest.stderr}`);
    expect(plain(jest.stderr)).toMatch(/Tests: +5 passed, 5 total/);
  });

  it('vmm run boots the guest kit with the new device (test=pci-scan sees virtio 0x107a, class other)', () => {
    const out = run(process.execPath, [
      'apps/vmm/dist/main.js',
      'run',
      '--kernel',
      'tools/guest-kit/build/guest.elf',
      '--memory',
      '64M',
      '--cmdline',
      'test=pci-scan',
      '--device',
      `${NAME},id=x`,
    ]);
    expect(out).toMatch(/pci: 00:\d\d\.0 vendor=0x1af4 device=0x107a class=0xff0000/);
    expect(out).toContain('guest-kit: PASS test=pci-scan');
  });
});
