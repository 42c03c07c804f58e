#!/usr/bin/env node
'use strict';
/**
 * Runs a package's fuzz targets (<project>/fuzz/<name>.fuzz.ts): replays its
 * regression inputs, then mutates its seed corpus for FUZZ_SECONDS, with a
 * per-input time limit and a heap limit. See docs/fuzzing.md.
 *
 *   node tools/fuzz/src/run.js <project-dir> [target ...] [--replay FILE ...]
 */
const fs = require('fs');
const path = require('path');
const crypto = require('crypto');
const { Worker } = require('worker_threads');

const WS = path.resolve(__dirname, '../../..');
const env = process.env;
const SECONDS = Number(env.FUZZ_SECONDS ?? 15);
const TIMEOUT_MS = Number(env.FUZZ_TIMEOUT_MS ?? 3000);
const MAX_HEAP_MB = Number(env.FUZZ_MAX_HEAP_MB ?? 1024);
const SEED = env.FUZZ_SEED !== undefined ? Number(env.FUZZ_SEED) : (Date.now() ^ (process.pid << 8)) >>> 0;
const KEEP_GOING = env.FUZZ_KEEP_GOING === '1';
const KNOWN_FAIL = env.FUZZ_KNOWN_FAILURES === 'fail';
const COVERAGE = env.FUZZ_COVERAGE !== '0';
const GROW_CORPUS = env.FUZZ_GROW_CORPUS === '1';
const MAX_INPUT = 1 << 20;
// Targets bundled into dist/fuzz/ find the native addon (loaded lazily, if at all) here.
const ADDON = path.join(WS, 'libs/kvm-native/build/Release/kvm_native.node');
if (!env.VMM_KVM_NATIVE && fs.existsSync(ADDON)) env.VMM_KVM_NATIVE = ADDON;

function usage() {
  console.error('usage: run.js <project-dir> [target ...] [--replay FILE ...]');
  process.exit(2);
}

const argv = process.argv.slice(2);
if (!argv.length) usage();
const projectDir = path.resolve(WS, argv[0]);
const rest = argv.slice(1);
const ri = rest.indexOf('--replay');
const wanted = ri >= 0 ? rest.slice(0, ri) : rest;
const replayFiles = ri >= 0 ? rest.slice(ri + 1).map((f) => path.resolve(f)) : undefined;
const project = path.basename(projectDir);
const fuzzDir = path.join(projectDir, 'fuzz');
const crashRoot = env.FUZZ_CRASH_DIR ? path.resolve(env.FUZZ_CRASH_DIR) : path.join(WS, 'dist/fuzz-crashes', project);

const targets = fs
  .readdirSync(fuzzDir)
  .filter((f) => f.endsWith('.fuzz.ts'))
  .map((f) => f.slice(0, -'.fuzz.ts'.length))
  .filter((n) => !wanted.length || wanted.includes(n))
  .sort();
if (!targets.length) {
  console.error(`${project}: no fuzz targets${wanted.length ? ` named ${wanted.join(', ')}` : ''} in ${fuzzDir}`);
  process.exit(2);
}
if (replayFiles && targets.length !== 1) {
  console.error('--replay needs exactly one target');
  process.exit(2);
}

function bundle(name) {
  const out = path.join(WS, 'dist/fuzz', project, `${name}.js`);
  require('esbuild').buildSync({
    entryPoints: [path.join(fuzzDir, `${name}.fuzz.ts`)],
    outfile: out,
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'cjs',
    sourcemap: 'inline',
    logLevel: 'error',
    tsconfig: path.join(WS, 'tsconfig.base.json'),
    // The harness brings its own copy; native addons cannot be bundled.
    external: ['fast-check', '*.node'],
  });
  return out;
}

/** A known failure: a committed regression input that another change is expected to fix. */
function loadKnown(name) {
  const f = path.join(fuzzDir, 'regressions', name, 'known-failures.json');
  if (!fs.existsSync(f)) return {};
  return JSON.parse(fs.readFileSync(f, 'utf8'));
}

function signature(kind, error) {
  return kind === 'throw' || kind === 'uncaught' ? `${kind}: ${error.name}: ${error.message}` : kind;
}

/** Entry: { area, kind: 'throw' | 'hang' | 'oom' | 'uncaught', match?: regex on "kind: Name: message", frame?: regex on the stack }. */
function knownMatches(k, kind, error) {
  return (
    k.kind === kind &&
    (!k.match || new RegExp(k.match).test(signature(kind, error))) &&
    (!k.frame || new RegExp(k.frame).test(error.stack ?? ''))
  );
}

function matchesKnown(known, kind, error) {
  for (const [file, k] of Object.entries(known)) {
    if (knownMatches(k, kind, error)) return file;
  }
  return undefined;
}

function hex(buf, limit = 256) {
  const h = Buffer.from(buf.subarray(0, limit))
    .toString('hex')
    .replace(/(.{64})/g, '$1\n      ');
  return h + (buf.length > limit ? ` ... (${buf.length} bytes)` : '');
}

/**
 * Runs one worker to its end, or until it crashes, hangs or outgrows its heap.
 * Calls onMessage for each message; resolves with { kind, error, input } for a
 * fatal failure (hang, oom, uncaught) or undefined.
 */
function runWorker(bundlePath, data, onMessage) {
  // However the target behaves, the worker ends by then (its own budget, plus slack for the last inputs).
  const hardDeadline = Date.now() + ((data.seconds ?? 0) + 60) * 1000 + (data.files ? data.files.length * TIMEOUT_MS : 0);
  const shared = new SharedArrayBuffer(16 + MAX_INPUT);
  const hdr = new Int32Array(shared, 0, 4);
  const bytes = new Uint8Array(shared, 16);
  const current = () => Buffer.from(bytes.subarray(0, Math.min(Atomics.load(hdr, 2), MAX_INPUT)));
  const processIsolation = data.isolation === 'process';
  let stateFile;
  let stateFd;
  if (processIsolation) {
    stateFile = path.join(require('os').tmpdir(), `tsvmm-fuzz-state-${process.pid}-${crypto.randomBytes(4).toString('hex')}`);
    fs.writeFileSync(stateFile, Buffer.alloc(16));
    stateFd = fs.openSync(stateFile, 'r');
  }
  /** The child's header and input, from its state file. */
  const sync = () => {
    if (stateFd === undefined) return;
    const n = fs.readSync(stateFd, new Uint8Array(shared, 0, 16 + MAX_INPUT), 0, 16 + MAX_INPUT, 0);
    if (n < 16) new Uint8Array(shared, 0, 16).fill(0);
  };
  return new Promise((resolve) => {
    let w;
    let stderr = '';
    if (processIsolation) {
      w = require('child_process').fork(path.join(__dirname, 'worker.js'), [], {
        env: { ...process.env, FUZZ_WORKER_DATA: JSON.stringify({ ...data, bundle: bundlePath, stateFile }) },
        execArgv: ['--enable-source-maps', `--max-old-space-size=${MAX_HEAP_MB}`],
        stdio: ['ignore', 'inherit', 'pipe', 'ipc'],
      });
      w.stderr.on('data', (d) => (stderr += d).length > 65536 && (stderr = stderr.slice(-65536)));
      w.terminate = () => w.kill('SIGKILL');
    } else {
      w = new Worker(path.join(__dirname, 'worker.js'), {
        workerData: { ...data, bundle: bundlePath, shared },
        resourceLimits: { maxOldGenerationSizeMb: MAX_HEAP_MB },
        stdout: false,
        stderr: false,
      });
    }
    let fatal;
    let lastCount = -1;
    let lastChange = Date.now();
    const watchdog = setInterval(() => {
      sync();
      const count = Atomics.load(hdr, 0);
      if (count !== lastCount) {
        lastCount = count;
        lastChange = Date.now();
      } else if (Atomics.load(hdr, 1) === 1 && Date.now() - lastChange > TIMEOUT_MS && !fatal) {
        fatal = {
          kind: 'hang',
          error: { name: 'Timeout', message: `one input ran longer than ${TIMEOUT_MS} ms`, stack: '' },
          input: current(),
        };
        w.terminate();
      }
      if (Date.now() > hardDeadline && !fatal) {
        fatal = {
          kind: 'hang',
          error: {
            name: 'Timeout',
            message: 'the worker did not finish (between inputs: a timer or handle the target left running?)',
            stack: '',
          },
          input: current(),
        };
        w.terminate();
      }
    }, 50);
    let finished = false;
    w.on('message', (m) => {
      if (m.type === 'input') m.input = Buffer.from(m.input);
      if (m.type === 'finished') {
        finished = true;
        void w.terminate();
      } else onMessage(m);
    });
    w.on('error', (e) => {
      if (fatal) return;
      const oom = e && e.code === 'ERR_WORKER_OUT_OF_MEMORY';
      fatal = {
        kind: oom ? 'oom' : 'uncaught',
        error: {
          name: e?.name ?? 'Error',
          message: oom ? `heap grew beyond ${MAX_HEAP_MB} MiB` : (e?.message ?? String(e)),
          stack: e?.stack ?? String(e),
        },
        input: current(),
      };
    });
    w.on('exit', (code, signal) => {
      clearInterval(watchdog);
      sync();
      if (processIsolation) {
        fs.closeSync(stateFd);
        fs.rmSync(stateFile, { force: true });
        // Not ended by us: the child died (a native abort or fault, or a JavaScript error outside any input).
        if (!fatal && !finished) {
          const why = stderr.trim().split('\n').slice(-6).join('\n');
          fatal = {
            kind: 'uncaught',
            error: {
              name: 'ProcessExit',
              message: `the target process died (${signal ?? `exit status ${code}`}): ${why.split('\n').pop() ?? ''}`,
              stack: why,
            },
            input: current(),
          };
        }
      }
      resolve({ fatal, execs: Atomics.load(hdr, 0) });
    });
  });
}

function saveCrash(name, input) {
  const dir = path.join(crashRoot, name);
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `crash-${crypto.createHash('sha1').update(input).digest('hex').slice(0, 12)}`);
  fs.writeFileSync(file, input);
  return file;
}

function reportCrash(name, kind, error, input) {
  const file = saveCrash(name, input);
  console.log(`\n==== ${project}/${name}: CRASH (${kind}) ${error.name}: ${error.message}`);
  if (error.stack)
    console.log(
      error.stack
        .split('\n')
        .slice(0, 14)
        .map((l) => `    ${l}`)
        .join('\n'),
    );
  console.log(`    input (${input.length} bytes) saved to ${path.relative(WS, file)}`);
  console.log(`    hex: ${hex(input)}`);
  console.log(`    replay: node tools/fuzz/src/run.js ${path.relative(WS, projectDir)} ${name} --replay ${path.relative(WS, file)}`);
  console.log(
    `    keep as a regression input: cp ${path.relative(WS, file)} ${path.relative(WS, path.join(fuzzDir, 'regressions', name))}/\n`,
  );
}

/** Replays files; returns the number of failures (known ones count only with FUZZ_KNOWN_FAILURES=fail). */
async function replayPhase(name, bundlePath, files, known, isolation) {
  let failures = 0;
  let done = 0;
  const outcome = new Map();
  while (done < files.length) {
    let running;
    const { fatal } = await runWorker(bundlePath, { mode: 'replay', files, skip: done, isolation }, (m) => {
      if (m.type === 'replay-start') running = m.name;
      if (m.type === 'replay-end') {
        outcome.set(m.name, m.error ? { kind: 'throw', error: m.error } : null);
        done++;
        running = undefined;
      }
      if (m.type === 'harness-error') console.log(`${project}/${name}: harness error: ${m.error.stack}`);
    });
    if (fatal) {
      outcome.set(running ?? '?', { kind: fatal.kind, error: fatal.error });
      done++;
    } else if (done < files.length) {
      failures++;
      console.log(`${project}/${name}: the replay worker stopped early`);
      break;
    }
  }
  for (const f of files) {
    const base = path.basename(f);
    const o = outcome.get(base);
    const k = known[base];
    if (!o && !k) {
      console.log(`${project}/${name}: regression ${base}: ok`);
    } else if (!o && k) {
      failures++;
      console.log(
        `${project}/${name}: regression ${base}: NOW PASSES; it was a known failure (${k.area}): remove it from known-failures.json`,
      );
    } else if (o && k && knownMatches(k, o.kind, o.error)) {
      if (KNOWN_FAIL) failures++;
      console.log(
        `${project}/${name}: regression ${base}: KNOWN FAILURE (${o.kind}: ${o.error.name}: ${o.error.message}); to be fixed by ${k.area}${KNOWN_FAIL ? '' : ' (FUZZ_KNOWN_FAILURES=fail makes this fail the run)'}`,
      );
    } else {
      failures++;
      console.log(`${project}/${name}: regression ${base}: FAILS (${o.kind})`);
      if (o.error.stack)
        console.log(
          o.error.stack
            .split('\n')
            .slice(0, 14)
            .map((l) => `    ${l}`)
            .join('\n'),
        );
    }
  }
  return failures;
}

async function fuzzPhase(name, bundlePath, known, isolation) {
  const corpusDir = path.join(fuzzDir, 'corpus', name);
  const deadline = Date.now() + SECONDS * 1000;
  let execs = 0;
  let last;
  let failures = 0;
  let knownHits = 0;
  const seen = new Set();
  let seed = SEED;
  while (Date.now() < deadline) {
    const seconds = Math.max(1, Math.round((deadline - Date.now()) / 1000));
    let crashed = false;
    const { fatal, execs: n } = await runWorker(
      bundlePath,
      { mode: 'fuzz', corpusDir, seconds, seed, keepGoing: true, coverage: COVERAGE, isolation },
      (m) => {
        if (m.type === 'done' || m.type === 'stats') last = m;
        if (m.type === 'new' && GROW_CORPUS) {
          const buf = Buffer.from(m.input);
          fs.writeFileSync(path.join(corpusDir, `grown-${crypto.createHash('sha1').update(buf).digest('hex').slice(0, 12)}`), buf);
        }
        if (m.type === 'crash') {
          const buf = Buffer.from(m.input);
          const k = matchesKnown(known, 'throw', m.error);
          if (m.seed) console.log(`${project}/${name}: seed ${m.seed} fails`);
          if (k && !KNOWN_FAIL) {
            knownHits++;
            return;
          }
          const sig = `${m.error.name}: ${m.error.message}`.replace(/\d+/g, 'N');
          if (!seen.has(sig)) {
            seen.add(sig);
            reportCrash(name, 'throw', m.error, buf);
          }
          failures++;
          crashed = true;
        }
        if (m.type === 'harness-error') {
          failures++;
          console.log(`${project}/${name}: harness error: ${m.error.stack}`);
        }
      },
    );
    seed = (seed * 1103515245 + 12345) >>> 0;
    execs += n;
    if (fatal) {
      const k = matchesKnown(known, fatal.kind, fatal.error);
      if (k && !KNOWN_FAIL) knownHits++;
      else {
        failures++;
        reportCrash(name, fatal.kind, fatal.error, fatal.input);
        if (!KEEP_GOING) break;
      }
      continue;
    }
    if (crashed && !KEEP_GOING) break;
    if (last && last.type === 'done') break;
  }
  const rate = execs / SECONDS;
  const cov =
    last && last.coverage !== false && last.features !== undefined
      ? `, coverage ${last.features} block features, corpus ${last.corpus}`
      : '';
  console.log(
    `${project}/${name}: ${execs} executions in ${SECONDS} s (${rate.toFixed(0)}/s)${cov}, seed ${SEED}${knownHits ? `, ${knownHits} inputs hit known failures` : ''}, ${failures ? `${failures} FAILURES` : 'no new crash'}`,
  );
  return failures;
}

async function main() {
  let failures = 0;
  for (const name of targets) {
    const t0 = Date.now();
    const bundlePath = bundle(name);
    // Sockets and files the target makes go here (FUZZ_TMPDIR), removed after the target even if its process died.
    const tmp = fs.mkdtempSync(path.join(require('os').tmpdir(), `tsvmm-fuzz-${project}-${name}-`));
    process.env.FUZZ_TMPDIR = tmp;
    try {
      // A target that drives native fd watchers runs in a child process: a native fault there must not end this one.
      const isolation = /^export const isolation = 'process'/m.test(fs.readFileSync(path.join(fuzzDir, `${name}.fuzz.ts`), 'utf8'))
        ? 'process'
        : 'thread';
      const known = loadKnown(name);
      if (replayFiles) {
        failures += await replayPhase(name, bundlePath, replayFiles, {}, isolation);
        continue;
      }
      const regDir = path.join(fuzzDir, 'regressions', name);
      const regs = fs.existsSync(regDir)
        ? fs
            .readdirSync(regDir)
            .filter((f) => !f.startsWith('.') && !f.endsWith('.json') && !f.endsWith('.md'))
            .sort()
            .map((f) => path.join(regDir, f))
        : [];
      for (const k of Object.keys(known))
        if (!regs.some((r) => path.basename(r) === k)) throw new Error(`${regDir}/known-failures.json names ${k}, which is not there`);
      if (regs.length) failures += await replayPhase(name, bundlePath, regs, known, isolation);
      failures += await fuzzPhase(name, bundlePath, known, isolation);
      console.log(`${project}/${name}: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  }
  if (failures) {
    console.log(`${project}: ${failures} fuzz failure(s)`);
    process.exit(1);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
