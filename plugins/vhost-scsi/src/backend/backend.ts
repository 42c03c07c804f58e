/** What the vhost-scsi device needs from a vhost backend, kernel or vhost-user. */

/** A guest RAM region as the backend must see it. */
export interface VhostMemRegion {
  guestPhysAddr: bigint;
  size: number;
  /** The VMM's virtual address of the region (what ring addresses are given in). */
  hostAddress: bigint;
  /** The memfd backing it (passed to a vhost-user backend). */
  fd: number;
}

export interface VringAddresses {
  desc: bigint;
  used: bigint;
  avail: bigint;
  /** Dirty logging: the used ring's guest-physical address (VHOST_VRING_F_LOG set, log_guest_addr); absent: no logging. */
  logGuestAddr?: bigint;
}

export interface VhostBackend {
  readonly kind: 'kernel' | 'user';
  /** For logs and the monitor: the socket path, or the device node and WWPN. */
  readonly description: string;
  readonly connected: boolean;
  /** Opens (connects, negotiates, SET_OWNER) and returns the backend's virtio features. Throws a clear Error. */
  connect(): bigint;
  /** Rings the backend serves, when it says. */
  readonly maxQueues: number | undefined;
  /**
   * Why this backend cannot log the guest pages it writes (so the device
   * cannot be live-migrated), or undefined when it can (vhost-user:
   * VHOST_USER_PROTOCOL_F_LOG_SHMFD agreed).
   */
  readonly dirtyLogUnsupported: string | undefined;
  /**
   * Hands the backend the dirty log: `size` bytes (one bit per 4 KiB guest
   * page from address 0) in a memfd (`fd`, for a vhost-user back-end), mapped
   * in the VMM at `hostAddress` (what the kernel writes through).
   */
  setLogBase(log: { fd: number; size: number; hostAddress: bigint }): void;
  /** Whether rings need SET_VRING_ENABLE (vhost-user with protocol features). */
  readonly needsEnable: boolean;
  setFeatures(features: bigint): void;
  setMemTable(regions: readonly VhostMemRegion[]): void;
  setVringNum(index: number, num: number): void;
  setVringBase(index: number, base: number): void;
  setVringAddr(index: number, a: VringAddresses): void;
  setVringKick(index: number, fd: number): void;
  setVringCall(index: number, fd: number): void;
  setVringErr(index: number, fd: number): void;
  setVringEnable(index: number, enable: boolean): void;
  /** Stops the ring; its next available index. */
  getVringBase(index: number): number;
  /** After the rings are set up (kernel: VHOST_SCSI_SET_ENDPOINT). */
  startDevice(): void;
  /** Before the rings are fetched back (kernel: VHOST_SCSI_CLEAR_ENDPOINT). */
  stopDevice(): void;
  /** Called once when the backend goes away by itself (vhost-user: the connection closed). */
  onDisconnect: ((reason: string) => void) | undefined;
  close(): void;
}
