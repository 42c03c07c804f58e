#!/usr/bin/env node
/*
 * Block engine benchmark, no guest: libs/block's RawFileBackend reading a
 * 64 MiB page-cached image with aio=io_uring and aio=threads, interleaved,
 * 5 rounds; prints the median µs per request of each and their ratio. It
 * isolates the engine (submit, completion, promise) from the device and the
 * notify/interrupt path that blk-bench measures.
 *
 *   node tools/bench/engine-bench.js
 */
'use strict';
const path = require('path');
const os = require('os');
const fs = require('fs');
process.env.TS_NODE_PROJECT ??= path.resolve(__dirname, '../../libs/block/tsconfig.json');
require('ts-node').register({ transpileOnly: true });
const { RawFileBackend } = require('../../libs/block/src/index.ts');

const MIB = 1 << 20;
const IMAGE_MIB = 64;
const WORKLOADS = [
  ['rand4k-d1', 4096, 1, 20000],
  ['rand4k-d8', 4096, 8, 40000],
  ['seq256k-d1', 256 * 1024, 1, 3000],
  ['seq1m-d1', MIB, 1, 1000],
];

async function run(image, aio, bs, depth, n) {
  const be = new RawFileBackend(image, true, false, aio);
  const blocks = (IMAGE_MIB * MIB) / bs;
  let x = 12345;
  let issued = 0;
  const t0 = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: depth }, async () => {
      const buf = [new Uint8Array(bs)];
      while (issued < n) {
        issued++;
        x = (x * 1103515245 + 12345) >>> 0;
        await be.readv(buf, (bs === 4096 ? x % blocks : issued % blocks) * bs);
      }
    }),
  );
  const us = Number(process.hrtime.bigint() - t0) / 1e3 / n;
  be.close();
  return us;
}

(async () => {
  const image = path.join(os.tmpdir(), `engine-bench-${process.pid}.img`);
  const fd = fs.openSync(image, 'w');
  const chunk = Buffer.alloc(MIB, 0x5a);
  for (let i = 0; i < IMAGE_MIB; i++) fs.writeSync(fd, chunk);
  fs.closeSync(fd);
  const load0 = os.loadavg()[0];
  const res = {};
  try {
    for (let round = 0; round < 5; round++)
      for (const [id, bs, depth, n] of WORKLOADS)
        for (const aio of ['io_uring', 'threads']) ((res[id] ??= {})[aio] ??= []).push(await run(image, aio, bs, depth, n));
  } finally {
    fs.rmSync(image, { force: true });
  }
  const median = (a) => a.slice().sort((p, q) => p - q)[a.length >> 1];
  console.log('| workload | io_uring µs/req | threads µs/req | threads / io_uring |');
  console.log('|---|---:|---:|---:|');
  for (const [id] of WORKLOADS) {
    const u = median(res[id].io_uring);
    const t = median(res[id].threads);
    console.log(`| ${id} | ${u.toFixed(1)} | ${t.toFixed(1)} | ${(t / u).toFixed(2)}x |`);
  }
  console.log(`Host load average (1 min) ${load0.toFixed(1)} at start, ${os.loadavg()[0].toFixed(1)} at end; ${os.cpus().length} CPUs.`);
})();
