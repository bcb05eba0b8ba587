// Watching pre-copy passes and deciding, by the move's convergence policy, what to do when they stop
// shrinking: raise the downtime target, switch to post-copy, report auto-converge throttling, or abort.
// Pure: fed QEMU's figures, it returns an action; the runner carries it out.
import type { MoveOptions } from '../api/index.js';

export interface PassFigures {
  passes: number;
  remaining: number;
  expectedDowntimeMs: number | null;
  downtimeLimitMs: number;
  throttlePct: number;
}

export type ConvergenceAction =
  | { kind: 'none' }
  | { kind: 'raise-downtime'; downtimeMs: number; message: string }
  | { kind: 'postcopy'; message: string }
  | { kind: 'throttle'; message: string }
  | { kind: 'abort'; message: string };

/** Consecutive passes without progress that count as "not converging". */
const STUCK_PASSES = 2;
/** A pass makes progress when its dirty set is at least this much smaller than the best before it. */
const PROGRESS = 0.9;
const MiB = 1024 * 1024;

export class ConvergenceWatch {
  private lastPass = 0;
  private best = Infinity;
  private stuck = 0;
  private lastThrottle = 0;
  private postcopyStarted = false;

  constructor(private readonly o: MoveOptions) {}

  observe(f: PassFigures): ConvergenceAction {
    if (this.o.convergence === 'throttle' && f.throttlePct > this.lastThrottle) {
      this.lastThrottle = f.throttlePct;
      return {
        kind: 'throttle',
        message: `auto-converge slowed the guest's vCPUs to ${100 - f.throttlePct} % (throttle ${f.throttlePct} %)`,
      };
    }
    if (f.passes <= this.lastPass || this.postcopyStarted) return { kind: 'none' };
    this.lastPass = f.passes;
    // Pass 1 copies everything; judge from the third pass on, when the dirty set is what remains.
    if (f.passes < 3) return { kind: 'none' };
    const tooLong = f.expectedDowntimeMs !== null && f.expectedDowntimeMs > f.downtimeLimitMs;
    const progress = f.remaining < this.best * PROGRESS;
    this.best = Math.min(this.best, f.remaining);
    this.stuck = tooLong && !progress ? this.stuck + 1 : 0;
    if (this.stuck < STUCK_PASSES) return { kind: 'none' };
    this.stuck = 0;
    this.best = Infinity; // judge the next step afresh
    const why = `pass ${f.passes}: ${(f.remaining / MiB).toFixed(1)} MiB still dirty, ~${f.expectedDowntimeMs} ms of downtime needed, target ${f.downtimeLimitMs} ms`;
    const ceiling = this.o.downtimeCeilingMs;
    const policy = this.o.convergence;
    if ((policy === 'raise-downtime' || policy === 'postcopy') && f.downtimeLimitMs < ceiling) {
      const next = Math.min(ceiling, f.downtimeLimitMs * 2);
      return {
        kind: 'raise-downtime',
        downtimeMs: next,
        message: `not converging (${why}); downtime target raised to ${next} ms`,
      };
    }
    if (policy === 'postcopy') {
      this.postcopyStarted = true;
      return {
        kind: 'postcopy',
        message: `not converging at the ${ceiling} ms ceiling (${why}); switching to post-copy`,
      };
    }
    if (policy === 'throttle' && f.throttlePct < 99) return { kind: 'none' }; // auto-converge keeps working
    return { kind: 'abort', message: `did not converge (${why})` };
  }
}
