#!/usr/bin/env node
/*
 * Block-I/O benchmark: what one virtio-blk (or, with --device scsi, one
 * virtio-scsi READ) request costs in our VMM (aio=io_uring, the default, and
 * aio=threads; with and without KVM ioeventfd on the notify register) compared
 * with QEMU (aio=threads, aio=io_uring, and aio=io_uring with an iothread) on
 * the same guest, and with plain pread() on the same image file from Node.
 *
 * The guest (tools/guest-kit, test=blk-bench) does `count` reads from its
 * virtio-blk disk (random or sequential, bs bytes, `depth` in flight) from a
 * ring-3 loop (native on this host) and exits through port 0xf4. Each runner
 * is timed end to end for two counts; per-request cost =
 * (median t(N2) - median t(N1)) / (N2 - N1), which cancels process start,
 * boot (SeaBIOS under QEMU) and device set-up.
 *
 *   node tools/bench/blk-bench.js [--device blk|scsi] [--reps 3] [--workloads LIST] [--counts WL[@RUNNER]=N1:N2,...]
 *                                 [--scale F] [--runners LIST] [--scaling] [--pin CPULIST] [--out FILE.json]
 *
 * --scaling (virtio-blk): multiqueue scaling, num-queues=2 (the guest's
 * `queues=2`: both queues busy at once, `depth` requests on each) against the
 * single-queue runs of the same placement: in-process, on one iothread, on two
 * iothreads (iothread-vq-mapping), and QEMU with aio=io_uring and its iothread.
 *
 * Results: a markdown table on stdout, JSON in tools/bench/results/blk-bench.json
 * (scsi-bench.json with --device scsi).
 */
'use strict';

const { execFileSync } = require('child_process');
const crypto = require('crypto');
const fs = require('fs');
const os = require('os');
const path = require('path');
const {
  ROOT,
  BENCH_DIR,
  GUEST_ELF,
  QEMU,
  createBench,
  pinned: pinnedOn,
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
} = require('./lib/common');

/*
 * The device under test. The guest kit's blk-bench and scsi-bench tests take the
 * same arguments and print the same lines (with their own prefix).
 */
/* QEMU's -drive for an aio engine; `iothread`: the controller runs in QEMU's iothread iot0. */
const qemuDrive = (image, aio) => ['-drive', `file=${image},if=none,id=d0,format=raw,cache=writeback,aio=${aio}`];
const IOTHREAD = ['-object', 'iothread,id=iot0'];
const DEVICES = {
  blk: {
    test: 'blk-bench',
    vmm: (image, ioeventfd, props) => ['--device', `virtio-blk,id=d0,file=${image}${ioeventfd ? '' : ',ioeventfd=off'}${props}`],
    qemuLabel: 'QEMU (KVM, virtio-blk-pci',
    qemu: (image, aio, iothread, devProps = '') => [
      ...(iothread ? IOTHREAD : []),
      ...qemuDrive(image, aio),
      '-device',
      `virtio-blk-pci,drive=d0,disable-legacy=on${iothread ? ',iothread=iot0' : ''}${devProps}`,
    ],
  },
  scsi: {
    test: 'scsi-bench',
    // iothread= belongs to the controller (its queues run there), the other properties to the LUN.
    vmm: (image, ioeventfd, props) => {
      const iothread = /,iothread=[^,]+/.exec(props)?.[0] ?? '';
      return [
        '--device',
        `virtio-scsi,id=scsi0${ioeventfd ? '' : ',ioeventfd=off'}${iothread}`,
        '--device',
        `scsi-hd,bus=scsi0,lun=0,file=${image}${props.replace(iothread, '')}`,
      ];
    },
    qemuLabel: 'QEMU (KVM, virtio-scsi-pci + scsi-hd',
    qemu: (image, aio, iothread) => [
      ...(iothread ? IOTHREAD : []),
      ...qemuDrive(image, aio),
      '-device',
      `virtio-scsi-pci,id=scsi0,disable-legacy=on${iothread ? ',iothread=iot0' : ''}`,
      '-device',
      'scsi-hd,bus=scsi0.0,lun=0,drive=d0',
    ],
  },
};
const DEVICE = (() => {
  const i = process.argv.findIndex((a) => a === '--device' || a.startsWith('--device='));
  if (i < 0) return 'blk';
  return process.argv[i].includes('=') ? process.argv[i].split('=')[1] : process.argv[i + 1];
})();
const DEV = DEVICES[DEVICE];
if (!DEV) {
  process.stderr.write(`blk-bench: --device: expected blk or scsi, got ${DEVICE}\n`);
  process.exit(2);
}
const DEFAULT_OUT = path.join(BENCH_DIR, `results/${DEV.test}.json`);
const MIB = 1024 * 1024;

/*
 * Workloads. The guest's blk-bench caps bs at 256 KiB (its I/O buffer) and
 * depth at queue size / 3 (21 with the default qsize=64); with bs = 256 KiB
 * every in-flight request shares the one buffer, so the sequential workload
 * uses 256 KiB at depth 1 rather than 1 MiB. irq=0: the ring-3 loop polls the
 * used ring and the device sends no interrupts (guest CPU cost per request is
 * native); irq=1 (the guest's default): the loop re-arms interrupts, and each
 * one is taken by the CPL0 handler, which this host emulates.
 */
const BLK_WORKLOADS = [
  {
    id: 'rand4k-d1',
    label: '4 KiB random read, depth 1',
    mode: 'randread',
    bs: 4096,
    depth: 1,
    irq: 0,
    counts: { 'vmm-on': [2000, 27000], 'vmm-off': [2000, 32000], qemu: [2000, 52000] },
  },
  {
    id: 'rand4k-d8',
    label: '4 KiB random read, depth 8',
    mode: 'randread',
    bs: 4096,
    depth: 8,
    irq: 0,
    counts: { 'vmm-on': [4000, 84000], 'vmm-off': [4000, 84000], qemu: [4000, 124000] },
  },
  {
    id: 'seq256k-d1',
    label: '256 KiB sequential read, depth 1',
    mode: 'seqread',
    bs: 262144,
    depth: 1,
    irq: 0,
    counts: { 'vmm-on': [1000, 17000], 'vmm-off': [1000, 13000], qemu: [1000, 25000] },
  },
  {
    id: 'rand4k-d1-irq',
    label: '4 KiB random read, depth 1, interrupts on',
    mode: 'randread',
    bs: 4096,
    depth: 1,
    irq: 1,
    counts: { 'vmm-on': [2000, 32000], 'vmm-off': [2000, 22000], qemu: [2000, 27000] },
  },
];
/* scsi-bench's buffer holds 1 MiB, so the sequential workload is the 1 MiB one virtio-scsi users quote. */
const SCSI_WORKLOADS = [
  ...BLK_WORKLOADS.filter((w) => w.id.startsWith('rand4k') || w.id === 'seq256k-d1'),
  {
    id: 'seq1m-d1',
    label: '1 MiB sequential read, depth 1',
    mode: 'seqread',
    bs: 1048576,
    depth: 1,
    irq: 0,
    counts: { 'vmm-on': [200, 2200], 'vmm-off': [200, 2200], qemu: [200, 3200] },
  },
];
/*
 * Multiqueue scaling (--scaling, virtio-blk only): each runner here runs the
 * guest with queues=2 on a num-queues=2 device, `depth` requests on each queue;
 * MQ2_BASE names the single-queue runner of the same placement it is divided by.
 * QEMU 7.2 has no per-queue iothread mapping (iothread-vq-mapping came in
 * QEMU 9), so its two queues share one iothread.
 */
const MQ2_BASE = {
  'vmm-mq2': 'vmm-on', // in-process
  'vmm-mq2-iot': 'vmm-iot', // both queues on iothread io0
  'vmm-mq2-iot2': 'vmm-iot', // iothread-vq-mapping=io0;io1: a queue per iothread (one queue on one iothread as the base)
  'qemu-mq2-uring': 'qemu-uring',
  'qemu-mq2-uring-iot': 'qemu-uring-iot',
};
const MQ2_RUNNERS = Object.keys(MQ2_BASE);
const MQ2_QEMU_RUNNERS = MQ2_RUNNERS.filter((id) => id.startsWith('qemu'));
const SCALING_RUNNERS = ['vmm-on', 'vmm-iot', 'vmm-mq2', 'vmm-mq2-iot', 'vmm-mq2-iot2', 'qemu-uring-iot', 'qemu-mq2-uring-iot'];
const SCALING_WORKLOADS = ['rand4k-d8', 'seq256k-d1'];

/* The new runners take the counts of their kin: vmm-threads those of vmm-on, every QEMU variant those of qemu. */
const WORKLOADS = (DEVICE === 'scsi' ? SCSI_WORKLOADS : BLK_WORKLOADS).map((w) => ({
  ...w,
  counts: {
    ...w.counts,
    'vmm-threads': w.counts['vmm-on'],
    'vmm-iot': w.counts['vmm-on'],
    'vmm-iot-poll': w.counts['vmm-on'],
    'vmm-base': w.counts['vmm-on'],
    'qemu-uring': w.counts.qemu,
    'qemu-uring-iot': w.counts.qemu,
    ...Object.fromEntries(MQ2_RUNNERS.map((id) => [id, id.startsWith('qemu') ? w.counts.qemu : w.counts['vmm-on']])),
  },
}));

const RUNNER_IDS = [
  'vmm-on',
  'vmm-threads',
  'vmm-off',
  'vmm-iot',
  'vmm-iot-poll',
  'vmm-base',
  'qemu',
  'qemu-uring',
  'qemu-uring-iot',
  ...MQ2_RUNNERS,
];
const QEMU_RUNNERS = ['qemu', 'qemu-uring', 'qemu-uring-iot'];

const USAGE = `usage: node tools/bench/blk-bench.js [options]
  --reps N          timed runs per runner, workload and count (default 3)
  --device blk|scsi virtio-blk (default) or virtio-scsi + scsi-hd (guest test scsi-bench)
  --workloads LIST  comma-separated subset of: ${WORKLOADS.map((w) => w.id).join(', ')} (default: all)
  --counts LIST     request counts N1:N2 for a workload (all runners) or one runner of it,
                    e.g. rand4k-d1=2000:22000,seq256k-d1@qemu=1000:30000
  --scale F         multiply every default count by F (e.g. 0.25 for a quick run)
  --runners LIST    comma-separated subset of: ${RUNNER_IDS.join(', ')} (default: all but the *-mq2 ones; vmm-base only with --base-vmm)
                    vmm-on: ioeventfd on, aio default (io_uring); vmm-threads: the same with aio=threads;
                    vmm-off: ioeventfd=off; vmm-iot: vmm-on with the device on --object iothread;
                    vmm-iot-poll: vmm-iot with poll-max-ns=32768 (or --poll-max-ns): the iothread polls;
                    vmm-base: vmm-on's settings on the --base-vmm build;
                    qemu: aio=threads; qemu-uring: aio=io_uring;
                    qemu-uring-iot: aio=io_uring and the controller in an iothread
                    (not by default, blk only) num-queues=2 with the guest's queues=2, depth per queue:
                    vmm-mq2: in-process; vmm-mq2-iot: both queues on iothread io0;
                    vmm-mq2-iot2: iothread-vq-mapping=io0;io1; qemu-mq2-uring[-iot]: as qemu-uring[-iot]
  --scaling         multiqueue scaling: runners ${SCALING_RUNNERS.join(',')}
                    and workloads ${SCALING_WORKLOADS.join(',')} unless --runners / --workloads say otherwise;
                    reports 2 queues / 1 queue per placement and ours / QEMU's best with 2 queues
  --base-vmm DIR    another build of the VMM (DIR/bin/vmm.js with its DIR/dist/, e.g. a copy taken before a change),
                    run as vmm-base interleaved with the others: before/after figures from the same host load
  --host-ms N       duration of each host pread measurement in ms (default 1000)
  --image PATH      use this existing raw image (at least 1 MiB) instead of creating
                    a ${256} MiB random one in /tmp (which is deleted at the end)
  --image-mib N     size of the created image in MiB (default 256)
  --keep-image      do not delete the created image
  --vmm-props STR   extra --device properties for both VMM runners (e.g. ",cache=none")
  --poll-max-ns N   vmm-iot-poll's poll-max-ns (default 32768, QEMU's default)
  --no-snapshot     run apps/vmm in place instead of a private copy of bin/vmm.js + dist/
  --timeout S       kill a run after S seconds (default 600)
  --pin CPULIST     run every child (and this process) under \`taskset -c CPULIST\`;
                    JSON goes to blk-bench-pin<CPULIST>.json
  --out FILE        JSON results path (default tools/bench/results/blk-bench.json)
  --help`;

const { tempFiles, cleanup, fail, usageError, parseFlags, arg, checkPrerequisites, checkTaskset, prepareBinaries, runProcess, writeJson } =
  createBench('blk-bench', USAGE);

function parseArgs(argv) {
  const opts = {
    reps: 3,
    workloads: WORKLOADS.map((w) => w.id),
    counts: {},
    scale: 1,
    runners: RUNNER_IDS.filter((r) => !MQ2_RUNNERS.includes(r)),
    hostMs: 1000,
    image: undefined,
    imageMib: 256,
    keepImage: false,
    timeoutS: 600,
    pin: undefined,
    out: undefined,
    vmmProps: '',
    snapshot: true,
    baseVmm: undefined,
  };
  const valued = [
    '--device',
    '--reps',
    '--workloads',
    '--counts',
    '--scale',
    '--runners',
    '--host-ms',
    '--image',
    '--image-mib',
    '--timeout',
    '--pin',
    '--out',
    '--vmm-props',
    '--base-vmm',
    '--poll-max-ns',
  ];
  const workloadIds = WORKLOADS.map((w) => w.id);
  parseFlags(argv, {
    valued,
    booleans: ['--keep-image', '--no-snapshot', '--scaling'],
    onFlag: (flag, value) => {
      const int = (v) => arg.int(flag, v);
      switch (flag) {
        case '--scaling':
          opts.scaling = true;
          break;
        case '--keep-image':
          opts.keepImage = true;
          break;
        case '--no-snapshot':
          opts.snapshot = false;
          break;
        case '--device':
          break; // read before parsing (DEVICE)
        case '--reps':
          opts.reps = int(value);
          break;
        case '--host-ms':
          opts.hostMs = int(value);
          break;
        case '--image-mib':
          opts.imageMib = int(value);
          break;
        case '--timeout':
          opts.timeoutS = int(value);
          break;
        case '--image':
          opts.image = path.resolve(value);
          break;
        case '--out':
          opts.out = path.resolve(value);
          break;
        case '--base-vmm':
          opts.baseVmm = path.resolve(value);
          break;
        case '--vmm-props':
          opts.vmmProps = arg.vmmProps(value);
          break;
        case '--poll-max-ns':
          opts.pollMaxNs = int(value);
          break;
        case '--scale':
          opts.scale = arg.scale(value);
          break;
        case '--pin':
          opts.pin = arg.pin(value);
          break;
        case '--workloads':
          opts.workloads = arg.list(flag, value, workloadIds, 'workload');
          break;
        case '--runners':
          opts.runners = arg.list(flag, value, RUNNER_IDS, 'runner');
          break;
        case '--counts':
          for (const item of value.split(',').filter(Boolean)) {
            const m = /^([\w-]+)(?:@([\w-]+))?=(\d+):(\d+)$/.exec(item);
            if (!m) usageError(`--counts: expected WORKLOAD[@RUNNER]=N1:N2, got ${item}`);
            if (!workloadIds.includes(m[1])) usageError(`--counts: unknown workload ${m[1]}`);
            if (m[2] !== undefined && !RUNNER_IDS.includes(m[2])) usageError(`--counts: unknown runner ${m[2]}`);
            for (const r of m[2] === undefined ? RUNNER_IDS : [m[2]]) opts.counts[`${m[1]}@${r}`] = [Number(m[3]), Number(m[4])];
          }
          break;
      }
    },
  });
  // --scaling: its runners and workloads, unless given.
  const given = (f) => argv.some((a) => a === f || a.startsWith(`${f}=`));
  if (opts.scaling) {
    if (DEVICE === 'scsi') usageError('--scaling: virtio-blk only (virtio-scsi has no iothread-vq-mapping)');
    if (!given('--runners')) opts.runners = SCALING_RUNNERS;
    if (!given('--workloads')) opts.workloads = SCALING_WORKLOADS;
  }
  if (DEVICE === 'scsi' && opts.runners.some((r) => MQ2_RUNNERS.includes(r)))
    usageError('--runners: the *-mq2 runners are virtio-blk only');
  if (opts.baseVmm === undefined) {
    if (argv.some((a) => a === '--runners' || a.startsWith('--runners=')) && opts.runners.includes('vmm-base'))
      usageError('--runners: vmm-base needs --base-vmm DIR');
    opts.runners = opts.runners.filter((r) => r !== 'vmm-base');
  } else if (!fs.existsSync(path.join(opts.baseVmm, 'bin/vmm.js'))) usageError(`--base-vmm ${opts.baseVmm}: no bin/vmm.js there`);
  if (opts.reps < 1) usageError('--reps must be at least 1');
  if (!opts.workloads.length || !opts.runners.length) usageError('nothing to run');
  if (opts.imageMib < 1) usageError('--image-mib must be at least 1');
  if (opts.out === undefined) opts.out = opts.pin === undefined ? DEFAULT_OUT : pinnedOut(DEFAULT_OUT, DEV.test, opts.pin);
  return opts;
}

/* ---------------- preparation ---------------- */

function checkBlkPrerequisites(opts) {
  checkPrerequisites({
    needVmm: opts.runners.some((r) => r.startsWith('vmm')),
    commands: opts.runners.some((r) => r.startsWith('qemu')) ? [[QEMU, ['--version']]] : [],
    withoutQemu: 'vmm-on,vmm-threads,vmm-off',
  });
}

/* Creates the random image (written once) or checks the given one. */
function prepareImage(opts) {
  if (opts.image !== undefined) {
    const st = fs.statSync(opts.image);
    if (st.size < MIB) fail(`--image ${opts.image}: smaller than 1 MiB`);
    return { path: opts.image, size: st.size, created: false, createMs: null };
  }
  const p = path.join(os.tmpdir(), `blk-bench-${process.pid}.img`);
  if (!opts.keepImage) tempFiles.push(p);
  const t0 = process.hrtime.bigint();
  const fd = fs.openSync(p, 'w');
  const chunk = Buffer.allocUnsafe(MIB);
  for (let i = 0; i < opts.imageMib; i++) {
    crypto.randomFillSync(chunk);
    fs.writeSync(fd, chunk, 0, MIB, i * MIB);
  }
  fs.closeSync(fd);
  return { path: p, size: opts.imageMib * MIB, created: true, createMs: Number(process.hrtime.bigint() - t0) / 1e6 };
}

/* Reads the whole image once so that every runner reads from the page cache. */
function warmImage(img) {
  const t0 = process.hrtime.bigint();
  const fd = fs.openSync(img.path, 'r');
  const buf = Buffer.allocUnsafe(MIB);
  for (let pos = 0; pos < img.size; pos += MIB) fs.readSync(fd, buf, 0, MIB, pos);
  fs.closeSync(fd);
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

/* Bytes of the image in the page cache (util-linux fincore), or null. */
function residentBytes(p) {
  try {
    const out = execFileSync('fincore', ['--bytes', '--noheadings', '--output', 'RES', p], { stdio: ['ignore', 'pipe', 'ignore'] });
    return Number(out.toString().trim());
  } catch {
    return null;
  }
}

/* ---------------- runners ---------------- */

function guestCmdline(w, count, queues = 1) {
  return `test=${DEV.test} mode=${w.mode} bs=${w.bs} count=${count} depth=${w.depth} irq=${w.irq}${queues > 1 ? ` queues=${queues}` : ''}`;
}

function makeRunners(vmmBin, guest, image, vmmProps, baseVmm, pollMaxNs = 32768) {
  const vmm =
    (ioeventfd, props = '', pre = [], bin = vmmBin, queues = 1) =>
    (w, n) => [
      process.execPath,
      [
        bin,
        'run',
        '--memory',
        '256M',
        '--kernel',
        guest,
        '--cmdline',
        guestCmdline(w, n, queues),
        '--serial',
        'stdio',
        ...pre,
        ...DEV.vmm(image, ioeventfd, props + vmmProps),
      ],
    ];
  const qemu =
    (aio, iothread, queues = 1) =>
    (w, n) => [
      QEMU,
      [
        '-enable-kvm',
        '-nographic',
        '-no-reboot',
        '-m',
        '256',
        '-kernel',
        guest,
        '-append',
        guestCmdline(w, n, queues),
        ...DEV.qemu(image, aio, iothread, queues > 1 ? `,num-queues=${queues}` : ''),
        '-device',
        'isa-debug-exit,iobase=0xf4,iosize=4',
      ],
    ];
  const passCode = 1; // isa-debug-exit: (0 << 1) | 1
  return [
    { id: 'vmm-on', label: 'our VMM, ioeventfd=on (aio default: io_uring)', cmd: vmm(true), passCode: 0 },
    { id: 'vmm-threads', label: 'our VMM, ioeventfd=on, aio=threads', cmd: vmm(true, ',aio=threads'), passCode: 0 },
    { id: 'vmm-off', label: 'our VMM, ioeventfd=off', cmd: vmm(false), passCode: 0 },
    {
      id: 'vmm-iot',
      label: 'our VMM, ioeventfd=on, data plane on --object iothread,id=io0',
      cmd: vmm(true, ',iothread=io0', ['--object', 'iothread,id=io0']),
      passCode: 0,
    },
    {
      id: 'vmm-iot-poll',
      label: `our VMM, as vmm-iot with poll-max-ns=${pollMaxNs} (the iothread polls)`,
      cmd: vmm(true, ',iothread=io0', ['--object', `iothread,id=io0,poll-max-ns=${pollMaxNs}`]),
      passCode: 0,
    },
    ...(baseVmm
      ? [
          {
            id: 'vmm-base',
            label: `base build (${baseVmm}), as vmm-on`,
            cmd: vmm(true, '', [], path.join(baseVmm, 'bin/vmm.js')),
            passCode: 0,
          },
        ]
      : []),
    { id: 'qemu', label: `${DEV.qemuLabel}, aio=threads)`, cmd: qemu('threads', false), passCode },
    { id: 'qemu-uring', label: `${DEV.qemuLabel}, aio=io_uring)`, cmd: qemu('io_uring', false), passCode },
    { id: 'qemu-uring-iot', label: `${DEV.qemuLabel}, aio=io_uring, iothread)`, cmd: qemu('io_uring', true), passCode },
    // Multiqueue scaling (--scaling): num-queues=2, the guest keeps both queues busy (queues=2).
    { id: 'vmm-mq2', label: 'our VMM, num-queues=2, in-process', cmd: vmm(true, ',num-queues=2', [], vmmBin, 2), passCode: 0, queues: 2 },
    {
      id: 'vmm-mq2-iot',
      label: 'our VMM, num-queues=2, both on iothread io0',
      cmd: vmm(true, ',num-queues=2,iothread=io0', ['--object', 'iothread,id=io0'], vmmBin, 2),
      passCode: 0,
      queues: 2,
    },
    {
      id: 'vmm-mq2-iot2',
      label: 'our VMM, num-queues=2, iothread-vq-mapping=io0;io1',
      cmd: vmm(
        true,
        ',num-queues=2,iothread-vq-mapping=io0;io1',
        ['--object', 'iothread,id=io0', '--object', 'iothread,id=io1'],
        vmmBin,
        2,
      ),
      passCode: 0,
      queues: 2,
    },
    { id: 'qemu-mq2-uring', label: `${DEV.qemuLabel}, num-queues=2, aio=io_uring)`, cmd: qemu('io_uring', false, 2), passCode, queues: 2 },
    {
      id: 'qemu-mq2-uring-iot',
      label: `${DEV.qemuLabel}, num-queues=2, aio=io_uring, one iothread)`,
      cmd: qemu('io_uring', true, 2),
      passCode,
      queues: 2,
    },
  ];
}

let pinList;
const pinned = (cmdArgs) => pinnedOn(cmdArgs, pinList);

/* The guest's two result lines (and with queues > 1 its per-queue lines), checked against what was asked for. */
function parseGuest(w, n, stdout, queues = 1) {
  const t = DEV.test;
  const a = new RegExp(`^${t} mode=(\\S+) bs=(\\d+) count=(\\d+) bytes=(\\d+)\\r?$`, 'm').exec(stdout);
  const b = new RegExp(`^${t} ring=(\\d+) depth=(\\d+) irq=(\\d) interrupts=(\\d+) notifies=(\\d+) errors=(\\d+)\\r?$`, 'm').exec(stdout);
  if (!new RegExp(`^guest-kit: PASS test=${t}\\r?$`, 'm').test(stdout)) {
    const f = /^guest-kit: FAIL .*$/m.exec(stdout);
    return { problem: f ? f[0].trim() : `no "guest-kit: PASS test=${t}" line` };
  }
  if (!a || !b) return { problem: `no ${t} result lines` };
  if (a[1] !== w.mode || Number(a[2]) !== w.bs || Number(a[3]) !== n)
    return { problem: `guest reported "${a[0].trim()}", expected mode=${w.mode} bs=${w.bs} count=${n}` };
  if (Number(b[2]) !== w.depth || Number(b[3]) !== w.irq)
    return { problem: `guest reported "${b[0].trim()}", expected depth=${w.depth} irq=${w.irq}` };
  // queues > 1: every queue completed requests (given as many as queues), and together all of them.
  const perQueue = [];
  for (let q = 0; q < (queues > 1 ? queues : 0); q++) {
    const m = new RegExp(`^${t} queue=${q} count=(\\d+) interrupts=\\d+ notifies=\\d+\\r?$`, 'm').exec(stdout);
    if (!m) return { problem: `no "${t} queue=${q}" line` };
    perQueue.push(Number(m[1]));
  }
  if (perQueue.length && ((n >= queues && perQueue.some((c) => c === 0)) || perQueue.reduce((x, y) => x + y) !== n))
    return { problem: `per-queue counts ${perQueue.join(', ')}: expected every queue busy, ${n} in all` };
  return { ring: Number(b[1]), interrupts: Number(b[4]), notifies: Number(b[5]), errors: Number(b[6]), perQueue };
}

async function runChecked(runner, w, n, timeoutS) {
  const [cmd, args] = pinned(runner.cmd(w, n));
  const r = await runProcess(cmd, args, { timeoutS });
  const g = parseGuest(w, n, r.stdout, runner.queues);
  if (r.timedOut || r.code !== runner.passCode || g.problem) {
    fail(
      `${runner.id}: \`${describe(cmd, args)}\` ` +
        (r.timedOut
          ? `timed out after ${timeoutS} s`
          : `exited with ${r.signal ? `signal ${r.signal}` : `code ${r.code}`} (PASS is ${runner.passCode})`) +
        (g.problem ? `; ${g.problem}` : '') +
        `\n--- stdout (tail) ---\n${tail(r.stdout)}\n--- stderr (tail) ---\n${tail(r.stderr)}\n--------------` +
        (r.signal === 'SIGBUS' ? SIGBUS_NOTE : ''),
    );
  }
  return { wallMs: r.wallMs, ...g };
}

/* ---------------- host ceiling: pread from Node ---------------- */

/* The guest's LCG, so the host reads the same kind of offsets. */
function randomBlocks(count, blocks, seed) {
  const out = new Float64Array(count);
  let x = BigInt(seed);
  const mask = (1n << 64n) - 1n;
  const nb = BigInt(blocks);
  for (let i = 0; i < count; i++) {
    x = (x * 6364136223846793005n + 1442695040888963407n) & mask;
    out[i] = Number((x >> 33n) % nb);
  }
  return out;
}

/*
 * Synchronous preads (fs.readSync into one preallocated buffer) with the
 * workload's pattern for about `ms` milliseconds: the host's own ceiling for
 * one thread that waits for each read (depth 1 whatever the workload's depth).
 */
function hostPread(img, w, ms, rep) {
  const blocks = Math.floor(img.size / w.bs);
  const buf = Buffer.allocUnsafe(w.bs);
  const offs = w.mode === 'randread' ? randomBlocks(1 << 16, blocks, 1 + rep) : null;
  const fd = fs.openSync(img.path, 'r');
  try {
    const limit = BigInt(Math.round(ms * 1e6));
    const t0 = process.hrtime.bigint();
    let ops = 0;
    let elapsed = 0n;
    for (;;) {
      for (let k = 0; k < 64; k++, ops++) {
        const blk = offs ? offs[ops & 0xffff] : ops % blocks;
        const got = fs.readSync(fd, buf, 0, w.bs, blk * w.bs);
        if (got !== w.bs) throw new Error(`short read at block ${blk}: ${got}`);
      }
      elapsed = process.hrtime.bigint() - t0;
      if (elapsed >= limit) break;
    }
    const usPerReq = Number(elapsed) / 1e3 / ops;
    return { ops, ms: Number(elapsed) / 1e6, usPerReq };
  } finally {
    fs.closeSync(fd);
  }
}

/* ---------------- multiqueue scaling (--scaling) ---------------- */

/*
 * --scaling's default counts: QEMU's N2 - N1 three times the usual, because
 * its boot varies by seconds here and its 2-queue runs are short (at the
 * usual counts its paired per-request figures went below zero).
 */
function scalingCounts(opts, runnerId, [n1, n2]) {
  return opts.scaling && runnerId.startsWith('qemu') ? [n1, n1 + 3 * (n2 - n1)] : [n1, n2];
}

/*
 * One workload's scaling: per 2-queue runner its IOPS over its single-queue
 * base's (MQ2_BASE), from the medians and from the minima; ours over QEMU's
 * best 2-queue runner.
 */
function mq2Scaling(entry) {
  const ran = (id) => Boolean(entry.runners[id]);
  const iops = (id) => (ran(id) ? entry.runners[id].iops : null);
  const fromMin = (id) => (ran(id) && entry.runners[id].usPerReqFromMinima > 0 ? 1e6 / entry.runners[id].usPerReqFromMinima : null);
  const ratio = (a, b) => (a && b ? round(a / b, 3) : null);
  const best = (ids, f) => ids.filter((id) => f(id)).reduce((a, b) => (a === null || f(b) > f(a) ? b : a), null);
  const ours = MQ2_RUNNERS.filter((id) => !MQ2_QEMU_RUNNERS.includes(id) && ran(id));
  const qemuBest = best(MQ2_QEMU_RUNNERS, iops);
  const qemuBestMin = best(MQ2_QEMU_RUNNERS, fromMin);
  const oursBest = best(ours, iops);
  const perRunner = {};
  for (const id of MQ2_RUNNERS.filter(ran)) {
    const base = MQ2_BASE[id];
    perRunner[id] = {
      base: ran(base) ? base : null,
      iops1: iops(base),
      iops2: iops(id),
      scaling: ratio(iops(id), iops(base)),
      scalingFromMinima: ratio(fromMin(id), fromMin(base)),
      overQemuBest: MQ2_QEMU_RUNNERS.includes(id) ? null : ratio(iops(id), iops(qemuBest)),
      overQemuBestFromMinima: MQ2_QEMU_RUNNERS.includes(id) ? null : ratio(fromMin(id), qemuBestMin && fromMin(qemuBestMin)),
    };
  }
  return { perRunner, qemuBest, oursBest, oursBestOverQemuBest: ratio(iops(oursBest), iops(qemuBest)) };
}

function mq2Report(workloads, results) {
  const fr = (x) => (x === null || x === undefined ? 'n/a' : `${fmt(x, 2)}x`);
  const fi = (x) => (x === null || x === undefined ? 'n/a' : fmtInt(x));
  const lines = [
    'Multiqueue scaling (num-queues=2, the guest keeping both queues busy, `depth` on each; base: the single-queue runner of the same placement):',
    '',
    '| workload | 2-queue runner (base) | IOPS 1 queue | IOPS 2 queues | 2 queues / 1 queue | from minima | / QEMU best, 2 queues | from minima |',
    '|---|---|---:|---:|---:|---:|---:|---:|',
  ];
  for (const w of workloads) {
    const sc = results[w.id].scaling;
    if (!sc) continue;
    for (const [id, x] of Object.entries(sc.perRunner)) {
      lines.push(
        `| ${w.id} | ${id} (${x.base ?? 'base not run'}) | ${fi(x.iops1)} | ${fi(x.iops2)} | ${fr(x.scaling)} | ${fr(x.scalingFromMinima)} | ` +
          `${MQ2_QEMU_RUNNERS.includes(id) ? '' : fr(x.overQemuBest)} | ${MQ2_QEMU_RUNNERS.includes(id) ? '' : fr(x.overQemuBestFromMinima)} |`,
      );
    }
  }
  lines.push('');
  for (const w of workloads) {
    const sc = results[w.id].scaling;
    if (sc && sc.oursBest && sc.qemuBest)
      lines.push(
        `- ${w.id}: ours best with 2 queues (${sc.oursBest}) / QEMU's best with 2 queues (${sc.qemuBest}): ${fr(sc.oursBestOverQemuBest)}`,
      );
  }
  lines.push(
    '- QEMU 7.2 has no per-queue iothread mapping (iothread-vq-mapping came in QEMU 9): with an iothread both of its queues share it.',
  );
  return lines;
}

/* ---------------- build stamps ---------------- */

function buildStamps() {
  return { gitHead: gitHead(), ...qemuStamps() };
}

/* ---------------- main ---------------- */

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  checkBlkPrerequisites(opts);
  pinList = opts.pin;
  if (pinList !== undefined) checkTaskset(pinList, ['-a', '-p', '-c', pinList, String(process.pid)]);
  for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => fail(`interrupted (${sig})`));

  const bins = prepareBinaries({ usesVmm: opts.runners.some((r) => r.startsWith('vmm')), snapshot: opts.snapshot });
  const { guest, guestSha, snap, vmmBin } = bins;
  const img = prepareImage(opts);
  const warmMs = warmImage(img);
  const resident0 = residentBytes(img.path);
  const runners = makeRunners(vmmBin, guest, img.path, opts.vmmProps, opts.baseVmm, opts.pollMaxNs).filter((r) =>
    opts.runners.includes(r.id),
  );
  // Counts per (workload, runner): the defaults (times --scale) unless --counts names them.
  const workloads = WORKLOADS.filter((w) => opts.workloads.includes(w.id)).map((w) => {
    const counts = {};
    for (const r of runners) {
      const [n1, n2] =
        opts.counts[`${w.id}@${r.id}`] ?? scalingCounts(opts, r.id, w.counts[r.id]).map((n) => Math.max(1, Math.round(n * opts.scale)));
      if (n2 <= n1 || n1 < 1) usageError(`${w.id}@${r.id}: need 1 <= N1 < N2, got ${n1}:${n2}`);
      counts[r.id] = { n1, n2 };
    }
    if (w.bs > img.size) usageError(`${w.id}: bs ${w.bs} is larger than the image`);
    return { ...w, counts };
  });
  const { reps } = opts;
  const load0 = os.loadavg();
  const stamps0 = buildStamps();
  process.stderr.write(
    `blk-bench: image ${img.path} (${img.size / MIB} MiB${img.created ? `, random, written in ${fmt(img.createMs / 1000, 1)} s` : ''}; ` +
      `read once in ${fmt(warmMs / 1000, 2)} s${resident0 === null ? '' : `, ${fmt((100 * resident0) / img.size, 1)}% in page cache`}); ` +
      `guest copy ${guest} (sha256 ${guestSha.slice(0, 16)})` +
      `${snap ? `; VMM copy ${snap.dir} (main.js sha256 ${(snap.files['dist/main.js'] || '').slice(0, 16)})` : ''}; ${reps} runs each` +
      `${opts.pin === undefined ? '' : `; taskset -c ${opts.pin}`}\n`,
  );
  for (const w of workloads) {
    const cs = runners.map((r) => `${r.id} ${w.counts[r.id].n1}:${w.counts[r.id].n2}`).join(', ');
    process.stderr.write(`  ${w.id}: ${guestCmdline(w, 'N')}; N1:N2 ${cs}\n`);
  }

  // Warm-up: one short unmeasured run of each runner (page cache for the binaries, lazy binding).
  for (const r of runners) await runChecked(r, workloads[0], 1, opts.timeoutS);

  // Timed runs, interleaved (rep, workload, count, runner) so slow drift in host load hits every cell alike;
  // the host pread ceiling is measured once per rep and access pattern in the same sequence.
  const samples = {};
  const host = {};
  for (const w of workloads) {
    samples[w.id] = {};
    host[w.id] = [];
    for (const r of runners) samples[w.id][r.id] = { n1: [], n2: [] };
  }
  const t0 = Date.now();
  for (let rep = 0; rep < reps; rep++) {
    for (const w of workloads) {
      for (const which of ['n1', 'n2']) {
        for (const r of runners) {
          const n = w.counts[r.id][which];
          const res = await runChecked(r, w, n, opts.timeoutS);
          samples[w.id][r.id][which].push(res);
          process.stderr.write(
            `  ${w.id.padEnd(13)} ${r.id.padEnd(7)} count=${String(n).padEnd(6)} run ${rep + 1}/${reps}: ${fmt(res.wallMs, 0).padStart(6)} ms` +
              `  interrupts=${res.interrupts} notifies=${res.notifies}  [${fmt((Date.now() - t0) / 1000, 0)} s]\n`,
          );
        }
      }
      const same = workloads.find((x) => x.mode === w.mode && x.bs === w.bs);
      if (same === w) {
        const h = hostPread(img, w, opts.hostMs, rep);
        host[w.id].push(h);
        process.stderr.write(`  ${w.id.padEnd(13)} host    pread ${w.bs} B x ${h.ops}: ${fmt(h.usPerReq, 2)} µs/read\n`);
      }
    }
  }
  const load1 = os.loadavg();
  const resident1 = residentBytes(img.path);
  const stamps1 = buildStamps();
  // With the snapshot a rebuild of apps/vmm does not touch the runs; without it (or if QEMU was upgraded) the runs mix builds.
  const { vmmTree1, treeRebuilt, mixed } = bins.end(stamps0, stamps1);
  if (mixed) process.stderr.write('blk-bench: warning: the VMM or QEMU changed during the run; the runs mix builds\n');
  else if (treeRebuilt)
    process.stderr.write('blk-bench: note: apps/vmm was rebuilt during the run; every run used the copy taken at start\n');

  // ---- derived figures ----
  const results = {};
  for (const w of workloads) {
    const hostOf = host[w.id].length ? host[w.id] : host[workloads.find((x) => x.mode === w.mode && x.bs === w.bs).id];
    const hostUs = median(hostOf.map((h) => h.usPerReq));
    const entry = {
      label: w.label,
      guestCmdline: guestCmdline(w, 'N'),
      runners: {},
      hostPread: {
        usPerReq: hostOf.map((h) => round(h.usPerReq, 4)),
        reads: hostOf.map((h) => h.ops),
        medianUsPerReq: round(hostUs, 4),
        iops: Math.round(1e6 / hostUs),
        mbPerSec: round((w.bs * 1e6) / hostUs / 1e6, 2),
        note: w.depth > 1 ? 'synchronous pread, one at a time (depth 1)' : 'synchronous pread',
      },
    };
    for (const r of runners) {
      const s = samples[w.id][r.id];
      const { n1, n2 } = w.counts[r.id];
      const ms1 = s.n1.map((x) => x.wallMs);
      const ms2 = s.n2.map((x) => x.wallMs);
      const m1 = median(ms1);
      const m2 = median(ms2);
      const us = ((m2 - m1) * 1000) / (n2 - n1);
      const paired = ms1.map((t1, i) => ((ms2[i] - t1) * 1000) / (n2 - n1));
      const perReq = (k) => median(s.n2.map((x) => x[k] / n2));
      // Other load only ever slows a run down, so the fastest run at each count is the least disturbed one.
      const usMin = ((Math.min(...ms2) - Math.min(...ms1)) * 1000) / (n2 - n1);
      entry.runners[r.id] = {
        label: r.label,
        n1,
        n2,
        command: describe(...pinned(r.cmd(w, n2))),
        wallMs: { [n1]: ms1.map((x) => round(x, 3)), [n2]: ms2.map((x) => round(x, 3)) },
        medianMs: { [n1]: round(m1, 3), [n2]: round(m2, 3) },
        usPerReq: round(us, 4),
        usPerReqPairedMin: round(Math.min(...paired), 4),
        usPerReqPairedMax: round(Math.max(...paired), 4),
        usPerReqFromMinima: round(usMin, 4),
        iops: us > 0 ? Math.round(1e6 / us) : null,
        mbPerSec: us > 0 ? round((w.bs * 1e6) / us / 1e6, 2) : null,
        fixedCostMs: round(m1 - (n1 * us) / 1000, 1),
        interruptsPerReq: round(perReq('interrupts'), 4),
        notifiesPerReq: round(perReq('notifies'), 4),
        guestCounters: {
          [n1]: s.n1.map(({ interrupts, notifies }) => ({ interrupts, notifies })),
          [n2]: s.n2.map(({ interrupts, notifies }) => ({ interrupts, notifies })),
        },
      };
    }
    const iops = (id) => (entry.runners[id] ? entry.runners[id].iops : null);
    const ratio = (a, b) => (a && b ? round(a / b, 3) : null);
    // QEMU's best configuration for this workload (highest median IOPS of the QEMU runners that ran).
    const qemuIds = QEMU_RUNNERS.filter((id) => iops(id));
    const qemuBest = qemuIds.length ? qemuIds.reduce((a, b) => (iops(b) > iops(a) ? b : a)) : null;
    entry.qemuBest = qemuBest;
    entry.ratios = {
      vmmOnOverQemu: ratio(iops('vmm-on'), iops('qemu')),
      vmmOffOverQemu: ratio(iops('vmm-off'), iops('qemu')),
      vmmOnOverHostPread: ratio(iops('vmm-on'), entry.hostPread.iops),
      qemuOverHostPread: ratio(iops('qemu'), entry.hostPread.iops),
      vmmOnOverQemuBest: qemuBest && ratio(iops('vmm-on'), iops(qemuBest)),
      vmmThreadsOverQemuBest: qemuBest && ratio(iops('vmm-threads'), iops(qemuBest)),
      vmmOnOverVmmThreads: ratio(iops('vmm-on'), iops('vmm-threads')),
      vmmIotOverVmmOn: ratio(iops('vmm-iot'), iops('vmm-on')),
      vmmBaseOverQemuBest: qemuBest && ratio(iops('vmm-base'), iops(qemuBest)),
      vmmOnOverVmmBase: ratio(iops('vmm-on'), iops('vmm-base')),
    };
    // The same from (min t(N2) - min t(N1)) / (N2 - N1): each runner's least disturbed runs.
    const best = (id) =>
      entry.runners[id] && entry.runners[id].usPerReqFromMinima > 0 ? 1e6 / entry.runners[id].usPerReqFromMinima : null;
    const qemuBestMin =
      QEMU_RUNNERS.map(best)
        .filter((x) => x)
        .reduce((a, b) => Math.max(a, b), 0) || null;
    entry.ratiosFromMinima = {
      vmmOnOverQemu: ratio(best('vmm-on'), best('qemu')),
      vmmOffOverQemu: ratio(best('vmm-off'), best('qemu')),
      vmmOnOverQemuBest: ratio(best('vmm-on'), qemuBestMin),
      vmmThreadsOverQemuBest: ratio(best('vmm-threads'), qemuBestMin),
      vmmBaseOverQemuBest: ratio(best('vmm-base'), qemuBestMin),
      vmmOnOverVmmBase: ratio(best('vmm-on'), best('vmm-base')),
    };
    if (runners.some((r) => MQ2_RUNNERS.includes(r.id))) entry.scaling = mq2Scaling(entry);
    results[w.id] = entry;
  }

  // What one interrupt adds: the same workload with and without irq, per interrupt taken.
  let irqCost = null;
  if (results['rand4k-d1'] && results['rand4k-d1-irq']) {
    irqCost = {};
    for (const r of runners) {
      const a = results['rand4k-d1'].runners[r.id];
      const b = results['rand4k-d1-irq'].runners[r.id];
      irqCost[r.id] =
        b.interruptsPerReq > 0.05
          ? {
              median: round((b.usPerReq - a.usPerReq) / b.interruptsPerReq, 2),
              minima: round((b.usPerReqFromMinima - a.usPerReqFromMinima) / b.interruptsPerReq, 2),
            }
          : null;
    }
  }

  // ---- report ----
  const lines = [];
  const pinNote = opts.pin === undefined ? 'not pinned' : `pinned: taskset -c ${opts.pin}`;
  const pct = (b) => (b === null ? 'n/a' : `${fmt((100 * b) / img.size, 1)}%`);
  lines.push(`### Block-I/O benchmark (guest-kit ${DEV.test}, ring-3 loop; ${reps} runs, medians; ${pinNote})`);
  lines.push('');
  lines.push(
    `Image: ${img.size / MIB} MiB${img.created ? ' of random data' : ''}, read once before measuring so every runner reads from the page cache ` +
      `(resident: ${pct(resident0)} at start, ${pct(resident1)} at end). Per-request cost = (median t(N2) - median t(N1)) / (N2 - N1) ` +
      `over whole-process wall clock, so boot and set-up cancel. MB/s = 10^6 bytes/s.`,
  );
  lines.push('');
  lines.push(
    '| workload | runner | N1 / N2 | t(N1) s | t(N2) s | µs/req | range (paired) | µs/req from minima | IOPS | MB/s | irq/req | notify/req |',
  );
  lines.push('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const w of workloads) {
    const e = results[w.id];
    for (const r of runners) {
      const x = e.runners[r.id];
      lines.push(
        `| ${w.id} | ${x.label} | ${x.n1} / ${x.n2} | ${fmt(x.medianMs[x.n1] / 1000, 2)} | ${fmt(x.medianMs[x.n2] / 1000, 2)} | ${fmt(x.usPerReq, 1)} | ` +
          `${fmt(x.usPerReqPairedMin, 1)}–${fmt(x.usPerReqPairedMax, 1)} | ${fmt(x.usPerReqFromMinima, 1)} | ${x.iops === null ? 'n/a' : fmtInt(x.iops)} | ${x.mbPerSec === null ? 'n/a' : fmt(x.mbPerSec, 1)} | ` +
          `${fmt(x.interruptsPerReq, 2)} | ${fmt(x.notifiesPerReq, 2)} |`,
      );
    }
    const h = e.hostPread;
    lines.push(
      `| ${w.id} | host pread (Node fs.readSync${w.depth > 1 ? ', depth 1' : ''}) | | | | ${fmt(h.medianUsPerReq, 2)} | | ${fmt(Math.min(...h.usPerReq), 2)} | ${fmtInt(h.iops)} | ${fmt(h.mbPerSec, 1)} | | |`,
    );
  }
  lines.push('');
  lines.push(
    '| workload | vmm-on / qemu | vmm-off / qemu | vmm-on / host pread | qemu / host pread | vmm-on / qemu, minima | vmm-off / qemu, minima |',
  );
  lines.push('|---|---:|---:|---:|---:|---:|---:|');
  const fr = (x) => (x === null ? 'n/a' : `${fmt(x, 2)}x`);
  for (const w of workloads) {
    const q = results[w.id].ratios;
    const b = results[w.id].ratiosFromMinima;
    lines.push(
      `| ${w.id} | ${fr(q.vmmOnOverQemu)} | ${fr(q.vmmOffOverQemu)} | ${fr(q.vmmOnOverHostPread)} | ${fr(q.qemuOverHostPread)} | ` +
        `${fr(b.vmmOnOverQemu)} | ${fr(b.vmmOffOverQemu)} |`,
    );
  }
  lines.push('');
  lines.push(
    '| workload | QEMU best (median IOPS) | vmm-on (io_uring) / QEMU best | vmm-threads / QEMU best | vmm-on / vmm-threads | vmm-on / QEMU best, minima | vmm-threads / QEMU best, minima |',
  );
  lines.push('|---|---|---:|---:|---:|---:|---:|');
  for (const w of workloads) {
    const e = results[w.id];
    const q = e.ratios;
    const b = e.ratiosFromMinima;
    lines.push(
      `| ${w.id} | ${e.qemuBest ?? 'n/a'} | ${fr(q.vmmOnOverQemuBest ?? null)} | ${fr(q.vmmThreadsOverQemuBest ?? null)} | ${fr(q.vmmOnOverVmmThreads)} | ` +
        `${fr(b.vmmOnOverQemuBest)} | ${fr(b.vmmThreadsOverQemuBest)} |`,
    );
  }
  if (runners.some((r) => r.id === 'vmm-base')) {
    lines.push('');
    lines.push(
      '| workload | vmm-base / QEMU best | vmm-on / QEMU best | vmm-on / vmm-base | same from minima: base / best, on / best, on / base |',
    );
    lines.push('|---|---:|---:|---:|---|');
    for (const w of workloads) {
      const q = results[w.id].ratios;
      const b = results[w.id].ratiosFromMinima;
      lines.push(
        `| ${w.id} | ${fr(q.vmmBaseOverQemuBest ?? null)} | ${fr(q.vmmOnOverQemuBest ?? null)} | ${fr(q.vmmOnOverVmmBase)} | ` +
          `${fr(b.vmmBaseOverQemuBest)}, ${fr(b.vmmOnOverQemuBest)}, ${fr(b.vmmOnOverVmmBase)} |`,
      );
    }
  }
  if (workloads.some((w) => results[w.id].scaling)) lines.push('', ...mq2Report(workloads, results));
  lines.push('');
  lines.push(
    'Ratios are of IOPS (higher is better for the first runner). "QEMU best": the QEMU runner (aio=threads, aio=io_uring, aio=io_uring with an iothread) with the highest median IOPS for that workload. "minima": from (min t(N2) - min t(N1)) / (N2 - N1), each runner\'s ' +
      'least disturbed runs (other load only slows a run down); on a busy host they say more than the medians. ' +
      'Range (paired): the per-request figure of run i at N1 with run i at N2, lowest and highest; a wide range means a noisy host.',
  );
  if (irqCost) {
    lines.push(
      `Interrupt path (rand4k-d1-irq against rand4k-d1: extra µs per request / interrupts per request; guest handler at CPL0, emulated here): ` +
        runners
          .map(
            (r) =>
              `${r.id} ${irqCost[r.id] === null ? 'n/a' : `${fmt(irqCost[r.id].median, 0)} µs/interrupt (minima: ${fmt(irqCost[r.id].minima, 0)})`}`,
          )
          .join(', ') +
        '.',
    );
  }
  for (const w of workloads) lines.push(`- ${w.id}: \`${guestCmdline(w, 'N')}\` (${w.label})`);
  if (mixed) lines.push('**Warning: a binary under test changed during the run; the figures mix builds.**');
  lines.push(
    binariesLine(bins, stamps0) +
      (treeRebuilt && snap ? ' apps/vmm was rebuilt during the run; the runs all used the copy taken at start.' : ''),
  );
  lines.push(loadLine(load0, load1));
  process.stdout.write(`${lines.join('\n')}\n`);

  const json = {
    ...jsonHeader(DEV.test, load0, load1),
    versions: {
      ...stamps0,
      guestElfSha256: guestSha, // the private copy every run used
      guestElfCopiedFrom: path.relative(ROOT, GUEST_ELF),
      vmm: vmmVersion(bins),
      vmmTreeRebuiltDuringRun: treeRebuilt,
      vmmTreeAtEnd: treeRebuilt ? vmmTree1 : undefined,
      vmmProps: opts.vmmProps || undefined,
      baseVmm: opts.baseVmm,
    },
    versionsAtEnd: mixed ? stamps1 : undefined,
    image: {
      path: img.path,
      bytes: img.size,
      content: img.created ? 'random (crypto.randomFillSync), written once' : 'given with --image',
      createMs: img.createMs === null ? null : round(img.createMs, 1),
      warmReadMs: round(warmMs, 1),
      residentBytesStart: resident0,
      residentBytesEnd: resident1,
      deleted: img.created && !opts.keepImage,
    },
    params: {
      reps,
      scale: opts.scale,
      pin: opts.pin ?? null,
      hostMs: opts.hostMs,
      runners: opts.runners,
      workloads: workloads.map(({ label, ...w }) => w),
    },
    method:
      'wall clock (process.hrtime) from spawn to child exit; usPerReq = (median t(N2) - median t(N1)) / (N2 - N1); iops = 1e6 / usPerReq; ' +
      "mbPerSec = bs * iops / 1e6; fixedCostMs = median t(N1) - N1 * usPerReq; interrupts/notifies per request from the guest's own counters in the N2 runs (median); " +
      'usPerReqFromMinima = (min t(N2) - min t(N1)) / (N2 - N1); ratiosFromMinima = the IOPS ratios from that; ' +
      'usPerInterrupt.median = (usPerReq(rand4k-d1-irq) - usPerReq(rand4k-d1)) / interruptsPerReq(rand4k-d1-irq), .minima the same from usPerReqFromMinima; ' +
      'host pread = fs.readSync into a preallocated buffer for hostMs per rep, same offsets pattern (guest LCG for random), median over reps; ' +
      'runs interleaved by (rep, workload, count, runner); scaling (the *-mq2 runners: num-queues=2, guest queues=2) = iops(2-queue runner) / iops(its single-queue base), also from minima',
    results,
    usPerInterrupt: irqCost ?? undefined,
  };
  writeJson(opts.out, json);
  cleanup();
}

main().catch((e) => fail((e && e.stack) || String(e)));
