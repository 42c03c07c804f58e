/** backend=user: a vhost-user back-end process over a unix socket. */
import { FdWatch } from '@tsvmm/kvm-native';
import { VhostUserFrontend, VHOST_VRING_F_LOG } from '@tsvmm/vhost-user';
import { VhostBackend, VhostMemRegion, VringAddresses } from './backend';

export class VhostUserBackend implements VhostBackend {
  readonly kind = 'user';
  onDisconnect: ((reason: string) => void) | undefined;
  private fe: VhostUserFrontend | undefined;
  private watch: FdWatch | undefined;

  constructor(
    readonly socketPath: string,
    private readonly timeoutMs = 10_000,
  ) {}

  get description(): string {
    return `vhost-user back-end at ${this.socketPath}`;
  }

  get connected(): boolean {
    return this.fe !== undefined;
  }

  get maxQueues(): number | undefined {
    return this.fe?.queueNum;
  }

  get needsEnable(): boolean {
    return this.fe?.protocolFeaturesNegotiated ?? false;
  }

  get dirtyLogUnsupported(): string | undefined {
    if (!this.fe) return `the ${this.description} is not connected`;
    if (!this.fe.protocolFeaturesNegotiated)
      return `the ${this.description} does not speak vhost-user protocol features (no VHOST_USER_PROTOCOL_F_LOG_SHMFD: no dirty logging)`;
    if (!this.fe.logShmfd) return `the ${this.description} does not offer VHOST_USER_PROTOCOL_F_LOG_SHMFD (no dirty logging)`;
    return undefined;
  }

  setLogBase(log: { fd: number; size: number }): void {
    this.f.setLogBase(log.fd, log.size, 0);
  }

  connect(): bigint {
    this.close();
    const fe = VhostUserFrontend.connect(this.socketPath, { timeoutMs: this.timeoutMs });
    try {
      fe.negotiate();
    } catch (e) {
      fe.close();
      throw e;
    }
    this.fe = fe;
    // Between requests nothing may arrive: readable means the back-end closed (or broke the protocol).
    this.watch = new FdWatch(fe.socket.fd, () => {
      if (!this.fe || !this.fe.socket.waitReadable(0)) return;
      this.lost('the connection closed');
    });
    this.watch.start();
    return fe.backendFeatures;
  }

  private lost(reason: string): void {
    this.close();
    this.onDisconnect?.(reason);
  }

  private get f(): VhostUserFrontend {
    if (!this.fe) throw new Error(`${this.description}: not connected`);
    return this.fe;
  }

  setFeatures(features: bigint): void {
    this.f.setFeatures(features);
  }

  setMemTable(regions: readonly VhostMemRegion[]): void {
    this.f.setMemTable(
      regions.map((r) => ({ guestPhysAddr: r.guestPhysAddr, size: BigInt(r.size), userAddr: r.hostAddress, mmapOffset: 0n, fd: r.fd })),
    );
  }

  setVringNum(index: number, num: number): void {
    this.f.setVringNum(index, num);
  }

  setVringBase(index: number, base: number): void {
    this.f.setVringBase(index, base);
  }

  setVringAddr(index: number, a: VringAddresses): void {
    const log = a.logGuestAddr !== undefined;
    this.f.setVringAddr({
      index,
      flags: log ? 1 << VHOST_VRING_F_LOG : 0,
      desc: a.desc,
      used: a.used,
      avail: a.avail,
      log: a.logGuestAddr ?? 0n,
    });
  }

  setVringKick(index: number, fd: number): void {
    this.f.setVringKick(index, fd);
  }

  setVringCall(index: number, fd: number): void {
    this.f.setVringCall(index, fd);
  }

  setVringErr(index: number, fd: number): void {
    this.f.setVringErr(index, fd);
  }

  setVringEnable(index: number, enable: boolean): void {
    this.f.setVringEnable(index, enable);
  }

  getVringBase(index: number): number {
    return this.f.getVringBase(index);
  }

  startDevice(): void {}

  stopDevice(): void {}

  close(): void {
    this.watch?.close();
    this.watch = undefined;
    this.fe?.close();
    this.fe = undefined;
  }
}
