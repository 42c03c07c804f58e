/**
 * The front-end side of a vhost-user connection, synchronous: every request
 * is written and (when the protocol has an answer) its reply read before the
 * call returns, as device status writes in the VMM's exit path need. Each
 * wait is bounded; a back-end that closes the connection, answers wrongly or
 * not at all raises VhostUserError naming the request.
 */
import { SocketClosedError, SocketTimeoutError, UnixSocket } from '@tsvmm/kvm-native';
import {
  decodeHeader,
  decodeVringState,
  encodeLogDescription,
  encodeMemTable,
  encodeMessage,
  encodeVringAddr,
  encodeVringState,
  FLAG_NEED_REPLY,
  FLAG_REPLY,
  HEADER_SIZE,
  MAX_PAYLOAD,
  MemRegion,
  readU64,
  requestName,
  u64Payload,
  VhostUserProtocolFeature,
  VhostUserRequest as R,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VringAddr,
  VRING_NOFD_MASK,
} from './protocol';

export type VhostUserErrorKind = 'connect' | 'closed' | 'timeout' | 'refused' | 'protocol';

export class VhostUserError extends Error {
  constructor(
    readonly kind: VhostUserErrorKind,
    message: string,
  ) {
    super(message);
    this.name = 'VhostUserError';
  }
}

export interface FrontendOptions {
  /** Bound on every wait for a reply (default 10 s: GET_VRING_BASE waits for the back-end's in-flight I/O). */
  timeoutMs?: number;
}

export class VhostUserFrontend {
  private readonly timeoutMs: number;
  /** Protocol features both sides agreed on (after negotiate()). */
  protocolFeatures = 0n;
  /** The back-end's virtio features (after negotiate()). */
  backendFeatures = 0n;
  /** Rings the back-end offers (GET_QUEUE_NUM, when MQ was agreed). */
  queueNum: number | undefined;

  private constructor(
    readonly socket: UnixSocket,
    readonly path: string,
    opts: FrontendOptions,
  ) {
    this.timeoutMs = opts.timeoutMs ?? 10_000;
  }

  /** Connects to a back-end listening at `path`. */
  static connect(path: string, opts: FrontendOptions = {}): VhostUserFrontend {
    let s: UnixSocket;
    try {
      s = UnixSocket.connect(path);
    } catch (e) {
      const code = (e as { code?: string }).code ?? '';
      const why = code === 'ENOENT' ? 'no such socket' : code === 'ECONNREFUSED' ? 'nothing listens there' : (e as Error).message;
      throw new VhostUserError(
        'connect',
        `cannot connect to the vhost-user back-end at ${path}: ${why} (${code || 'error'}); is the back-end running?`,
      );
    }
    return new VhostUserFrontend(s, path, opts);
  }

  get protocolFeaturesNegotiated(): boolean {
    return (this.backendFeatures & (1n << BigInt(VHOST_USER_F_PROTOCOL_FEATURES))) !== 0n;
  }

  private hasProtocol(f: VhostUserProtocolFeature): boolean {
    return (this.protocolFeatures & (1n << BigInt(f))) !== 0n;
  }

  /**
   * GET_FEATURES, then GET/SET_PROTOCOL_FEATURES (keeping MQ and REPLY_ACK
   * of what the back-end offers), GET_QUEUE_NUM, SET_OWNER.
   */
  negotiate(): void {
    this.backendFeatures = this.getU64(R.GET_FEATURES);
    if (this.protocolFeaturesNegotiated) {
      const offered = this.getU64(R.GET_PROTOCOL_FEATURES);
      const wanted =
        (1n << BigInt(VhostUserProtocolFeature.MQ)) |
        (1n << BigInt(VhostUserProtocolFeature.REPLY_ACK)) |
        (1n << BigInt(VhostUserProtocolFeature.LOG_SHMFD));
      this.protocolFeatures = offered & wanted;
      this.send(R.SET_PROTOCOL_FEATURES, u64Payload(this.protocolFeatures));
      if (this.hasProtocol(VhostUserProtocolFeature.MQ)) this.queueNum = Number(this.getU64(R.GET_QUEUE_NUM));
    }
    this.send(R.SET_OWNER);
  }

  /** The back-end logs its writes into a shared-memory log (VHOST_USER_PROTOCOL_F_LOG_SHMFD agreed): live migration works. */
  get logShmfd(): boolean {
    return this.hasProtocol(VhostUserProtocolFeature.LOG_SHMFD);
  }

  /**
   * SET_LOG_BASE with LOG_SHMFD: the log's fd travels with the message, its
   * size and offset in the payload. The back-end answers it (a u64, 0 when
   * it mapped the log) whether or not REPLY_ACK was agreed.
   */
  setLogBase(fd: number, size: number, offset = 0): void {
    if (!this.logShmfd)
      throw new VhostUserError('refused', `the vhost-user back-end at ${this.path} does not offer VHOST_USER_PROTOCOL_F_LOG_SHMFD`);
    const r = this.request(R.SET_LOG_BASE, encodeLogDescription({ mmapSize: BigInt(size), mmapOffset: BigInt(offset) }), [fd], true);
    if (r.length >= 8 && readU64(r) !== 0n)
      throw new VhostUserError('refused', `the vhost-user back-end at ${this.path} refused SET_LOG_BASE (could not map the dirty log)`);
  }

  setFeatures(features: bigint): void {
    const f = this.protocolFeaturesNegotiated ? features | (1n << BigInt(VHOST_USER_F_PROTOCOL_FEATURES)) : features;
    this.send(R.SET_FEATURES, u64Payload(f));
  }

  setMemTable(regions: readonly (MemRegion & { fd: number })[]): void {
    this.send(
      R.SET_MEM_TABLE,
      encodeMemTable(regions),
      regions.map((r) => r.fd),
    );
  }

  setVringNum(index: number, num: number): void {
    this.send(R.SET_VRING_NUM, encodeVringState({ index, num }));
  }

  setVringBase(index: number, num: number): void {
    this.send(R.SET_VRING_BASE, encodeVringState({ index, num }));
  }

  setVringAddr(a: VringAddr): void {
    this.send(R.SET_VRING_ADDR, encodeVringAddr(a));
  }

  setVringKick(index: number, fd: number | undefined): void {
    this.sendFdMessage(R.SET_VRING_KICK, index, fd);
  }

  setVringCall(index: number, fd: number | undefined): void {
    this.sendFdMessage(R.SET_VRING_CALL, index, fd);
  }

  setVringErr(index: number, fd: number | undefined): void {
    this.sendFdMessage(R.SET_VRING_ERR, index, fd);
  }

  /** Only meaningful with VHOST_USER_F_PROTOCOL_FEATURES (rings start disabled then). */
  setVringEnable(index: number, enable: boolean): void {
    this.send(R.SET_VRING_ENABLE, encodeVringState({ index, num: enable ? 1 : 0 }));
  }

  /** Stops the ring and returns the back-end's next available index. */
  getVringBase(index: number): number {
    const r = this.request(R.GET_VRING_BASE, encodeVringState({ index, num: 0 }), [], true);
    return decodeVringState(r).num;
  }

  close(): void {
    this.socket.close();
  }

  private sendFdMessage(req: R, index: number, fd: number | undefined): void {
    this.send(req, u64Payload(BigInt(index | (fd === undefined ? VRING_NOFD_MASK : 0))), fd === undefined ? [] : [fd]);
  }

  private getU64(req: R): bigint {
    return readU64(this.request(req, new Uint8Array(0), [], true));
  }

  /** A request without a reply of its own; with REPLY_ACK agreed, the back-end's ack is awaited and checked. */
  private send(req: R, payload = new Uint8Array(0), fds: number[] = []): void {
    const ack = this.hasProtocol(VhostUserProtocolFeature.REPLY_ACK);
    const r = this.request(req, payload, fds, ack, ack ? FLAG_NEED_REPLY : 0);
    if (ack && readU64(r) !== 0n)
      throw new VhostUserError('refused', `the vhost-user back-end at ${this.path} refused ${requestName(req)}`);
  }

  private request(req: R, payload: Uint8Array, fds: number[], wantReply: boolean, flags = 0): Uint8Array {
    const name = requestName(req);
    try {
      this.socket.send(encodeMessage(req, flags, payload), fds);
      if (!wantReply) return new Uint8Array(0);
      const h = decodeHeader(this.socket.recvExact(HEADER_SIZE, this.timeoutMs).data);
      if (h.request !== req || !(h.flags & FLAG_REPLY) || h.size > MAX_PAYLOAD)
        throw new VhostUserError(
          'protocol',
          `the vhost-user back-end at ${this.path} answered ${name} with ${requestName(h.request)} (flags 0x${h.flags.toString(16)}, ${h.size} bytes)`,
        );
      return h.size ? this.socket.recvExact(h.size, this.timeoutMs).data : new Uint8Array(0);
    } catch (e) {
      if (e instanceof VhostUserError) throw e;
      if (e instanceof SocketClosedError || (e as { code?: string }).code === 'EPIPE' || (e as { code?: string }).code === 'ECONNRESET')
        throw new VhostUserError('closed', `the vhost-user back-end at ${this.path} closed the connection during ${name}`);
      if (e instanceof SocketTimeoutError)
        throw new VhostUserError('timeout', `the vhost-user back-end at ${this.path} did not answer ${name} within ${this.timeoutMs} ms`);
      throw e;
    }
  }
}
