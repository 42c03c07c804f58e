#!/usr/bin/env node
/*
 * Exit-path benchmark: what one userspace I/O exit costs in our VMM (KVM_RUN on
 * a native vCPU thread, hop to JS, device dispatch, hop back) compared with a
 * minimal single-threaded C KVM_RUN loop (tools/bench/c/exit-loop.c) booting
 * the same guest the same way.
 *
 * The guest (tools/guest-kit, test=exit-bench count=N) does N `outl` to port
 * 0x4030 and then exits through port 0xf4. Each runner is timed end to end for
 * two counts; per-exit cost = (median t(N2) - median t(N1)) / (N2 - N1), which
 * cancels process start, KVM set-up and guest boot.
 *
 *   node tools/bench/exit-bench.js [--n1 20000] [--n2 220000] [--reps 3]
 *                                  [--first-reps 5] [--pin CPULIST] [--out FILE.json]
 *
 * Results: a markdown table on stdout, JSON in tools/bench/results/exit-bench.json.
 */
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');
const {
  ROOT,
  BENCH_DIR,
  GUEST_ELF,
  GUEST_ELF_REL,
  VMM_BIN_REL,
  VMM_BUNDLE,
  createBench,
  sha256,
  isStale,
  compileC,
  pinned: pinnedOn,
  describe,
  SIGBUS_NOTE,
  median,
  round,
  fmt,
  fmtInt,
  gitHead,
  jsonHeader,
  loadLine,
  pinnedOut,
} = require('./lib/common');

const C_SRC = path.join(BENCH_DIR, 'c/exit-loop.c');
const C_BIN = path.join(BENCH_DIR, 'build/exit-loop');
const DEFAULT_OUT = path.join(BENCH_DIR, 'results/exit-bench.json');

const USAGE = `usage: node tools/bench/exit-bench.js [options]
  --n1 N          smaller exit count (default 20000)
  --n2 N          larger exit count (default 220000)
  --reps N        timed runs per runner and count (default 3)
  --first-reps N  runs for the time-to-first-serial-byte figure (default 5)
  --pin CPULIST   run every child under \`taskset -c CPULIST\` (e.g. 0): all threads
                  of the VMM share that CPU; JSON goes to exit-bench-pin<CPULIST>.json
  --out FILE      JSON results path (default tools/bench/results/exit-bench.json)
  --help`;

const { fail, usageError, parseFlags, arg, checkPrerequisites, checkTaskset, runProcess, writeJson } = createBench('exit-bench', USAGE);

function parseArgs(argv) {
  const opts = { n1: 20000, n2: 220000, reps: 3, firstReps: 5, out: undefined, pin: undefined };
  const intFlags = { '--n1': 'n1', '--n2': 'n2', '--reps': 'reps', '--first-reps': 'firstReps' };
  parseFlags(argv, {
    valued: [...Object.keys(intFlags), '--out', '--pin'],
    onFlag: (flag, value) => {
      if (flag === '--out') opts.out = path.resolve(value);
      else if (flag === '--pin') opts.pin = arg.pin(value);
      else opts[intFlags[flag]] = arg.int(flag, value);
    },
  });
  if (opts.n2 <= opts.n1) usageError('--n2 must be larger than --n1');
  if (opts.n2 > 0xffffffff) usageError('--n2 must fit in 32 bits (the guest counter is u32)');
  if (opts.reps < 1 || opts.firstReps < 1) usageError('--reps and --first-reps must be at least 1');
  if (opts.out === undefined) opts.out = opts.pin === undefined ? DEFAULT_OUT : pinnedOut(DEFAULT_OUT, 'exit-bench', opts.pin);
  return opts;
}

/* ---------------- preparation ---------------- */

function buildCLoop() {
  if (!isStale(C_BIN, C_SRC)) return false;
  process.stderr.write(`exit-bench: building ${path.relative(ROOT, C_BIN)}\n`);
  compileC(C_SRC, C_BIN);
  return true;
}

/* ---------------- runners ---------------- */

function guestCmdline(count) {
  return `test=exit-bench count=${count}`;
}

const RUNNERS = [
  {
    id: 'vmm',
    label: 'our VMM (TS, vCPU thread -> JS)',
    timed: (n) => [process.execPath, [VMM_BIN_REL, 'run', '--kernel', GUEST_ELF_REL, '--cmdline', guestCmdline(n), '--serial', 'none']],
    firstByte: () => [process.execPath, [VMM_BIN_REL, 'run', '--kernel', GUEST_ELF_REL, '--cmdline', guestCmdline(0), '--serial', 'stdio']],
    check: () => undefined, // --serial none: the exit code (0 = guest PASS) is all we can see
  },
  {
    id: 'c',
    label: 'C KVM_RUN loop (exit-loop.c)',
    timed: (n) => [C_BIN, [GUEST_ELF_REL, guestCmdline(n)]],
    firstByte: () => [C_BIN, ['-v', GUEST_ELF_REL, guestCmdline(0)]],
    check: (n, stderr) => {
      const m = /exits=(\d+) port4030=(\d+) exitcode=(\d+)/.exec(stderr);
      if (!m) return 'no "exits=... port4030=..." line on stderr';
      if (Number(m[2]) !== n) return `guest wrote port 0x4030 ${m[2]} times, expected ${n}`;
      return undefined;
    },
  },
];

/* With --pin, every child runs under taskset so all its threads share the given CPUs. */
let pinList;
const pinned = (cmdArgs) => pinnedOn(cmdArgs, pinList);

/*
 * CPU time (user + system, ms) of this process's waited-for children so far: cutime + cstime of
 * /proc/self/stat, in USER_HZ ticks (100 per second on Linux). Runs are sequential, so the
 * difference around one run is that child's CPU time, all threads included (KVM guest time too).
 * Unlike wall time it hardly moves with the load on the host.
 */
function childCpuMs() {
  const stat = fs.readFileSync('/proc/self/stat', 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // fields[0] is field 3 (state)
  return ((Number(fields[13]) + Number(fields[14])) * 1000) / 100;
}

async function runChecked(runner, cmd, args, n, opts) {
  const cpu0 = childCpuMs();
  const r = await runProcess(cmd, args, { ...opts, stdoutLimit: 0 });
  r.cpuMs = childCpuMs() - cpu0;
  if (r.code !== 0) {
    fail(
      `${runner.id}: \`${describe(cmd, args)}\` exited with ${r.signal ? `signal ${r.signal}` : `code ${r.code}`}\n` +
        `--- stderr ---\n${r.stderr.trimEnd()}\n--------------` +
        (r.signal === 'SIGBUS' ? SIGBUS_NOTE : ''),
    );
  }
  const problem = n === undefined ? undefined : runner.check(n, r.stderr);
  if (problem) fail(`${runner.id}: \`${describe(cmd, args)}\`: ${problem}\n--- stderr ---\n${r.stderr.trimEnd()}`);
  if (opts && opts.firstByte && r.firstByteMs === undefined) fail(`${runner.id}: \`${describe(cmd, args)}\` wrote nothing to stdout`);
  return r;
}

/* ---------------- build stamps ---------------- */

/* What exactly was measured: the tree's HEAD and hashes of the binaries run. */
function buildStamps() {
  const sha = (p) => {
    const h = sha256(p);
    return h && h.slice(0, 16);
  };
  return {
    gitHead: gitHead(),
    vmmBundleSha256: sha(VMM_BUNDLE),
    guestElfSha256: sha(GUEST_ELF),
    exitLoopSha256: sha(C_BIN),
  };
}

/* ---------------- main ---------------- */

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  checkPrerequisites({});
  buildCLoop();
  pinList = opts.pin;
  if (pinList !== undefined) checkTaskset(pinList, ['-c', pinList, 'true']);

  const { n1, n2, reps, firstReps } = opts;
  const load0 = os.loadavg();
  const stamps0 = buildStamps();
  process.stderr.write(
    `exit-bench: N1=${n1} N2=${n2}, ${reps} runs each; first-byte runs ${firstReps}${opts.pin === undefined ? '' : `; taskset -c ${opts.pin}`}\n`,
  );

  // Warm-up (page cache, lazy binding): one short unmeasured run of each.
  for (const r of RUNNERS) {
    const [cmd, args] = pinned(r.timed(0));
    await runChecked(r, cmd, args, 0);
  }

  // Timed runs, interleaved so that slow drift in host load hits every cell alike.
  const samples = {};
  const cpuSamples = {};
  for (const r of RUNNERS) {
    samples[r.id] = { [n1]: [], [n2]: [] };
    cpuSamples[r.id] = { [n1]: [], [n2]: [] };
  }
  for (let rep = 0; rep < reps; rep++) {
    for (const n of [n1, n2]) {
      for (const r of RUNNERS) {
        const [cmd, args] = pinned(r.timed(n));
        const res = await runChecked(r, cmd, args, n);
        samples[r.id][n].push(res.wallMs);
        cpuSamples[r.id][n].push(res.cpuMs);
        process.stderr.write(
          `  ${r.id.padEnd(3)} count=${String(n).padEnd(7)} run ${rep + 1}/${reps}: ${fmt(res.wallMs, 1)} ms (CPU ${fmt(res.cpuMs, 0)} ms)\n`,
        );
      }
    }
  }

  // Spawn to first serial byte on stdout (guest count=0).
  const firstByte = {};
  for (const r of RUNNERS) firstByte[r.id] = [];
  for (let rep = 0; rep < firstReps; rep++) {
    for (const r of RUNNERS) {
      const [cmd, args] = pinned(r.firstByte());
      const res = await runChecked(r, cmd, args, undefined, { firstByte: true });
      firstByte[r.id].push(res.firstByteMs);
    }
  }
  const load1 = os.loadavg();
  const stamps1 = buildStamps();
  const binaries = ({ gitHead, ...rest }) => JSON.stringify(rest); // a new commit alone is not a rebuild
  const rebuilt = binaries(stamps0) !== binaries(stamps1);
  if (rebuilt) {
    process.stderr.write('exit-bench: warning: the VMM, guest or C loop was rebuilt during the run; the runs mix builds\n');
  }

  const results = {};
  for (const r of RUNNERS) {
    const s = samples[r.id];
    const m1 = median(s[n1]);
    const m2 = median(s[n2]);
    const perExitUs = ((m2 - m1) * 1000) / (n2 - n1);
    // Per-exit cost of each (run i at N1, run i at N2) pair: a feel for the spread.
    const paired = s[n1].map((t1, i) => ((s[n2][i] - t1) * 1000) / (n2 - n1));
    const c = cpuSamples[r.id];
    const cpuPerExitUs = ((median(c[n2]) - median(c[n1])) * 1000) / (n2 - n1);
    results[r.id] = {
      label: r.label,
      command: describe(...pinned(r.timed(n2))),
      firstByteCommand: describe(...pinned(r.firstByte())),
      wallMs: { [n1]: s[n1].map((x) => round(x, 3)), [n2]: s[n2].map((x) => round(x, 3)) },
      medianMs: { [n1]: round(m1, 3), [n2]: round(m2, 3) },
      perExitUs: round(perExitUs, 4),
      perExitUsPairedMin: round(Math.min(...paired), 4),
      perExitUsPairedMax: round(Math.max(...paired), 4),
      cpuMs: { [n1]: c[n1], [n2]: c[n2] },
      cpuPerExitUs: round(cpuPerExitUs, 4),
      exitsPerSec: Math.round(1e6 / perExitUs),
      fixedCostMs: round(m1 - (n1 * perExitUs) / 1000, 3),
      firstSerialByteMs: firstByte[r.id].map((x) => round(x, 3)),
      firstSerialByteMedianMs: round(median(firstByte[r.id]), 3),
    };
  }
  const ratio = results.vmm.perExitUs / results.c.perExitUs;
  const cpuRatio = results.vmm.cpuPerExitUs / results.c.cpuPerExitUs;

  // ---- report ----
  const lines = [];
  const pinNote = opts.pin === undefined ? 'not pinned' : `pinned: taskset -c ${opts.pin}`;
  lines.push(`### Exit-path benchmark (guest-kit exit-bench, N1=${n1}, N2=${n2}, ${reps} runs, medians; ${pinNote})`);
  lines.push('');
  lines.push(
    `| runner | t(N1) ms | t(N2) ms | µs/exit | exits/s | µs/exit range (paired runs) | CPU µs/exit | fixed cost ms | first serial byte ms |`,
  );
  lines.push('|---|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of RUNNERS) {
    const x = results[r.id];
    lines.push(
      `| ${x.label} | ${fmt(x.medianMs[n1], 1)} | ${fmt(x.medianMs[n2], 1)} | ${fmt(x.perExitUs, 2)} | ${fmtInt(x.exitsPerSec)} | ` +
        `${fmt(x.perExitUsPairedMin, 2)}–${fmt(x.perExitUsPairedMax, 2)} | ${fmt(x.cpuPerExitUs, 2)} | ${fmt(x.fixedCostMs, 1)} | ` +
        `${fmt(x.firstSerialByteMedianMs, 1)} |`,
    );
  }
  lines.push('');
  lines.push(
    `**VMM / C per-exit ratio: ${fmt(ratio, 2)}x** (the JS exit path costs ${fmt(results.vmm.perExitUs - results.c.perExitUs, 2)} µs ` +
      `more per exit than the C loop).`,
  );
  lines.push(
    `CPU time per exit (all threads, user + system, from the children's rusage; hardly moved by host load): ` +
      `VMM / C ${fmt(cpuRatio, 2)}x. Pinned to one CPU, where the threads take turns, it is what wall time would be on a quiet host.`,
  );
  lines.push(
    `First serial byte (spawn -> first stdout byte, count=0, median of ${firstReps}): VMM ${fmt(results.vmm.firstSerialByteMedianMs, 1)} ms, ` +
      `C ${fmt(results.c.firstSerialByteMedianMs, 1)} ms.`,
  );
  if (rebuilt) lines.push('**Warning: a binary under test was rebuilt during the run; the figures mix builds.**');
  lines.push(loadLine(load0, load1));
  process.stdout.write(`${lines.join('\n')}\n`);

  const json = {
    ...jsonHeader('exit-bench', load0, load1),
    versions: stamps0,
    versionsAtEnd: rebuilt ? stamps1 : undefined,
    params: { n1, n2, reps, firstReps, pin: opts.pin ?? null, guest: GUEST_ELF_REL, guestCmdline: guestCmdline('N') },
    method:
      'wall clock (process.hrtime) from spawn to child exit; perExitUs = (median t(N2) - median t(N1)) / (N2 - N1); ' +
      'fixedCostMs = median t(N1) - N1 * perExitUs (noisy: the two medians may come from different runs); first serial byte = spawn to first stdout byte with count=0; ' +
      'cpuPerExitUs: the same difference of medians over CPU time (cutime + cstime of /proc/self/stat around each run)',
    results,
    ratioVmmOverC: round(ratio, 3),
    cpuRatioVmmOverC: round(cpuRatio, 3),
  };
  writeJson(opts.out, json);
}

main().catch((e) => fail((e && e.stack) || String(e)));
