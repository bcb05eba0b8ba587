// The estimate before Finish (issue 10 point 4): how long a live move between Ferry's own hosts will
// take, how long the guest will stand still, how much data goes over and whether pre-copy converges.
// Pure: fed the measured inputs (dirty rate, link rate, how the memory compresses, past moves' fixed
// costs), it simulates QEMU's pre-copy passes and Ferry's convergence policy (convergence.ts).
//
// The model. Pass 1 sends all of the VM's memory: non-zero pages at the move's rate, zero pages as a
// flag (scanned, nearly free). Each next pass sends what the guest dirtied during the previous one
// (dirty rate × the previous pass's time, at most the pages in use: those not zero). QEMU switches over when what is
// left can be sent within the downtime target (remaining ÷ rate ≤ target): that last copy, plus the
// switch-over's own cost, is the downtime. When the passes stop shrinking, the convergence policy acts
// as the runner's ConvergenceWatch would: raise the downtime target, throttle the vCPUs, switch to
// post-copy, or give up. The move's rate is the uncompressed memory bytes a second it can reach:
// QEMU's bandwidth limit (which counts uncompressed bytes), the link (carrying compressed bytes with
// Compression), the streams (Multichannel: channels × one stream's rate, up to the link), and the CPU
// for compression. Fixed costs outside the memory copy come from past moves (history.ts) or constants.
import type { EstimateFix, MigrationRecord, MoveEstimate, MoveOptions } from '../api/index.js';
import { ConvergenceWatch } from './convergence.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const PAGE = 4096;

/**
 * Rates and costs measured on the machines Ferry is developed on (../shared/notes/qemu-7.2-facts.md,
 * issue 10's bench), used where nothing better is known.
 */
export const ESTIMATE_CONSTANTS = {
  /** One migration stream over loopback, nothing else limiting (1 GiB of memory in 0.33 s). */
  streamBytesPerSec: 3 * GiB,
  /** All streams together over loopback on 2 cores (multifd ×4: 1 GiB in 0.21 s). */
  loopbackBytesPerSec: 4.8 * GiB,
  /** zstd level 1 over all channels, CPU-bound on 2 cores (1000 MiB in 0.79 s), uncompressed bytes. */
  zstdBytesPerSec: 1.25 * GiB,
  /** zlib level 1, the same way (1000 MiB in 7.4 s). */
  zlibBytesPerSec: 135 * MiB,
  /** Finding and flagging zero pages (a few bytes each on the wire). */
  zeroScanBytesPerSec: 8 * GiB,
  /** What a zero page costs on the wire: its header and the flag byte. */
  zeroPageWireBytes: 9,
  /** The live disk copy of a shared-nothing move (1 GiB in about 5 s, issue 10's bench). */
  diskCopyBytesPerSec: 200 * MiB,
  /** Everything of a whole move outside the memory copy (setup, hand-over, online, clean-up). */
  overheadMs: 1300,
  /** The guest paused beyond the last copy (Ferry's pause, device state, resume). */
  switchoverMs: 30,
  /** A move still copying after this is taken as never ending. */
  maxMs: 15 * 60_000,
  maxPasses: 300,
} as const;

export type LinkSource = 'bandwidth-limit' | 'lab-link' | 'loopback';

export interface FixedCosts {
  overheadMs: number;
  switchoverMs: number;
  from: 'history' | 'constants';
}

export interface EstimateInput {
  options: MoveOptions;
  memoryBytes: number;
  /** Distinct bytes dirtied a second (QEMU's calc-dirty-rate, page-sampling). */
  dirtyBytesPerSec: number;
  dirtyRateWindowS: number;
  /** 0..1: the share of memory pages that are all zeros. */
  zeroPageRatio: number;
  /** ≥ 1: uncompressed ÷ compressed, for the Compression option (ignored otherwise). */
  compressionRatio: number;
  /** The shaped link between the hosts (bytes/s), or null on loopback (no link limits). */
  linkBytesPerSec: number | null;
  /** Shared-nothing: the disks' allocated bytes; 0 otherwise. */
  diskBytes: number;
  costs: FixedCosts;
}

interface Rates {
  /** Uncompressed memory bytes a second. */
  effective: number;
  /** The rate reported as the link's: the bandwidth limit, the link, or loopback streams. */
  link: number;
  linkSource: LinkSource;
  /** What limits `effective`. */
  limitedBy: 'bandwidth-limit' | 'link' | 'cpu';
  /** The highest effective rate the transport allows without a bandwidth limit. */
  transportMax: number;
}

function compressing(o: MoveOptions): boolean {
  return o.performance === 'compression' && o.compression !== 'xbzrle';
}

function streams(o: MoveOptions): number {
  return o.performance === 'compression' || o.performance === 'multichannel' ? Math.max(1, o.channels) : 1;
}

export function rates(i: Pick<EstimateInput, 'options' | 'compressionRatio' | 'linkBytesPerSec'>): Rates {
  const o = i.options;
  const C = ESTIMATE_CONSTANTS;
  const cap = o.bandwidthMiBs === null ? Infinity : o.bandwidthMiBs * MiB;
  const wire = Math.min(
    i.linkBytesPerSec ?? Infinity,
    streams(o) * C.streamBytesPerSec,
    C.loopbackBytesPerSec,
  );
  const ratio = compressing(o) ? Math.max(1, i.compressionRatio) : 1;
  const cpu = compressing(o) ? (o.compression === 'zlib' ? C.zlibBytesPerSec : C.zstdBytesPerSec) : Infinity;
  const transportMax = Math.min(wire * ratio, cpu);
  const effective = Math.min(cap, transportMax);
  const limitedBy = cap <= transportMax ? 'bandwidth-limit' : wire * ratio <= cpu ? 'link' : 'cpu';
  // The link rate reported: the bandwidth limit when one is set and the link does not go lower, else
  // the lab's shaped link, else what the streams reach over loopback.
  if (cap !== Infinity && cap <= (i.linkBytesPerSec ?? Infinity))
    return { effective, link: cap, linkSource: 'bandwidth-limit', limitedBy, transportMax };
  if (i.linkBytesPerSec !== null)
    return { effective, link: i.linkBytesPerSec, linkSource: 'lab-link', limitedBy, transportMax };
  return { effective, link: wire, linkSource: 'loopback', limitedBy, transportMax };
}

export interface Simulation {
  converges: boolean;
  step: MoveEstimate['step'];
  passes: number;
  /** Phases 2-3 (and the post-copy tail): the memory copy. */
  copyMs: number;
  /** The last copy with the guest paused (0 with post-copy). */
  finalCopyMs: number;
  /** Uncompressed memory bytes sent (non-zero pages), and zero pages flagged. */
  sentBytes: number;
  zeroPages: number;
  /** The downtime target when it switched over (raised by the policy, perhaps). */
  downtimeLimitMs: number;
  why: string;
}

/** QEMU's pre-copy passes under the move's convergence policy, at `rate` uncompressed bytes a second. */
export function simulate(
  i: Pick<EstimateInput, 'memoryBytes' | 'dirtyBytesPerSec' | 'zeroPageRatio'>,
  o: MoveOptions,
  rate: number,
): Simulation {
  const C = ESTIMATE_CONSTANTS;
  const zero = Math.min(1, Math.max(0, i.zeroPageRatio));
  const nonZero = i.memoryBytes * (1 - zero);
  const zeroBytes = i.memoryBytes * zero;
  let passMs = (nonZero / rate + zeroBytes / C.zeroScanBytesPerSec) * 1000;
  let elapsed = passMs;
  let sent = nonZero;
  const zeroPages = zeroBytes / PAGE;
  const watch = new ConvergenceWatch(o);
  let limit = o.downtimeMs;
  let throttle = 0;
  let highDirty = 0;
  let step: MoveEstimate['step'] = 'none';
  const MB = (b: number): string => `${(b / MiB).toFixed(1)} MiB`;
  for (let pass = 2; pass <= C.maxPasses; pass++) {
    const dirty = i.dirtyBytesPerSec * (1 - throttle / 100);
    // A pass re-sends the pages dirtied during the last one, but never more than the guest has in use:
    // one that rewrites a small working set fast dirties that set, not rate × time. The pages that are
    // not zero stand for what it uses (the 1 s measurement cannot tell a small set from a large one).
    const remaining = Math.min(Math.max(nonZero, PAGE), (dirty * passMs) / 1000);
    const needMs = (remaining / rate) * 1000;
    if (needMs <= limit) {
      return {
        converges: true,
        step,
        passes: pass,
        copyMs: elapsed + needMs,
        finalCopyMs: needMs,
        sentBytes: sent + remaining,
        zeroPages,
        downtimeLimitMs: limit,
        why: `pass ${pass}: ${MB(remaining)} left, ${Math.round(needMs)} ms to send`,
      };
    }
    // QEMU's auto-converge (throttle policy): it slows the vCPUs when a pass dirties more than half
    // of what it sent, twice in a row; 20 % first, then 10 % more each time, at most 99 %.
    if (o.convergence === 'throttle' && dirty > rate / 2 && ++highDirty >= 2 && throttle < 99) {
      throttle = throttle === 0 ? 20 : Math.min(99, throttle + 10);
    }
    const figures = { passes: pass, remaining, expectedDowntimeMs: needMs, downtimeLimitMs: limit };
    let action = watch.observe({ ...figures, throttlePct: throttle });
    if (action.kind === 'throttle') {
      step = 'throttle';
      action = watch.observe({ ...figures, throttlePct: throttle });
    }
    const why = `the guest dirties ${MB(i.dirtyBytesPerSec)}/s, the move sends ${MB(rate)}/s: ${MB(remaining)} still dirty after pass ${pass}, ${Math.round(needMs)} ms to send, target ${limit} ms`;
    if (action.kind === 'raise-downtime') {
      limit = action.downtimeMs;
      if (step === 'none') step = 'raise-downtime';
    } else if (action.kind === 'postcopy') {
      // The guest runs on the destination at once; the rest of its memory follows.
      return {
        converges: true,
        step: 'postcopy',
        passes: pass,
        copyMs: elapsed + needMs,
        finalCopyMs: 0,
        sentBytes: sent + remaining,
        zeroPages,
        downtimeLimitMs: limit,
        why,
      };
    } else if (action.kind === 'abort') {
      return {
        converges: false,
        step,
        passes: pass,
        copyMs: elapsed,
        finalCopyMs: 0,
        sentBytes: sent,
        zeroPages,
        downtimeLimitMs: limit,
        why,
      };
    }
    passMs = needMs;
    elapsed += passMs;
    sent += remaining;
    if (elapsed > C.maxMs) break;
  }
  return {
    converges: false,
    step,
    passes: C.maxPasses,
    copyMs: elapsed,
    finalCopyMs: 0,
    sentBytes: sent,
    zeroPages,
    downtimeLimitMs: limit,
    why: `still copying after ${Math.round(elapsed / 1000)} s: the guest dirties ${MB(i.dirtyBytesPerSec)}/s, the move sends ${MB(rate)}/s`,
  };
}

/** The least value in [lo, hi] for which ok() holds (ok is taken as monotonic); null if none. */
function least(lo: number, hi: number, ok: (v: number) => boolean): number | null {
  if (!ok(hi)) return null;
  if (ok(lo)) return lo;
  for (let n = 0; n < 40 && hi - lo > 1; n++) {
    const mid = Math.floor((lo + hi) / 2);
    if (ok(mid)) hi = mid;
    else lo = mid;
  }
  return hi;
}

const mibs = (b: number): string => `${Math.round(b / MiB)} MiB/s`;
const secs = (ms: number): string =>
  ms < 10_000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms / 1000)} s`;

/** What would make a move that will not converge converge. */
function fixesFor(i: EstimateInput, r: Rates): EstimateFix[] {
  const o = i.options;
  const fixes: EstimateFix[] = [];
  const converges = (opts: MoveOptions, rate: number): boolean => simulate(i, opts, rate).converges;
  // A faster move: the least rate (MiB/s, uncompressed) at which it converges with its options.
  const need = least(Math.ceil(r.effective / MiB), 1_000_000, (m) => converges(o, m * MiB));
  if (need !== null) {
    const ratio = compressing(o) ? Math.max(1, i.compressionRatio) : 1;
    if (r.limitedBy === 'bandwidth-limit' && need * MiB <= r.transportMax) {
      fixes.push({
        kind: 'bandwidth',
        value: need,
        message: `a bandwidth limit of at least ${need} MiB/s (--bandwidth ${need})`,
      });
    } else {
      const wire = Math.ceil(need / ratio);
      fixes.push({
        kind: 'link',
        value: wire,
        message: `a faster link: at least ${wire} MiB/s (${Math.ceil((wire * MiB * 8) / 1e6)} Mbit/s; this one gives ${mibs(r.link)})`,
      });
    }
  }
  // A longer downtime target (the policy may still raise it up to its ceiling).
  const downtime = least(o.downtimeMs, 60_000, (ms) =>
    converges({ ...o, downtimeMs: ms, downtimeCeilingMs: Math.max(ms, o.downtimeCeilingMs) }, r.effective),
  );
  if (downtime !== null && downtime > o.downtimeMs) {
    fixes.push({
      kind: 'downtime',
      value: downtime,
      message: `a downtime target of ${downtime} ms (--downtime ${downtime})`,
    });
  }
  // Another convergence policy. Post-copy never with multifd (it loses the guest in QEMU 7.2).
  if (o.convergence !== 'postcopy') {
    const multifd = o.performance === 'compression' || o.performance === 'multichannel';
    if (!multifd) {
      fixes.push({
        kind: 'policy',
        value: 'postcopy',
        message:
          'the post-copy policy (--convergence postcopy): the VM runs on the destination while the rest of its memory follows',
      });
    } else {
      const tcp: MoveOptions = { ...o, performance: 'tcp', compression: null, convergence: 'postcopy' };
      const rt = rates({ ...i, options: tcp });
      if (converges(tcp, rt.effective))
        fixes.push({
          kind: 'policy',
          value: 'postcopy',
          message:
            'TCP/IP with the post-copy policy (--performance tcp --convergence postcopy; not with Compression or Multichannel)',
        });
    }
  }
  if (o.convergence !== 'throttle' && converges({ ...o, convergence: 'throttle' }, r.effective)) {
    fixes.push({
      kind: 'policy',
      value: 'throttle',
      message:
        "the throttle policy (--convergence throttle): QEMU slows the guest's vCPUs until it converges",
    });
  }
  return fixes;
}

export function estimateMove(i: EstimateInput): MoveEstimate {
  const C = ESTIMATE_CONSTANTS;
  const r = rates(i);
  const sim = simulate(i, i.options, r.effective);
  const ratio = compressing(i.options) ? Math.max(1, i.compressionRatio) : 1;
  const diskMs = i.diskBytes > 0 ? (i.diskBytes / Math.min(r.link, C.diskCopyBytesPerSec)) * 1000 : 0;
  const zeroBytes = sim.zeroPages * C.zeroPageWireBytes;
  const bytes = Math.round(sim.sentBytes + zeroBytes + i.diskBytes);
  const wireBytes = Math.round(sim.sentBytes / ratio + zeroBytes + i.diskBytes);
  const inputs: MoveEstimate['inputs'] = {
    dirtyBytesPerSec: Math.round(i.dirtyBytesPerSec),
    dirtyRateWindowS: i.dirtyRateWindowS,
    linkBytesPerSec: Math.round(r.link),
    linkSource: r.linkSource,
    effectiveBytesPerSec: Math.round(r.effective),
    compressionRatio: compressing(i.options) ? round2(Math.max(1, i.compressionRatio)) : 1,
    zeroPageRatio: round2(i.zeroPageRatio),
    memoryBytes: i.memoryBytes,
    diskBytes: i.diskBytes,
    overheadMs: Math.round(i.costs.overheadMs),
    switchoverMs: Math.round(i.costs.switchoverMs),
    costsFrom: i.costs.from,
  };
  if (!sim.converges) {
    const fixes = fixesFor(i, r);
    // The step it needs: a longer downtime where one would do, else post-copy (or throttling).
    const step: MoveEstimate['step'] = fixes.some((f) => f.kind === 'downtime')
      ? 'raise-downtime'
      : fixes.some((f) => f.value === 'postcopy')
        ? 'postcopy'
        : fixes.some((f) => f.value === 'throttle')
          ? 'throttle'
          : 'none';
    return {
      totalMs: null,
      downtimeMs: null,
      bytes,
      wireBytes,
      converges: false,
      step,
      passes: sim.passes,
      message: `will not converge with the ${i.options.convergence} policy: ${sim.why}`,
      fixes,
      inputs,
    };
  }
  const totalMs = Math.round(i.costs.overheadMs + diskMs + sim.copyMs);
  const downtimeMs = Math.round(sim.finalCopyMs + i.costs.switchoverMs);
  const how =
    sim.step === 'none'
      ? `converges in ${sim.passes} pass${sim.passes > 1 ? 'es' : ''}`
      : sim.step === 'raise-downtime'
        ? `converges once the downtime target is raised to ${sim.downtimeLimitMs} ms (pass ${sim.passes})`
        : sim.step === 'postcopy'
          ? `does not converge by itself; post-copy finishes it (pass ${sim.passes})`
          : `converges with QEMU slowing the guest's vCPUs (pass ${sim.passes})`;
  return {
    totalMs,
    downtimeMs,
    bytes,
    wireBytes,
    converges: true,
    step: sim.step,
    passes: sim.passes,
    message: `${how}: about ${secs(totalMs)} in all, ${downtimeMs} ms of downtime, ${(wireBytes / MiB).toFixed(1)} MiB over the link at ${mibs(r.effective)} of memory`,
    fixes: [],
    inputs,
  };
}

const round2 = (x: number): number => Math.round(x * 100) / 100;

function median(xs: number[]): number | null {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/**
 * The fixed costs of a move from the last completed live moves between Ferry's own hosts (`ownHosts`):
 * everything outside the memory copy and the disk copy, and the guest's pause beyond QEMU's own
 * downtime. Moves with the same performance option and storage choice count first. Constants when
 * there are none.
 */
export function fixedCosts(
  records: MigrationRecord[],
  ownHosts: Set<string>,
  o: Pick<MoveOptions, 'performance'>,
  includeStorage: boolean,
): FixedCosts {
  const done = records.filter(
    (r) =>
      r.status === 'completed' &&
      r.kind === 'live' &&
      r.summary !== null &&
      !r.recovery &&
      ownHosts.has(r.from) &&
      ownHosts.has(r.to),
  );
  const alike = done.filter(
    (r) => r.options?.performance === o.performance && r.request.includeStorage === includeStorage,
  );
  const pick = (alike.length > 0 ? alike : done).slice(0, 10); // newest first
  const outside = pick.map((r) => {
    const s = r.summary!;
    const copy = s.phases.filter((p) => p.phase === 2 || p.phase === 3).reduce((a, p) => a + (p.ms ?? 0), 0);
    return s.totalMs - copy - (s.storageCopyMs ?? 0);
  });
  const pause = pick
    .map((r) => r.summary!)
    .filter((s) => s.downtimeMs !== null && s.qemuDowntimeMs !== null)
    .map((s) => Math.max(0, s.downtimeMs! - s.qemuDowntimeMs!) + 3); // + QEMU's own device-state copy
  const overheadMs = median(outside.filter((x) => x >= 0));
  const switchoverMs = median(pause);
  if (overheadMs === null || switchoverMs === null)
    return {
      overheadMs: ESTIMATE_CONSTANTS.overheadMs,
      switchoverMs: ESTIMATE_CONSTANTS.switchoverMs,
      from: 'constants',
    };
  return { overheadMs, switchoverMs, from: 'history' };
}
