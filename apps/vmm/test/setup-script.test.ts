// scripts/setup.sh as a user meets it: each step announces itself, a long step
// prints progress while it runs, and a failing build prints the compiler's own
// error and the command that reruns the step. The failure runs on a copy of
// the repository's setup files and guest kit with a syntax error injected.
// `npm link` (README: using vmm outside the checkout) puts `vmm` on the PATH.
import { spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { describeKvm } from '@tsvmm/kvm-native/testing';

const ROOT = path.resolve(__dirname, '../../..');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvmm-setup-test-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** The setup script, the workspace files Nx reads and the guest kit's sources, with node_modules linked. */
function copyForSetup(dest: string): void {
  fs.mkdirSync(dest, { recursive: true });
  // preserveTimestamps: package-lock.json must stay older than node_modules, or setup runs npm ci.
  for (const f of ['package.json', 'package-lock.json', 'nx.json', 'tsconfig.base.json'])
    fs.cpSync(path.join(ROOT, f), path.join(dest, f), { preserveTimestamps: true });
  fs.cpSync(path.join(ROOT, 'scripts'), path.join(dest, 'scripts'), { recursive: true });
  const kit = path.join(ROOT, 'tools/guest-kit');
  for (const f of ['src', 'scripts', 'Makefile', 'project.json', 'package.json'])
    fs.cpSync(path.join(kit, f), path.join(dest, 'tools/guest-kit', f), { recursive: true });
  fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(dest, 'node_modules'));
}

test('a syntax error in the guest kit: setup prints the compiler error and the rerun command, and stops', () => {
  const copy = path.join(tmp, 'repo');
  copyForSetup(copy);
  const lib = path.join(copy, 'tools/guest-kit/src/lib.c');
  const lines = fs.readFileSync(lib, 'utf8').split('\n');
  fs.appendFileSync(lib, 'int tsvmm_setup_test_broken = ;\n');
  const badLine = lines.length; // 1-based number of the appended line (the file ends with a newline)

  const r = spawnSync('bash', ['scripts/setup.sh'], {
    cwd: copy,
    encoding: 'utf8',
    env: { ...process.env, TMPDIR: tmp, NX_SKIP_NX_CACHE: 'true' },
    timeout: 180_000,
  });
  expect(r.status).not.toBe(0);
  // Steps announce themselves; the two that had nothing to do say why.
  expect(r.stdout).toContain('setup [1/5] apt packages:');
  expect(r.stdout).toContain('setup [2/5] npm dependencies: node_modules is up to date');
  expect(r.stdout).toContain('setup [3/5] building the guest kit');
  // The compiler's own message, with the file and line, and the source it points at.
  expect(r.stderr).toMatch(new RegExp(`src/lib\\.c:${badLine}:\\d+: error: `));
  expect(r.stderr).toContain('int tsvmm_setup_test_broken = ;');
  expect(r.stderr).toContain('setup [3/5] FAILED: building the guest kit');
  expect(r.stderr).toMatch(/rerun this step with:\n\s+NX_DAEMON=false npx nx run guest-kit:build/);
  expect(r.stderr).toMatch(/or the whole job with:\n\s+npm run setup/);
  // The full log is kept and holds the same error.
  const kept = /the full output is kept in (\S+)/.exec(r.stderr);
  expect(kept).not.toBeNull();
  expect(fs.readFileSync(kept![1], 'utf8')).toContain('int tsvmm_setup_test_broken = ;');
  // Setup stopped at the failure.
  expect(r.stdout).not.toContain('[4/5]');
  expect(r.stdout).not.toContain('setup: done');
});

/** Runs `script` in bash; once it printed a progress line, creates `flag` (the step's tool waits for it). */
function runUntilProgress(script: string, flag: string): Promise<{ code: number | null; stdout: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn('bash', ['-c', script], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, TMPDIR: tmp } });
    let stdout = '';
    p.stdout.on('data', (d) => {
      stdout += d;
      if (stdout.includes('lines of output') && !fs.existsSync(flag)) fs.writeFileSync(flag, '');
    });
    p.on('error', reject);
    p.on('close', (code) => resolve({ code, stdout }));
  });
}

test('a step that runs on prints progress lines with the last line of its output, then its time', async () => {
  const flag = path.join(tmp, 'progress-seen');
  // The step's tool prints one line, then waits until the test has seen a progress line.
  const script = [
    'set -e',
    `source ${JSON.stringify(path.join(ROOT, 'scripts/lib/run-step.sh'))}`,
    'STEP_TOTAL=1 STEP_PROGRESS_SECONDS=1',
    `run_step 1 "a long step" "rerun me" -- bash -c 'echo compiling part 7 of 9; while [ ! -e "$1" ]; do sleep 0.2; done; echo finished' step ${JSON.stringify(flag)}`,
    'echo after-the-step',
  ].join('\n');
  const out = await runUntilProgress(script, flag);
  expect(out.code).toBe(0);
  expect(out.stdout).toMatch(/^setup \[1\/1\] a long step$/m);
  expect(out.stdout).toMatch(/^setup \[1\/1\]   \.\.\. \d+ s, 1 lines of output; last: compiling part 7 of 9$/m);
  expect(out.stdout).toMatch(/^setup \[1\/1\]   done in \d+ s$/m);
  expect(out.stdout).toMatch(/after-the-step\n$/);
});

test('a step whose output so far is only blank lines (cmake-js prints some) keeps going under set -eo pipefail', async () => {
  const flag = path.join(tmp, 'blank-progress-seen');
  const script = [
    'set -euo pipefail', // as scripts/setup.sh
    `source ${JSON.stringify(path.join(ROOT, 'scripts/lib/run-step.sh'))}`,
    'STEP_TOTAL=1 STEP_PROGRESS_SECONDS=1',
    `run_step 1 "a quiet step" "rerun me" -- bash -c 'printf "\\n\\n"; while [ ! -e "$1" ]; do sleep 0.2; done; echo finished' step ${JSON.stringify(flag)}`,
    'echo after-the-step',
  ].join('\n');
  const out = await runUntilProgress(script, flag);
  expect(out.stdout).toMatch(/^setup \[1\/1\]   \.\.\. \d+ s, 2 lines of output$/m);
  expect(out.stdout).toMatch(/^setup \[1\/1\]   done in \d+ s$/m);
  expect(out.stdout).toMatch(/after-the-step\n$/);
  expect(out.code).toBe(0);
});

describeKvm('vmm outside the checkout', () => {
  test('after `npm link`, `vmm` on the PATH boots the guest kit from another directory', () => {
    const prefix = path.join(tmp, 'prefix');
    const link = spawnSync('npm', ['link', '--no-audit', '--no-fund'], {
      cwd: ROOT,
      encoding: 'utf8',
      env: { ...process.env, NPM_CONFIG_PREFIX: prefix },
    });
    expect(link.status).toBe(0);
    const elsewhere = path.join(tmp, 'elsewhere');
    fs.mkdirSync(elsewhere);
    // The kernel too lives outside the checkout.
    fs.copyFileSync(path.join(ROOT, 'tools/guest-kit/build/guest.elf'), path.join(elsewhere, 'guest.elf'));
    const env = { ...process.env, PATH: `${path.join(prefix, 'bin')}:${process.env.PATH ?? ''}` };
    const help = spawnSync('vmm', ['--help'], { cwd: elsewhere, encoding: 'utf8', env });
    expect(help.status).toBe(0);
    expect(help.stdout).toContain('vmm run');
    const r = spawnSync('vmm', ['run', '--kernel', 'guest.elf', '--memory', '64M', '--cmdline', 'test=pci-scan', '--serial', 'stdio'], {
      cwd: elsewhere,
      encoding: 'utf8',
      env,
      timeout: 60_000,
    });
    expect(r.stdout).toContain('pci: 00:00.0 vendor=0x8086 device=0x1237');
    expect(r.stdout).toContain('guest-kit: PASS test=pci-scan');
    expect(r.status).toBe(0);
  });
});
