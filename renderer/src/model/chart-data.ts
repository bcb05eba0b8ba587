// From a move's samples to what the charts draw: plain {x, y} arrays (Chart.js must never see Vue's
// reactive proxies: it walks them on every update), pass boundaries, and the figures beside the charts.
import type { MoveOptions, Sample, TuneChange } from '../../../engine/api/index.js';
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

/** Where the administrator tuned the move, with a short label for the chart. */
export interface TuneChartMark {
  x: number;
  label: string;
}

/** A short label: "512 MiB/s · 2000 ms", "post-copy", or "tuned" where the record kept no values. */
export function tuneLabel(change: TuneChange | null): string {
  if (!change) return 'tuned';
  const parts: string[] = [];
  if (change.bandwidthMiBs !== undefined) parts.push(`${change.bandwidthMiBs} MiB/s`);
  if (change.downtimeMs !== undefined) parts.push(`${change.downtimeMs} ms`);
  if (change.postcopy) parts.push('post-copy');
  return parts.join(' · ') || 'tuned';
}

export function tuneMarks(tunes: readonly { at: number; change: TuneChange | null }[]): TuneChartMark[] {
  return tunes.map((t) => ({ x: t.at / 1000, label: tuneLabel(t.change) }));
}

/**
 * The bandwidth limit over the move as a stepped line: the move's own limit, then each tune's from the
 * moment it was made, up to `endX` (seconds). Empty when the move never had a limit.
 */
export function bandwidthLimitPoints(
  initialMiBs: number | null,
  tunes: readonly { at: number; change: TuneChange | null }[],
  endX: number,
): Point[] {
  const points: Point[] = [];
  let limit = initialMiBs;
  if (limit !== null) points.push({ x: 0, y: limit });
  for (const t of tunes) {
    const next = t.change?.bandwidthMiBs;
    if (next === undefined || next === limit) continue;
    const x = t.at / 1000;
    if (limit !== null) points.push({ x, y: limit });
    points.push({ x, y: next });
    limit = next;
  }
  if (limit !== null) points.push({ x: Math.max(endX, points.at(-1)?.x ?? 0), y: limit });
  return points;
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

// A chart's text alternative (WCAG 1.1.1): what it plots, for screen readers, as a one-line summary and
// as a table of the figures.

const fmt = (v: number): string => v.toFixed(1);

/**
 * "24 samples over 12.3 s. Throughput (MiB/s): latest 15.0, peak 15.2. … Pass 2 began at 4.1 s." —
 * the chart's accessible name, read afresh as samples arrive.
 */
export function chartSummary(
  title: string,
  series: readonly LineSeries[],
  passes: readonly PassMark[],
  tunes: readonly TuneChartMark[] = [],
): string {
  const first = series[0];
  if (!first || first.data.length === 0) return `${title}: no samples yet.`;
  const end = first.data[first.data.length - 1]!.x;
  const parts = [`${title}: ${first.data.length} samples over ${fmt(end)} s.`];
  for (const s of series) {
    if (s.data.length === 0) continue;
    const latest = s.data[s.data.length - 1]!.y;
    const peak = Math.max(...s.data.map((p) => p.y));
    parts.push(`${s.label}: latest ${fmt(latest)}, peak ${fmt(peak)}.`);
  }
  const last = passes[passes.length - 1];
  if (last) parts.push(`Pass ${last.pass} began at ${fmt(last.x)} s.`);
  for (const t of tunes) parts.push(`Tuned at ${fmt(t.x)} s: ${t.label}.`);
  return parts.join(' ');
}

export interface ChartTable {
  /** Column headings: the time, then each series. */
  columns: string[];
  /** Time (s), then each series' value at that time ('' where it has none). */
  rows: string[][];
}

/**
 * The figures a chart plots as a table: a row per sample of the first series, at most `maxRows` of them
 * spread evenly over the move (always its first and latest), each series' value at that moment (its
 * latest point not after it).
 */
export function chartTable(series: readonly LineSeries[], maxRows = 20): ChartTable {
  const columns = ['Time (s)', ...series.map((s) => s.label)];
  const base = series[0]?.data ?? [];
  if (base.length === 0) return { columns, rows: [] };
  const picks: number[] = [];
  if (base.length <= maxRows) base.forEach((_, i) => picks.push(i));
  else {
    const step = (base.length - 1) / (maxRows - 1);
    for (let r = 0; r < maxRows; r++) picks.push(Math.round(r * step));
  }
  const valueAt = (data: readonly Point[], x: number): string => {
    let found: Point | null = null;
    for (const p of data) {
      if (p.x > x + 1e-9) break;
      found = p;
    }
    return found ? fmt(found.y) : '';
  };
  const rows = [...new Set(picks)].map((i) => {
    const x = base[i]!.x;
    return [fmt(x), ...series.map((s) => valueAt(s.data, x))];
  });
  return { columns, rows };
}
