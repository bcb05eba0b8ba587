// From a move's samples to what the charts draw: plain {x, y} arrays (Chart.js must never see Vue's
// reactive proxies: it walks them on every update), pass boundaries, and the figures beside the charts.
import type { MoveOptions, Sample } from '../../../engine/api/index.js';
import { mib } from './format.js';

export interface Point {
  x: number;
  y: number;
}

/** Seconds since the move started. */
const t = (s: Sample): number => s.at / 1000;
const round = (v: number): number => Math.round(v * 10) / 10;

export function throughputPoints(samples: readonly Sample[]): Point[] {
  return samples.map((s) => ({ x: t(s), y: round(s.throughputMiBs) }));
}

/** QEMU reports 0 of 0 before its first pass has sized memory: no point rather than a false zero. */
const sized = (s: Sample): boolean => s.totalBytes > 0;

export function remainingPoints(samples: readonly Sample[]): Point[] {
  return samples.filter(sized).map((s) => ({ x: t(s), y: round(mib(s.remainingBytes)) }));
}

export function dirtyPoints(samples: readonly Sample[]): Point[] {
  return samples.filter(sized).map((s) => ({ x: t(s), y: round(mib(s.dirtyBytesPerSec)) }));
}

export interface PassMark {
  x: number;
  pass: number;
}

/** Where each new pre-copy pass began (QEMU counts a pass per dirty-bitmap sync). */
export function passBoundaries(samples: readonly Sample[]): PassMark[] {
  const marks: PassMark[] = [];
  let prev = 0;
  for (const s of samples) {
    if (s.pass > prev && s.pass >= 1) marks.push({ x: t(s), pass: s.pass });
    prev = Math.max(prev, s.pass);
  }
  return marks;
}

export interface Outlook {
  /** Milliseconds until the memory copy converges, when it can be told. */
  etaMs: number | null;
  converging: boolean | null;
  text: string;
}

/**
 * How long the memory copy has left: what remains, at what the link moves beyond what the guest dirties
 * again. When the guest dirties as fast as the link sends, there is no ETA: the convergence policy decides.
 */
export function outlook(s: Sample | null, options: MoveOptions | null): Outlook {
  if (!s || s.phase !== 2 || s.pass < 1) return { etaMs: null, converging: null, text: '—' };
  const link = s.throughputMiBs;
  const dirty = mib(s.dirtyBytesPerSec);
  const remaining = mib(s.remainingBytes);
  if (link <= 0) return { etaMs: null, converging: null, text: 'measuring…' };
  const net = link - dirty;
  if (net <= 0.05 * link) {
    const policy = options?.convergence ?? 'the convergence policy';
    return {
      etaMs: null,
      converging: false,
      text: `not converging: the guest dirties ${dirty.toFixed(1)} MiB/s, the link moves ${link.toFixed(1)} MiB/s (${policy} applies)`,
    };
  }
  const etaMs = (remaining / net) * 1000;
  return { etaMs, converging: true, text: `about ${Math.max(1, Math.round(etaMs / 1000))} s` };
}

/** One line of a chart. */
export interface LineSeries {
  label: string;
  data: Point[];
  color: string;
  dashed?: boolean;
}
