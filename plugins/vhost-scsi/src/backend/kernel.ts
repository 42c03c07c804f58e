/**
 * backend=kernel: the host kernel's vhost-scsi (/dev/vhost-scsi, LIO target
 * with a vhost fabric TPG named by its WWPN). All ioctls go through a
 * VhostIoctls layer so the sequence is testable on hosts without the module.
 */
import * as fs from 'fs';
import { hostIoctl } from '@tsvmm/kvm-native';
import * as D from '../defs';
import { VhostBackend, VhostMemRegion, VringAddresses } from './backend';

export const VHOST_SCSI_DEVICE = '/dev/vhost-scsi';

/** The system calls the kernel backend makes (replaced in unit tests). */
export interface VhostIoctls {
  open(path: string): number;
  ioctl(fd: number, request: number, arg?: number | Uint8Array): number;
  close(fd: number): void;
}

export const hostVhostIoctls: VhostIoctls = {
  open: (path) => fs.openSync(path, fs.constants.O_RDWR),
  ioctl: (fd, request, arg) => hostIoctl(fd, request, arg),
  close: (fd) => fs.closeSync(fd),
};

/** Why /dev/vhost-scsi could not be used, in words a user can act on. */
export function describeOpenError(path: string, e: unknown): string {
  const code = (e as { code?: string }).code;
  if (code === 'ENOENT')
    return `backend=kernel needs ${path}, which this host does not have: the kernel has no vhost-scsi (CONFIG_VHOST_SCSI; modprobe vhost_scsi and configure a LIO vhost TPG), or use backend=user,socket=PATH with the vhost-user-scsi back-end`;
  if (code === 'EACCES' || code === 'EPERM')
    return `backend=kernel: no permission to open ${path} (${code}); run as root or grant access to the device node`;
  return `backend=kernel: cannot open ${path}: ${(e as Error).message}`;
}

function state(index: number, num: number): Uint8Array {
  const b = new Uint8Array(D.SIZEOF_vhost_vring_state);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, index, true);
  dv.setUint32(4, num, true);
  return b;
}

function file(index: number, fd: number): Uint8Array {
  const b = new Uint8Array(D.SIZEOF_vhost_vring_file);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, index, true);
  dv.setInt32(4, fd, true);
  return b;
}

export class VhostKernelBackend implements VhostBackend {
  readonly kind = 'kernel';
  readonly needsEnable = false;
  readonly maxQueues = undefined;
  /** What VHOST_GET_FEATURES offered (connect). */
  private offered = 0n;

  /** The kernel logs when it offers VHOST_F_LOG_ALL (vhost_types.h). */
  get dirtyLogUnsupported(): string | undefined {
    if (this.fd === undefined) return `${this.description} is not open`;
    if (!(this.offered & (1n << BigInt(D.VHOST_F_LOG_ALL)))) return `${this.description} does not offer VHOST_F_LOG_ALL (no dirty logging)`;
    return undefined;
  }

  /** VHOST_SET_LOG_BASE: a u64 holding the log's address in this process (the kernel writes it through our mapping). */
  setLogBase(log: { hostAddress: bigint }): void {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, log.hostAddress, true);
    this.call(D.VHOST_SET_LOG_BASE, b);
  }
  onDisconnect: ((reason: string) => void) | undefined;
  private fd: number | undefined;
  abiVersion: number | undefined;

  constructor(
    readonly wwpn: string,
    readonly tpgt = 0,
    private readonly sys: VhostIoctls = hostVhostIoctls,
    readonly devicePath = VHOST_SCSI_DEVICE,
  ) {
    if (Buffer.byteLength(wwpn) >= D.VHOST_SCSI_WWPN_LEN) throw new Error(`wwpn=${wwpn}: longer than ${D.VHOST_SCSI_WWPN_LEN - 1} bytes`);
  }

  get description(): string {
    return `${this.devicePath} wwpn=${this.wwpn}`;
  }

  get connected(): boolean {
    return this.fd !== undefined;
  }

  private call(request: number, arg?: number | Uint8Array): number {
    if (this.fd === undefined) throw new Error(`${this.description}: not open`);
    try {
      return this.sys.ioctl(this.fd, request, arg);
    } catch (e) {
      throw new Error(
        `${this.description}: ${D.IOCTL_NAMES[request] ?? `ioctl 0x${request.toString(16)}`} failed: ${(e as Error).message}`,
      );
    }
  }

  connect(): bigint {
    this.close();
    try {
      this.fd = this.sys.open(this.devicePath);
    } catch (e) {
      throw new Error(describeOpenError(this.devicePath, e));
    }
    this.call(D.VHOST_SET_OWNER);
    const abi = new Uint8Array(4);
    this.call(D.VHOST_SCSI_GET_ABI_VERSION, abi);
    this.abiVersion = new DataView(abi.buffer).getInt32(0, true);
    if (this.abiVersion < D.VHOST_SCSI_ABI_VERSION) {
      this.close();
      throw new Error(`${this.devicePath}: vhost-scsi ABI version ${this.abiVersion}; this VMM needs ${D.VHOST_SCSI_ABI_VERSION}`);
    }
    const f = new Uint8Array(8);
    this.call(D.VHOST_GET_FEATURES, f);
    this.offered = new DataView(f.buffer).getBigUint64(0, true);
    return this.offered;
  }

  setFeatures(features: bigint): void {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, features, true);
    this.call(D.VHOST_SET_FEATURES, b);
  }

  setMemTable(regions: readonly VhostMemRegion[]): void {
    const b = new Uint8Array(D.SIZEOF_vhost_memory + regions.length * D.SIZEOF_vhost_memory_region);
    const dv = new DataView(b.buffer);
    dv.setUint32(0, regions.length, true);
    regions.forEach((r, i) => {
      const o = D.SIZEOF_vhost_memory + i * D.SIZEOF_vhost_memory_region;
      dv.setBigUint64(o, r.guestPhysAddr, true);
      dv.setBigUint64(o + 8, BigInt(r.size), true);
      dv.setBigUint64(o + 16, r.hostAddress, true);
    });
    this.call(D.VHOST_SET_MEM_TABLE, b);
  }

  setVringNum(index: number, num: number): void {
    this.call(D.VHOST_SET_VRING_NUM, state(index, num));
  }

  setVringBase(index: number, base: number): void {
    this.call(D.VHOST_SET_VRING_BASE, state(index, base));
  }

  setVringAddr(index: number, a: VringAddresses): void {
    const b = new Uint8Array(D.SIZEOF_vhost_vring_addr);
    const dv = new DataView(b.buffer);
    dv.setUint32(0, index, true);
    // VHOST_VRING_F_LOG: the kernel logs used-ring writes at log_guest_addr.
    if (a.logGuestAddr !== undefined) dv.setUint32(4, 1 << D.VHOST_VRING_F_LOG, true);
    dv.setBigUint64(8, a.desc, true);
    dv.setBigUint64(16, a.used, true);
    dv.setBigUint64(24, a.avail, true);
    dv.setBigUint64(32, a.logGuestAddr ?? 0n, true);
    this.call(D.VHOST_SET_VRING_ADDR, b);
  }

  setVringKick(index: number, fd: number): void {
    this.call(D.VHOST_SET_VRING_KICK, file(index, fd));
  }

  setVringCall(index: number, fd: number): void {
    this.call(D.VHOST_SET_VRING_CALL, file(index, fd));
  }

  setVringErr(index: number, fd: number): void {
    this.call(D.VHOST_SET_VRING_ERR, file(index, fd));
  }

  setVringEnable(): void {
    // Kernel vhost rings run once they have a kick fd and the endpoint is set.
  }

  getVringBase(index: number): number {
    const b = state(index, 0);
    this.call(D.VHOST_GET_VRING_BASE, b);
    return new DataView(b.buffer).getUint32(4, true);
  }

  private target(): Uint8Array {
    const b = new Uint8Array(D.SIZEOF_vhost_scsi_target);
    const dv = new DataView(b.buffer);
    dv.setInt32(0, this.abiVersion ?? D.VHOST_SCSI_ABI_VERSION, true);
    b.set(Buffer.from(this.wwpn), 4);
    dv.setUint16(4 + D.VHOST_SCSI_WWPN_LEN, this.tpgt, true);
    return b;
  }

  startDevice(): void {
    this.call(D.VHOST_SCSI_SET_ENDPOINT, this.target());
  }

  stopDevice(): void {
    this.call(D.VHOST_SCSI_CLEAR_ENDPOINT, this.target());
  }

  close(): void {
    if (this.fd === undefined) return;
    const fd = this.fd;
    this.fd = undefined;
    this.sys.close(fd);
  }
}
