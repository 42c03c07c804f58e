/**
 * The fuzz harness on a planted target (written to a temp project): it finds
 * a crash one mutation away from a seed and saves the input, stops an input
 * that never returns, and holds known failures to exactly what is listed.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

const RUN = path.join(__dirname, '../src/run.js');

const PLANTED = `
export const maxLen = 64;
export function fuzz(d: Buffer): void {
  const head = d.toString('latin1', 0, 4);
  if (head === 'HANG') for (;;) {}
  if (head === 'BOOM') throw new TypeError('planted bug');
}
`;

const made: string[] = [];
afterAll(() => {
  for (const d of made) fs.rmSync(d, { recursive: true, force: true });
});

function project(files: Record<string, string>): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvmm-fuzz-harness-test-'));
  made.push(dir);
  for (const [f, text] of Object.entries({ 'fuzz/planted.fuzz.ts': PLANTED, ...files })) {
    fs.mkdirSync(path.dirname(path.join(dir, f)), { recursive: true });
    fs.writeFileSync(path.join(dir, f), text);
  }
  return dir;
}

function run(dir: string, env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, [RUN, dir], {
    env: { ...process.env, FUZZ_SECONDS: '2', FUZZ_TIMEOUT_MS: '1000', FUZZ_SEED: '1', FUZZ_CRASH_DIR: path.join(dir, 'crashes'), ...env },
    encoding: 'utf8',
  });
  return { status: r.status, out: r.stdout + r.stderr };
}

describe('fuzz harness', () => {
  it('finds a crash one bit away from a seed, saves the input and fails', () => {
    const dir = project({ 'fuzz/corpus/planted/seed': 'BOOL' });
    const { status, out } = run(dir, { FUZZ_SECONDS: '5' });
    expect(status).toBe(1);
    expect(out).toContain('CRASH (throw) TypeError: planted bug');
    const saved = fs.readdirSync(path.join(dir, 'crashes/planted'));
    expect(saved.length).toBeGreaterThan(0);
    expect(fs.readFileSync(path.join(dir, 'crashes/planted', saved[0]), 'latin1').slice(0, 4)).toBe('BOOM');
  });

  it('stops a regression input that never returns and reports a hang', () => {
    const dir = project({ 'fuzz/corpus/planted/seed': 'quiet', 'fuzz/regressions/planted/loops': 'HANG' });
    const { status, out } = run(dir);
    expect(status).toBe(1);
    expect(out).toContain('regression loops: FAILS (hang)');
  });

  it('passes with a listed known failure, and fails once it passes or fails another way', () => {
    const known = (kind: string) => JSON.stringify({ loops: { area: 'the planted bug', kind } });
    const listed = run(
      project({
        'fuzz/corpus/planted/seed': 'quiet',
        'fuzz/regressions/planted/loops': 'HANG',
        'fuzz/regressions/planted/known-failures.json': known('hang'),
      }),
    );
    expect(listed.out).toContain('regression loops: KNOWN FAILURE (hang');
    expect(listed.status).toBe(0);

    const strict = run(
      project({
        'fuzz/corpus/planted/seed': 'quiet',
        'fuzz/regressions/planted/loops': 'HANG',
        'fuzz/regressions/planted/known-failures.json': known('hang'),
      }),
      { FUZZ_KNOWN_FAILURES: 'fail' },
    );
    expect(strict.status).toBe(1);

    const fixed = run(
      project({
        'fuzz/corpus/planted/seed': 'quiet',
        'fuzz/regressions/planted/loops': 'fine',
        'fuzz/regressions/planted/known-failures.json': known('hang'),
      }),
    );
    expect(fixed.out).toContain('regression loops: NOW PASSES');
    expect(fixed.status).toBe(1);

    const other = run(
      project({
        'fuzz/corpus/planted/seed': 'quiet',
        'fuzz/regressions/planted/loops': 'BOOM',
        'fuzz/regressions/planted/known-failures.json': known('hang'),
      }),
    );
    expect(other.out).toContain('regression loops: FAILS (throw)');
    expect(other.status).toBe(1);
  });
});
