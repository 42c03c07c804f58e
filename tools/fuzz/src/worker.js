'use strict';
/**
 * The fuzzing loop, in a worker thread so that the parent (run.js) can stop it
 * when one input runs longer than the per-input limit or the heap outgrows its
 * limit. Before each execution the input is copied into the shared buffer, so
 * whatever kills the worker, the parent knows which input was running.
 *
 * Shared buffer: Int32 [0] executions, [1] running (1 while an input runs),
 * [2] input length; the input bytes from byte 16.
 */
const { isMainThread, parentPort: threadPort, workerData } = require('worker_threads');
const fs = require('fs');
const path = require('path');
const inspector = require('inspector');
const { Rng, mutate } = require('./mutate');

process.setSourceMapsEnabled(true);

// A worker thread shares memory with the parent; a child process (targets with native
// handles, whose faults can take the whole process down) writes the same layout to a file.
const child = isMainThread;
const wd = child ? JSON.parse(process.env.FUZZ_WORKER_DATA) : workerData;
const parentPort = child ? { postMessage: (m) => process.send(m) } : threadPort;
const shared = child ? new SharedArrayBuffer(16 + (1 << 20)) : wd.shared;
const hdr = new Int32Array(shared, 0, 4);
const bytes = new Uint8Array(shared, 16);
const stateFd = child ? fs.openSync(wd.stateFile, 'r+') : undefined;
function publish(len) {
  if (stateFd !== undefined) fs.writeSync(stateFd, new Uint8Array(shared, 0, 16 + len), 0, 16 + len, 0);
}
function publishHeader() {
  if (stateFd !== undefined) fs.writeSync(stateFd, new Uint8Array(shared, 0, 16), 0, 16, 0);
}

const target = require(wd.bundle);
if (typeof target.fuzz !== 'function') throw new Error(`${wd.bundle}: no exported fuzz(data) function`);
const maxLen = Math.min(target.maxLen ?? 4096, bytes.length);
const isExpected = typeof target.isExpected === 'function' ? target.isExpected : () => false;
const dict = (target.dictionary ?? []).map((t) => (typeof t === 'string' ? Buffer.from(t) : Buffer.from(t)));

// --- coverage ------------------------------------------------------------------
// V8 block coverage (binary: was the block run since the last take) of the
// bundled target. Taking it costs far more than one execution, so inputs run
// in batches that grow while they find nothing new; a batch that found new
// blocks is run again one input at a time to see which inputs found them.
let session;
let bundleUrl;
const features = new Set();
/** Every block start seen, by function start. */
const blocksOf = new Map();
function startCoverage() {
  if (!wd.coverage) return;
  session = new inspector.Session();
  session.connect();
  session.post('Profiler.enable');
  session.post('Profiler.startPreciseCoverage', { callCount: true, detailed: true });
  bundleUrl = require('url').pathToFileURL(wd.bundle).href;
}
/** The blocks run since the last call that are not in `features`. */
function takeCoverage() {
  const fresh = new Set();
  if (!session) return fresh;
  let result;
  session.post('Profiler.takePreciseCoverage', (err, r) => {
    result = r;
  });
  if (!result) return fresh;
  for (const s of result.result) {
    if (s.url !== bundleUrl && s.url !== wd.bundle) continue;
    for (const f of s.functions) {
      const [whole, ...inner] = f.ranges;
      if (!whole || whole.count === 0) continue;
      // V8 lists a block only where its count differs from the enclosing one:
      // a block is run unless a zero-count range since the last take encloses it.
      let blocks = blocksOf.get(whole.startOffset);
      if (!blocks) blocksOf.set(whole.startOffset, (blocks = new Set([whole.startOffset])));
      const zeros = [];
      for (const r of inner) {
        blocks.add(r.startOffset);
        if (r.count === 0) zeros.push(r);
      }
      for (const b of blocks) {
        if (features.has(b) || zeros.some((z) => z.startOffset <= b && b < z.endOffset)) continue;
        fresh.add(b);
      }
    }
  }
  return fresh;
}

// --- one execution ------------------------------------------------------------
async function execute(input) {
  bytes.set(input.subarray(0, bytes.length));
  Atomics.store(hdr, 2, input.length);
  Atomics.store(hdr, 1, 1);
  Atomics.add(hdr, 0, 1);
  publish(Math.min(input.length, bytes.length));
  try {
    const r = target.fuzz(Buffer.from(input));
    if (r && typeof r.then === 'function') await r;
    return undefined;
  } catch (e) {
    if (isExpected(e)) return undefined;
    return e;
  } finally {
    Atomics.store(hdr, 1, 0);
    publishHeader();
  }
}

function describe(e) {
  if (e instanceof Error) return { name: e.name, message: e.message, stack: e.stack ?? String(e) };
  return { name: typeof e, message: String(e), stack: `thrown non-Error: ${String(e)}` };
}

function readDir(dir) {
  if (!dir || !fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir)
    .filter((f) => !f.startsWith('.') && !f.endsWith('.json') && !f.endsWith('.md'))
    .sort()
    .map((f) => ({ name: f, data: new Uint8Array(fs.readFileSync(path.join(dir, f))) }));
}

async function replay() {
  const files = wd.files.slice(wd.skip).map((p) => ({ name: path.basename(p), data: new Uint8Array(fs.readFileSync(p)) }));
  for (const f of files) {
    parentPort.postMessage({ type: 'replay-start', name: f.name });
    const e = await execute(f.data);
    parentPort.postMessage({ type: 'replay-end', name: f.name, error: e === undefined ? undefined : describe(e) });
  }
  parentPort.postMessage({ type: 'done', execs: files.length });
}

function keep(input, fresh) {
  for (const k of fresh) features.add(k);
  corpus.push(new Uint8Array(input));
  parentPort.postMessage({ type: 'new', input: Buffer.from(input) });
}

const corpus = [];
async function fuzzLoop() {
  startCoverage();
  const rng = new Rng(wd.seed);
  for (const f of readDir(wd.corpusDir)) {
    const e = await execute(f.data);
    if (e !== undefined) {
      parentPort.postMessage({ type: 'crash', input: Buffer.from(f.data), error: describe(e), seed: f.name });
      return;
    }
    for (const k of takeCoverage()) features.add(k);
    corpus.push(f.data);
  }
  if (!corpus.length) corpus.push(new Uint8Array(0));
  // Structure-aware inputs from the target's fast-check arbitrary, if it has one.
  let generated = [];
  let fc;
  if (target.arbitrary) fc = require('fast-check');
  const deadline = Date.now() + wd.seconds * 1000;
  let execs = 0;
  let batch = [];
  let batchSize = 1;
  let lastReport = Date.now();
  while (Date.now() < deadline) {
    let input;
    if (fc && rng.chance(0.1)) {
      if (!generated.length) generated = fc.sample(target.arbitrary, { numRuns: 200, seed: rng.u32() | 0 });
      input = generated.pop();
    } else {
      const base = corpus[rng.below(corpus.length)];
      input = mutate(rng, base, maxLen, corpus[rng.below(corpus.length)], dict);
    }
    const e = await execute(input);
    execs++;
    if (e !== undefined) {
      parentPort.postMessage({ type: 'crash', input: Buffer.from(input), error: describe(e) });
      if (!wd.keepGoing) return;
    }
    if (session) {
      batch.push(input);
      if (batch.length >= batchSize) {
        const fresh = takeCoverage();
        if (fresh.size && batch.length === 1) {
          keep(batch[0], fresh);
        } else if (fresh.size) {
          // Which inputs of the batch found them (targets are deterministic).
          for (const b of batch) {
            if (!(await execute(b))) {
              const mine = takeCoverage();
              if (mine.size) keep(b, mine);
            }
          }
          for (const k of fresh) features.add(k);
        }
        batchSize = fresh.size ? 1 : Math.min(batchSize * 2, 64);
        batch = [];
      }
    }
    if (Date.now() - lastReport > 5000) {
      lastReport = Date.now();
      parentPort.postMessage({ type: 'stats', execs, corpus: corpus.length, features: features.size });
    }
  }
  parentPort.postMessage({ type: 'done', execs, corpus: corpus.length, features: features.size, coverage: !!session });
}

(wd.mode === 'replay' ? replay() : fuzzLoop())
  .catch((e) => {
    // A failure of the harness itself (not of one input): report with the input that was running.
    parentPort.postMessage({ type: 'harness-error', error: describe(e) });
  })
  // A target with native handles (fd watchers) closes them itself: ending a worker under live
  // native handles can take the process down. Then the parent ends the worker.
  .then(() => (typeof target.teardown === 'function' ? target.teardown() : undefined))
  .finally(() => parentPort.postMessage({ type: 'finished' }));
