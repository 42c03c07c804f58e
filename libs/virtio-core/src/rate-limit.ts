/**
 * The one limiter for log lines a guest can trigger at will (needs-reset,
 * malformed requests, I/O errors it provokes, unclaimed port and MMIO
 * accesses, unexpected vCPU exits): a guest that repeats a fault in a loop
 * costs a few lines, not a full disk, and a bounded amount of memory.
 *
 * Per kind, the first `burst` lines are written and the rest counted. With
 * `refill` (the default) each `intervalMs` allows another `burst`, and the
 * first line of a new interval says how many were suppressed in the last;
 * without it the burst is spent once, and the suppressed lines are
 * summarised (`summary`) at most once per interval, on the next line of that
 * kind or by `flush()`. At most `maxKinds` kinds are tracked: later kinds
 * share one entry (OVERFLOW_KIND), so even kinds derived from what the guest
 * did (an error message) cannot grow the map.
 */
export interface LogRateLimitOptions {
  /** Lines written per kind (per interval with `refill`; default 5). */
  burst?: number;
  /** Interval length in ms (default 10 s). */
  intervalMs?: number;
  /** Whether each interval allows another burst (default true); false: one burst, then summaries only. */
  refill?: boolean;
  /** Kinds tracked one by one (default 64); the rest share OVERFLOW_KIND. */
  maxKinds?: number;
  /** The line that reports `suppressed` lines of `kind` (without `refill`; by flush() in both modes). */
  summary?: (kind: string, suppressed: number) => string;
  /** What the burst's last line ends with (default: says that further lines are suppressed). */
  lastOfBurst?: (kind: string) => string;
  /** Clock (tests). */
  now?: () => number;
}

interface KindState {
  windowStart: number;
  written: number;
  suppressed: number;
  /** When a line or summary of this kind was last written (summaries without refill). */
  lastWritten: number;
}

export class LogRateLimiter {
  /** The kind that kinds beyond `maxKinds` share. */
  static readonly OVERFLOW_KIND = 'other';
  private readonly kinds = new Map<string, KindState>();
  /** Kinds in `kinds` other than OVERFLOW_KIND. */
  private named = 0;
  private readonly burst: number;
  private readonly intervalMs: number;
  private readonly refill: boolean;
  private readonly maxKinds: number;
  private readonly now: () => number;
  private readonly summary: (kind: string, suppressed: number) => string;
  private readonly lastOfBurst: (kind: string) => string;

  constructor(
    private readonly sink: (message: string) => void,
    opts: LogRateLimitOptions = {},
  ) {
    this.burst = opts.burst ?? 5;
    this.intervalMs = opts.intervalMs ?? 10_000;
    this.refill = opts.refill ?? true;
    this.maxKinds = Math.max(1, opts.maxKinds ?? 64);
    this.now = opts.now ?? Date.now;
    const secs = `${Math.round(this.intervalMs / 1000)} s`;
    this.summary = opts.summary ?? ((kind, n) => `${n} more ${kind} message${n === 1 ? '' : 's'} suppressed`);
    this.lastOfBurst =
      opts.lastOfBurst ??
      (this.refill
        ? (kind) => ` (further ${kind} messages suppressed for ${secs})`
        : (kind) => ` (further ${kind} messages are counted and summarised at most every ${secs})`);
  }

  /**
   * Writes `message` (built only if written) unless `kind` has used its
   * burst. Returns whether it was written.
   */
  log(kind: string, message: string | (() => string)): boolean {
    const t = this.now();
    let s = this.kinds.get(kind);
    if (!s) {
      if (kind !== LogRateLimiter.OVERFLOW_KIND) {
        if (this.named >= this.maxKinds - 1) return this.log(LogRateLimiter.OVERFLOW_KIND, message);
        this.named++;
      }
      s = { windowStart: t, written: 0, suppressed: 0, lastWritten: t };
      this.kinds.set(kind, s);
    }
    const text = () => (typeof message === 'string' ? message : message());
    if (this.refill && t - s.windowStart >= this.intervalMs) {
      const suppressed = s.suppressed;
      s.windowStart = t;
      s.suppressed = 0;
      s.written = 1;
      s.lastWritten = t;
      this.sink(suppressed ? `${text()} (${this.summary(kind, suppressed)})` : text());
      return true;
    }
    if (s.written < this.burst) {
      s.written++;
      s.lastWritten = t;
      this.sink(s.written === this.burst ? `${text()}${this.lastOfBurst(kind)}` : text());
      return true;
    }
    s.suppressed++;
    if (!this.refill && t - s.lastWritten >= this.intervalMs) this.writeSummary(kind, s, t);
    return false;
  }

  /** Messages of `kind` counted but not written (nor summarised) yet. */
  suppressed(kind: string): number {
    return this.kinds.get(kind)?.suppressed ?? 0;
  }

  /** Number of kinds tracked (at most maxKinds). */
  get kindCount(): number {
    return this.kinds.size;
  }

  /** Writes the summary of every kind with suppressed lines (at exit, or when asked). */
  flush(): void {
    const t = this.now();
    for (const [kind, s] of this.kinds) if (s.suppressed) this.writeSummary(kind, s, t);
  }

  private writeSummary(kind: string, s: KindState, t: number): void {
    const n = s.suppressed;
    s.suppressed = 0;
    s.lastWritten = t;
    this.sink(this.summary(kind, n));
  }
}
