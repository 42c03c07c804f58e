#!/usr/bin/env node
// `npm run demo`: boots the project's tiny Linux (tools/linux-guest) on the VMM
// with a virtio-blk disk holding an ext2 filesystem made here, a virtio-net NIC
// on a TAP inside a network namespace made here, and a QMP socket. The guest
// lists its devices, writes /hello.txt on the disk and pings the host; then the
// monitor shows the queues and quits the VM, and the host reads the file back
// from the image with e2fsprogs' debugfs. docs/getting-started.md explains each
// command. Everything it creates is removed at the end, also on Ctrl-C.
//
// Environment: DEMO_ID=NAME names the namespace and temp files (default: the
// pid); DEMO_KEEP=1 keeps the temp directory (disk image, console log).
'use strict';
const { spawn, spawnSync } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');
const qmp = require('./qmp');

const ROOT = path.resolve(__dirname, '..');
const VMM_BIN = path.join(ROOT, 'apps/vmm/bin/vmm.js');
const ID = (process.env.DEMO_ID || String(process.pid)).replace(/[^A-Za-z0-9]/g, '').slice(0, 12) || String(process.pid);
const NETNS = `tsvmm-demo-${ID}`;
const TAP = 'tsvmmdemo0'; // inside NETNS only
const HOST_CIDR = '10.0.77.1/24';
const GUEST_CIDR = '10.0.77.2/24';
const MAC = '52:54:00:de:00:01';
const SBIN_PATH = `${process.env.PATH || '/usr/bin:/bin'}:/usr/sbin:/sbin`;
const STEPS = 6;

class DemoError extends Error {}

let step = 0;
const say = (msg) => process.stdout.write(`demo: ${msg}\n`);
const stepLine = (msg) => say(`[${++step}/${STEPS}] ${msg}`);
const detail = (msg) => process.stdout.write(`        ${msg}\n`);
const showCmd = (argv) => detail(`$ ${argv.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, "'\\''")}'`)).join(' ')}`);

const state = { tmp: undefined, netns: false, vmm: undefined, cleaned: false };

function cleanup() {
  if (state.cleaned) return;
  state.cleaned = true;
  if (state.vmm && state.vmm.exitCode === null && state.vmm.signalCode === null) state.vmm.kill('SIGKILL');
  const removed = [];
  if (state.netns) {
    // Deleting the namespace also deletes the TAP in it.
    const r = spawnSync('ip', ['netns', 'del', NETNS], { stdio: 'pipe' });
    if (r.status === 0) removed.push(`network namespace ${NETNS} (with ${TAP})`);
    else say(`could not remove network namespace ${NETNS}: ${String(r.stderr).trim()} (remove it with: ip netns del ${NETNS})`);
  }
  if (state.tmp) {
    if (process.env.DEMO_KEEP) say(`kept ${state.tmp} (DEMO_KEEP)`);
    else {
      fs.rmSync(state.tmp, { recursive: true, force: true });
      removed.push(state.tmp);
    }
  }
  if (removed.length) say(`cleaned up: ${removed.join(', ')}`);
}

for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'])
  process.on(sig, () => {
    process.stdout.write('\n');
    say(`interrupted (${sig}); stopping the VM and cleaning up`);
    cleanup();
    process.exit(130);
  });

/** Runs a command to completion; throws DemoError with its own output if it fails. */
function run(cmd, args, what) {
  const r = spawnSync(cmd, args, { stdio: 'pipe', env: { ...process.env, PATH: SBIN_PATH } });
  if (r.error) throw new DemoError(`${what}: cannot run ${cmd}: ${r.error.message}`);
  if (r.status !== 0) throw new DemoError(`${what} failed (${cmd} exited ${r.status}):\n${String(r.stdout)}${String(r.stderr)}`);
  return String(r.stdout);
}

function which(cmd) {
  return SBIN_PATH.split(':').some((d) => d && fs.existsSync(path.join(d, cmd)));
}

/** Step 1: tools/linux-guest/build.sh, which reuses its cache when the inputs did not change. */
function buildLinux() {
  stepLine('the Linux guest: tools/linux-guest/build.sh (a 6.1 kernel and a busybox initramfs; cached by input hash)');
  showCmd(['bash', 'tools/linux-guest/build.sh']);
  return new Promise((resolve, reject) => {
    const p = spawn('bash', [path.join(ROOT, 'tools/linux-guest/build.sh')], { stdio: ['ignore', 'pipe', 'pipe'] });
    const started = Date.now();
    let out = '';
    let err = '';
    let buildLog;
    let ticker;
    p.stdout.on('data', (d) => (out += d));
    let partial = '';
    p.stderr.on('data', (d) => {
      err += d;
      partial += d;
      const lines = partial.split('\n');
      partial = lines.pop();
      for (const l of lines) {
        detail(l);
        const m = /building kernel in \S+ \(log: (\S+)\)/.exec(l);
        if (m && !ticker) {
          buildLog = m[1];
          detail('first build of the kernel: about 10 minutes on 2 busy CPUs (3 on an idle 8-CPU host); later runs reuse the cache');
          ticker = setInterval(() => {
            let compiled = 0;
            try {
              compiled = (fs.readFileSync(buildLog, 'latin1').match(/^\s+CC\s/gm) || []).length;
            } catch {
              // not there yet, or already moved into the cache
            }
            detail(`still building: ${Math.round((Date.now() - started) / 1000)} s, ${compiled} files compiled (of about 1000)`);
          }, 30_000);
        }
      }
    });
    p.on('error', (e) => reject(new DemoError(`cannot run tools/linux-guest/build.sh: ${e.message}`)));
    p.on('close', (code) => {
      if (ticker) clearInterval(ticker);
      if (code !== 0)
        return reject(
          new DemoError(
            `tools/linux-guest/build.sh exited ${code} (its output is above; rerun: bash tools/linux-guest/build.sh)${err ? '' : ''}`,
          ),
        );
      const files = Object.fromEntries(
        out
          .split('\n')
          .filter((l) => l.includes('='))
          .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
      );
      if (!files.bzImage || !files.initramfs)
        return reject(new DemoError(`tools/linux-guest/build.sh printed no bzImage= and initramfs= lines:\n${out}`));
      resolve(files);
    });
  });
}

/** Step 2: a sparse 64 MiB image with an empty ext2 filesystem. */
function makeDisk() {
  stepLine('the disk: a 64 MiB raw image with an ext2 filesystem (mke2fs from e2fsprogs)');
  const img = path.join(state.tmp, 'disk.img');
  fs.writeFileSync(img, '');
  fs.truncateSync(img, 64 * 2 ** 20);
  if (!which('mke2fs')) throw new DemoError('mke2fs not found: install e2fsprogs (apt-get install e2fsprogs)');
  const argv = ['mke2fs', '-q', '-F', '-t', 'ext2', '-L', 'demo', img];
  showCmd(argv);
  run(argv[0], argv.slice(1), 'mke2fs');
  return img;
}

/** Why the network part cannot run here, or undefined. */
function whyNoNetwork() {
  if (process.getuid && process.getuid() !== 0)
    return 'not root: creating a network namespace and a TAP needs CAP_NET_ADMIN (run `sudo npm run demo` for that part)';
  if (!fs.existsSync('/dev/net/tun'))
    return 'no /dev/net/tun on this host (the tun module is not loaded, or this container has no TAP support)';
  if (!which('ip')) return 'no `ip` command (install iproute2)';
  return undefined;
}

/** Step 3: NETNS with TAP (IFF_VNET_HDR) whose host side is HOST_CIDR; the VMM runs inside it. */
function makeNetwork() {
  stepLine(`the network: a TAP ${TAP} in a new network namespace ${NETNS}, host side ${HOST_CIDR}`);
  const why = whyNoNetwork();
  if (why) {
    say(`skipping the network: ${why}`);
    return false;
  }
  // A namespace left by a demo that was killed (SIGKILL) before it could clean up.
  for (const l of run('ip', ['netns', 'list'], 'ip netns list').split('\n')) {
    const m = /^tsvmm-demo-(\d+)\b/.exec(l);
    if (!m || l.split(' ')[0] === NETNS) continue;
    try {
      process.kill(Number(m[1]), 0);
    } catch {
      spawnSync('ip', ['netns', 'del', l.split(' ')[0]], { stdio: 'pipe' });
    }
  }
  const cmds = [
    ['ip', 'netns', 'add', NETNS],
    ['ip', '-n', NETNS, 'link', 'set', 'lo', 'up'],
    ['ip', '-n', NETNS, 'tuntap', 'add', TAP, 'mode', 'tap', 'vnet_hdr'],
    ['ip', '-n', NETNS, 'addr', 'add', HOST_CIDR, 'dev', TAP],
    ['ip', '-n', NETNS, 'link', 'set', TAP, 'up'],
  ];
  for (const argv of cmds) {
    showCmd(argv);
    const r = spawnSync(argv[0], argv.slice(1), { stdio: 'pipe' });
    if (argv[2] === 'add' && argv[1] === 'netns' && r.status === 0) state.netns = true;
    if (r.status !== 0 || r.error) {
      say(`skipping the network: \`${argv.join(' ')}\` failed: ${r.error ? r.error.message : String(r.stderr).trim()}`);
      cleanupNetns();
      return false;
    }
  }
  return true;
}

function cleanupNetns() {
  if (!state.netns) return;
  spawnSync('ip', ['netns', 'del', NETNS], { stdio: 'pipe' });
  state.netns = false;
}

/** Step 5: the monitor's view of every virtio device's queues, then quit. */
async function monitor(sock) {
  stepLine(`the monitor: QMP on ${sock}`);
  const q = await qmp.connect(sock);
  const devices = await q.execute('x-query-virtio');
  detail('x-query-virtio-queue-status for each queue of each device (the counters are since the driver set the queue up):');
  detail('device              queue  size  avail-idx  used-idx  chains  kicks-eventfd  interrupts-injected');
  for (const d of devices) {
    const id = d.path.split('/').pop();
    for (let n = 0; n < 64; n++) {
      let st;
      try {
        st = await q.execute('x-query-virtio-queue-status', { path: id, queue: n });
      } catch {
        break; // no such queue
      }
      const row = [
        `${id} (${d.name})`.padEnd(19),
        String(n).padStart(5),
        String(st.size).padStart(5),
        String(st['avail-idx']).padStart(10),
        String(st['used-idx']).padStart(9),
        String(st.chains).padStart(7),
        String(st['kicks-eventfd']).padStart(14),
        String(st['interrupts-injected']).padStart(20),
      ];
      detail(row.join(' '));
    }
  }
  // HMP's summary, where the VMM has one.
  try {
    const text = await q.execute('human-monitor-command', { 'command-line': 'info virtqueues' });
    if (typeof text === 'string' && text.trim() && !text.startsWith('Error'))
      for (const l of text.trimEnd().split('\n')) detail(`hmp| ${l}`);
  } catch {
    // not in this VMM
  }
  detail('quit: the guest has unmounted the disk; the VMM ends the VM');
  await q.execute('quit').catch(() => undefined); // the VMM may close the socket before replying
  q.close();
}

/** Step 4 (boot and the guest's part) and 5 (the monitor); resolves with the VMM's exit status. */
function bootLinux(files, img, withNet) {
  stepLine(
    'boot: the VMM runs Linux with the disk' +
      (withNet ? ', the NIC' : '') +
      ' and a QMP socket (about 1-3 minutes where the guest kernel is emulated)',
  );
  const sock = path.join(state.tmp, 'qmp.sock');
  const consoleLog = path.join(state.tmp, 'console.log');
  const base = fs.readFileSync(path.join(ROOT, 'tools/linux-guest/cmdline.txt'), 'utf8').trim();
  const params = [
    'tsvmm.test=demo',
    'tsvmm.disk=vda',
    'tsvmm.hold=120',
    ...(withNet ? [`tsvmm.ip=${GUEST_CIDR}`, `tsvmm.peer=${HOST_CIDR.split('/')[0]}`] : []),
  ];
  const argv = [
    VMM_BIN,
    'run',
    '--memory',
    '128M',
    '--kernel',
    files.bzImage,
    '--initrd',
    files.initramfs,
    '--cmdline',
    `${base} ${params.join(' ')}`,
    '--device',
    `virtio-blk,id=disk0,file=${img}`,
    ...(withNet ? ['--device', `virtio-net,id=net0,tap=${TAP},mac=${MAC}`] : []),
    '--qmp',
    `unix:${sock}`,
  ];
  const full = withNet ? ['ip', 'netns', 'exec', NETNS, process.execPath, ...argv] : [process.execPath, ...argv];
  showCmd(
    [...(withNet ? ['ip', 'netns', 'exec', NETNS] : []), 'node', ...argv.map((a) => a.replace(`${ROOT}/`, ''))].map((a) =>
      a.replace(base, '$(cat tools/linux-guest/cmdline.txt)'),
    ),
  );
  detail(`(the whole console goes to ${consoleLog}; below: the kernel's virtio lines and everything the guest's /init prints)`);
  const log = fs.openSync(consoleLog, 'w');
  return new Promise((resolve, reject) => {
    const p = spawn(full[0], full.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    state.vmm = p;
    const started = Date.now();
    let userland = false;
    let monitorDone;
    let failure;
    let partial = '';
    const tail = [];
    const ticker = setInterval(() => {
      if (!userland) detail(`(Linux is still booting: ${Math.round((Date.now() - started) / 1000)} s)`);
    }, 20_000);
    const deadline = setTimeout(() => {
      failure = new DemoError(`the guest did not finish within 15 minutes; last console lines:\n${tail.join('\n')}`);
      p.kill('SIGKILL');
    }, 900_000);
    p.stdout.on('data', (d) => {
      fs.writeSync(log, d);
      partial += d.toString('latin1');
      const lines = partial.split(/\r?\n/);
      partial = lines.pop();
      for (const l of lines) {
        tail.push(l);
        if (tail.length > 30) tail.shift();
        if (l.startsWith('linux-guest: init start')) userland = true;
        if (userland) {
          if (/^linux-guest: (init start|end|exit)/.test(l)) continue;
          process.stdout.write(`  guest| ${l.replace(/^linux-guest: demo /, '')}\n`);
        } else if (/Linux version|virtio|\bvd[a-z]\b|eth0/.test(l) && !/command line/i.test(l)) process.stdout.write(`  guest| ${l}\n`);
        if (l.startsWith('linux-guest: FAIL'))
          failure = new DemoError(`the guest's demo failed: ${l.replace(/^linux-guest: FAIL test=demo reason=/, '')}`);
        if (l.startsWith('linux-guest: demo done') && !monitorDone)
          monitorDone = monitor(sock).catch((e) => {
            failure = e instanceof DemoError ? e : new DemoError(`monitor: ${e.message}`); // QmpError: one line, no stack
            p.kill('SIGKILL');
          });
      }
    });
    p.stderr.on('data', (d) => {
      // Linux's 8250 driver probes COM2-COM4, which this machine does not have: the VMM's notes on that are left out.
      for (const l of String(d).trimEnd().split('\n')) if (!/unclaimed port/.test(l)) process.stdout.write(`    vmm| ${l}\n`);
    });
    p.on('error', (e) => reject(new DemoError(`cannot start the VMM: ${e.message}`)));
    p.on('close', async (code, signal) => {
      clearInterval(ticker);
      clearTimeout(deadline);
      fs.closeSync(log);
      if (monitorDone) await monitorDone;
      if (failure) return reject(failure);
      if (!monitorDone)
        return reject(
          new DemoError(`the VMM exited (${signal || code}) before the guest's demo was done; last console lines:\n${tail.join('\n')}`),
        );
      detail(`the VMM exited with status ${code} after ${Math.round((Date.now() - started) / 1000)} s`);
      resolve(code);
    });
  });
}

/** Step 6: the host reads the guest's file from the image. */
function readBack(img) {
  stepLine('the host reads the disk image: debugfs (e2fsprogs) prints /hello.txt; e2fsck -fn checks the filesystem');
  if (!which('debugfs') || !which('e2fsck')) throw new DemoError('debugfs or e2fsck not found: install e2fsprogs');
  const cat = ['debugfs', '-R', 'cat /hello.txt', img];
  showCmd(cat);
  const text = run(cat[0], cat.slice(1), 'debugfs');
  if (!text.trim()) throw new DemoError(`/hello.txt is not in ${img} (debugfs printed nothing)`);
  for (const l of text.trimEnd().split('\n')) detail(`| ${l}`);
  const fsck = ['e2fsck', '-fn', img];
  showCmd(fsck);
  const r = spawnSync(fsck[0], fsck.slice(1), { stdio: 'pipe', env: { ...process.env, PATH: SBIN_PATH } });
  const lastLine = String(r.stdout).trim().split('\n').pop();
  if (r.status !== 0) throw new DemoError(`e2fsck -fn found problems (exit ${r.status}):\n${r.stdout}${r.stderr}`);
  detail(`| ${lastLine} (exit 0: clean)`);
  return text.trim();
}

async function main() {
  say('tsvmm boots a real Linux guest with a disk, a network and a monitor (docs/getting-started.md explains each step)');
  if (!fs.existsSync(VMM_BIN) || !fs.existsSync(path.join(ROOT, 'apps/vmm/dist/main.js')))
    throw new DemoError('the VMM is not built: run `npm run setup` (or `npm run demo`, which runs it first)');
  if (!fs.existsSync('/dev/kvm'))
    throw new DemoError('no /dev/kvm on this host: the VMM needs KVM (a bare-metal Linux host, or a VM with nested virtualization)');
  try {
    fs.accessSync('/dev/kvm', fs.constants.R_OK | fs.constants.W_OK);
  } catch (e) {
    throw new DemoError(
      `cannot open /dev/kvm (${e.code}): the VMM needs read and write access to it (add your user to its group, e.g. \`sudo usermod -aG kvm $USER\`, or run \`sudo npm run demo\`)`,
    );
  }
  const files = await buildLinux();
  state.tmp = fs.mkdtempSync(path.join(os.tmpdir(), `tsvmm-demo-${ID}-`));
  const img = makeDisk();
  const withNet = makeNetwork();
  await bootLinux(files, img, withNet);
  const text = readBack(img);
  cleanup();
  say(
    `done: Linux wrote "${text}" on its virtio-blk disk${withNet ? ' and pinged the host over virtio-net' : ' (the network part was skipped, see above)'}; the monitor showed its queues and ended the VM`,
  );
}

main().then(
  () => process.exit(0),
  (e) => {
    say(`ERROR: ${e instanceof DemoError ? e.message : e.stack}`);
    cleanup();
    process.exit(1);
  },
);
