/**
 * What a transport (virtio-scsi, vhost-user-scsi) hands a logical unit and gets back.
 */

export interface ScsiCommand {
  /** The CDB as received (the transport's cdb_size bytes, e.g. 32); the opcode's group decides how many are used. */
  cdb: Uint8Array;
  /** Device-readable payload (guest memory views, in order). */
  dataOut: Uint8Array[];
  /** Device-writable buffers (guest memory views, in order). Data-in is written straight into them (zero-copy). */
  dataIn: Uint8Array[];
  /**
   * Optional: aborted by the transport (ABORT TASK, LUN reset); the LUN should stop early where it can.
   * An AbortSignal does; so does any object with an `aborted` flag (a transport need not build an
   * AbortController per command: in Node 20 that costs more than the rest of a 4 KiB READ).
   */
  signal?: ScsiAbortSignal;
}

/** What a logical unit reads of a command's abort signal (AbortSignal has it). */
export interface ScsiAbortSignal {
  readonly aborted: boolean;
}

export interface ScsiResponse {
  /** SAM status. */
  status: number;
  /** Sense data (fixed or descriptor format, whichever the LUN's control mode page D_SENSE selects); empty unless CHECK CONDITION. */
  sense: Uint8Array;
  /** Bytes written into dataIn (data-in commands). */
  dataInLength: number;
  /** SPC residual: (buffer bytes offered) - (bytes transferred), for the command's direction. */
  residual: number;
  /**
   * Set when the buffers offered do not fit the command: wrong data direction (data-in buffers for a
   * data-out command, or both kinds), or fewer bytes than the command's transfer length (for data-in
   * commands with an ALLOCATION LENGTH: fewer bytes than that length). Nothing was transferred; the
   * transport answers VIRTIO_SCSI_S_OVERRUN (what QEMU does).
   */
  overrun?: boolean;
}

export type ScsiResetReason = 'lun-reset' | 'nexus-reset' | 'power-on';

/** A logical unit. */
export interface ScsiLun {
  readonly kind: string;
  execute(cmd: ScsiCommand): Promise<ScsiResponse>;
  /** LOGICAL UNIT RESET / I_T NEXUS RESET / power on: clears state and queues the unit attention SPC-4 prescribes. */
  reset(reason: ScsiResetReason): void;
  /** Counters for the monitor. */
  info(): Record<string, unknown>;
  close(): void;
  /**
   * Optional: the control mode page's D_SENSE, so that the target answers the
   * commands it handles for this LUN (REPORT LUNS) in the LUN's sense format.
   */
  readonly descriptorSense?: boolean;
  /**
   * Optional, for migration: what the unit holds that an initiator would
   * notice (pending unit attention, mode parameters MODE SELECT changed), as
   * JSON. Every field is optional on load: absent means the power-on value.
   */
  saveState?(): ScsiLunState;
  loadState?(state: ScsiLunState): void;
  /** Checks a saved state as loadState would, applying nothing. */
  checkState?(state: ScsiLunState): void;
}

/** A logical unit's migrated state (fields optional: absent = default). */
export interface ScsiLunState {
  kind?: string;
  /** The pending UNIT ATTENTION as ASC << 8 | ASCQ. */
  pendingUnitAttention?: number;
  /** Control mode page D_SENSE. */
  dSense?: boolean;
  /** Caching mode page WCE (absent: on). */
  wce?: boolean;
}
