import { readThreadSched } from './starvation';

test("readThreadSched: this thread's figures from /proc (on a CPU while it reads: not counted as waiting); none for a thread that is not ours", () => {
  const a = readThreadSched(process.pid)!;
  let x = 0;
  for (let i = 0; i < 5e7; i++) x += i; // some CPU time (tens of ms: the figure moves at scheduler ticks)
  const b = readThreadSched(process.pid)!;
  expect(x).toBeGreaterThan(0);
  expect(b.runNs).toBeGreaterThan(a.runNs);
  expect(b.waitNs).toBeGreaterThanOrEqual(a.waitNs);
  expect(b.runnable).toBe(false);
  expect(readThreadSched(0x3fffffff)).toBeUndefined();
});
