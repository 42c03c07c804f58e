#!/usr/bin/env node
/*
 * virtio-scsi command path benchmark, no guest: libs/virtio-scsi-core's
 * VirtioScsiDevice with an scsi-hd (libs/scsi ScsiDisk over libs/block's
 * RawFileBackend) on a 64 MiB page-cached image, driven by a driver-side mock
 * queue in the same process: READ(10) commands (4 KiB random at depth 1 and
 * 8, 256 KiB and 1 MiB sequential at depth 1), each completion's interrupt
 * handing the next command to the device, as a polling guest would. The
 * backend alone (RawFileBackend.readv, the same pattern) runs interleaved
 * with it, so that "device µs/cmd" is what the SCSI path adds per command
 * (chain walk, request parsing, CDB, the disk's checks, response, used ring):
 * the part of blk-bench --device scsi that does not depend on how fast this
 * host wakes threads. Reports medians over rounds of wall time and of this
 * process's CPU time per command.
 *
 *   node tools/bench/scsi-path-bench.js [--rounds N] [--aio io_uring|threads] [--workloads LIST] [--out FILE.json]
 */
'use strict';
const path = require('path');
const os = require('os');
const fs = require('fs');
process.env.TS_NODE_PROJECT ??= path.resolve(__dirname, '../../libs/virtio-scsi-core/tsconfig.json');
require('ts-node').register({ transpileOnly: true });
const { RawFileBackend } = require('../../libs/block/src/index.ts');
const { ScsiDisk } = require('../../libs/scsi/src/index.ts');
const { VirtioScsiDevice } = require('../../libs/virtio-scsi-core/src/index.ts');
const { virtioUapi: V } = require('../../libs/virtio-core/src/index.ts');
const { fakeMemory, MockDriverQueue } = require('../../libs/virtio-core/src/testing.ts');

const MIB = 1 << 20;
const IMAGE_MIB = 64;
const QSIZE = 256;
/* virtio_scsi_cmd_req with a 32-byte CDB, virtio_scsi_cmd_resp with 96 bytes of sense. */
const REQ_LEN = 51;
const RESP_LEN = 108;
const WORKLOADS = [
  ['rand4k-d1', 4096, 1, 20000],
  ['rand4k-d8', 4096, 8, 40000],
  ['seq256k-d1', 256 * 1024, 1, 3000],
  ['seq1m-d1', MIB, 1, 1000],
];

const argv = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = argv.indexOf(name);
  return i < 0 ? dflt : argv[i + 1];
};
const ROUNDS = Number(opt('--rounds', 5));
const AIO = opt('--aio', 'io_uring');
const OUT = opt('--out', undefined);
const ONLY = opt('--workloads', undefined)?.split(',');
if (ONLY) WORKLOADS.splice(0, WORKLOADS.length, ...WORKLOADS.filter(([id]) => ONLY.includes(id)));

/* One command slot per depth: request header, response and data buffer in the fake guest RAM. */
function slotLayout(i, bs) {
  const base = 0x100000 + i * (bs + 0x2000);
  return { req: base, resp: base + 0x100, data: base + 0x1000 };
}

function read10(mem, at, lba, blocks, tag) {
  mem.fill(at, REQ_LEN, 0);
  mem.write(at, [1, 0, 0x40, 0]); // LUN 0, flat addressing
  mem.writeU64(at + 8, BigInt(tag));
  mem.write(at + 19, [0x28, 0, lba >>> 24, (lba >>> 16) & 0xff, (lba >>> 8) & 0xff, lba & 0xff, 0, blocks >> 8, blocks & 0xff, 0]);
}

/* Runs n commands through the device; resolves with [wall µs/cmd, CPU µs/cmd]. */
function runDevice(image, bs, depth, n) {
  const mem = fakeMemory(0x100000 + depth * (bs + 0x2000) + MIB);
  const dev = new VirtioScsiDevice(mem, { id: 'scsi0', numQueues: 1, eventIdx: false });
  const backend = new RawFileBackend(image, true, false, AIO);
  dev.target.attach(0, new ScsiDisk({ backend, readonly: true, serial: 'BENCH' }));
  const reqq = new MockDriverQueue(mem, QSIZE, 0x10000);
  const ctrl = new MockDriverQueue(mem, 16, 0x8000);
  const S = V;
  dev.writeStatus(S.VIRTIO_CONFIG_S_ACKNOWLEDGE | S.VIRTIO_CONFIG_S_DRIVER);
  dev.writeDriverFeatures(0, dev.readDeviceFeatures(0));
  dev.writeDriverFeatures(1, dev.readDeviceFeatures(1));
  dev.writeStatus(S.VIRTIO_CONFIG_S_ACKNOWLEDGE | S.VIRTIO_CONFIG_S_DRIVER | S.VIRTIO_CONFIG_S_FEATURES_OK);
  ctrl.program(dev.queues[0]);
  reqq.program(dev.queues[2]);
  dev.writeStatus(S.VIRTIO_CONFIG_S_ACKNOWLEDGE | S.VIRTIO_CONFIG_S_DRIVER | S.VIRTIO_CONFIG_S_FEATURES_OK | S.VIRTIO_CONFIG_S_DRIVER_OK);
  const blocks = (IMAGE_MIB * MIB) / 512;
  const per = bs / 512;
  let x = 12345;
  let issued = 0;
  let done = 0;
  const headSlot = new Map();
  const submit = (slot) => {
    const s = slotLayout(slot, bs);
    const lba = bs === 4096 ? ((x = (x * 1103515245 + 12345) >>> 0) % (blocks / per)) * per : (issued * per) % blocks;
    read10(mem, s.req, lba, per, ++issued);
    const head = reqq.addChain([
      { addr: s.req, len: REQ_LEN },
      { addr: s.resp, len: RESP_LEN, write: true },
      { addr: s.data, len: bs, write: true },
    ]);
    headSlot.set(head, slot);
  };
  return new Promise((resolve, reject) => {
    let t0;
    let c0;
    dev.interrupt = {
      signalConfig: () => reject(new Error(`device needs reset: ${dev.brokenReason}`)),
      signalQueue: () => {
        let more = 0;
        for (const u of reqq.takeUsed()) {
          const s = slotLayout(headSlot.get(u.id), bs);
          if (mem.readU8(s.resp + 11) !== 0 || mem.readU8(s.resp + 10) !== 0) return reject(new Error('command failed'));
          done++;
          if (issued < n) {
            submit(headSlot.get(u.id));
            more++;
          }
        }
        if (more) dev.notify(2, 'ioeventfd');
        if (done === n) {
          const cpu = process.cpuUsage(c0);
          const wall = Number(process.hrtime.bigint() - t0) / 1e3;
          dev.destroy().then(() => resolve([wall / n, (cpu.user + cpu.system) / n]), reject);
        }
      },
    };
    t0 = process.hrtime.bigint();
    c0 = process.cpuUsage();
    for (let i = 0; i < depth; i++) submit(i);
    dev.notify(2, 'ioeventfd');
  });
}

/* The backend alone, same pattern: [wall µs/req, CPU µs/req]. */
async function runEngine(image, bs, depth, n) {
  const be = new RawFileBackend(image, true, false, AIO);
  const blocks = (IMAGE_MIB * MIB) / bs;
  let x = 12345;
  let issued = 0;
  const t0 = process.hrtime.bigint();
  const c0 = process.cpuUsage();
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
  const cpu = process.cpuUsage(c0);
  const wall = Number(process.hrtime.bigint() - t0) / 1e3;
  be.close();
  return [wall / n, (cpu.user + cpu.system) / n];
}

(async () => {
  const image = path.join(os.tmpdir(), `scsi-path-bench-${process.pid}.img`);
  const fd = fs.openSync(image, 'w');
  const chunk = Buffer.alloc(MIB, 0x5a);
  for (let i = 0; i < IMAGE_MIB; i++) fs.writeSync(fd, chunk);
  fs.closeSync(fd);
  const load0 = os.loadavg()[0];
  const res = {};
  try {
    // One warm-up pass (JIT), not recorded.
    for (const [, bs, depth] of WORKLOADS) await runDevice(image, bs, depth, 500);
    for (let round = 0; round < ROUNDS; round++)
      for (const [id, bs, depth, n] of WORKLOADS) {
        const r = (res[id] ??= { device: [], engine: [] });
        r.device.push(await runDevice(image, bs, depth, n));
        r.engine.push(await runEngine(image, bs, depth, n));
      }
  } finally {
    fs.rmSync(image, { force: true });
  }
  const median = (a) => a.slice().sort((p, q) => p - q)[a.length >> 1];
  const f = (v) => v.toFixed(1);
  console.log(`aio=${AIO}, ${ROUNDS} rounds, medians`);
  console.log(
    '| workload | path wall µs/cmd | path CPU µs/cmd | backend alone wall µs/req | backend CPU µs/req | device CPU µs/cmd (path - backend) |',
  );
  console.log('|---|---:|---:|---:|---:|---:|');
  const summary = {};
  for (const [id] of WORKLOADS) {
    const r = res[id];
    const s = {
      pathWall: median(r.device.map((v) => v[0])),
      pathCpu: median(r.device.map((v) => v[1])),
      engineWall: median(r.engine.map((v) => v[0])),
      engineCpu: median(r.engine.map((v) => v[1])),
    };
    summary[id] = s;
    console.log(`| ${id} | ${f(s.pathWall)} | ${f(s.pathCpu)} | ${f(s.engineWall)} | ${f(s.engineCpu)} | ${f(s.pathCpu - s.engineCpu)} |`);
  }
  const load1 = os.loadavg()[0];
  console.log(`Host load average (1 min) ${load0.toFixed(1)} at start, ${load1.toFixed(1)} at end; ${os.cpus().length} CPUs.`);
  if (OUT) fs.writeFileSync(OUT, JSON.stringify({ aio: AIO, rounds: ROUNDS, load: [load0, load1], summary, samples: res }, null, 1));
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
