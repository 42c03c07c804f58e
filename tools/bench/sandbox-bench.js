#!/usr/bin/env node
/*
 * The cost of `--sandbox on` (the seccomp filter, docs/security.md): the same
 * VMM, guest and virtio-blk disk run with --sandbox off and on, interleaved.
 *
 * - 4 KiB random-read IOPS at depth 1 (the guest kit's blk-bench, irq=0: a
 *   ring-3 polling loop, so the VMM's path dominates). Each mode is timed end
 *   to end for two request counts; per-request cost =
 *   (median t(N2) - median t(N1)) / (N2 - N1), which cancels start-up.
 * - Start-up: spawn to the first byte of guest serial output on stdout
 *   (filter assembly and installation happen in between).
 *
 *   node tools/bench/sandbox-bench.js [--reps 3] [--startup-reps 7] [--n1 2000] [--n2 27000] [--out FILE.json]
 *
 * Output: a markdown table on stdout, JSON in tools/bench/results/sandbox-bench.json.
 */
'use strict';

const { spawn } = require('child_process');
const crypto = require('crypto');
const fs = require('fs');
const os = require('os');
const path = require('path');
const { ROOT, BENCH_DIR, GUEST_ELF, median, round } = require('./lib/common');

const VMM_BIN = path.join(ROOT, 'apps/vmm/bin/vmm.js');
const MIB = 1024 * 1024;

function options(argv) {
  const o = { reps: 3, startupReps: 7, n1: 2000, n2: 27000, out: path.join(BENCH_DIR, 'results/sandbox-bench.json') };
  const names = { '--reps': 'reps', '--startup-reps': 'startupReps', '--n1': 'n1', '--n2': 'n2', '--out': 'out' };
  for (let i = 0; i < argv.length; i++) {
    const key = names[argv[i]];
    const v = argv[i + 1];
    if (!key || v === undefined) {
      process.stderr.write(`sandbox-bench: unknown option or missing value: ${argv[i]} (see the head of this file)\n`);
      process.exit(2);
    }
    if (key === 'out') o.out = v;
    else {
      if (!/^\d+$/.test(v) || Number(v) < 1) {
        process.stderr.write(`sandbox-bench: ${argv[i]} needs a positive integer, got '${v}'\n`);
        process.exit(2);
      }
      o[key] = Number(v);
    }
    i++;
  }
  if (o.n2 <= o.n1) {
    process.stderr.write('sandbox-bench: --n2 must be larger than --n1\n');
    process.exit(2);
  }
  return o;
}

/* Runs the VMM once; resolves with wall time to exit, time to the first stdout byte, and the output. */
function runVmm(args) {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const p = spawn(process.execPath, [VMM_BIN, 'run', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    let firstMs;
    p.stdout.on('data', (d) => {
      if (firstMs === undefined) firstMs = Number(process.hrtime.bigint() - t0) / 1e6;
      out += d;
    });
    p.stderr.on('data', (d) => (err += d));
    p.on('error', reject);
    p.on('close', (code) => resolve({ code, out, err, firstMs, wallMs: Number(process.hrtime.bigint() - t0) / 1e6 }));
  });
}

async function main() {
  const o = options(process.argv.slice(2));
  for (const f of [VMM_BIN, GUEST_ELF]) if (!fs.existsSync(f)) throw new Error(`${f} is missing: build first (npx nx run-many -t build)`);
  const image = path.join(os.tmpdir(), `sandbox-bench-${process.pid}.img`);
  const fd = fs.openSync(image, 'w');
  for (let i = 0; i < 64; i++) fs.writeSync(fd, crypto.randomBytes(MIB));
  fs.closeSync(fd);
  const load0 = os.loadavg();
  try {
    const vmmArgs = (sandbox, count) => [
      '--memory',
      '256M',
      '--kernel',
      GUEST_ELF,
      '--serial',
      'stdio',
      '--sandbox',
      sandbox,
      '--cmdline',
      `test=blk-bench mode=randread bs=4096 count=${count} depth=1 irq=0`,
      '--device',
      `virtio-blk,id=d0,file=${image}`,
    ];
    const checked = async (sandbox, count) => {
      const r = await runVmm(vmmArgs(sandbox, count));
      if (r.code !== 0 || !r.out.includes('guest-kit: PASS test=blk-bench'))
        throw new Error(`--sandbox ${sandbox} count=${count}: exit ${r.code}\n${r.out.slice(-2000)}\n${r.err.slice(-2000)}`);
      return r;
    };
    const modes = ['off', 'on'];
    await checked('off', 1); // warm-up: page cache for the image and the binaries
    await checked('on', 1);
    const t = { off: { n1: [], n2: [], startup: [] }, on: { n1: [], n2: [], startup: [] } };
    for (let rep = 0; rep < o.startupReps; rep++)
      for (const m of rep % 2 ? [...modes].reverse() : modes) t[m].startup.push((await checked(m, 1)).firstMs);
    for (let rep = 0; rep < o.reps; rep++)
      for (const [k, n] of [
        ['n1', o.n1],
        ['n2', o.n2],
      ])
        for (const m of rep % 2 ? [...modes].reverse() : modes) {
          const r = await checked(m, n);
          t[m][k].push(r.wallMs);
          process.stderr.write(`sandbox-bench: rep ${rep + 1}/${o.reps} --sandbox ${m} count=${n}: ${r.wallMs.toFixed(0)} ms\n`);
        }
    const res = {};
    for (const m of modes) {
      const usPerReq = ((median(t[m].n2) - median(t[m].n1)) * 1000) / (o.n2 - o.n1);
      res[m] = { usPerReq: round(usPerReq, 2), iops: Math.round(1e6 / usPerReq), startupMs: round(median(t[m].startup), 1), samples: t[m] };
    }
    const ratios = {
      iopsOnOverOff: round(res.on.iops / res.off.iops, 3),
      startupOnOverOff: round(res.on.startupMs / res.off.startupMs, 3),
    };
    const load1 = os.loadavg();
    const lines = [
      '| --sandbox | µs/req (4 KiB rand read, depth 1) | IOPS | start-up to first serial byte (ms, median) |',
      '|---|---|---|---|',
      ...modes.map((m) => `| ${m} | ${res[m].usPerReq} | ${res[m].iops} | ${res[m].startupMs} |`),
      '',
      `IOPS on / off: ${ratios.iopsOnOverOff}; start-up on / off: ${ratios.startupOnOverOff}`,
      `N1=${o.n1} N2=${o.n2}, ${o.reps} reps, ${o.startupReps} start-up reps, interleaved; load average ${load0[0].toFixed(2)} -> ${load1[0].toFixed(2)}`,
    ];
    process.stdout.write(lines.join('\n') + '\n');
    fs.mkdirSync(path.dirname(o.out), { recursive: true });
    fs.writeFileSync(
      o.out,
      JSON.stringify(
        { benchmark: 'sandbox-bench', date: new Date().toISOString(), n1: o.n1, n2: o.n2, loadavg: [load0, load1], results: res, ratios },
        null,
        2,
      ),
    );
  } finally {
    fs.rmSync(image, { force: true });
  }
}

main().catch((e) => {
  process.stderr.write(`sandbox-bench: ${e.message}\n`);
  process.exit(1);
});
