/**
 * vhost-user-scsi: a vhost-user back-end process serving SCSI disks (raw
 * image files) to a VMM's virtio-scsi front-end (ours: --device
 * vhost-scsi,backend=user,socket=PATH; QEMU: -device vhost-user-scsi-pci).
 *
 *   vhost-user-scsi --socket PATH --lun 0:file=IMG[,readonly=on][,serial=S][,logical-block-size=512|4096][,aio=io_uring|threads]
 *                   [--lun 1:file=...] [--num-queues N] [--control PATH]
 *
 * The control socket answers one JSON line per request line: `stats` (kicks
 * seen and calls sent per ring, connection state, device counters) and
 * `quit`.
 */
import * as fs from 'fs';
import * as net from 'net';
import { AIO_MODES, AioMode, BackendOpenError, RawFileBackend } from '@tsvmm/block';
import { ScsiDisk, ScsiTarget } from '@tsvmm/scsi';
import { MAX_LUN } from '@tsvmm/virtio-scsi-core';
import { VhostUserScsiServer } from './server';

export const USAGE = `usage: vhost-user-scsi --socket PATH --lun N:file=IMG[,readonly=on][,serial=S][,logical-block-size=512|4096][,aio=io_uring|threads] ...
                       [--num-queues N] [--control PATH] [--no-log-shmfd] [--verbose]
  --socket      unix socket to listen on for the front-end (the VMM connects to it)
  --lun         a SCSI disk on target 0, LUN N (repeatable); aio: the I/O engine (default io_uring where the kernel allows it)
  --num-queues  request queues offered (default 1, at most 16)
  --control     unix socket answering "stats" and "quit" with one JSON line each
  --no-log-shmfd  do not offer VHOST_USER_PROTOCOL_F_LOG_SHMFD (no dirty logging: the VMM refuses to migrate)
  --verbose     log every vhost-user request
`;

export interface LunArg {
  lun: number;
  file: string;
  readonly: boolean;
  serial?: string;
  blockSize: number;
  aio?: AioMode;
}

export interface Args {
  socket: string;
  control?: string;
  numQueues: number;
  luns: LunArg[];
  verbose: boolean;
  /** Offer VHOST_USER_PROTOCOL_F_LOG_SHMFD and VHOST_F_LOG_ALL (default; --no-log-shmfd turns it off). */
  logShmfd: boolean;
}

export class UsageError extends Error {}

export function parseArgs(argv: string[]): Args {
  let socket: string | undefined;
  let control: string | undefined;
  let numQueues = 1;
  let verbose = false;
  let logShmfd = true;
  const luns: LunArg[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      const v = argv[++i];
      if (v === undefined) throw new UsageError(`${a} needs a value`);
      return v;
    };
    if (a === '--socket') socket = val();
    else if (a === '--control') control = val();
    else if (a === '--num-queues') {
      numQueues = Number(val());
      if (!Number.isInteger(numQueues) || numQueues < 1 || numQueues > 16) throw new UsageError('--num-queues must be 1..16');
    } else if (a === '--lun') luns.push(parseLun(val()));
    else if (a === '--verbose') verbose = true;
    else if (a === '--no-log-shmfd') logShmfd = false;
    else if (a === '--help' || a === '-h') throw new UsageError('');
    else throw new UsageError(`unknown argument '${a}'`);
  }
  if (!socket) throw new UsageError('--socket PATH is required');
  if (!luns.length) throw new UsageError('at least one --lun is required');
  const seen = new Set<number>();
  for (const l of luns) {
    if (seen.has(l.lun)) throw new UsageError(`--lun ${l.lun} given twice`);
    seen.add(l.lun);
  }
  return { socket, control, numQueues, luns, verbose, logShmfd };
}

function parseLun(s: string): LunArg {
  const m = /^(\d+):(.*)$/.exec(s);
  if (!m) throw new UsageError(`--lun ${s}: expected N:file=PATH[,...]`);
  const lun = Number(m[1]);
  if (lun > MAX_LUN) throw new UsageError(`--lun ${s}: LUN must be at most ${MAX_LUN}`);
  const out: LunArg = { lun, file: '', readonly: false, blockSize: 512 };
  for (const kv of m[2].split(',')) {
    const eq = kv.indexOf('=');
    const k = eq < 0 ? kv : kv.slice(0, eq);
    const v = eq < 0 ? '' : kv.slice(eq + 1);
    if (k === 'file') out.file = v;
    else if (k === 'readonly') {
      if (!['on', 'off', 'true', 'false'].includes(v)) throw new UsageError(`--lun ${s}: readonly must be on or off`);
      out.readonly = v === 'on' || v === 'true';
    } else if (k === 'serial') {
      if (!/^[\x21-\x7e]{1,36}$/.test(v))
        throw new UsageError(`--lun ${s}: serial must be 1 to 36 printable ASCII characters without spaces`);
      out.serial = v;
    } else if (k === 'aio') {
      if (!(AIO_MODES as readonly string[]).includes(v)) throw new UsageError(`--lun ${s}: aio must be io_uring or threads`);
      out.aio = v as AioMode;
    } else if (k === 'logical-block-size') {
      out.blockSize = Number(v);
      if (out.blockSize !== 512 && out.blockSize !== 4096) throw new UsageError(`--lun ${s}: logical-block-size must be 512 or 4096`);
    } else throw new UsageError(`--lun ${s}: unknown property '${k}'`);
  }
  if (!out.file) throw new UsageError(`--lun ${s}: file=PATH is required`);
  return out;
}

function log(m: string): void {
  process.stderr.write(`vhost-user-scsi: ${m}\n`);
}

function openTarget(luns: LunArg[]): ScsiTarget {
  const target = new ScsiTarget();
  for (const l of luns) {
    let backend: RawFileBackend;
    try {
      backend = new RawFileBackend(l.file, l.readonly, false, l.aio);
    } catch (e) {
      if (e instanceof BackendOpenError) throw new UsageError(`--lun ${l.lun}: file=${e.message}`);
      throw e;
    }
    if (backend.aioFallback) log(`LUN ${l.lun}: ${backend.aioFallback}`);
    if (backend.size < l.blockSize) throw new UsageError(`--lun ${l.lun}: ${l.file} is smaller than one ${l.blockSize}-byte block`);
    target.attach(l.lun, new ScsiDisk({ backend, readonly: l.readonly, serial: l.serial ?? `LUN${l.lun}`, logicalBlockSize: l.blockSize }));
  }
  return target;
}

export async function main(argv: string[]): Promise<number> {
  let args: Args;
  let target: ScsiTarget;
  try {
    args = parseArgs(argv);
    target = openTarget(args.luns);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    if (e.message) process.stderr.write(`vhost-user-scsi: ${e.message}\n`);
    process.stderr.write(USAGE);
    return e.message ? 2 : 0;
  }
  for (const p of [args.socket, args.control]) if (p && fs.existsSync(p)) fs.unlinkSync(p);
  const server = new VhostUserScsiServer({
    socketPath: args.socket,
    target,
    numQueues: args.numQueues,
    log,
    verbose: args.verbose,
    logShmfd: args.logShmfd,
  });
  server.listen();
  let control: net.Server | undefined;
  let finish: (code: number) => void = () => undefined;
  const done = new Promise<number>((r) => (finish = r));
  const quit = () => {
    server.close();
    control?.close();
    target.close();
    for (const p of [args.socket, args.control]) if (p) fs.rmSync(p, { force: true });
    finish(0);
  };
  if (args.control) {
    control = net.createServer((c) => {
      let buf = '';
      c.on('data', (d) => {
        buf += d;
        for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
          const cmd = buf.slice(0, nl).trim();
          buf = buf.slice(nl + 1);
          if (cmd === 'stats') c.write(`${JSON.stringify(server.stats())}\n`);
          else if (cmd === 'quit') {
            c.end('{"ok":true}\n');
            quit();
          } else c.write(`${JSON.stringify({ error: `unknown command '${cmd}' (stats, quit)` })}\n`);
        }
      });
      c.on('error', () => undefined);
    });
    control.listen(args.control);
  }
  process.once('SIGTERM', quit);
  process.once('SIGINT', quit);
  return done;
}
