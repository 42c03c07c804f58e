/** Errors raised by the KVM facade. */

/** /dev/kvm is missing, not accessible, or speaks an unexpected API. */
export class KvmUnavailableError extends Error {
  constructor(
    message: string,
    readonly reason: 'missing' | 'permission' | 'api-version' | 'capability' | 'other',
  ) {
    super(message);
    this.name = 'KvmUnavailableError';
  }
}

/** A facade call got an argument it cannot pass to the kernel. */
export class KvmArgumentError extends TypeError {
  constructor(message: string) {
    super(message);
    this.name = 'KvmArgumentError';
  }
}

/** A vCPU stopped for a reason the VMM cannot continue from. */
export type VcpuFault =
  | { kind: 'internal-error'; suberror: number; suberrorName: string; data: bigint[] }
  | { kind: 'shutdown' }
  | { kind: 'fail-entry'; hardwareEntryFailureReason: bigint; cpu: number }
  | { kind: 'unhandled-exit'; exitReason: number; exitName: string }
  | { kind: 'run-error'; errno: number };

export class VcpuFaultError extends Error {
  constructor(
    readonly vcpu: number,
    readonly fault: VcpuFault,
    /** Guest RIP at the fault, when registers could be read. */
    readonly rip: bigint | undefined,
    /** Instruction bytes at RIP (from KVM's emulation-failure report or guest memory). */
    readonly instructionBytes: Uint8Array | undefined,
  ) {
    super(VcpuFaultError.describe(vcpu, fault, rip, instructionBytes));
    this.name = 'VcpuFaultError';
  }

  static describe(vcpu: number, fault: VcpuFault, rip?: bigint, bytes?: Uint8Array): string {
    let what: string;
    switch (fault.kind) {
      case 'internal-error':
        what = `KVM internal error (${fault.suberrorName})`;
        break;
      case 'shutdown':
        what = 'triple fault (KVM_EXIT_SHUTDOWN)';
        break;
      case 'fail-entry':
        what = `VM entry failed (hardware reason 0x${fault.hardwareEntryFailureReason.toString(16)})`;
        break;
      case 'unhandled-exit':
        what = `unhandled exit ${fault.exitName} (${fault.exitReason})`;
        break;
      case 'run-error':
        what = `KVM_RUN failed with errno ${fault.errno}`;
        break;
    }
    const rs = rip === undefined ? 'unknown' : `0x${rip.toString(16)}`;
    const bs = bytes && bytes.length ? Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join(' ') : 'unavailable';
    return `vCPU ${vcpu}: ${what} at RIP ${rs}, instruction bytes: ${bs}`;
  }
}
