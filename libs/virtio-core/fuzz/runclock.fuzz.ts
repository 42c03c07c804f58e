/**
 * The stall detector's run clock over /proc texts from the input: readings
 * separated by \x01, each a thread's schedstat, its stat and a /proc/stat
 * (separated by \x02), the first two bytes of each reading the wall time
 * step (ms). Malformed texts read as "not available"; whatever they say, the
 * run clock never goes back and never runs ahead of the wall clock.
 */
import { parseProcStatSteal, parseSchedstat, parseStatState, RunClock, ThreadSched } from '@tsvmm/virtio-core';

export const maxLen = 4096;
export const dictionary = ['cpu0 ', 'cpu1 ', '(node) R ', '(node) S ', ' 0 ', '\x01', '\x02', '99999999999'];

export function fuzz(data: Buffer): void {
  const readings = data.toString('latin1').split('\x01');
  let cur: { sched?: ThreadSched; steal?: number[] } = {};
  const clock = new RunClock(
    () => cur.sched,
    () => cur.steal,
  );
  let wall = 0;
  let last = 0;
  for (const r of readings) {
    const step = r.length >= 2 ? r.charCodeAt(0) | (r.charCodeAt(1) << 8) : 0;
    const [schedstat = '', stat = '', procStat = ''] = r.slice(2).split('\x02');
    const times = parseSchedstat(schedstat);
    const state = parseStatState(stat);
    if (state !== undefined && state.length !== 1) throw new Error(`state ${JSON.stringify(state)} is not one letter`);
    cur = { sched: times && { ...times, runnable: state === 'R' }, steal: parseProcStatSteal(procStat) };
    wall += step;
    const run = clock.tick(wall, [1]);
    if (!Number.isFinite(run) || run < last - 1e-9 || run > wall + 1e-9)
      throw new Error(`run clock ${run} after ${last} at wall ${wall}: it went back or ahead of the wall clock`);
    last = run;
  }
}
