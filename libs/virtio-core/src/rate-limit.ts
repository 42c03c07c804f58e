/**
 * Rate-limited logging for what a guest can trigger at will (needs-reset,
 * malformed requests, I/O errors it provokes): per kind, the first `burst`
 * lines of each interval are written, the rest are counted, and the next line
 * of that kind after the interval says how many were suppressed. A guest that
 * repeats a fault in a loop thus costs a few lines, not a full disk.
 */
export interface LogRateLimitOptions {
  /** Lines written per kind and interval (default 5). */
  burst?: number;
  /** Interval length in ms (default 10 s). */
  intervalMs?: number;
  /** Clock (tests). */
  now?: () => number;
}

interface KindState {
  windowStart: number;
  written: number;
  suppressed: number;
}

export class LogRateLimiter {
  private readonly kinds = new Map<string, KindState>();
  private readonly burst: number;
  private readonly intervalMs: number;
  private readonly now: () => number;

  constructor(
    private readonly sink: (message: string) => void,
    opts: LogRateLimitOptions = {},
  ) {
    this.burst = opts.burst ?? 5;
    this.intervalMs = opts.intervalMs ?? 10_000;
    this.now = opts.now ?? Date.now;
  }

  /** Writes `message` unless `kind` already used its burst in this interval. Returns whether it was written. */
  log(kind: string, message: string): boolean {
    const t = this.now();
    let s = this.kinds.get(kind);
    if (!s) {
      s = { windowStart: t, written: 0, suppressed: 0 };
      this.kinds.set(kind, s);
    }
    if (t - s.windowStart >= this.intervalMs) {
      const suppressed = s.suppressed;
      s.windowStart = t;
      s.written = 0;
      s.suppressed = 0;
      if (suppressed) this.sink(`${message} (${suppressed} more ${kind} message${suppressed === 1 ? '' : 's'} suppressed)`);
      else this.sink(message);
      s.written = 1;
      return true;
    }
    if (s.written < this.burst) {
      s.written++;
      this.sink(
        s.written === this.burst ? `${message} (further ${kind} messages suppressed for ${Math.round(this.intervalMs / 1000)} s)` : message,
      );
      return true;
    }
    s.suppressed++;
    return false;
  }

  /** Messages of `kind` counted but not written in the current interval. */
  suppressed(kind: string): number {
    return this.kinds.get(kind)?.suppressed ?? 0;
  }
}
