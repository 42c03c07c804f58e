/**
 * A thread's scheduler figures, for the stall detector's run clock (RunClock
 * in virtio-core): Linux's /proc/self/task/TID/schedstat (ns on a CPU, ns
 * runnable but waiting for one) and the state letter of .../stat; and the
 * CPUs' steal time (/proc/stat) on a host that is itself a VM.
 */
import * as fs from 'fs';
import { parseProcStatSteal, parseSchedstat, parseStatState, ThreadSched } from '@tsvmm/virtio-core';

/** The thread's figures; undefined where schedstat is missing (no /proc, a kernel without it). */
export function readThreadSched(tid: number): ThreadSched | undefined {
  try {
    const times = parseSchedstat(fs.readFileSync(`/proc/self/task/${tid}/schedstat`, 'latin1'));
    if (!times) return undefined;
    // The calling thread is on a CPU while it reads: runnable, but not waiting.
    const runnable = tid !== process.pid && parseStatState(fs.readFileSync(`/proc/self/task/${tid}/stat`, 'latin1')) === 'R';
    return { ...times, runnable };
  } catch {
    return undefined;
  }
}

/** Each CPU's steal time so far (ns, /proc/stat); undefined without it. */
export function readCpuSteal(): number[] | undefined {
  try {
    return parseProcStatSteal(fs.readFileSync('/proc/stat', 'latin1'));
  } catch {
    return undefined;
  }
}
