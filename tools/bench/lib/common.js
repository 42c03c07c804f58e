/*
 * What the benchmark scripts (exit-bench.js, blk-bench.js, net-bench.js) share:
 * paths of the tree, argument parsing, clean-up of temporary files and
 * children, fail/usage errors, private copies of the guest and the VMM bundle,
 * spawning and timing children, statistics and formatting, build stamps and
 * the common parts of the markdown and JSON reports.
 *
 * createBench(name, usage) returns the parts that speak in the script's name
 * (its messages start with "<name>: ") and own its temporary files and live
 * children; the rest are plain functions.
 */
'use strict';

const { spawn, execFileSync } = require('child_process');
const crypto = require('crypto');
const fs = require('fs');
const os = require('os');
const path = require('path');

const BENCH_DIR = path.resolve(__dirname, '..');
const ROOT = path.resolve(BENCH_DIR, '../..');
const GUEST_ELF_REL = 'tools/guest-kit/build/guest.elf';
const GUEST_ELF = path.join(ROOT, GUEST_ELF_REL);
const VMM_BIN_REL = 'apps/vmm/bin/vmm.js';
const VMM_BIN = path.join(ROOT, VMM_BIN_REL);
const VMM_DIST = path.join(ROOT, 'apps/vmm/dist');
const VMM_BUNDLE = path.join(VMM_DIST, 'main.js');
const QEMU = 'qemu-system-x86_64';
const BUILD_HINT = 'node libs/kvm-native/scripts/build-native.js && make -C tools/guest-kit && node apps/vmm/scripts/bundle.js';

/* ---------------- files and processes ---------------- */

function sha256(p) {
  try {
    return crypto.createHash('sha256').update(fs.readFileSync(p)).digest('hex');
  } catch {
    return null;
  }
}

function mtimeOf(p) {
  try {
    return fs.statSync(p).mtimeMs;
  } catch {
    return -1;
  }
}

/* True when the compiled `bin` is missing or older than its source. */
function isStale(bin, src) {
  return mtimeOf(bin) < mtimeOf(src);
}

/* gcc -O2 -Wall -Wextra; throws if gcc fails (its output goes to our stdout/stderr). */
function compileC(src, bin) {
  fs.mkdirSync(path.dirname(bin), { recursive: true });
  execFileSync('gcc', ['-O2', '-Wall', '-Wextra', '-o', bin, src], { stdio: ['ignore', 'inherit', 'inherit'] });
}

/* Hashes of what apps/vmm holds now (to tell whether the tree was rebuilt during the run). */
function treeVmmHashes() {
  const files = { 'bin/vmm.js': sha256(VMM_BIN) };
  try {
    for (const f of fs.readdirSync(VMM_DIST)) {
      if (!f.startsWith('.') && !f.endsWith('.map')) files[`dist/${f}`] = sha256(path.join(VMM_DIST, f));
    }
  } catch {
    /* no dist */
  }
  return files;
}

/* With a CPU list, the command under `taskset -c LIST` (all its threads share those CPUs). */
function pinned([cmd, args], pin) {
  return pin === undefined ? [cmd, args] : ['taskset', ['-c', pin, cmd, ...args]];
}

/*
 * A command line for reports: node for process.execPath, paths inside the tree
 * relative to it, quoted where needed. Executables among the arguments are
 * shortened too: all of them with allArgs (commands behind `ip netns exec`),
 * else only the one `taskset -c LIST` runs.
 */
function describe(cmd, args, { allArgs = false } = {}) {
  const show = (s) => (/[\s"]/.test(s) ? JSON.stringify(s) : s);
  const exe = (c) => (c === process.execPath ? 'node' : c.startsWith(`${ROOT}/`) ? path.relative(ROOT, c) : c);
  const mapped = allArgs ? args.map(exe) : args.map((a, i) => (cmd === 'taskset' && i === 2 ? exe(a) : a));
  return [exe(cmd), ...mapped].map(show).join(' ');
}

const tail = (s) => s.trimEnd().split('\n').slice(-15).join('\n');

const SIGBUS_NOTE = '\n(SIGBUS: was apps/vmm/dist/kvm_native.node rewritten while it ran? Rebuilds during a run do that.)';

/* ---------------- statistics and formatting ---------------- */

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

function round(x, digits) {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

const fmt = (x, digits) => x.toFixed(digits);
const fmtInt = (x) => Math.round(x).toLocaleString('en-US');

/* ---------------- build stamps and reports ---------------- */

function tryRun(f) {
  try {
    return f();
  } catch {
    return null;
  }
}

/* The tree's HEAD, or null outside a git checkout. */
function gitHead() {
  return tryRun(() =>
    execFileSync('git', ['rev-parse', 'HEAD'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'ignore'] })
      .toString()
      .trim(),
  );
}

/* QEMU's version line and the sha256 of the binary on PATH (null where there is none). */
function qemuStamps() {
  return {
    qemuVersion: tryRun(() =>
      execFileSync(QEMU, ['--version'], { stdio: ['ignore', 'pipe', 'ignore'] })
        .toString()
        .split('\n')[0]
        .trim(),
    ),
    qemuSha256: tryRun(() =>
      sha256(
        execFileSync('sh', ['-c', `command -v ${QEMU}`])
          .toString()
          .trim(),
      ),
    ),
  };
}

/* The first keys of every JSON report: what, when, and on which host under which load. */
function jsonHeader(benchmark, load0, load1) {
  return {
    benchmark,
    date: new Date().toISOString(),
    host: {
      hostname: os.hostname(),
      kernel: os.release(),
      cpu: (os.cpus()[0] || {}).model,
      cpus: os.cpus().length,
      node: process.version,
      loadavgStart: load0.map((x) => round(x, 2)),
      loadavgEnd: load1.map((x) => round(x, 2)),
    },
  };
}

function loadLine(load0, load1) {
  return `Host load average (1 min) ${fmt(load0[0], 2)} at start, ${fmt(load1[0], 2)} at end; ${os.cpus().length} CPUs.`;
}

/* JSON path for a pinned run: <dir of the default>/<base>-pin<CPULIST>.json. */
function pinnedOut(defaultOut, base, pin) {
  return path.join(path.dirname(defaultOut), `${base}-pin${pin.replace(/,/g, '_')}.json`);
}

/* ---------------- per script ---------------- */

function createBench(name, usage) {
  /* Temporary files, live children and extra clean-up steps, run on every exit path. */
  const tempFiles = [];
  const children = new Set();
  const cleanups = [];

  function cleanup() {
    for (const c of children) {
      try {
        c.kill('SIGKILL');
      } catch {
        /* already gone */
      }
    }
    children.clear();
    for (const f of cleanups) f();
    for (const f of tempFiles.splice(0)) fs.rmSync(f, { force: true, recursive: true });
  }

  function fail(msg) {
    process.stderr.write(`${name}: ${msg}\n`);
    cleanup();
    process.exit(1);
  }

  function usageError(msg) {
    process.stderr.write(`${name}: ${msg}\n${usage}\n`);
    process.exit(2);
  }

  /*
   * The common option loop: --flag VALUE and --flag=VALUE, --help/-h, flags
   * without a value (`booleans`), unknown options. Calls onFlag(flag, value)
   * for every valued flag (value undefined for a boolean one).
   */
  function parseFlags(argv, { valued, booleans = [], onFlag }) {
    for (let i = 0; i < argv.length; i++) {
      let flag = argv[i];
      let value;
      const eq = flag.indexOf('=');
      if (flag.startsWith('--') && eq > 0) {
        value = flag.slice(eq + 1);
        flag = flag.slice(0, eq);
      }
      if (flag === '--help' || flag === '-h') {
        process.stdout.write(`${usage}\n`);
        process.exit(0);
      }
      if (booleans.includes(flag)) {
        onFlag(flag, undefined);
        continue;
      }
      if (!valued.includes(flag)) usageError(`unknown option ${flag}`);
      if (value === undefined) {
        if (i + 1 >= argv.length) usageError(`${flag} needs a value`);
        value = argv[++i];
      }
      onFlag(flag, value);
    }
  }

  /* Value checks shared by the scripts' options. */
  const arg = {
    int(flag, v) {
      if (!/^\d+$/.test(v)) usageError(`${flag}: not a non-negative integer: ${v}`);
      return Number(v);
    },
    scale(v) {
      const x = Number(v);
      if (!(x > 0)) usageError(`--scale: not a positive number: ${v}`);
      return x;
    },
    pin(v) {
      if (!/^[0-9,-]+$/.test(v)) usageError(`--pin: not a CPU list: ${v}`);
      return v;
    },
    /* --vmm-props: always starts with a comma (or is empty). */
    vmmProps(v) {
      return v && !v.startsWith(',') ? `,${v}` : v;
    },
    /* A comma-separated subset of `known`; `what` names an element in errors ("workload", "runner"). */
    list(flag, v, known, what) {
      const ids = v.split(',').filter(Boolean);
      for (const id of ids) if (!known.includes(id)) usageError(`${flag}: unknown ${what} ${id}`);
      return ids;
    },
  };

  /*
   * Guest, VMM bundle (with needVmm), commands ([cmd, args], run once; QEMU's
   * failure says which --runners leave it out) and devices, in that order.
   */
  function checkPrerequisites({ buildHint = BUILD_HINT, needVmm = true, commands = [], withoutQemu, devices = ['/dev/kvm'] }) {
    if (!fs.existsSync(GUEST_ELF)) fail(`${GUEST_ELF_REL} is missing; build it first: ${buildHint}`);
    if (needVmm && !fs.existsSync(VMM_BUNDLE)) {
      fail(`the VMM is not built (${path.relative(ROOT, VMM_BUNDLE)} missing); build it first: ${buildHint}`);
    }
    for (const [cmd, args] of commands) {
      try {
        execFileSync(cmd, args, { stdio: 'pipe' });
      } catch {
        fail(
          `${cmd} not found${cmd === QEMU ? ` (apt-get install -y qemu-system-x86), or leave it out with --runners ${withoutQemu}` : ''}`,
        );
      }
    }
    try {
      for (const d of devices) fs.accessSync(d, fs.constants.R_OK | fs.constants.W_OK);
    } catch (e) {
      fail(`${e.path} is not usable: ${e.message}`);
    }
  }

  /* Runs taskset with `args` once to check the CPU list. */
  function checkTaskset(pin, args) {
    try {
      execFileSync('taskset', args, { stdio: 'pipe' });
    } catch (e) {
      fail(`--pin ${pin}: taskset failed: ${(e.stderr || e.message).toString().trim()}`);
    }
  }

  /* A private copy of the guest: guest-kit may be rebuilt while we run. */
  function copyGuest() {
    const dst = path.join(os.tmpdir(), `${name}-${process.pid}-guest.elf`);
    tempFiles.push(dst);
    fs.copyFileSync(GUEST_ELF, dst);
    return dst;
  }

  /*
   * A private copy of the bundled VMM (bin/vmm.js and dist/: main.js, worker
   * bundles, kvm_native.node; not the source maps), for the same reason:
   * bundle.js may rewrite dist/ mid-run. The copy is retried until it matches
   * the tree file for file, so it never mixes two builds.
   * Returns { bin, dir, files: { name: sha256 } }.
   */
  function snapshotVmm() {
    const dir = path.join(os.tmpdir(), `${name}-${process.pid}-vmm`);
    tempFiles.push(dir);
    for (let attempt = 0; attempt < 10; attempt++) {
      fs.rmSync(dir, { force: true, recursive: true });
      fs.mkdirSync(path.join(dir, 'bin'), { recursive: true });
      fs.mkdirSync(path.join(dir, 'dist'));
      const pairs = [[VMM_BIN, path.join(dir, 'bin/vmm.js'), 'bin/vmm.js']];
      for (const f of fs.readdirSync(VMM_DIST)) {
        if (f.startsWith('.') || f.endsWith('.map') || !fs.statSync(path.join(VMM_DIST, f)).isFile()) continue;
        pairs.push([path.join(VMM_DIST, f), path.join(dir, 'dist', f), `dist/${f}`]);
      }
      for (const [src, dst] of pairs) fs.copyFileSync(src, dst);
      const files = {};
      let same = true;
      for (const [src, dst, n] of pairs) {
        files[n] = sha256(dst);
        if (files[n] !== sha256(src)) same = false;
      }
      if (same) return { bin: path.join(dir, 'bin/vmm.js'), dir, files };
      execFileSync('sleep', ['1']); // a rebuild is under way: let it finish
    }
    fail('apps/vmm/dist kept changing while it was being copied (a rebuild loop?); try again, or use --no-snapshot');
  }

  /*
   * The binaries every run uses: a private copy of the guest and, when a VMM
   * runner is on (usesVmm) and snapshot is wanted, of the VMM. end(stamps0,
   * stamps1) tells afterwards whether the tree was rebuilt and whether the
   * runs mix builds (QEMU changed, or the VMM was rebuilt and ran in place).
   */
  function prepareBinaries({ usesVmm, snapshot }) {
    const guest = copyGuest();
    const guestSha = sha256(guest);
    const vmmTree0 = usesVmm ? treeVmmHashes() : null;
    const snap = usesVmm && snapshot ? snapshotVmm() : null;
    const b = { guest, guestSha, usesVmm, vmmTree0, snap, vmmBin: snap ? snap.bin : VMM_BIN };
    b.end = (stamps0, stamps1) => {
      const vmmTree1 = usesVmm ? treeVmmHashes() : null;
      const treeRebuilt = usesVmm && JSON.stringify(vmmTree0) !== JSON.stringify(vmmTree1);
      const mixed = stamps0.qemuSha256 !== stamps1.qemuSha256 || (treeRebuilt && !snap);
      return { vmmTree1, treeRebuilt, mixed };
    };
    return b;
  }

  /*
   * Spawns a child (cwd: the tree) and times it from just before spawn() to
   * its exit. Keeps up to stdoutLimit bytes of stdout (latin1) and 64 KiB of
   * stderr; calls onLine for each stdout line; with firstByte, records when
   * the first stdout byte arrives; kills it after timeoutS (if given).
   * Returns { child, done }; done resolves with
   * { code, signal, stdout, stderr, stdoutBytes, timedOut, wallMs, firstByteMs }.
   */
  function startProcess(cmd, args, { timeoutS, onLine, stdin = 'ignore', stdoutLimit = 256 * 1024, firstByte = false } = {}) {
    let stdout = '';
    let stderr = '';
    let stdoutBytes = 0;
    let partial = '';
    let timedOut = false;
    let firstAt;
    let exitAt;
    const t0 = process.hrtime.bigint();
    const child = spawn(cmd, args, { cwd: ROOT, stdio: [stdin, 'pipe', 'pipe'] });
    children.add(child);
    const timer =
      timeoutS === undefined
        ? undefined
        : setTimeout(() => {
            timedOut = true;
            child.kill('SIGKILL');
          }, timeoutS * 1000);
    child.stdout.on('data', (b) => {
      if (firstAt === undefined) firstAt = process.hrtime.bigint();
      stdoutBytes += b.length;
      if (stdout.length >= stdoutLimit && !onLine) return;
      const s = b.toString('latin1');
      if (stdout.length < stdoutLimit) stdout += s;
      if (onLine) {
        partial += s;
        const lines = partial.split('\n');
        partial = lines.pop();
        for (const l of lines) onLine(l.replace(/\r$/, ''));
      }
    });
    child.stderr.on('data', (b) => {
      if (stderr.length < 64 * 1024) stderr += b.toString();
    });
    child.on('exit', () => {
      exitAt = process.hrtime.bigint();
    });
    const ms = (t) => (t === undefined ? undefined : Number(t - t0) / 1e6);
    const done = new Promise((resolve, reject) => {
      child.on('error', (e) => {
        clearTimeout(timer);
        children.delete(child);
        reject(e);
      });
      child.on('close', (code, signal) => {
        clearTimeout(timer);
        children.delete(child);
        resolve({
          code,
          signal,
          stdout,
          stderr,
          stdoutBytes,
          timedOut,
          wallMs: ms(exitAt ?? process.hrtime.bigint()),
          firstByteMs: firstByte ? ms(firstAt) : undefined,
        });
      });
    });
    return { child, done };
  }

  /* startProcess(...).done */
  function runProcess(cmd, args, opts) {
    return startProcess(cmd, args, opts).done;
  }

  /* Writes the JSON report and says where. */
  function writeJson(out, json) {
    fs.mkdirSync(path.dirname(out), { recursive: true });
    fs.writeFileSync(out, `${JSON.stringify(json, null, 2)}\n`);
    process.stderr.write(`${name}: wrote ${path.relative(process.cwd(), out) || out}\n`);
  }

  return {
    tempFiles,
    children,
    onCleanup: (f) => cleanups.push(f),
    cleanup,
    fail,
    usageError,
    parseFlags,
    arg,
    checkPrerequisites,
    checkTaskset,
    copyGuest,
    snapshotVmm,
    prepareBinaries,
    startProcess,
    runProcess,
    writeJson,
  };
}

/*
 * The "Binaries:" line of the blk and net reports: the guest copy's hash, the
 * VMM bundle's (copy or tree), the tree's HEAD and QEMU's version.
 */
function binariesLine({ guestSha, usesVmm, snap, vmmTree0 }, stamps0) {
  return (
    `Binaries: guest.elf sha256 ${guestSha.slice(0, 16)} (private copy)` +
    (usesVmm
      ? `, VMM dist/main.js sha256 ${((snap ? snap.files : vmmTree0)['dist/main.js'] || 'none').slice(0, 16)}${snap ? ' (private copy)' : ''}`
      : '') +
    `${stamps0.gitHead ? `, tree HEAD ${stamps0.gitHead.slice(0, 12)}` : ''}${stamps0.qemuVersion ? `, ${stamps0.qemuVersion}` : ''}.`
  );
}

/* versions.vmm of the blk and net JSON: what ran and the hashes of its files. */
function vmmVersion({ usesVmm, snap, vmmTree0 }) {
  return usesVmm
    ? {
        ran: snap ? 'private copy of apps/vmm/bin/vmm.js + apps/vmm/dist taken at start' : 'apps/vmm in place',
        files: snap ? snap.files : vmmTree0,
      }
    : null;
}

module.exports = {
  ROOT,
  BENCH_DIR,
  GUEST_ELF,
  GUEST_ELF_REL,
  VMM_BIN,
  VMM_BIN_REL,
  VMM_DIST,
  VMM_BUNDLE,
  QEMU,
  BUILD_HINT,
  createBench,
  sha256,
  mtimeOf,
  isStale,
  compileC,
  treeVmmHashes,
  pinned,
  describe,
  tail,
  SIGBUS_NOTE,
  median,
  round,
  fmt,
  fmtInt,
  gitHead,
  qemuStamps,
  jsonHeader,
  loadLine,
  pinnedOut,
  binariesLine,
  vmmVersion,
};
