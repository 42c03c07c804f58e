// The kernel backend's ioctl sequence through an injected ioctl layer (this host has no
// /dev/vhost-scsi), driven by the vhost-scsi device as a guest driver would drive it.
import * as fs from 'fs';
import { EventFd, loadNative, MemoryRegion } from '@tsvmm/kvm-native';
import type { VirtioPciDevice } from '@tsvmm/pci';
import { virtioUapi as V } from '@tsvmm/virtio-core';
import { fakeMemory } from '@tsvmm/virtio-core/testing';
import * as D from '../defs';
import { VhostScsiDevice } from '../device';
import { describeOpenError, VhostIoctls, VhostKernelBackend } from './kernel';

interface Call {
  name: string;
  arg?: number | Uint8Array;
}

/** Records every ioctl and answers the ones that return data like the kernel would. */
function fakeIoctls(opts: { features?: bigint; abi?: number; bases?: number[]; openError?: string } = {}) {
  const calls: Call[] = [];
  const sys: VhostIoctls = {
    open: (path) => {
      if (opts.openError) throw Object.assign(new Error(`${opts.openError}: ${path}`), { code: opts.openError });
      calls.push({ name: `open ${path}` });
      return 42;
    },
    ioctl: (fd, req, arg) => {
      expect(fd).toBe(42);
      const name = D.IOCTL_NAMES[req] ?? `0x${req.toString(16)}`;
      calls.push({ name, arg: arg instanceof Uint8Array ? arg.slice() : arg });
      const dv = arg instanceof Uint8Array ? new DataView(arg.buffer, arg.byteOffset, arg.byteLength) : undefined;
      if (req === D.VHOST_GET_FEATURES) dv!.setBigUint64(0, opts.features ?? 0x1_3000_0000n, true);
      if (req === D.VHOST_SCSI_GET_ABI_VERSION) dv!.setInt32(0, opts.abi ?? 1, true);
      if (req === D.VHOST_GET_VRING_BASE) dv!.setUint32(4, opts.bases?.[dv!.getUint32(0, true)] ?? 0, true);
      return 0;
    },
    close: (fd) => calls.push({ name: `close ${fd}` }),
  };
  return { sys, calls };
}

const u32 = (b: Uint8Array, o: number) => new DataView(b.buffer, b.byteOffset).getUint32(o, true);
const u64 = (b: Uint8Array, o: number) => new DataView(b.buffer, b.byteOffset).getBigUint64(o, true);

/** A stand-in for the virtio-pci transport: what the device asks of it. */
function fakeTransport() {
  const calls = [EventFd.create(), EventFd.create(), EventFd.create()];
  const t = {
    kicks: undefined as (EventFd | undefined)[] | undefined,
    setBackendKicks(k: (EventFd | undefined)[] | undefined) {
      t.kicks = k;
    },
    queueCallEventFd: (i: number) => calls[i],
    queueNotifierKind: () => 'exit',
    onCallEventFdChanged: undefined,
    close: () => calls.forEach((c) => c.close()),
  };
  return t;
}

function setup(ioctls = fakeIoctls()) {
  const mem = fakeMemory(1 << 20, 0);
  const region: MemoryRegion = { slot: 0, guestPhysAddr: 0n, size: 1 << 20, fd: 7, hostAddress: 0x7f00_0000_0000n, pieces: [], flags: 0 };
  const backend = new VhostKernelBackend('naa.5001405abcdef012', 1, ioctls.sys);
  const features = backend.connect();
  const logs: string[] = [];
  const dev = new VhostScsiDevice(mem, backend, features, { id: 'vs0', numQueues: 1, log: (m) => logs.push(m), regions: () => [region] });
  const t = fakeTransport();
  dev.transport = t as unknown as VirtioPciDevice;
  return { dev, t, logs, ...ioctls };
}

/** The guest driver's initialisation up to DRIVER_OK with the three queues at fixed addresses. */
function driverOk(dev: VhostScsiDevice): void {
  dev.writeStatus(V.VIRTIO_CONFIG_S_ACKNOWLEDGE | V.VIRTIO_CONFIG_S_DRIVER);
  dev.writeDriverFeatures(0, dev.readDeviceFeatures(0));
  dev.writeDriverFeatures(1, dev.readDeviceFeatures(1));
  dev.writeStatus(V.VIRTIO_CONFIG_S_ACKNOWLEDGE | V.VIRTIO_CONFIG_S_DRIVER | V.VIRTIO_CONFIG_S_FEATURES_OK);
  dev.queues.forEach((q, i) => {
    q.size = 64;
    q.descTable = 0x10000 + i * 0x4000;
    q.availRing = q.descTable + 0x1000;
    q.usedRing = q.descTable + 0x2000;
    q.ready = true;
  });
  dev.writeStatus(V.VIRTIO_CONFIG_S_ACKNOWLEDGE | V.VIRTIO_CONFIG_S_DRIVER | V.VIRTIO_CONFIG_S_FEATURES_OK | V.VIRTIO_CONFIG_S_DRIVER_OK);
}

describe('vhost-scsi backend=kernel', () => {
  it("opening: SET_OWNER, GET_ABI_VERSION and GET_FEATURES, in that order; the offered features are limited to the backend's", () => {
    const { dev, calls, t } = setup();
    expect(calls.map((c) => c.name)).toEqual([
      'open /dev/vhost-scsi',
      'VHOST_SET_OWNER',
      'VHOST_SCSI_GET_ABI_VERSION',
      'VHOST_GET_FEATURES',
    ]);
    expect(dev.deviceFeatures).toBe(0x1_3000_0000n); // VERSION_1 | EVENT_IDX | INDIRECT_DESC
    dev.destroy();
    t.close();
  });

  it('DRIVER_OK hands over: SET_FEATURES, SET_MEM_TABLE, per ring NUM/BASE/ADDR/KICK/CALL/ERR, then SET_ENDPOINT; the kicks go to the transport', () => {
    const { dev, calls, t } = setup();
    calls.length = 0;
    driverOk(dev);
    const names = calls.map((c) => c.name);
    const ring = [
      'VHOST_SET_VRING_NUM',
      'VHOST_SET_VRING_BASE',
      'VHOST_SET_VRING_ADDR',
      'VHOST_SET_VRING_KICK',
      'VHOST_SET_VRING_CALL',
      'VHOST_SET_VRING_ERR',
    ];
    expect(names).toEqual(['VHOST_SET_FEATURES', 'VHOST_SET_MEM_TABLE', ...ring, ...ring, ...ring, 'VHOST_SCSI_SET_ENDPOINT']);
    const arg = (i: number) => calls[i].arg as Uint8Array;
    expect(u64(arg(0), 0)).toBe(0x1_3000_0000n);
    // vhost_memory: one region, guest 0, 1 MiB, at the VMM's address.
    expect(u32(arg(1), 0)).toBe(1);
    expect([u64(arg(1), 8), u64(arg(1), 16), u64(arg(1), 24)]).toEqual([0n, 1n << 20n, 0x7f00_0000_0000n]);
    // Ring 1: size 64, base 0, addresses translated to the VMM's virtual addresses.
    const r1 = 2 + 6;
    expect([u32(arg(r1), 0), u32(arg(r1), 4)]).toEqual([1, 64]);
    expect(u32(arg(r1 + 2), 0)).toBe(1);
    expect([u64(arg(r1 + 2), 8), u64(arg(r1 + 2), 16), u64(arg(r1 + 2), 24)]).toEqual([
      0x7f00_0001_4000n,
      0x7f00_0001_6000n,
      0x7f00_0001_5000n,
    ]);
    expect(u32(arg(r1 + 3), 4)).toBe(dev.kicks[1].fd);
    expect(u32(arg(r1 + 4), 4)).toBe(t.queueCallEventFd(1).fd);
    expect(u32(arg(r1 + 5), 4)).toBe(dev.errs[1].fd);
    // vhost_scsi_target: ABI version, WWPN, TPGT.
    const target = arg(names.length - 1);
    expect(u32(target, 0)).toBe(1);
    expect(Buffer.from(target.subarray(4, 4 + 20)).toString()).toBe('naa.5001405abcdef012');
    expect(new DataView(target.buffer).getUint16(4 + 224, true)).toBe(1);
    expect(t.kicks).toEqual(dev.kicks);
    dev.destroy();
    t.close();
  });

  it('migration: without VHOST_F_LOG_ALL offered the device names why it cannot be migrated', () => {
    const { dev, t } = setup();
    expect(dev.migrationBlocker()).toBe(
      'vs0: cannot be migrated: /dev/vhost-scsi wwpn=naa.5001405abcdef012 does not offer VHOST_F_LOG_ALL (no dirty logging)',
    );
    expect(() => dev.startDirtyLog()).toThrow(/does not offer VHOST_F_LOG_ALL/);
    dev.destroy();
    t.close();
  });

  it("migration: dirty logging with VHOST_SET_LOG_BASE (the log's address), VHOST_F_LOG_ALL and VHOST_VRING_F_LOG per ring; pages the kernel marks are taken once", () => {
    const LOG_ALL = 1n << 26n;
    const { dev, calls, t } = setup(fakeIoctls({ features: 0x1_3000_0000n | LOG_ALL }));
    expect(dev.migrationBlocker()).toBeUndefined();
    expect(dev.deviceFeatures & LOG_ALL).toBe(0n); // never offered to the guest
    driverOk(dev);
    calls.length = 0;
    dev.startDirtyLog();
    const names = calls.map((c) => c.name);
    expect(names).toEqual([
      'VHOST_SET_LOG_BASE',
      'VHOST_SET_FEATURES',
      'VHOST_SET_VRING_ADDR',
      'VHOST_SET_VRING_ADDR',
      'VHOST_SET_VRING_ADDR',
    ]);
    const arg = (i: number) => calls[i].arg as Uint8Array;
    const log = dev.dirtyLogBitmap!;
    expect(log.byteLength).toBe(32); // 1 MiB of guest RAM: 256 pages, 4 u64 words
    expect(u64(arg(0), 0)).toBe(loadNative().addressOf(log)); // the kernel writes the VMM's mapping
    expect(u64(arg(1), 0)).toBe(0x1_3000_0000n | LOG_ALL);
    // Ring 2: flags VHOST_VRING_F_LOG, log_guest_addr = the used ring's guest-physical address.
    expect([u32(arg(4), 0), u32(arg(4), 4), u64(arg(4), 32)]).toEqual([2, 1, BigInt(0x10000 + 2 * 0x4000 + 0x2000)]);
    // What the kernel would do: set_bit for pages 3 and 70 (little-endian words).
    log[0] |= 1 << 3;
    log[8] |= 1 << 6;
    expect(dev.syncDirtyLog()).toEqual([3, 70]);
    expect(dev.syncDirtyLog()).toEqual([]);
    calls.length = 0;
    dev.stopDirtyLog();
    expect(calls.map((c) => c.name)).toEqual([
      'VHOST_SET_FEATURES',
      'VHOST_SET_VRING_ADDR',
      'VHOST_SET_VRING_ADDR',
      'VHOST_SET_VRING_ADDR',
    ]);
    expect(u64(arg(0), 0)).toBe(0x1_3000_0000n);
    expect(u32(arg(1), 4)).toBe(0);
    expect(dev.dirtyLogBitmap).toBeUndefined();
    dev.destroy();
    t.close();
  });

  it("a driver reset takes the rings back: CLEAR_ENDPOINT, then GET_VRING_BASE per ring; the indices land in the VMM's queues", () => {
    const { dev, calls, t } = setup(fakeIoctls({ bases: [3, 0, 17] }));
    driverOk(dev);
    calls.length = 0;
    dev.setRunning(false); // VM stop: the same path as reset, but the queues stay
    expect(calls.map((c) => c.name)).toEqual([
      'VHOST_SCSI_CLEAR_ENDPOINT',
      'VHOST_GET_VRING_BASE',
      'VHOST_GET_VRING_BASE',
      'VHOST_GET_VRING_BASE',
    ]);
    expect(dev.queues.map((q) => q.lastAvailIdx)).toEqual([3, 0, 17]);
    expect(t.kicks).toBeUndefined();
    calls.length = 0;
    dev.setRunning(true); // resumes from the fetched bases
    const bases = calls.filter((c) => c.name === 'VHOST_SET_VRING_BASE').map((c) => u32(c.arg as Uint8Array, 4));
    expect(bases).toEqual([3, 0, 17]);
    dev.destroy();
    t.close();
  });

  it('an ioctl failure names the ioctl and the device and marks the adapter needs-reset', () => {
    const io = fakeIoctls();
    const real = io.sys.ioctl;
    io.sys.ioctl = (fd, req, arg) => {
      if (req === D.VHOST_SCSI_SET_ENDPOINT) throw new Error('ioctl failed: ENOENT (No such file or directory)');
      return real(fd, req, arg);
    };
    const { dev, logs, t } = setup(io);
    driverOk(dev);
    expect(dev.broken).toBe(true);
    expect(dev.status & V.VIRTIO_CONFIG_S_NEEDS_RESET).toBeTruthy();
    expect(logs.join('\n')).toMatch(
      /vs0: \/dev\/vhost-scsi wwpn=naa.5001405abcdef012: VHOST_SCSI_SET_ENDPOINT failed: ioctl failed: ENOENT/,
    );
    dev.destroy();
    t.close();
  });

  it('a missing /dev/vhost-scsi is explained: no vhost-scsi in this kernel, and what to use instead', () => {
    const { sys } = fakeIoctls({ openError: 'ENOENT' });
    expect(() => new VhostKernelBackend('naa.1', 0, sys).connect()).toThrow(
      /backend=kernel needs \/dev\/vhost-scsi, which this host does not have: the kernel has no vhost-scsi .* or use backend=user,socket=PATH/,
    );
    expect(describeOpenError('/dev/vhost-scsi', Object.assign(new Error('x'), { code: 'EACCES' }))).toMatch(
      /no permission to open \/dev\/vhost-scsi/,
    );
  });

  it('on this host (no /dev/vhost-scsi) the real ioctl layer gives the same explanation', () => {
    if (fs.existsSync('/dev/vhost-scsi')) return; // a host with vhost-scsi opens it
    expect(() => new VhostKernelBackend('naa.1').connect()).toThrow(/which this host does not have/);
  });

  it('an ABI version older than 1 is refused', () => {
    expect(() => new VhostKernelBackend('naa.1', 0, fakeIoctls({ abi: 0 }).sys).connect()).toThrow(/ABI version 0; this VMM needs 1/);
  });
});
