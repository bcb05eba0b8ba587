// One move as the console follows it: built from its history record, then kept current by the event
// stream. Pure functions over plain objects; the migrations store adds reactivity around them.
import {
  PHASES,
  postcopyUnavailable,
  type MigrationEvent,
  type MigrationListItem,
  type MigrationRecord,
  type MigrationStatus,
  type MoveKind,
  type MoveOptions,
  type Sample,
  type Summary,
  type TuneChange,
} from '../../../engine/api/index.js';

export type PhaseState = 'pending' | 'running' | 'done' | 'failed';

export interface PhaseView {
  phase: number;
  title: string;
  state: PhaseState;
  /** ms since the move started. */
  startedAt: number | null;
  /** Duration once done. */
  ms: number | null;
}

export interface DiskCopyView {
  id: string;
  copied: number;
  total: number;
}

export interface LogLine {
  at: number;
  level: 'info' | 'warn' | 'escalation' | 'tuned';
  message: string;
}

/** A change the administrator made to the running move (ferry move-tune, the Tune controls). */
export interface TuneMark {
  /** ms since the move started. */
  at: number;
  /** Absent for records that did not keep it. */
  change: TuneChange | null;
  message: string;
}

export interface LiveMove {
  id: string;
  vm: string | null;
  from: string | null;
  to: string | null;
  kind: MoveKind;
  status: MigrationStatus;
  reason: string | null;
  options: MoveOptions | null;
  queuePosition: number | null;
  /** Current phase (0 before setup starts) and pre-copy pass. */
  phase: number;
  pass: number;
  phases: PhaseView[];
  /** Never made reactive (see stores/migrations.ts): charts read it through sampleCount. */
  samples: Sample[];
  sampleCount: number;
  lastSample: Sample | null;
  disks: DiskCopyView[];
  log: LogLine[];
  /** The administrator's tunes, in order (chart markers). */
  tunes: TuneMark[];
  /** Post-copy has begun (the policy's escalation, or a tune). */
  postcopyStarted: boolean;
  summary: Summary | null;
  /** The wall-clock time the move was asked for, for "elapsed" while it runs. */
  requestedAt: string | null;
  /** Whether the full record (with samples from before this console saw the move) has been merged in. */
  hydrated: boolean;
}

export function emptyPhases(): PhaseView[] {
  return PHASES.map((p) => ({ phase: p.phase, title: p.title, state: 'pending', startedAt: null, ms: null }));
}

export function newMove(id: string): LiveMove {
  return {
    id,
    vm: null,
    from: null,
    to: null,
    kind: 'live',
    status: 'running',
    reason: null,
    options: null,
    queuePosition: null,
    phase: 0,
    pass: 0,
    phases: emptyPhases(),
    samples: [],
    sampleCount: 0,
    lastSample: null,
    disks: [],
    log: [],
    tunes: [],
    postcopyStarted: false,
    summary: null,
    requestedAt: null,
    hydrated: false,
  };
}

export function isActive(m: Pick<LiveMove, 'status'>): boolean {
  return m.status === 'running' || m.status === 'queued';
}

function applySummary(m: LiveMove, s: Summary): void {
  m.summary = s;
  m.status = s.status;
  m.reason = s.reason;
  m.vm = s.vm;
  m.from = s.from;
  m.to = s.to;
  m.kind = s.kind;
  if (s.options) m.options = s.options;
  m.queuePosition = null;
  for (const t of s.phases) {
    const p = m.phases[t.phase - 1];
    if (!p) continue;
    if (t.ms !== null) {
      p.ms = t.ms;
      p.state = 'done';
    }
  }
  if (s.status !== 'completed') {
    // The phase that was running when the move ended is where it went wrong (or was cancelled).
    const last = [...m.phases].reverse().find((p) => p.startedAt !== null || p.state !== 'pending');
    if (last && s.status !== 'refused') last.state = 'failed';
  }
}

/** Applies one event; returns true if it was new (events can arrive twice around a reconnect). */
export function applyEvent(m: LiveMove, e: MigrationEvent): boolean {
  switch (e.type) {
    case 'queued':
      m.vm = e.vm;
      m.from = e.from;
      m.to = e.to;
      m.status = 'queued';
      m.queuePosition = e.position;
      m.log.push({ at: e.at, level: 'info', message: `queued at position ${e.position}` });
      return true;
    case 'started':
      m.vm = e.vm;
      m.from = e.from;
      m.to = e.to;
      m.kind = e.kind;
      m.options = e.options;
      m.status = 'running';
      m.queuePosition = null;
      return true;
    case 'phase': {
      const p = m.phases[e.phase - 1];
      if (!p) return false;
      if (e.state === 'started') {
        if (p.state !== 'pending') return false;
        p.state = 'running';
        p.startedAt = e.at;
        m.phase = Math.max(m.phase, e.phase);
        // A phase starting means every earlier one is over.
        for (const q of m.phases) if (q.phase < e.phase && q.state === 'running') q.state = 'done';
      } else {
        if (p.state === 'done') return false;
        p.state = 'done';
        p.ms = e.ms;
        if (p.startedAt === null && e.ms !== null) p.startedAt = e.at - e.ms;
      }
      if (m.status === 'queued') m.status = 'running';
      return true;
    }
    case 'sample': {
      const last = m.samples[m.samples.length - 1];
      if (last && e.sample.at <= last.at) return false;
      m.samples.push(e.sample);
      m.sampleCount = m.samples.length;
      m.lastSample = e.sample;
      m.pass = e.sample.pass;
      return true;
    }
    case 'storage-copy':
      m.disks = e.disks.map((d) => ({ ...d }));
      return true;
    case 'escalation':
      m.log.push({ at: e.at, level: 'escalation', message: e.message });
      if (e.step === 'postcopy') m.postcopyStarted = true;
      return true;
    case 'tuned':
      if (m.tunes.some((t) => t.at === e.at && t.message === e.message)) return false;
      m.tunes.push({ at: e.at, change: e.change, message: e.message });
      m.log.push({ at: e.at, level: 'tuned', message: e.message });
      if (e.change.postcopy) m.postcopyStarted = true;
      return true;
    case 'log':
      m.log.push({ at: e.at, level: e.level, message: e.message });
      return true;
    case 'summary':
      if (m.summary) return false;
      applySummary(m, e);
      return true;
  }
}

/** A move from its history list entry (no samples yet: `migration` gives them). */
export function moveFromListItem(item: MigrationListItem): LiveMove {
  const m = newMove(item.id);
  m.vm = item.vm;
  m.from = item.from;
  m.to = item.to;
  m.kind = item.kind;
  m.status = item.status;
  m.reason = item.reason;
  m.options = item.options;
  m.phase = item.phase;
  m.pass = item.pass;
  m.requestedAt = item.requestedAt;
  const over = !isActive(item);
  m.phases = item.phases.map((p, i) => ({
    phase: p.phase,
    title: PHASES[i]?.title ?? p.name,
    state: p.endedAt !== null ? 'done' : p.startedAt !== null ? (over ? 'failed' : 'running') : 'pending',
    startedAt: p.startedAt,
    ms: p.startedAt !== null && p.endedAt !== null ? p.endedAt - p.startedAt : null,
  }));
  m.log = item.events.map((e) => ({
    at: e.at,
    level: e.type.startsWith('escalation')
      ? 'escalation'
      : e.type === 'warn'
        ? 'warn'
        : e.type === 'tuned'
          ? 'tuned'
          : 'info',
    message: e.message,
  }));
  m.tunes = item.events
    .filter((e) => e.type === 'tuned')
    .map((e) => ({ at: e.at, change: e.change ?? null, message: e.message }));
  m.postcopyStarted = item.events.some(
    (e) => e.type === 'escalation:postcopy' || (e.type === 'tuned' && e.change?.postcopy),
  );
  if (item.summary) applySummary(m, item.summary);
  return m;
}

/**
 * Merges the full record into what the event stream already delivered: the record's samples before the
 * first live one, the events' view of phases and outcome where the record (saved once a second) lags.
 */
export function hydrate(live: LiveMove | null, rec: MigrationRecord): LiveMove {
  const base = moveFromListItem(rec);
  base.hydrated = true;
  if (!live) {
    base.samples = [...rec.samples];
  } else {
    const firstLive = live.samples[0]?.at ?? Infinity;
    base.samples = [...rec.samples.filter((s) => s.at < firstLive), ...live.samples];
    base.phases = base.phases.map((p, i) => {
      const l = live.phases[i];
      if (!l) return p;
      const rank = { pending: 0, running: 1, done: 2, failed: 2 } as const;
      return rank[l.state] >= rank[p.state] ? { ...l } : p;
    });
    base.phase = Math.max(base.phase, live.phase);
    if (live.summary) applySummary(base, live.summary);
    else if (!isActive(base) && isActive(live)) {
      // keep the record's outcome
    } else if (isActive(live)) {
      base.status = live.status;
      base.queuePosition = live.queuePosition;
    }
    if (live.disks.length) base.disks = live.disks;
    const seen = new Set(base.log.map((l) => `${l.at}:${l.message}`));
    for (const l of live.log) if (!seen.has(`${l.at}:${l.message}`)) base.log.push(l);
    base.log.sort((a, b) => a.at - b.at);
    for (const t of live.tunes)
      if (!base.tunes.some((b) => b.at === t.at && b.message === t.message)) base.tunes.push(t);
    base.tunes.sort((a, b) => a.at - b.at);
    base.postcopyStarted ||= live.postcopyStarted;
    base.options = live.options ?? base.options;
  }
  base.sampleCount = base.samples.length;
  base.lastSample = base.samples[base.samples.length - 1] ?? null;
  if (base.lastSample) base.pass = Math.max(base.pass, base.lastSample.pass);
  return base;
}

/**
 * The phase stepper's announcement for screen readers: the phase running now, or how the phases ended.
 * Durations are left out on purpose: the text changes only when the phase does.
 */
export function phaseAnnouncement(phases: readonly PhaseView[]): string {
  const failed = phases.find((p) => p.state === 'failed');
  if (failed) return `Stopped in phase ${failed.phase} of ${phases.length}: ${failed.title}.`;
  const running = phases.find((p) => p.state === 'running');
  if (running) return `Phase ${running.phase} of ${phases.length}: ${running.title}, in progress.`;
  if (phases.length > 0 && phases.every((p) => p.state === 'done')) {
    return `All ${phases.length} phases done.`;
  }
  const done = phases.filter((p) => p.state === 'done').length;
  return done === 0 ? 'Not started yet.' : `${done} of ${phases.length} phases done.`;
}

/**
 * Why the move cannot be tuned now (null: it can), by the engine's rules: only a live move's memory
 * copy, phases 2–3, can take a new bandwidth or downtime target.
 */
export function tuneUnavailable(m: LiveMove | null): string | null {
  if (!m) return 'loading…';
  if (m.status === 'queued')
    return 'the move is still queued: tuning applies to the memory copy (phases 2–3)';
  if (!isActive(m)) return `the move is over (${m.status})`;
  if (m.kind === 'storage') return 'a storage-only move has no memory copy to tune';
  if (m.phase > 3) {
    return `phase 3 is over: the memory copy is done and the VM runs on ${m.to ?? 'the destination'}`;
  }
  if (m.phase < 2) return 'the memory copy (phase 2) has not begun yet';
  return null;
}

/**
 * Why "Switch to post-copy" is disabled (null: enabled): the move must have started with QEMU's
 * post-copy capability (the postcopy convergence policy, never with multifd), and still be copying
 * memory with the source running.
 */
export function postcopyDisabledReason(m: LiveMove | null): string | null {
  const why = tuneUnavailable(m);
  if (why || !m) return why;
  const capability = postcopyUnavailable(m.options);
  if (capability) return capability;
  if (m.postcopyStarted) return 'the move has already switched to post-copy';
  if (m.phase === 3) return 'the switch-over has begun (phase 3): the source is paused';
  return null;
}

/** The bandwidth limit (MiB/s, null: none) and downtime target (ms) the move runs with now. */
export function currentTuning(m: LiveMove): { bandwidthMiBs: number | null; downtimeMs: number | null } {
  let bandwidthMiBs = m.options?.bandwidthMiBs ?? null;
  let downtimeMs = m.lastSample?.downtimeLimitMs ?? m.options?.downtimeMs ?? null;
  for (const t of m.tunes) {
    if (t.change?.bandwidthMiBs !== undefined) bandwidthMiBs = t.change.bandwidthMiBs;
    // A sample newer than the tune already says what QEMU has.
    if (t.change?.downtimeMs !== undefined && (m.lastSample?.at ?? -1) < t.at)
      downtimeMs = t.change.downtimeMs;
  }
  return { bandwidthMiBs, downtimeMs };
}
