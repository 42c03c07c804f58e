// A slim VMM: a bundle built with one plugin (scripts/bundle.js --plugins=virtio-blk)
// into a temp directory boots the guest kit with that device, explains that a
// left-out plugin's device type is not in this build, and loads a compiled
// plugin package at run time (VMM_PLUGIN_PATH) while refusing one built for
// another plugin API before running any of its code.
import { execFileSync, spawn } from 'child_process';
import * as esbuild from 'esbuild';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { describeKvm } from '@tsvmm/kvm-native/testing';
import { PLUGIN_API_VERSION } from '@tsvmm/pci';
import { GUEST_ELF, requireGuestKit, ROOT } from './guest-kit';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmm-slim-'));
const OUT = path.join(tmp, 'vmm-blk');

function vmm(args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [path.join(OUT, 'main.js'), ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...env },
    });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    const t = setTimeout(() => p.kill('SIGKILL'), 30_000);
    p.on('error', reject);
    p.on('close', (code) => {
      clearTimeout(t);
      resolve({ code, stdout, stderr });
    });
  });
}

/** A compiled run-time plugin: a virtio device (id 58, one queue that completes chains empty) written in plain JS. */
function runtimePlugin(dir: string, apiVersion: number): string {
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(
    path.join(dir, 'package.json'),
    JSON.stringify({
      name: path.basename(dir),
      version: '1.0.0',
      main: 'index.js',
      vmmPlugin: { apiVersion, deviceTypes: ['rt-null'] },
    }),
  );
  fs.writeFileSync(
    path.join(dir, 'index.js'),
    `
if (${apiVersion} !== ${PLUGIN_API_VERSION}) throw new Error('code of an incompatible plugin ran');
const { PLUGIN_API_VERSION, VirtioPciDevice, VirtioPciPluginDevice } = require('@tsvmm/pci');
const { VirtioDevice } = require('@tsvmm/virtio-core');
class NullDevice extends VirtioDevice {
  constructor(memory, id) { super(memory, { id, deviceId: 58, numQueues: 1, queueMaxSize: 64, features: 0n }); }
  readConfig() { return 0; }
  processQueue(q) { let c; while ((c = this.popChain(q))) this.pushUsed(q, c.head, 0); this.signalUsed(q); }
}
class NullPci extends VirtioPciPluginDevice { get type() { return 'rt-null'; } }
exports.plugin = {
  apiVersion: PLUGIN_API_VERSION, name: '${path.basename(dir)}', version: '1.0.0',
  deviceTypes: [{
    type: 'rt-null', description: 'a virtio device from a run-time package', properties: {},
    create: (ctx, id) => new NullPci(id, new VirtioPciDevice(new NullDevice(ctx.memory, id), ctx, { classCode: 0xff0000 })),
  }],
};
`,
  );
  return dir;
}

describeKvm('a slim VMM bundle (one plugin)', () => {
  beforeAll(() => {
    requireGuestKit();
    execFileSync(process.execPath, [path.join(ROOT, 'apps/vmm/scripts/bundle.js'), '--plugins=virtio-blk', `--outdir=${OUT}`], {
      stdio: 'pipe',
    });
  });
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('is self-contained and holds only its plugin', () => {
    expect(
      fs
        .readdirSync(OUT)
        .filter((f) => !f.endsWith('.map'))
        .sort(),
    ).toEqual(['iothread.js', 'kvm_native.node', 'main.js']);
    const slim = fs.readFileSync(path.join(OUT, 'main.js'), 'utf8');
    // The iothread worker holds the planes of the bundled plugins only.
    const worker = fs.readFileSync(path.join(OUT, 'iothread.js'), 'utf8');
    expect(worker).toContain('BlkWorkerPlane');
    expect(worker).not.toContain('VirtioScsiDevice');
    expect(slim).toContain('VirtioBlkDevice');
    expect(slim).not.toContain('VirtioNetDevice');
  });

  it('lists what it was built with', async () => {
    const r = await vmm(['plugins', '--json']);
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report.builtWith).toEqual(['virtio-blk']);
    expect(report.plugins).toEqual([
      expect.objectContaining({ name: '@tsvmm/virtio-blk', origin: 'built-in', apiVersion: PLUGIN_API_VERSION }),
    ]);
    expect(report.leftOut).toEqual(
      expect.arrayContaining([expect.objectContaining({ name: '@tsvmm/virtio-net', deviceTypes: ['virtio-net'] })]),
    );
  });

  it('boots the guest kit with its device', async () => {
    const img = path.join(tmp, 'disk.img');
    fs.writeFileSync(img, Buffer.alloc(64 * 512));
    const r = await vmm([
      'run',
      '--kernel',
      GUEST_ELF,
      '--memory',
      '64M',
      '--cmdline',
      'test=pci-scan',
      '--device',
      `virtio-blk,id=d0,file=${img}`,
    ]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/pci: 00:\d\d\.0 vendor=0x1af4 device=0x1042 class=0x018000/);
    expect(r.stdout).toContain('guest-kit: PASS test=pci-scan');
  });

  it('says a left-out plugin is not available in this build', async () => {
    const r = await vmm(['run', '--kernel', GUEST_ELF, '--device', 'virtio-net,id=n0,tap=vmmt0']);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(
      "vmm: --device virtio-net: device type 'virtio-net' is not available in this build (built with: virtio-blk); it comes from plugin @tsvmm/virtio-net\n",
    );
  });

  it('loads a compiled plugin package at run time from VMM_PLUGIN_PATH and boots with its device', async () => {
    const env = { VMM_PLUGIN_PATH: runtimePlugin(path.join(tmp, 'rt', 'vmm-rt-null'), PLUGIN_API_VERSION) };
    const list = await vmm(['plugins'], env);
    expect(list.code).toBe(0);
    expect(list.stdout).toMatch(/vmm-rt-null 1\.0\.0 {2}plugin API 1 {2}loaded at run time/);
    const r = await vmm(['run', '--kernel', GUEST_ELF, '--memory', '64M', '--cmdline', 'test=pci-scan', '--device', 'rt-null,id=x'], env);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/pci: 00:\d\d\.0 vendor=0x1af4 device=0x107a class=0xff0000/);
  });

  it('takes a left-out workspace plugin compiled into a run-time package (esbuild, host libraries external)', async () => {
    const dir = path.join(tmp, 'rt-net', 'virtio-net');
    esbuild.buildSync({
      entryPoints: [path.join(ROOT, 'plugins/virtio-net/src/index.ts')],
      bundle: true,
      platform: 'node',
      target: 'node20',
      format: 'cjs',
      external: ['@tsvmm/pci', '@tsvmm/virtio-core', '@tsvmm/kvm-native'],
      tsconfig: path.join(ROOT, 'tsconfig.base.json'),
      outfile: path.join(dir, 'index.js'),
      logLevel: 'warning',
    });
    const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'plugins/virtio-net/package.json'), 'utf8'));
    fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ ...pkg, main: 'index.js' }));
    const r = await vmm(['plugins', '--json'], { VMM_PLUGIN_PATH: path.dirname(dir) });
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report.plugins.map((p: { name: string; origin: string }) => `${p.name} ${p.origin}`)).toEqual([
      '@tsvmm/virtio-blk built-in',
      '@tsvmm/virtio-net run-time',
    ]);
    expect(report.leftOut.map((p: { name: string }) => p.name)).not.toContain('@tsvmm/virtio-net');
  });

  it('refuses a run-time package built for another plugin API before loading it', async () => {
    const dir = fs.realpathSync(runtimePlugin(path.join(tmp, 'rt-old', 'node_modules', 'vmm-rt-future'), PLUGIN_API_VERSION + 1));
    const env = { VMM_PLUGIN_PATH: path.dirname(dir) };
    const msg = `plugin package vmm-rt-future@1.0.0 (${dir}): built for plugin API ${PLUGIN_API_VERSION + 1}; this VMM speaks plugin API ${PLUGIN_API_VERSION}`;
    const r = await vmm(['run', '--kernel', GUEST_ELF, '--cmdline', 'test=pci-scan'], env);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`vmm: ${msg}\n`);
    const list = await vmm(['plugins'], env);
    expect(list.code).toBe(1);
    expect(list.stdout).toContain(`Refused:\n  ${msg}`);
  });
});
