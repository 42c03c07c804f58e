#!/usr/bin/env node
/*
 * virtio-net benchmark: packets per second and Mbit/s, guest to host and host
 * to guest, with 64-byte and 1500-byte frames, our VMM against QEMU
 * (virtio-net-pci, userspace backend: vhost=off) on the same guest-kit tests.
 *
 * Both VMMs run inside a private network namespace whose TAP (10.0.2.2/24)
 * stands for "the host"; the host side, tools/bench/c/net-host.c (compiled
 * to tools/bench/build/net-host when missing or stale), runs there too:
 *   tx*  the guest (test=net-udp-tx ring=3) sends N UDP datagrams as fast as
 *        it can; net-host recv takes them with kernel timestamps, checks
 *        every one and gives the rate between the first and last datagram.
 *   rx*  net-host send sends N datagrams to the guest (test=net-udp-rx
 *        ring=3, which checks every CRC and sequence number) keeping up to
 *        --window frames queued on the TAP, and gives the rate at which the
 *        VMM read them from the TAP (its tx_packets counter).
 * Each runner does each workload --reps times, interleaved; the table gives
 * the median rate and the ratio our VMM / QEMU.
 *
 *   node tools/bench/net-bench.js [--reps 7] [--workloads LIST] [--runners LIST] [--quiet-wait S]
 *                                 [--counts WL[@RUNNER]=N,...] [--scale F] [--out FILE.json]
 *
 * Results: a markdown table on stdout, JSON in tools/bench/results/net-bench.json.
 * Needs root (network namespace, TAP), gcc and, for the qemu runner, qemu-system-x86_64.
 */
'use strict';

const { execFileSync } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');
const {
  ROOT,
  BENCH_DIR,
  GUEST_ELF,
  QEMU,
  createBench,
  isStale,
  compileC,
  describe,
  tail,
  median,
  round,
  fmt,
  fmtInt,
  gitHead,
  qemuStamps,
  jsonHeader,
  loadLine,
  binariesLine,
  vmmVersion,
} = require('./lib/common');

const HOST_SRC = path.join(BENCH_DIR, 'c/net-host.c');
const HOST_BIN = path.join(BENCH_DIR, 'build/net-host');
const DEFAULT_OUT = path.join(BENCH_DIR, 'results/net-bench.json');
const BUILD_HINT =
  'npx nx run-many -t build   (or: node libs/kvm-native/scripts/build-native.js && make -C tools/guest-kit && node apps/vmm/scripts/bundle.js)';

/* The test network: the TAP's host side, the guest, and the ports of tools/guest-kit/src/nettests.c. */
const NETNS = `vmmnb${process.pid}`;
const TAP = 'tapnb0';
const HOST_IP = '10.0.2.2';
const GUEST_IP = '10.0.2.15';
const GUEST_MAC = '52:54:00:12:34:56'; // the same for both VMMs; the host gets a permanent neighbour entry for it
const HOST_PORT = 5555; // net-udp-tx sends here
const GUEST_PORT = 5556; // net-udp-rx listens here
const GUEST_MEMORY_MIB = 64;
const RX_MAX_COUNT = 1 << 18; // net-udp-rx tracks at most this many sequence numbers

/* Ethernet (14) + IPv4 (20) + UDP (8) in front of the guest-kit payload. */
const HEADERS = 42;

/*
 * Workloads. "64-byte" frames are the Ethernet minimum: 60 bytes on the TAP,
 * 64 on a wire with the FCS (UDP payload 18). "1500-byte" frames carry a full
 * 1500-byte IP packet: 1514 bytes on the TAP (UDP payload 1472, the most
 * guest kit sends without fragmenting). Default counts give each runner
 * roughly 3 s of traffic per undisturbed run on the development host (rx:
 * at most 262,144, what net-udp-rx tracks).
 */
const WORKLOADS = [
  { id: 'tx64', dir: 'tx', label: 'guest to host, 64-byte frames', payload: 18, counts: { vmm: 300000, 'vmm-off': 150000, qemu: 500000 } },
  {
    id: 'tx1500',
    dir: 'tx',
    label: 'guest to host, 1500-byte frames',
    payload: 1472,
    counts: { vmm: 250000, 'vmm-off': 120000, qemu: 400000 },
  },
  { id: 'rx64', dir: 'rx', label: 'host to guest, 64-byte frames', payload: 18, counts: { vmm: 262144, 'vmm-off': 200000, qemu: 262144 } },
  {
    id: 'rx1500',
    dir: 'rx',
    label: 'host to guest, 1500-byte frames',
    payload: 1472,
    counts: { vmm: 200000, 'vmm-off': 150000, qemu: 262144 },
  },
];
for (const w of WORKLOADS) {
  w.frameBytes = w.payload + HEADERS; // on the TAP, without the FCS
  w.wireBytes = w.frameBytes + 4; // with the FCS
}

const RUNNER_IDS = ['vmm', 'vmm-base', 'vmm-off', 'vmm-iot', 'qemu'];
const DEFAULT_RUNNERS = ['vmm', 'qemu'];

const USAGE = `usage: node tools/bench/net-bench.js [options]
  --reps N          measured runs per runner and workload (default 7)
  --workloads LIST  comma-separated subset of: ${WORKLOADS.map((w) => w.id).join(', ')} (default: all)
  --runners LIST    comma-separated subset of: ${RUNNER_IDS.join(', ')} (default: ${DEFAULT_RUNNERS.join(',')})
  --counts LIST     frames per run for a workload (all runners) or one runner of it,
                    e.g. tx64=100000,rx1500@qemu=200000 (rx at most ${RX_MAX_COUNT})
  --scale F         multiply every default count by F (e.g. 0.2 for a quick run)
  --window N        rx: frames the host keeps queued on the TAP ahead of the VMM (default 256;
                    the TAP queue holds 1000)
  --vmm-props STR   extra --device properties for the VMM runners (e.g. ",event-idx=off")
  --base-vmm DIR    adds the runner vmm-base: the VMM bundle in DIR (DIR/bin/vmm.js and DIR/dist/, e.g.
                    a build of an earlier commit), run in place with vmm's counts, interleaved with
                    the others: before / after a change in one run ("vmm / vmm-base")
  --no-snapshot     run apps/vmm in place instead of a private copy of bin/vmm.js + dist/
  --quiet-wait S    before each run, wait up to S seconds for the host to be quiet: at most
                    --quiet-busy of all CPU time busy over 1 s (default 0: do not wait; the
                    busy fraction before each run is measured and reported either way)
  --quiet-busy F    the "quiet" threshold, a fraction of all CPUs (default 0.15)
  --timeout S       kill a run after S seconds (default 180)
  --out FILE        JSON results path (default tools/bench/results/net-bench.json)
  --help`;

const { onCleanup, cleanup, fail, usageError, parseFlags, arg, checkPrerequisites, prepareBinaries, startProcess, writeJson } = createBench(
  'net-bench',
  USAGE,
);

function parseArgs(argv) {
  const opts = {
    reps: 7,
    workloads: WORKLOADS.map((w) => w.id),
    runners: [...DEFAULT_RUNNERS],
    counts: {},
    scale: 1,
    window: 256,
    vmmProps: '',
    baseVmm: undefined,
    snapshot: true,
    timeoutS: 180,
    out: DEFAULT_OUT,
    quietWaitS: 0,
    quietBusy: 0.15,
  };
  const valued = [
    '--reps',
    '--workloads',
    '--runners',
    '--counts',
    '--scale',
    '--window',
    '--vmm-props',
    '--base-vmm',
    '--timeout',
    '--out',
    '--quiet-wait',
    '--quiet-busy',
  ];
  const workloadIds = WORKLOADS.map((w) => w.id);
  parseFlags(argv, {
    valued,
    booleans: ['--no-snapshot'],
    onFlag: (flag, value) => {
      const int = (v) => arg.int(flag, v);
      switch (flag) {
        case '--no-snapshot':
          opts.snapshot = false;
          break;
        case '--reps':
          opts.reps = int(value);
          break;
        case '--window':
          opts.window = int(value);
          break;
        case '--timeout':
          opts.timeoutS = int(value);
          break;
        case '--quiet-wait':
          opts.quietWaitS = int(value);
          break;
        case '--quiet-busy':
          opts.quietBusy = Number(value);
          if (!(opts.quietBusy > 0 && opts.quietBusy <= 1)) usageError(`--quiet-busy: not a fraction in (0, 1]: ${value}`);
          break;
        case '--out':
          opts.out = path.resolve(value);
          break;
        case '--vmm-props':
          opts.vmmProps = arg.vmmProps(value);
          break;
        case '--base-vmm':
          opts.baseVmm = path.resolve(value);
          if (!fs.existsSync(path.join(opts.baseVmm, 'bin/vmm.js')) || !fs.existsSync(path.join(opts.baseVmm, 'dist/main.js')))
            usageError(
              `--base-vmm: ${value} has no bin/vmm.js and dist/main.js (a VMM bundle: node apps/vmm/scripts/bundle.js --outdir=DIR/dist)`,
            );
          break;
        case '--scale':
          opts.scale = arg.scale(value);
          break;
        case '--workloads':
          opts.workloads = arg.list(flag, value, workloadIds, 'workload');
          break;
        case '--runners':
          opts.runners = arg.list(flag, value, RUNNER_IDS, 'runner');
          break;
        case '--counts':
          for (const item of value.split(',').filter(Boolean)) {
            const m = /^([\w-]+)(?:@([\w-]+))?=(\d+)$/.exec(item);
            if (!m) usageError(`--counts: expected WORKLOAD[@RUNNER]=N, got ${item}`);
            if (!workloadIds.includes(m[1])) usageError(`--counts: unknown workload ${m[1]}`);
            if (m[2] !== undefined && !RUNNER_IDS.includes(m[2])) usageError(`--counts: unknown runner ${m[2]}`);
            for (const r of m[2] === undefined ? RUNNER_IDS : [m[2]]) opts.counts[`${m[1]}@${r}`] = Number(m[3]);
          }
          break;
      }
    },
  });
  if (opts.baseVmm && !opts.runners.includes('vmm-base')) opts.runners.splice(1, 0, 'vmm-base');
  if (opts.runners.includes('vmm-base') && !opts.baseVmm) usageError('the vmm-base runner needs --base-vmm DIR');
  if (opts.reps < 1) usageError('--reps must be at least 1');
  if (opts.window < 1 || opts.window > 900) usageError('--window must be 1..900 (the TAP queue holds 1000 frames)');
  if (!opts.workloads.length || !opts.runners.length) usageError('nothing to run');
  return opts;
}

/* The namespace is deleted on every exit path too. */
let netnsCreated = false;
onCleanup(() => {
  if (netnsCreated) {
    try {
      execFileSync('ip', ['netns', 'del', NETNS], { stdio: 'ignore' });
    } catch {
      /* gone already */
    }
    netnsCreated = false;
  }
});

/* ---------------- preparation ---------------- */

function checkNetPrerequisites(opts) {
  if (process.getuid && process.getuid() !== 0) fail('needs root (it creates a network namespace and a TAP)');
  const commands = [
    ['ip', ['-V']],
    ['gcc', ['--version']],
  ];
  if (opts.runners.includes('qemu')) commands.push([QEMU, ['--version']]);
  checkPrerequisites({
    buildHint: BUILD_HINT,
    needVmm: opts.runners.some((r) => r.startsWith('vmm')),
    commands,
    withoutQemu: 'vmm',
    devices: ['/dev/kvm', '/dev/net/tun'],
  });
}

/* Compiles the host-side helper when it is missing or older than its source. */
function buildHostHelper() {
  if (!isStale(HOST_BIN, HOST_SRC)) return;
  process.stderr.write(`net-bench: compiling ${path.relative(ROOT, HOST_SRC)}\n`);
  try {
    compileC(HOST_SRC, HOST_BIN);
  } catch {
    fail(`gcc failed on ${path.relative(ROOT, HOST_SRC)}`);
  }
}

/*
 * The namespace: loopback up, a TAP with IFF_VNET_HDR (both VMMs use the
 * virtio-net header), the host address, and a permanent neighbour entry for
 * the guest so the host never has to ARP in the middle of a run.
 */
function createNetns() {
  const ip = (...args) => execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  try {
    ip('netns', 'add', NETNS);
    netnsCreated = true;
    const inNs = (...args) => ip('netns', 'exec', NETNS, 'ip', ...args);
    inNs('link', 'set', 'lo', 'up');
    inNs('tuntap', 'add', TAP, 'mode', 'tap', 'vnet_hdr');
    inNs('addr', 'add', `${HOST_IP}/24`, 'dev', TAP);
    inNs('link', 'set', TAP, 'up');
    inNs('neigh', 'replace', GUEST_IP, 'lladdr', GUEST_MAC, 'dev', TAP, 'nud', 'permanent');
    const qlen = Number(execFileSync('ip', ['netns', 'exec', NETNS, 'cat', `/sys/class/net/${TAP}/tx_queue_len`]).toString());
    return { qlen };
  } catch (e) {
    fail(`setting up network namespace ${NETNS}: ${(e.stderr || e.message).toString().trim()}`);
  }
}

/* ---------------- runners ---------------- */

function sha256File(file) {
  return require('crypto').createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

function guestCmdline(w, n) {
  return w.dir === 'tx'
    ? `test=net-udp-tx count=${n} size=${w.payload} ring=3 ip=${GUEST_IP} peer=${HOST_IP} port=${HOST_PORT}`
    : `test=net-udp-rx count=${n} size=${w.payload} ring=3 ip=${GUEST_IP} peer=${HOST_IP} port=${GUEST_PORT} timeout-ms=5000`;
}

function makeRunners(vmmBin, guest, vmmProps, baseVmm) {
  const vmm =
    (extra, bin = vmmBin) =>
    (w, n) => [
      process.execPath,
      [
        bin,
        'run',
        '--memory',
        `${GUEST_MEMORY_MIB}M`,
        '--kernel',
        guest,
        '--cmdline',
        guestCmdline(w, n),
        '--serial',
        'stdio',
        '--device',
        `virtio-net,id=n0,tap=${TAP},mac=${GUEST_MAC}${extra}${vmmProps}`,
      ],
    ];
  return [
    { id: 'vmm', label: 'our VMM', cmd: vmm(''), passCode: 0 },
    { id: 'vmm-base', label: 'our VMM, base build', cmd: vmm('', baseVmm && path.join(baseVmm, 'bin/vmm.js')), passCode: 0 },
    { id: 'vmm-off', label: 'our VMM, ioeventfd=off', cmd: vmm(',ioeventfd=off'), passCode: 0 },
    // The whole device (queues, TAP reads and writes) on an iothread: kicks, TAP readiness and irqfds never touch the main thread.
    { id: 'vmm-iot', label: 'our VMM, iothread=iotnb0', cmd: vmm(',iothread=iotnb0'), passCode: 0 },
    {
      id: 'qemu',
      label: 'QEMU (virtio-net-pci, vhost=off)',
      cmd: (w, n) => [
        QEMU,
        [
          '-enable-kvm',
          '-nographic',
          '-no-reboot',
          '-m',
          String(GUEST_MEMORY_MIB),
          '-kernel',
          guest,
          '-append',
          guestCmdline(w, n),
          '-netdev',
          `tap,id=n0,ifname=${TAP},script=no,downscript=no,vhost=off`,
          // romfile=: no iPXE option ROM for SeaBIOS to run at boot (the data path is the same).
          '-device',
          `virtio-net-pci,netdev=n0,disable-legacy=on,mac=${GUEST_MAC},romfile=`,
          '-device',
          'isa-debug-exit,iobase=0xf4,iosize=4',
        ],
      ],
      passCode: 1, // isa-debug-exit: (0 << 1) | 1
    },
  ];
}

const inNetns = ([cmd, args]) => ['ip', ['netns', 'exec', NETNS, cmd, ...args]];

/* net-host in the namespace: resolves `ready` on its "ready" line, `done` with its JSON report. */
function startHost(args, timeoutS) {
  let readyResolve;
  const ready = new Promise((r) => (readyResolve = r));
  const p = startProcess(...inNetns([HOST_BIN, args.map(String)]), {
    timeoutS,
    stdin: 'pipe',
    stdoutLimit: 512 * 1024,
    onLine: (l) => l === 'ready' && readyResolve(),
  });
  p.child.stdin.on('error', () => {}); // it may be gone when we write
  const done = p.done.then((r) => {
    readyResolve();
    const line = r.stdout
      .split('\n')
      .reverse()
      .find((l) => l.startsWith('{'));
    return { ...r, report: line ? JSON.parse(line) : null };
  });
  return { child: p.child, ready, done, send: (s) => p.child.stdin.writable && p.child.stdin.write(s) };
}

/* The guest's result lines, checked against what was asked for. */
function parseGuest(w, n, stdout) {
  const test = w.dir === 'tx' ? 'net-udp-tx' : 'net-udp-rx';
  if (!new RegExp(`^guest-kit: PASS test=${test}\\r?$`, 'm').test(stdout)) {
    const f = /^guest-kit: FAIL .*$/m.exec(stdout);
    return { problem: f ? f[0].trim() : `no "guest-kit: PASS test=${test}" line` };
  }
  if (w.dir === 'tx') {
    const a = /^net-udp-tx sent=(\d+)\r?$/m.exec(stdout);
    const b = /^net-udp-tx ring=(\d+) size=(\d+) notifies=(\d+) interrupts=(\d+)\r?$/m.exec(stdout);
    if (!a || !b) return { problem: 'no net-udp-tx result lines' };
    if (Number(a[1]) !== n || Number(b[1]) !== 3 || Number(b[2]) !== w.payload)
      return { problem: `guest reported "${a[0].trim()}", "${b[0].trim()}"; expected sent=${n} ring=3 size=${w.payload}` };
    return { notifies: Number(b[3]), interrupts: Number(b[4]) };
  }
  const a = /^net-udp-rx received=(\d+) bad=(\d+) first_missing=(\d+)\r?$/m.exec(stdout);
  const b = /^net-udp-rx detail dup=(\d+) other=(\d+) frames=(\d+) multi_buffer=(\d+) empty=(\d+) interrupts=(\d+) ring=(\d+)/m.exec(
    stdout,
  );
  if (!a || !b) return { problem: 'no net-udp-rx result lines' };
  if (Number(a[1]) !== n || Number(a[2]) !== 0 || Number(b[7]) !== 3)
    return { problem: `guest reported "${a[0].trim()}"; expected received=${n} bad=0 (ring=3)` };
  return { frames: Number(b[3]), dup: Number(b[1]), interrupts: Number(b[6]) };
}

/* One measured run: the host helper, then the VMM; both in the namespace. */
async function runOnce(runner, w, n, opts) {
  const host =
    w.dir === 'tx'
      ? startHost(['recv', HOST_IP, HOST_PORT, n, w.payload], opts.timeoutS + 30)
      : startHost(['send', TAP, GUEST_IP, GUEST_PORT, n, w.payload, opts.window], opts.timeoutS + 30);
  await host.ready;
  if (host.child.exitCode !== null) {
    const r = await host.done;
    fail(`net-host ${w.dir === 'tx' ? 'recv' : 'send'} exited before it was ready (code ${r.code}):\n${r.stderr}`);
  }
  let went = false;
  const [cmd, args] = inNetns(runner.cmd(w, n));
  const vm = startProcess(cmd, args, {
    timeoutS: opts.timeoutS,
    stdoutLimit: 512 * 1024,
    onLine: (l) => {
      // net-udp-rx has posted its buffers and resolved the host's address: start sending.
      if (w.dir === 'rx' && !went && l.startsWith('net-udp-rx ready')) {
        went = true;
        host.send('go\n');
      }
    },
  });
  const r = await vm.done;
  if (w.dir === 'tx') host.send('stop\n'); // the VMM has exited: report what arrived
  const killer = setTimeout(() => host.child.kill('SIGKILL'), w.dir === 'rx' && !went ? 0 : 5000);
  const h = await host.done;
  clearTimeout(killer);

  const g = parseGuest(w, n, r.stdout);
  const rep = h.report;
  const problems = [];
  if (r.timedOut) problems.push(`timed out after ${opts.timeoutS} s`);
  else if (r.code !== runner.passCode)
    problems.push(`exited with ${r.signal ? `signal ${r.signal}` : `code ${r.code}`} (PASS is ${runner.passCode})`);
  if (g.problem) problems.push(g.problem);
  if (!rep) problems.push(`net-host gave no report (code ${h.code}): ${h.stderr.trim()}`);
  else if (!(rep.pps > 0)) problems.push(`net-host could not measure a rate: ${JSON.stringify(rep)}`);
  else if (w.dir === 'tx' && rep.bad) problems.push(`the host received ${rep.bad} corrupt datagrams`);
  else if (w.dir === 'rx' && rep.timedOut) problems.push(`the VMM read only ${rep.delivered} of ${n} frames from the TAP`);
  if (problems.length) {
    fail(
      `${runner.id} ${w.id}: \`${describe(cmd, args, { allArgs: true })}\`: ${problems.join('; ')}` +
        `\n--- stdout (tail) ---\n${tail(r.stdout)}\n--- stderr (tail) ---\n${tail(r.stderr)}\n--- net-host ---\n${tail(h.stdout)}\n${tail(h.stderr)}\n--------------`,
    );
  }
  return { wallMs: r.wallMs, pps: rep.pps, host: rep, guest: g, loadavg1: round(os.loadavg()[0], 2) };
}

/* ---------------- host load ---------------- */

/* Idle and total jiffies of all CPUs (/proc/stat). */
function cpuJiffies() {
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  return { idle: f[3] + (f[4] || 0), total: f.slice(0, 8).reduce((a, b) => a + b, 0) };
}

/* Fraction of all CPU time that was busy over the next `ms` (we run nothing meanwhile). */
async function hostBusy(ms) {
  const a = cpuJiffies();
  await new Promise((r) => setTimeout(r, ms));
  const b = cpuJiffies();
  return b.total > a.total ? 1 - (b.idle - a.idle) / (b.total - a.total) : 0;
}

/* Waits (up to quietWaitS) until the host was at most quietBusy busy over 1 s; returns the last measurement. */
async function waitQuiet(opts) {
  const t0 = Date.now();
  for (;;) {
    const busy = await hostBusy(1000);
    if (busy <= opts.quietBusy || Date.now() - t0 >= opts.quietWaitS * 1000)
      return { busy: round(busy, 3), waitedS: round((Date.now() - t0) / 1000, 1) };
  }
}

/* ---------------- figures and build stamps ---------------- */

const mbit = (pps, bytes) => (pps * bytes * 8) / 1e6;

function buildStamps() {
  return { gitHead: gitHead(), ...qemuStamps() };
}

/* ---------------- main ---------------- */

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  checkNetPrerequisites(opts);
  buildHostHelper();
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(sig, () => fail(`interrupted (${sig})`));
  process.on('exit', cleanup);

  const bins = prepareBinaries({ usesVmm: opts.runners.some((r) => r.startsWith('vmm')), snapshot: opts.snapshot });
  const { guest, guestSha, snap, vmmBin } = bins;
  const runners = makeRunners(vmmBin, guest, opts.vmmProps, opts.baseVmm).filter((r) => opts.runners.includes(r.id));
  const workloads = WORKLOADS.filter((w) => opts.workloads.includes(w.id)).map((w) => {
    const counts = {};
    for (const r of runners) {
      const n = opts.counts[`${w.id}@${r.id}`] ?? Math.max(1000, Math.round((w.counts[r.id] ?? w.counts.vmm) * opts.scale));
      if (n < 100) usageError(`${w.id}@${r.id}: count ${n} is too small (at least 100)`);
      if (w.dir === 'rx' && n > RX_MAX_COUNT) usageError(`${w.id}@${r.id}: count ${n} is above net-udp-rx's limit of ${RX_MAX_COUNT}`);
      counts[r.id] = n;
    }
    return { ...w, counts };
  });
  const net = createNetns();
  const { reps } = opts;
  const load0 = os.loadavg();
  const stamps0 = buildStamps();
  process.stderr.write(
    `net-bench: namespace ${NETNS}, ${TAP} ${HOST_IP}/24 (queue ${net.qlen}), guest ${GUEST_IP} ${GUEST_MAC}; ` +
      `guest copy ${guest} (sha256 ${guestSha.slice(0, 16)})` +
      `${snap ? `; VMM copy ${snap.dir} (main.js sha256 ${(snap.files['dist/main.js'] || '').slice(0, 16)})` : ''}; ${reps} runs each\n`,
  );
  for (const w of workloads) {
    process.stderr.write(`  ${w.id}: ${guestCmdline(w, 'N')}; N = ${runners.map((r) => `${r.id} ${w.counts[r.id]}`).join(', ')}\n`);
  }

  // Warm-up: one short unmeasured run of each runner and direction (page cache, lazy binding, the TAP's first use).
  for (const r of runners) {
    for (const w of [workloads.find((x) => x.dir === 'tx'), workloads.find((x) => x.dir === 'rx')].filter(Boolean))
      await runOnce(r, w, 2000, opts);
  }

  // Measured runs, interleaved (rep, workload, runner) so that drift in host load hits every cell alike.
  const samples = {};
  for (const w of workloads) {
    samples[w.id] = {};
    for (const r of runners) samples[w.id][r.id] = [];
  }
  const t0 = Date.now();
  for (let rep = 0; rep < reps; rep++) {
    for (const w of workloads) {
      for (const r of runners) {
        const n = w.counts[r.id];
        const quiet = await waitQuiet(opts);
        const res = { ...(await runOnce(r, w, n, opts)), preBusy: quiet.busy, waitedS: quiet.waitedS };
        samples[w.id][r.id].push(res);
        const extra =
          w.dir === 'tx'
            ? `notifies=${res.guest.notifies} host-lost=${res.host.lost}`
            : `interrupts=${res.guest.interrupts} host-slept=${res.host.sleptFraction} queued=${res.host.avgQueued}`;
        process.stderr.write(
          `  ${w.id.padEnd(6)} ${r.id.padEnd(8)} N=${String(n).padEnd(6)} run ${rep + 1}/${reps}: ${fmtInt(res.pps).padStart(8)} pps ` +
            `${fmt(mbit(res.pps, w.frameBytes), 1).padStart(7)} Mbit/s  wall ${fmt(res.wallMs / 1000, 1)} s  ${extra}  ` +
            `busy-before=${fmt(100 * res.preBusy, 0)}%${res.waitedS > 1.5 ? ` (waited ${fmt(res.waitedS, 0)} s)` : ''}  [${fmt((Date.now() - t0) / 1000, 0)} s]\n`,
        );
      }
    }
  }
  const load1 = os.loadavg();
  const stamps1 = buildStamps();
  const { treeRebuilt, mixed } = bins.end(stamps0, stamps1);
  if (mixed) process.stderr.write('net-bench: warning: the VMM or QEMU changed during the run; the runs mix builds\n');

  // ---- derived figures ----
  const results = {};
  for (const w of workloads) {
    const entry = {
      label: w.label,
      direction: w.dir,
      udpPayload: w.payload,
      frameBytes: w.frameBytes,
      wireBytes: w.wireBytes,
      guestCmdline: guestCmdline(w, 'N'),
      runners: {},
    };
    for (const r of runners) {
      const s = samples[w.id][r.id];
      const pps = s.map((x) => x.pps);
      const med = median(pps);
      entry.runners[r.id] = {
        label: r.label,
        frames: w.counts[r.id],
        command: describe(...inNetns(r.cmd(w, w.counts[r.id])), { allArgs: true }),
        pps: pps.map((x) => Math.round(x)),
        medianPps: Math.round(med),
        minPps: Math.round(Math.min(...pps)),
        maxPps: Math.round(Math.max(...pps)),
        medianMbitPerSec: round(mbit(med, w.frameBytes), 2),
        medianWireMbitPerSec: round(mbit(med, w.wireBytes), 2),
        medianUsPerFrame: round(1e6 / med, 3),
        wallMs: s.map((x) => round(x.wallMs, 1)),
        loadavg1: s.map((x) => x.loadavg1),
        busyBefore: s.map((x) => x.preBusy),
        quietRuns: s.filter((x) => x.preBusy <= opts.quietBusy).length,
        guest: s.map((x) => x.guest),
        host: s.map((x) => x.host),
      };
    }
    const ratio = (a, b, k) => (entry.runners[a] && entry.runners[b] ? round(entry.runners[a][k] / entry.runners[b][k], 3) : null);
    // Per rep: the two runs were next to each other in time, so they met much the same host load.
    const paired = (a, b) =>
      entry.runners[a] && entry.runners[b] ? round(median(entry.runners[a].pps.map((x, i) => x / entry.runners[b].pps[i])), 3) : null;
    entry.ratios = {
      vmmOverQemu: ratio('vmm', 'qemu', 'medianPps'),
      vmmOffOverQemu: ratio('vmm-off', 'qemu', 'medianPps'),
      vmmIotOverQemu: ratio('vmm-iot', 'qemu', 'medianPps'),
      vmmIotOverQemuPairedMedian: paired('vmm-iot', 'qemu'),
      vmmIotOverVmmPairedMedian: paired('vmm-iot', 'vmm'),
      vmmOverQemuBest: ratio('vmm', 'qemu', 'maxPps'),
      vmmOverQemuPairedMedian: paired('vmm', 'qemu'),
      vmmBaseOverQemu: ratio('vmm-base', 'qemu', 'medianPps'),
      vmmBaseOverQemuPairedMedian: paired('vmm-base', 'qemu'),
      vmmOverVmmBase: ratio('vmm', 'vmm-base', 'medianPps'),
      vmmOverVmmBasePairedMedian: paired('vmm', 'vmm-base'),
    };
    results[w.id] = entry;
  }

  // ---- report ----
  const lines = [];
  lines.push(`### virtio-net benchmark (guest-kit net-udp-tx / net-udp-rx in ring 3; ${reps} runs per cell, medians)`);
  lines.push('');
  lines.push(
    'pps = frames per second in steady state (tx: first to last datagram at the host socket, kernel timestamps; ' +
      'rx: frames the VMM read from the TAP, host keeping ' +
      opts.window +
      ' queued). Mbit/s = pps x frame bytes on the TAP ' +
      '(60 or 1514; +4 FCS on a wire).',
  );
  lines.push('');
  lines.push('| workload | runner | frames/run | pps (median) | pps range | Mbit/s | µs/frame | wall s | quiet runs |');
  lines.push('|---|---|---:|---:|---:|---:|---:|---:|---:|');
  for (const w of workloads) {
    for (const r of runners) {
      const x = results[w.id].runners[r.id];
      lines.push(
        `| ${w.id} | ${x.label} | ${fmtInt(x.frames)} | ${fmtInt(x.medianPps)} | ${fmtInt(x.minPps)}–${fmtInt(x.maxPps)} | ${fmt(x.medianMbitPerSec, 1)} | ` +
          `${fmt(x.medianUsPerFrame, 1)} | ${fmt(median(x.wallMs) / 1000, 1)} | ${x.quietRuns}/${x.pps.length} |`,
      );
    }
  }
  const fr = (x) => (x === null ? 'n/a' : `${fmt(x, 2)}x`);
  if (runners.some((r) => r.id === 'qemu') && runners.length > 1) {
    lines.push('');
    const cols = runners.filter((r) => r.id !== 'qemu');
    const withVmm = cols.some((r) => r.id === 'vmm');
    lines.push(
      `| workload | ${cols.map((r) => `${r.id} / qemu`).join(' | ')}${withVmm ? ' | vmm / qemu, median of per-rep ratios | vmm / qemu, best runs' : ''} |`,
    );
    lines.push(`|---|${cols.map(() => '---:|').join('')}${withVmm ? '---:|---:|' : ''}`);
    for (const w of workloads) {
      const q = results[w.id].ratios;
      lines.push(
        `| ${w.id} | ${cols.map((r) => fr({ vmm: q.vmmOverQemu, 'vmm-base': q.vmmBaseOverQemu, 'vmm-off': q.vmmOffOverQemu, 'vmm-iot': q.vmmIotOverQemu }[r.id])).join(' | ')}` +
          `${withVmm ? ` | ${fr(q.vmmOverQemuPairedMedian)} | ${fr(q.vmmOverQemuBest)}` : ''} |`,
      );
    }
    lines.push('');
    lines.push(
      'Ratios of pps (= of Mbit/s: same frames); above 1 means our VMM is faster. First columns: ratio of the medians; ' +
        '"per-rep": the median of run i of vmm / run i of qemu (adjacent in time, so similar host load); "best runs": each runner\'s fastest run ' +
        '(other load only ever slows a run down).',
    );
  }
  if (runners.some((r) => r.id === 'vmm-iot') && runners.some((r) => r.id === 'vmm')) {
    lines.push('');
    lines.push('| workload | vmm-iot / vmm, median of per-rep ratios | vmm-iot / qemu, median of per-rep ratios |');
    lines.push('|---|---:|---:|');
    for (const w of workloads) {
      const q = results[w.id].ratios;
      lines.push(`| ${w.id} | ${fr(q.vmmIotOverVmmPairedMedian)} | ${fr(q.vmmIotOverQemuPairedMedian)} |`);
    }
  }
  if (runners.some((r) => r.id === 'vmm-base') && runners.some((r) => r.id === 'vmm')) {
    lines.push('');
    lines.push('| workload | vmm / vmm-base | vmm / vmm-base, median of per-rep ratios | vmm-base / qemu, median of per-rep ratios |');
    lines.push('|---|---:|---:|---:|');
    for (const w of workloads) {
      const q = results[w.id].ratios;
      lines.push(`| ${w.id} | ${fr(q.vmmOverVmmBase)} | ${fr(q.vmmOverVmmBasePairedMedian)} | ${fr(q.vmmBaseOverQemuPairedMedian)} |`);
    }
    lines.push('');
    lines.push(
      `vmm-base: ${opts.baseVmm} (dist/main.js sha256 ${sha256File(path.join(opts.baseVmm, 'dist/main.js')).slice(0, 16)}), run in place.`,
    );
  }
  for (const w of workloads) lines.push(`- ${w.id}: \`${guestCmdline(w, 'N')}\` (${w.label}: ${w.frameBytes} bytes on the TAP)`);
  if (mixed) lines.push('**Warning: a binary under test changed during the run; the figures mix builds.**');
  lines.push(binariesLine(bins, stamps0));
  lines.push(
    `${loadLine(load0, load1)} ` +
      `"quiet runs": runs that started with the host at most ${fmt(100 * opts.quietBusy, 0)}% busy over the second before ` +
      `(--quiet-wait ${opts.quietWaitS} s${opts.quietWaitS ? ' to wait for that' : ': no waiting'}).`,
  );
  process.stdout.write(`${lines.join('\n')}\n`);

  const json = {
    ...jsonHeader('net-bench', load0, load1),
    versions: {
      ...stamps0,
      guestElfSha256: guestSha,
      guestElfCopiedFrom: path.relative(ROOT, GUEST_ELF),
      vmm: vmmVersion(bins),
      vmmTreeRebuiltDuringRun: treeRebuilt,
      vmmProps: opts.vmmProps || undefined,
      baseVmm: opts.baseVmm ? { dir: opts.baseVmm, mainJsSha256: sha256File(path.join(opts.baseVmm, 'dist/main.js')) } : undefined,
    },
    versionsAtEnd: mixed ? stamps1 : undefined,
    network: {
      netns: NETNS,
      tap: TAP,
      tapQueueLen: net.qlen,
      hostIp: HOST_IP,
      guestIp: GUEST_IP,
      guestMac: GUEST_MAC,
      rxWindow: opts.window,
    },
    params: {
      reps,
      scale: opts.scale,
      runners: opts.runners,
      quietWaitS: opts.quietWaitS,
      quietBusy: opts.quietBusy,
      workloads: workloads.map(({ label, ...w }) => w),
    },
    method:
      'tx: net-host recv, UDP socket (recvmmsg) with SO_TIMESTAMPNS; pps = (seq_last - seq_first) / (t_last - t_first) over the datagrams it received; ' +
      'rx: net-host send (sendmmsg) keeps at most rxWindow frames queued on the TAP (tx_packets + tx_dropped counters), ' +
      'pps = frames the VMM read between the samples at 1% and 100% of the count / time between them; ' +
      'Mbit/s = pps * frameBytes * 8 / 1e6 (frame on the TAP, no FCS); medians over reps; runs interleaved by (rep, workload, runner)',
    results,
  };
  writeJson(opts.out, json);
  cleanup();
}

main().catch((e) => fail((e && e.stack) || String(e)));
