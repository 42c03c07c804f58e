/**
 * Snapshot/restore and live migration (docs/migration.md).
 *
 * Source: `migrate {"uri": "unix:PATH"}` connects to a destination started
 * with `--incoming unix:PATH`, sends the machine description, then RAM with
 * KVM dirty-page logging on: a full pass, then passes over the pages dirtied
 * meanwhile until what is left would go in `downtime-limit` at the measured
 * bandwidth (or after MAX_PASSES). It then stops the vCPUs, drains the
 * devices, sends the last dirty pages and the device state, and waits for
 * the destination's answer. The source stays paused when the destination
 * took over; on failure it resumes if it was running before.
 *
 * Snapshot: the same stream written to a file while the VM is stopped
 * (`x-snapshot-save`), read back by `--restore FILE`.
 */
import * as fs from 'fs';
import * as net from 'net';
import { dirname as pathDirname } from 'path';
import { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, fallocate, MemoryRegion } from '@tsvmm/kvm-native';
import { Machine } from '../machine/machine';
import {
  checkMachine,
  checkMigratable,
  describeMachine,
  loadMachineSections,
  parseMachineDescription,
  saveableMsrs,
  saveMachineSections,
} from './machine-state';
import { addRegionPages, applyRamSection, countBits, PAGE, RamCounters, RamSectionBuilder } from './ram';
import {
  ByteSource,
  checkSectionKnown,
  encodeHeader,
  encodeSection,
  FileSource,
  jsonPayload,
  MAX_STATE_TOTAL,
  MigrationStreamError,
  parseJson,
  readHeader,
  readSection,
  Section,
  SECTION_OPTIONAL,
  SocketSource,
  STREAM_VERSION,
  StreamSource,
} from './stream';
import { QMP_VERSION } from '../monitor/qmp-server';
import { confinement, createPrivateFile, listenPrivate, migrationTargetProblem, removeStaleSocket } from '../host-files';

export type MigrationStatus = 'none' | 'setup' | 'active' | 'device' | 'completed' | 'failed' | 'cancelled';

export interface MigrationParameters {
  /** ms the final stop-and-copy may take (QEMU's downtime-limit; default 300). */
  downtimeLimit: number;
  /** Passes over dirty pages before the VMM stops the VM anyway. */
  maxPasses: number;
  /**
   * Bytes per second the passes made while the guest runs may send (QEMU's
   * max-bandwidth); 0: no limit (the default). The stop-and-copy is never
   * limited. A change takes effect at once, also in a running migration.
   */
  maxBandwidth: number;
}

export interface MigrationInfo {
  status: MigrationStatus;
  startedAt?: number;
  totalTime?: number;
  downtime?: number;
  setupTime?: number;
  /** ms from the stop to the last byte of the stream handed to the socket (QEMU's "downtime" ends about here). */
  sentAt?: number;
  ram: RamCounters & { total: number; remaining: number; dirtySyncCount: number; mbps: number; dirtyPagesRate: number };
  error?: string;
}

const MAX_PASSES = 30;

/** Where the stream goes: a socket (with back-pressure) or a file. */
interface Sink {
  write(parts: Buffer[]): Promise<void>;
}

function socketSink(s: net.Socket): Sink {
  return {
    async write(parts) {
      let ok = true;
      for (const p of parts) ok = s.write(p) && ok;
      if (!ok)
        await new Promise<void>((resolve, reject) => {
          const onErr = (e: Error) => reject(e);
          s.once('error', onErr);
          s.once('drain', () => {
            s.off('error', onErr);
            resolve();
          });
        });
    },
  };
}

function fileSink(fd: number): Sink {
  return {
    async write(parts) {
      for (const p of parts) {
        let off = 0;
        while (off < p.length) off += fs.writeSync(fd, p, off);
      }
    },
  };
}

export class MigrationManager {
  readonly params: MigrationParameters = { downtimeLimit: 300, maxPasses: MAX_PASSES, maxBandwidth: 0 };
  info: MigrationInfo = MigrationManager.emptyInfo('none');
  private abortReason: string | undefined;
  private socket: net.Socket | undefined;

  constructor(
    private readonly machine: Machine,
    private readonly log: (m: string) => void,
    private readonly event: (name: string, data?: Record<string, unknown>) => void,
  ) {}

  static emptyInfo(status: MigrationStatus): MigrationInfo {
    return {
      status,
      ram: { transferred: 0, normal: 0, duplicate: 0, total: 0, remaining: 0, dirtySyncCount: 0, mbps: 0, dirtyPagesRate: 0 },
    };
  }

  get active(): boolean {
    return ['setup', 'active', 'device'].includes(this.info.status);
  }

  private setStatus(s: MigrationStatus): void {
    this.info.status = s;
    this.event('MIGRATION', { status: s });
  }

  // --- snapshot ----------------------------------------------------------------

  /** Writes memory and state to `file` (the VM is stopped first, and stays stopped). */
  async snapshot(file: string): Promise<void> {
    if (this.active) throw new Error('a migration is in progress');
    checkMigratable(this.machine);
    await this.machine.pause();
    await this.drainDevices();
    // 0600, through an O_EXCL temporary beside it, never through a symbolic link (host-files.ts).
    let out;
    try {
      out = createPrivateFile(file);
    } catch (e) {
      throw new Error(describeWriteError(e, file));
    }
    try {
      const sink = fileSink(out.fd);
      const counters: RamCounters = { transferred: 0, normal: 0, duplicate: 0 };
      await sink.write(streamStart(this.machine, 'snapshot'));
      await this.sendRam(sink, undefined, counters, true);
      await sink.write([...saveMachineSections(this.machine, saveableMsrs(this.machine)), ...encodeSection('end', 1, Buffer.alloc(0))]);
      out.commit();
    } catch (e) {
      out.discard();
      throw new Error(describeWriteError(e, file));
    }
  }

  // --- live migration, source side ---------------------------------------------------

  /** Starts an outgoing migration; returns once it is under way (query-migrate follows it). */
  start(uri: string): void {
    if (this.active) throw new Error('a migration is already in progress');
    const m = /^unix:(.+)$/.exec(uri);
    if (!m) throw new Error(`unsupported migration URI '${uri}' (only unix:PATH)`);
    checkMigratable(this.machine);
    const problem = migrationTargetProblem(m[1]);
    if (problem) throw new Error(`migrate: ${problem}`);
    this.info = MigrationManager.emptyInfo('setup');
    this.info.startedAt = Date.now();
    this.abortReason = undefined;
    this.event('MIGRATION', { status: 'setup' });
    void this.run(m[1]).catch(() => undefined);
  }

  cancel(): void {
    if (!this.active) return;
    this.abortReason = 'cancelled';
    this.socket?.destroy(new Error('migration cancelled'));
  }

  private async run(path: string): Promise<void> {
    const machine = this.machine;
    const wasRunning = !machine.isPaused;
    let paused = false;
    let logging = false;
    const regions = machine.vm.memoryRegions;
    const ram = this.info.ram;
    ram.total = regions.reduce((n, r) => n + r.size, 0);
    let reply: { error?: string; done: Promise<string> } | undefined;
    try {
      const sock = await new Promise<net.Socket>((resolve, reject) => {
        const s = net.createConnection(path);
        s.once('connect', () => resolve(s));
        s.once('error', (e) => reject(new Error(`cannot connect to ${path}: ${e.message}`)));
      });
      this.socket = sock;
      reply = this.watchReplies(sock);
      const r = reply;
      const sink = socketSink(sock);
      const check = () => {
        if (r.error) throw new Error(`the destination refused the migration: ${r.error}`);
        if (this.abortReason) throw new Error(`migration ${this.abortReason}`);
      };
      this.info.setupTime = Date.now() - this.info.startedAt!;
      this.setStatus('active');
      await sink.write(streamStart(machine, 'migration'));

      const dbg = process.env.VMM_MIGRATION_DEBUG
        ? (m: string) => this.log(`migration +${Date.now() - this.info.startedAt!} ms: ${m}`)
        : () => undefined;
      dbg('dirty logging on');
      for (const r of regions) machine.vm.setDirtyLogging(r.slot, true);
      machine.memory.startTracking();
      logging = true;
      for (const d of machine.devices) await d.startDirtyLog?.();
      dbg('dirty logging is on');
      // Pass 1: everything (zero pages left out: the destination's RAM starts zeroed).
      let passStart = Date.now();
      let passBytes = ram.transferred;
      await this.sendRam(sink, undefined, ram, true, check, true);
      let dirty = new Map<number, Uint8Array>();
      let lastSent = ram.normal; // pages the previous pass sent
      for (let pass = 1; ; pass++) {
        const elapsed = Math.max(1, Date.now() - passStart);
        const bytesPerMs = Math.max(1, (ram.transferred - passBytes) / elapsed);
        ram.mbps = Math.round(((bytesPerMs * 1000 * 8) / 1e6) * 10) / 10;
        dirty = await this.syncDirty(regions);
        const pages = [...dirty.values()].reduce((n, b) => n + countBits(b), 0);
        ram.dirtyPagesRate = Math.round((pages * 1000) / elapsed);
        ram.remaining = pages * PAGE;
        check();
        const expected = (pages * PAGE) / bytesPerMs;
        dbg(`pass ${pass}: ${pages} dirty pages, ${bytesPerMs.toFixed(0)} bytes/ms, ${expected.toFixed(0)} ms expected`);
        // downtime-limit is the most the stop may take. Below it, another pass
        // is still worth it while passes keep shrinking the dirty set (a guest
        // dirtying at a steady rate below the bandwidth converges
        // geometrically); a working set that is rewritten whole stops
        // shrinking, and then the VM is stopped.
        const fits = expected <= this.params.downtimeLimit;
        const shrinking = pages < lastSent * 0.6 && expected > this.params.downtimeLimit / 10;
        if ((fits && !shrinking) || pass >= this.params.maxPasses || machine.isPaused) break;
        passStart = Date.now();
        passBytes = ram.transferred;
        const before = ram.normal + ram.duplicate;
        await this.sendRam(sink, dirty, ram, false, check, true);
        lastSent = ram.normal + ram.duplicate - before;
      }

      // Stop and copy.
      this.setStatus('device');
      dbg('stop and copy');
      const downtimeStart = Date.now();
      if (wasRunning) {
        await machine.pause();
        paused = true;
        // As QEMU's source: STOP when the guest stops for the last copy (RESUME follows if the migration fails).
        this.event('STOP');
      }
      await this.drainDevices();
      const last = await this.syncDirty(regions);
      for (const [slot, b] of last) {
        const prev = dirty.get(slot);
        if (prev) for (let i = 0; i < b.length; i++) b[i] |= prev[i];
      }
      // What the device models wrote through GuestMemory (KVM logs only the
      // guest's writes): every page they touched since the start, and the
      // rings of every queue. (Pages devices log themselves came with syncDirty.)
      const touched = machine.memory.stopTracking();
      for (const d of machine.devices) {
        for (const q of d.virtio?.device.queues ?? []) for (const p of q.ringPages(PAGE)) touched.add(p);
      }
      markPages(last, regions, touched);
      await this.sendRam(sink, last, ram, false, check);
      ram.remaining = 0;
      await sink.write([...saveMachineSections(machine, saveableMsrs(machine)), ...encodeSection('end', 1, Buffer.alloc(0))]);
      this.info.sentAt = Date.now() - downtimeStart;
      dbg(`everything sent ${this.info.sentAt} ms after the stop; waiting for the destination`);
      const answer = await reply.done;
      if (answer !== 'OK') throw new Error(`the destination refused the migration: ${answer}`);
      this.info.downtime = Date.now() - downtimeStart;
      this.info.totalTime = Date.now() - this.info.startedAt!;
      await this.stopLogging(regions);
      logging = false;
      sock.end();
      this.setStatus('completed');
      this.log(
        `migration completed: ${(ram.transferred / 1048576).toFixed(1)} MiB in ${this.info.totalTime} ms, downtime ${this.info.downtime} ms, ${ram.dirtySyncCount} dirty syncs`,
      );
    } catch (e) {
      // A write that failed because the destination gave up: its reason is the better message.
      if (reply && !reply.error) await Promise.race([reply.done, new Promise((r) => setTimeout(r, 300))]);
      this.info.error = reply?.error ? `the destination refused the migration: ${reply.error}` : (e as Error).message;
      this.info.totalTime = Date.now() - this.info.startedAt!;
      this.socket?.destroy();
      if (logging && !machine.exited) await this.stopLogging(regions);
      machine.memory.stopTracking();
      this.setStatus(this.abortReason === 'cancelled' ? 'cancelled' : 'failed');
      this.log(`migration failed: ${this.info.error}`);
      // As QEMU: a VM that ran before the migration runs again on the source.
      if (paused && wasRunning) {
        machine.resume();
        this.event('RESUME');
      }
    } finally {
      this.socket = undefined;
    }
  }

  /** Reads the destination's one-line answer ("OK" or "ERR reason") whenever it comes. */
  private watchReplies(sock: net.Socket): { error?: string; done: Promise<string> } {
    const r: { error?: string; done: Promise<string> } = { done: Promise.resolve('') };
    let text = '';
    r.done = new Promise((resolve) => {
      sock.on('data', (d) => {
        text += d.toString('utf8');
        const nl = text.indexOf('\n');
        if (nl < 0) return;
        const line = text.slice(0, nl);
        if (line.startsWith('ERR ')) r.error = line.slice(4);
        resolve(line.startsWith('ERR ') ? line.slice(4) : line);
      });
      sock.on('close', () => resolve(r.error ?? 'the connection closed before the destination answered'));
      sock.on('error', () => undefined);
    });
    return r;
  }

  /** KVM's dirty log per slot, with the pages devices logged themselves (Device.syncDirtyLog) merged in. */
  private async syncDirty(regions: readonly MemoryRegion[]): Promise<Map<number, Uint8Array>> {
    const out = new Map<number, Uint8Array>();
    for (const r of regions) out.set(r.slot, this.machine.vm.getDirtyLog(r.slot));
    for (const d of this.machine.devices) markPages(out, regions, (await d.syncDirtyLog?.()) ?? []);
    this.info.ram.dirtySyncCount++;
    return out;
  }

  private async stopLogging(regions: readonly MemoryRegion[]): Promise<void> {
    for (const r of regions) this.machine.vm.setDirtyLogging(r.slot, false);
    for (const d of this.machine.devices) {
      try {
        await d.stopDirtyLog?.();
      } catch (e) {
        this.log(`migration: ${d.id}: stopping its dirty log: ${(e as Error).message}`);
      }
    }
  }

  private async sendRam(
    sink: Sink,
    bitmaps: Map<number, Uint8Array> | undefined,
    counters: RamCounters,
    skipZero: boolean,
    check?: () => void,
    limited = false,
  ): Promise<void> {
    const out = new RamSectionBuilder(counters);
    const start = Date.now();
    const startBytes = counters.transferred;
    for (const r of this.machine.vm.memoryRegions) {
      const bm = bitmaps ? bitmaps.get(r.slot) : undefined;
      if (bitmaps && !bm) continue;
      await addRegionPages(r, bm, skipZero, out, async () => {
        check?.();
        const parts = out.take();
        if (parts.length) await sink.write(parts);
        if (limited) await this.throttle(start, counters.transferred - startBytes, check);
        // Let the event loop run: vCPU exits and device I/O are served on this thread.
        await new Promise((res) => setImmediate(res));
      });
    }
    out.flush();
    await sink.write(out.take());
    if (limited) await this.throttle(start, counters.transferred - startBytes, check);
  }

  /**
   * max-bandwidth: waits until `sent` bytes since `start` are within the
   * limit. Re-reads the limit every few ms, so raising or clearing it while
   * a migration runs takes effect at once.
   */
  private async throttle(start: number, sent: number, check?: () => void): Promise<void> {
    for (;;) {
      const bps = this.params.maxBandwidth;
      if (bps <= 0) return;
      const wait = (sent * 1000) / bps - (Date.now() - start);
      if (wait <= 0) return;
      await new Promise((res) => setTimeout(res, Math.min(wait, 20)));
      check?.();
    }
  }

  private async drainDevices(): Promise<void> {
    for (const d of this.machine.devices) await d.drain?.();
  }
}

/** Header, `machine` and the optional `source` section. */
function streamStart(m: Machine, kind: StreamSource['kind']): Buffer[] {
  const source: StreamSource = {
    vmm: 'tsvmm',
    version: QMP_VERSION.package.replace(/^tsvmm /, ''),
    kind,
    created: new Date().toISOString(),
  };
  return [
    encodeHeader(),
    ...encodeSection('machine', 1, jsonPayload(describeMachine(m))),
    ...encodeSection('source', 1, jsonPayload(source), SECTION_OPTIONAL),
  ];
}

/** A failed snapshot write, in one line; EACCES says under which user the VMM runs (after --run-with). */
function describeWriteError(e: unknown, file: string): string {
  const code = (e as { code?: string }).code;
  if (code === 'EACCES' || code === 'EPERM') {
    const who = typeof process.geteuid === 'function' ? `uid ${process.geteuid()}` : 'this user';
    return `${file}: permission denied: the VMM runs as ${who} (after --run-with, only paths that user may write, inside its chroot if any)`;
  }
  if (code === 'EEXIST') return `${file}: its temporary name was taken; try again`;
  if (code === 'ENOENT' || code === 'ENOTDIR')
    return `${file}: directory ${pathDirname(file)} does not exist${confinement.chroot ? ` inside the VMM's chroot ${confinement.chroot} (--run-with chroot=: paths are resolved there)` : ''}`;
  return (e as Error).message;
}

/** Sets the bits of guest page frame numbers `pages` in per-slot bitmaps. */
export function markPages(bitmaps: Map<number, Uint8Array>, regions: readonly MemoryRegion[], pages: Iterable<number>): void {
  for (const p of pages) {
    for (const r of regions) {
      const i = p - Number(r.guestPhysAddr) / PAGE;
      if (i < 0 || i >= r.size / PAGE) continue;
      const b = bitmaps.get(r.slot);
      if (b) b[i >> 3] |= 1 << (i & 7);
      break;
    }
  }
}

// --- destination side ---------------------------------------------------------------

/**
 * Reads a whole stream into a paused machine: the machine description is
 * checked first, RAM is applied as it arrives, the device state when the
 * "end" section has been read. Throws MigrationStreamError (or a device's
 * error) on anything wrong; the caller must not start the VM then.
 */
export async function receiveStream(machine: Machine, src: ByteSource, log: (m: string) => void): Promise<void> {
  const format = await readHeader(src);
  if (format < STREAM_VERSION)
    log(`migration: reading a format-${format} stream (written by an older VMM; this one writes format ${STREAM_VERSION})`);
  const first = await readSection(src, format);
  checkSectionKnown(first);
  if (first.name !== 'machine') throw new MigrationStreamError(`the stream starts with '${first.name}', not 'machine'`);
  checkMachine(parseMachineDescription(parseJson(first)), describeMachine(machine));
  const regions = machine.vm.memoryRegions;
  for (const r of regions) zeroRam(r);
  const state: Section[] = [];
  let stateBytes = 0;
  for (;;) {
    const s = await readSection(src, format);
    const kind = checkSectionKnown(s);
    if (kind !== 'ram' && (stateBytes += s.payload.length) > MAX_STATE_TOTAL)
      throw new MigrationStreamError(`bad stream: more than ${MAX_STATE_TOTAL} bytes of state sections (at '${s.name}')`);
    if (kind === undefined) log(`migration: skipping optional section '${s.name}' (version ${s.version}), unknown to this VMM`);
    else if (kind === 'ram') applyRamSection(s.payload, regions);
    else if (kind === 'end') break;
    else if (kind === 'source') {
      const w = describeSource(parseJson(s));
      log(
        `migration: ${w.kind ?? 'stream'} written by ${w.vmm ?? '?'} ${w.version ?? '?'} at ${w.created ?? '?'} (stream format ${format})`,
      );
    } else if (kind === 'machine') throw new MigrationStreamError(`a second 'machine' section`);
    else state.push(s);
  }
  loadMachineSections(machine, state, log);
}

/** The optional `source` section, for the log only: strings kept (at most 100 characters), anything else left out. */
function describeSource(v: unknown): Partial<StreamSource> {
  const o = v !== null && typeof v === 'object' ? (v as Record<string, unknown>) : {};
  const str = (k: string) => (typeof o[k] === 'string' ? JSON.stringify(o[k]).slice(1, -1).slice(0, 100) : undefined);
  return { vmm: str('vmm'), version: str('version'), kind: str('kind') as StreamSource['kind'] | undefined, created: str('created') };
}

/**
 * Returns a region to all zeroes (the stream leaves zero pages out). The
 * loader wrote a kernel and tables into it, but most of it was never
 * touched: punching a hole in its memfd frees just the pages that exist,
 * where writing zeroes would first allocate all of them (some 300 ms for
 * 256 MiB here, before the first byte of RAM is taken from the socket).
 */
function zeroRam(r: MemoryRegion): void {
  try {
    fallocate(r.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, r.size);
  } catch {
    for (const p of r.pieces) p.bytes.fill(0);
  }
}

/** --restore FILE. */
export async function restoreFromFile(machine: Machine, file: string, log: (m: string) => void): Promise<void> {
  await restoreFromFd(machine, openRestoreFile(file), log);
}

/** Opens a --restore file (before the VMM drops its privileges, so it may be one only root can read). */
export function openRestoreFile(file: string): number {
  try {
    return fs.openSync(file, fs.constants.O_RDONLY);
  } catch (e) {
    throw new MigrationStreamError(`--restore ${file}: ${(e as Error).message}`);
  }
}

/** Reads a snapshot from an open file and closes it. */
export async function restoreFromFd(machine: Machine, fd: number, log: (m: string) => void): Promise<void> {
  try {
    await receiveStream(machine, new FileSource(fd), log);
  } finally {
    fs.closeSync(fd);
  }
}

/** An --incoming socket, listening (created before the VMM drops its privileges). */
export interface IncomingListener {
  path: string;
  server: net.Server;
}

/**
 * --incoming unix:PATH: removes a stale socket at PATH (anything else there
 * is refused and left alone) and listens on a new one, 0600: the stream
 * replaces the whole guest, so only the VMM's user (and root) may connect.
 */
export async function listenIncoming(uri: string): Promise<IncomingListener> {
  const m = /^unix:(.+)$/.exec(uri);
  if (!m) throw new MigrationStreamError(`unsupported --incoming URI '${uri}' (only unix:PATH)`);
  const path = m[1];
  removeStaleSocket(path);
  const server = net.createServer();
  await listenPrivate(server, path);
  return { path, server };
}

/**
 * Takes one connection on `listener`, loads the stream and answers "OK"
 * (the caller then resumes the VM) or "ERR reason" (and throws). The wait
 * for the connection is unbounded (as QEMU's -incoming); once connected, a
 * source that sends nothing for `idleTimeoutMs` (0: no limit) fails it.
 */
export async function receiveIncoming(
  machine: Machine,
  listener: IncomingListener,
  log: (m: string) => void,
  onListening?: () => void,
  opts: { idleTimeoutMs?: number; onConnected?: () => void } = {},
): Promise<void> {
  const { server, path } = listener;
  onListening?.();
  const sock = await new Promise<net.Socket>((resolve) => server.once('connection', resolve));
  server.close();
  opts.onConnected?.();
  // Ours, made by listenIncoming; lstat first all the same, so only a socket is ever removed.
  try {
    if (fs.lstatSync(path).isSocket()) fs.rmSync(path, { force: true });
  } catch {
    // already gone
  }
  try {
    await receiveStream(machine, new SocketSource(sock, { idleTimeoutMs: opts.idleTimeoutMs }), log);
    await new Promise<void>((resolve) => sock.write('OK\n', () => resolve()));
    sock.end();
  } catch (e) {
    const msg = (e as Error).message.replace(/\n/g, ' ');
    if (!sock.destroyed) {
      // Answer, then keep reading (and dropping) until the source hangs up, so
      // it is not cut off mid-write (EPIPE) before it has read the reason.
      sock.removeAllListeners('data');
      sock.on('data', () => undefined);
      sock.on('error', () => undefined);
      sock.resume();
      sock.write(`ERR ${msg}\n`);
      await new Promise<void>((resolve) => {
        sock.once('close', () => resolve());
        setTimeout(resolve, 5000).unref();
      });
    }
    sock.destroy();
    throw e;
  }
}
