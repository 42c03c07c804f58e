/**
 * What a device gets when the driver sets DRIVER_OK, and what it gives back
 * (virtio 1.2 3.1.1 step 8: the device is live). The transport keeps
 * features, status, configuration space and interrupts' routing; the queues
 * go to one handler each, which takes the queue's kicks and completes its
 * requests. A handler exists only while the device is activated: the
 * driver's reset disposes of every handler.
 */
import type { GuestMemory } from './guest-memory';
import type { SplitVirtqueue } from './virtqueue';

/** One enabled queue as activation hands it over. */
export interface QueueResources {
  /** The queue, already checked and mapped (SplitVirtqueue.activate). Its indices, counters and stall record go with it. */
  readonly queue: SplitVirtqueue;
  /** Raises the queue's used-buffer notification through the transport (MSI-X vector, or ISR + INTx). */
  readonly interrupt: () => void;
  /**
   * The eventfd that raises the queue's interrupt without the transport's
   * thread (the MSI-X vector's irqfd, or the VMM-watched eventfd while the
   * vector is masked); undefined when the transport has none.
   */
  readonly interruptFd: () => number | undefined;
  /** The eventfd the guest's doorbell signals (KVM ioeventfd), while the transport has one registered. */
  readonly notifierFd: () => number | undefined;
}

export interface ActivationContext {
  readonly memory: GuestMemory;
  /** Per queue index: its resources, or undefined for a queue the driver did not enable. */
  readonly queues: readonly (QueueResources | undefined)[];
}

/** Where a queue's requests are handled. */
export type QueuePlacement = { kind: 'in-process' } | { kind: 'iothread'; iothread: string };

/** A queue's data plane, from activation to reset. */
export interface QueueHandler {
  readonly placement: QueuePlacement;
  /** A kick (already counted and filtered by fault injection); `entry` names it for the fault boundary. */
  kick(entry: string): void;
  /** Resolves once nothing the handler started can still touch guest memory and its interrupts went out. */
  drain(): Promise<void>;
  /** The device was reset: the handler takes no kick and completes nothing afterwards (a notifier it watches is detached). */
  dispose(): void;
  /**
   * A handler on another thread takes the queue's doorbell eventfd (`fd`, the
   * transport's, just registered with KVM) and watches it there, so guest
   * kicks never reach the transport's thread: it duplicates the descriptor
   * (the transport closes its own whenever it likes) and returns true. Kicks
   * read there go through the same rules (VirtioDevice.notify on the
   * handler's copy of the queue: counted, fault-injected, recorded for the
   * stall detector, held while bus mastering is off). Absent or false: the
   * transport watches the eventfd and calls VirtioDevice.notify.
   */
  attachNotifier?(fd: number): boolean;
  /**
   * The transport removed the queue's doorbell from KVM (stop, reset, BAR
   * move, handover): stop watching the duplicate. The transport then reads
   * the eventfd once (test-and-clear); a kick that raced the removal is read
   * by exactly one of the two threads (an eventfd read takes the whole
   * count), so it is processed once, never lost.
   */
  detachNotifier?(): void;
}
