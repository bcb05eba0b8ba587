// Starts, queues, cancels and records moves, and fans their events out to every listener (the CLI,
// the desktop app's IPC, the web mode's WebSocket). Knows nothing of those transports.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { z } from 'zod';
import {
  ERROR_CODES,
  FerryError,
  MoveRequestSchema,
  PHASES,
  postcopyUnavailable,
  TuneChangeSchema,
  TuneResultSchema,
  type ErrorCode,
  type MigrationEvent,
  type MoveOptions,
  type MigrationRecord,
  type MoveRequest,
  type MoveRequestParsed,
  type PreflightReport,
  type QueueEntry,
  type Summary,
  type TuneChange,
  type TuneResult,
  type VmConfig,
} from '../api/index.js';
import type { HostDriver } from '../host/driver.js';
import type { Inventory } from '../host/inventory.js';
import { LibvirtHost } from '../host/libvirt/libvirt-host.js';
import { LocalHost } from '../host/local/local-host.js';
import { writeJsonAtomic } from '../host/store.js';
import { History, isAbandoned } from './history.js';
import { libvirtMigration } from './libvirt-migration.js';
import {
  liveMigration,
  TuneInbox,
  type EventSink,
  type MoveContext,
  type PendingTune,
  type SharedNothing,
} from './live-migration.js';
import { storageMove } from './storage-move.js';
import { fixedCosts } from './estimate.js';
import { preflight, type DiskTarget } from './preflight.js';
import { QueueCancelled, Scheduler } from './scheduler.js';

export type Listener = (e: MigrationEvent) => void;

export interface StartedMove {
  id: string;
  /** Resolves with the final summary (also for refused, failed and cancelled moves). */
  done: Promise<Summary>;
}

/** How often a running move's record is written while samples arrive. */
const PERSIST_MS = 1000;
/** How long `ferry move-tune` waits for the Ferry process running the move to answer. */
const TUNE_ANSWER_MS = 10_000;

/** A tune from another process: a file beside the record, answered in a file of its own. */
const TuneRequestFileSchema = z
  .object({ nonce: z.string().regex(/^[0-9a-f]{16}$/), change: TuneChangeSchema })
  .strict();
const TuneAnswerFileSchema = z.union([
  z.object({ ok: z.literal(true), result: TuneResultSchema }).strict(),
  z.object({ ok: z.literal(false), code: z.string(), message: z.string() }).strict(),
]);

export class MigrationManager {
  readonly history: History;
  readonly scheduler: Scheduler;
  private readonly listeners = new Set<Listener>();
  /** Moves run by this process: their phase, whether a cancel was asked for, their tunes. */
  private readonly local = new Map<
    string,
    { phase: number; cancel: boolean; queued: boolean; tuning: TuneInbox; rec: MigrationRecord }
  >();
  private readonly running = new Map<string, Promise<Summary>>();

  constructor(private readonly inv: Inventory) {
    this.history = new History(path.join(inv.home, 'migrations'), () => this.lookAtAbandoned());
    this.scheduler = new Scheduler(inv.home, async (host) => {
      const s = await (await inv.host(host)).settings();
      return { live: s.maxLiveMigrations, storage: s.maxStorageMigrations };
    });
  }

  /**
   * The next look for moves between Ferry's own hosts whose Ferry process died (libvirt's have
   * libvirt-recovery.ts): looking at the VM on its source host settles it there (host/local/lifecycle.ts
   * rolls back a move abandoned before the switch-over; recovery.ts resolves one abandoned after it, and
   * writes what it found into the record). Also re-checks moves left for the administrator.
   */
  private async lookAtAbandoned(): Promise<void> {
    const saved = await this.history.saved().catch(() => []);
    const waiting = saved.filter(
      (r) =>
        r.kind === 'live' &&
        ((r.status === 'running' && isAbandoned(r)) || r.recovery?.outcome === 'needs-administrator'),
    );
    for (const rec of waiting) {
      const [source, dest] = await Promise.all(
        [rec.from, rec.to].map((n) => this.inv.host(n).catch(() => null)),
      );
      if (!(source instanceof LocalHost) || !(dest instanceof LocalHost)) continue;
      if (await source.hasVm(rec.vm)) await source.vmInfo(rec.vm).catch(() => undefined);
      if (rec.recovery?.outcome !== 'needs-administrator') continue;
      // Left for the administrator, and the source copy no longer waits for this move (turned off,
      // deleted, or started afresh): resolved by hand. Say where the VM is now.
      if ((await source.hasVm(rec.vm)) && (await source.pendingMove(rec.vm)) === rec.id) continue;
      const now = await this.inv.locate(rec.vm).catch(() => null);
      const where = now ? `${rec.vm} is on ${now.name} now` : `${rec.vm} is on no host now`;
      await this.history
        .saveRecovery(rec.id, {
          outcome: 'resolved',
          reason: `resolved by hand after the switch-over: the paused copy on ${rec.from} no longer waits for this move; ${where}`,
          source: `${rec.from} (source): no copy waits for this move`,
          destination: rec.recovery.destination,
        })
        .catch(() => null);
    }
  }

  subscribe(fn: Listener): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  private parse(input: MoveRequest): MoveRequestParsed {
    const parsed = MoveRequestSchema.safeParse(input);
    if (!parsed.success) throw new FerryError('bad-input', z.prettifyError(parsed.error));
    return parsed.data;
  }

  private async hosts(req: MoveRequestParsed): Promise<{ source: HostDriver; dest: HostDriver }> {
    const source = await this.inv.locate(req.vm);
    if (req.kind === 'storage') return { source, dest: source };
    if (!req.to) throw new FerryError('bad-input', 'a live migration needs a destination host (--to HOST)');
    return { source, dest: await this.inv.host(req.to) };
  }

  /**
   * The pre-flight report alone, without moving anything, with the estimate of a live move between
   * Ferry's own hosts (a second's measurement of the VM, shared by checks that ask at once).
   */
  async check(input: MoveRequest): Promise<PreflightReport> {
    const req = this.parse(input);
    const { source, dest } = await this.hosts(req);
    const [records, hosts] = await Promise.all([
      this.history.saved().catch(() => []),
      this.inv.records().catch(() => []),
    ]);
    const own = new Set(hosts.filter((h) => h.kind !== 'libvirt').map((h) => h.name));
    return (
      await preflight(req, source, dest, {
        estimate: { costs: (o) => fixedCosts(records, own, o, req.includeStorage) },
      })
    ).report;
  }

  /** Starts a move (it may wait in the queue first). Refusals come back as a summary, not a throw. */
  async start(input: MoveRequest): Promise<StartedMove> {
    const req = this.parse(input);
    const { source, dest } = await this.hosts(req);
    const id = this.history.newId();
    const t0 = Date.now();
    const now = (): number => Date.now() - t0;
    const rec: MigrationRecord = {
      id,
      vm: req.vm,
      from: source.name,
      to: dest.name,
      kind: req.kind,
      request: req,
      status: 'running',
      reason: null,
      requestedAt: new Date(t0).toISOString(),
      startedAt: null,
      endedAt: null,
      phase: 0,
      pass: 0,
      options: null,
      preflight: null,
      phases: PHASES.map((p) => ({ phase: p.phase, name: p.name, startedAt: null, endedAt: null })),
      samples: [],
      events: [],
      summary: null,
      ownerPid: process.pid,
    };
    const state = {
      phase: 0,
      cancel: false,
      queued: false,
      tuning: new TuneInbox(() => this.remoteTunes(id)),
      rec,
    };
    this.local.set(id, state);
    let lastPersist = 0;
    // Saves run one after another, so an older snapshot never lands after the final one.
    let saving: Promise<void> = Promise.resolve();
    const persist = (force = false): Promise<void> => {
      if (!force && Date.now() - lastPersist < PERSIST_MS) return saving;
      lastPersist = Date.now();
      const snapshot = structuredClone(rec);
      saving = saving.then(() => this.history.save(snapshot)).catch(() => undefined);
      return saving;
    };
    const emit: EventSink = (partial) => {
      const e = { ...partial, id, at: now() } as MigrationEvent;
      record(rec, e);
      for (const l of this.listeners) l(e);
      void persist(e.type !== 'sample').catch(() => undefined);
    };
    await this.history.save(rec);

    const run = async (): Promise<Summary> => {
      try {
        let { report, options, vm, targets, libvirt } = await preflight(req, source, dest);
        rec.preflight = report;
        rec.options = options;
        if (report.errors.length > 0) {
          return refused(id, req, source.name, dest.name, report, now());
        }
        state.queued = true;
        rec.status = 'queued';
        await this.scheduler.acquire(
          { id, vm: req.vm, from: source.name, to: dest.name, kind: req.kind },
          {
            onQueued: (position) =>
              emit({ type: 'queued', vm: req.vm, from: source.name, to: dest.name, position }),
            cancelled: () => this.cancelRequested(id),
          },
        );
        state.queued = false;
        if (rec.events.some((e) => e.type === 'queued')) {
          // Things change while a move waits: check again before starting.
          ({ report, options, vm, targets, libvirt } = await preflight(req, source, dest));
          rec.preflight = report;
          rec.options = options;
          if (report.errors.length > 0) return refused(id, req, source.name, dest.name, report, now());
        }
        rec.status = 'running';
        rec.startedAt = new Date().toISOString();
        emit({ type: 'started', vm: req.vm, from: source.name, to: dest.name, kind: req.kind, options });
        for (const w of report.warnings) emit({ type: 'log', level: 'warn', message: w.message });
        const ctx: MoveContext = {
          id,
          request: req,
          vm,
          options,
          source,
          dest,
          emit,
          now,
          cancelRequested: () => this.cancelRequested(id),
          flush: () => persist(true),
          onPhase: (phase) => {
            state.phase = phase;
            void this.scheduler.setPhase(id, phase).catch(() => undefined);
          },
          storage: req.includeStorage && !libvirt ? sharedNothing(vm, targets, req.keepSource) : null,
          tuning: req.kind === 'live' ? state.tuning : undefined,
        };
        if (req.kind === 'storage') return await storageMove(ctx, targets);
        if (libvirt && source instanceof LibvirtHost && dest instanceof LibvirtHost) {
          return await libvirtMigration(ctx, source, dest, libvirt);
        }
        return await liveMigration(ctx);
      } catch (err) {
        if (err instanceof QueueCancelled)
          return ended(id, req, source.name, dest.name, 'cancelled', 'cancelled while queued', now());
        return ended(id, req, source.name, dest.name, 'failed', (err as Error).message, now());
      } finally {
        await this.scheduler.release(id).catch(() => undefined);
      }
    };

    const done = run().then(async (s) => {
      await state.tuning.close(`the move is over (${s.status})`);
      emit(s);
      rec.summary = s;
      rec.status = s.status;
      rec.reason = s.reason;
      rec.endedAt = new Date().toISOString();
      await persist(true);
      await this.history.clearCancel(id);
      this.local.delete(id);
      return s;
    });
    this.running.set(id, done);
    void done.finally(() => this.running.delete(id));
    return { id, done };
  }

  /**
   * Before this process exits (Ctrl-C in a drain, the web mode stopping): cancel every move it runs that
   * can still be cancelled and wait for all of them, so none is left half-way with nobody to finish it.
   */
  async shutdown(): Promise<Summary[]> {
    for (const id of this.running.keys()) await this.cancel(id).catch(() => undefined);
    return Promise.all(this.running.values());
  }

  private cancelRequested(id: string): boolean {
    return (this.local.get(id)?.cancel ?? false) || this.history.cancelRequested(id);
  }

  /**
   * Cancels a queued or running move, from this process or any other sharing FERRY_HOME. Refused once
   * phase 3 is over: the VM then already runs on the destination.
   */
  async cancel(id: string): Promise<{ id: string; accepted: boolean; reason: string | null }> {
    const mine = this.local.get(id);
    let phase: number;
    let status: string;
    if (mine) {
      phase = mine.phase;
      status = mine.queued ? 'queued' : 'running';
    } else {
      const rec = await this.history.get(id);
      const q = (await this.scheduler.list()).find((e) => e.id === id);
      phase = q?.phase ?? rec.phase;
      status = q ? q.state : rec.status;
    }
    if (status !== 'running' && status !== 'queued') {
      return { id, accepted: false, reason: `the move is already over (${status})` };
    }
    if (phase > 3) {
      return {
        id,
        accepted: false,
        reason: `phase ${phase} (${PHASES[phase - 1]!.title}) has begun: the VM already runs on the destination, so the move can no longer be cancelled`,
      };
    }
    if (mine) mine.cancel = true;
    else await this.history.requestCancel(id);
    return { id, accepted: true, reason: null };
  }

  /**
   * Tunes a running move in phases 2–3, from this process or any other sharing FERRY_HOME (a request
   * file beside the record, which the move's loop picks up as it looks for a cancel, and answers).
   * Refused, with the reason, for a move that is queued, over, past phase 3 or a storage-only move, and
   * for post-copy where the move started without QEMU's post-copy capability.
   */
  async tune(id: string, change: TuneChange): Promise<TuneResult> {
    if (change.bandwidthMiBs === undefined && change.downtimeMs === undefined && !change.postcopy)
      throw new FerryError('bad-input', 'give a bandwidth (MiB/s), a downtime target (ms), or post-copy');
    const mine = this.local.get(id);
    const refuse = async (): Promise<string | null> => {
      let phase: number;
      let status: string;
      let rec: Pick<MigrationRecord, 'kind' | 'options'>;
      if (mine) {
        ({ phase, rec } = mine);
        status = mine.queued ? 'queued' : mine.rec.status;
      } else {
        rec = await this.history.get(id);
        const q = (await this.scheduler.list()).find((e) => e.id === id);
        phase = q?.phase ?? (rec as MigrationRecord).phase;
        status = q ? q.state : (rec as MigrationRecord).status;
      }
      return tuneRefusal(status, phase, rec.kind, rec.options, change);
    };
    const why = await refuse();
    if (why) throw new FerryError('not-supported', `cannot tune ${id}: ${why}`);
    if (mine) return mine.tuning.submit(change);
    try {
      return await this.tuneRemote(id, change);
    } catch (err) {
      // No answer, or the move moved on meanwhile: say where it is now.
      const now = await refuse().catch(() => null);
      if (now && !(err instanceof FerryError && err.code === 'not-supported'))
        throw new FerryError('not-supported', `cannot tune ${id}: ${now}`);
      throw err;
    }
  }

  private tuneFile(id: string): string {
    this.history.cancelFile(id); // validates the id
    return path.join(this.history.dir, `${id}.tune`);
  }

  /** Another process's tune of a move this one runs, taken from its request file (one at a time). */
  private async remoteTunes(id: string): Promise<PendingTune[]> {
    const file = this.tuneFile(id);
    if (!fs.existsSync(file)) return [];
    const text = await fs.promises.readFile(file, 'utf8').catch(() => null);
    await fs.promises.rm(file, { force: true });
    let parsed: z.infer<typeof TuneRequestFileSchema>;
    try {
      parsed = TuneRequestFileSchema.parse(JSON.parse(text ?? ''));
    } catch {
      return []; // not a request Ferry wrote; nobody to answer
    }
    const answerFile = `${file}-${parsed.nonce}.answer`;
    const answer = (a: z.infer<typeof TuneAnswerFileSchema>): void =>
      void writeJsonAtomic(answerFile, a).catch(() => undefined);
    return [
      {
        change: parsed.change,
        resolve: (result) => answer({ ok: true, result }),
        reject: (err) =>
          answer({
            ok: false,
            code: err instanceof FerryError ? err.code : 'internal',
            message: err.message,
          }),
      },
    ];
  }

  /** Asks the Ferry process running a move to tune it, and waits for its answer. */
  private async tuneRemote(id: string, change: TuneChange): Promise<TuneResult> {
    const file = this.tuneFile(id);
    const nonce = crypto.randomBytes(8).toString('hex');
    const answerFile = `${file}-${nonce}.answer`;
    const draft = `${file}.${nonce}.draft`;
    await fs.promises.writeFile(draft, JSON.stringify({ nonce, change }), { mode: 0o600, flag: 'wx' });
    const deadline = Date.now() + TUNE_ANSWER_MS;
    try {
      // Published whole, and only where no other tune waits (link fails on an existing file).
      for (;;) {
        try {
          await fs.promises.link(draft, file);
          break;
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || Date.now() > deadline) throw err;
          await sleep(50);
        }
      }
    } finally {
      await fs.promises.rm(draft, { force: true });
    }
    while (Date.now() < deadline) {
      const text = await fs.promises.readFile(answerFile, 'utf8').catch(() => null);
      if (text !== null) {
        await fs.promises.rm(answerFile, { force: true });
        const a = TuneAnswerFileSchema.parse(JSON.parse(text));
        if (a.ok) return a.result;
        const code = (ERROR_CODES as string[]).includes(a.code) ? (a.code as ErrorCode) : 'internal';
        throw new FerryError(code, a.message);
      }
      await sleep(50);
    }
    // Nobody took it: take the request back if it is still ours.
    const left = await fs.promises.readFile(file, 'utf8').catch(() => '');
    if (left.includes(nonce)) await fs.promises.rm(file, { force: true });
    throw new FerryError(
      'migration-failed',
      `the Ferry process running ${id} did not answer the tune within ${TUNE_ANSWER_MS / 1000} s`,
    );
  }

  queue(): Promise<QueueEntry[]> {
    return this.scheduler.list();
  }
}

/** Why a move cannot be tuned now (null: it can): its status, phase and kind, and post-copy's capability. */
export function tuneRefusal(
  status: string,
  phase: number,
  kind: MigrationRecord['kind'],
  options: MoveOptions | null,
  change: TuneChange,
): string | null {
  if (status === 'queued') return 'it is still queued: tuning applies to the memory copy (phases 2–3)';
  if (status !== 'running') return `the move is already over (${status})`;
  if (kind === 'storage') return 'a storage-only move has no memory copy to tune';
  if (phase > 3)
    return `phase ${phase} (${PHASES[phase - 1]!.title}) has begun: the memory copy is over and the VM runs on the destination`;
  if (phase < 2)
    return `it is in phase ${Math.max(phase, 1)} (${PHASES[Math.max(phase, 1) - 1]!.title}): tuning applies to the memory copy (phases 2–3)`;
  if (change.postcopy) {
    const why = postcopyUnavailable(options);
    if (why) return `post-copy is not available: ${why}`;
  }
  return null;
}

/** Shared-nothing: the destination's copy of each disk at its target, and what the source deletes after. */
function sharedNothing(vm: VmConfig, targets: DiskTarget[], keepSource: boolean): SharedNothing {
  const newDisks = vm.disks.map((d) => ({
    ...d,
    path: targets.find((t) => t.id === d.id)!.path,
    owned: true,
  }));
  return {
    newDisks,
    destConfig: { ...vm, disks: newDisks },
    deleteSourceDisks: keepSource ? [] : vm.disks.map((d) => d.path),
  };
}

/** Keeps the record in step with the events: phases, samples, escalations and log lines. */
function record(rec: MigrationRecord, e: MigrationEvent): void {
  switch (e.type) {
    case 'phase': {
      const p = rec.phases[e.phase - 1]!;
      if (e.state === 'started') {
        p.startedAt = e.at;
        rec.phase = e.phase;
      } else p.endedAt = e.at;
      break;
    }
    case 'sample':
      rec.samples.push(e.sample);
      rec.pass = e.sample.pass;
      break;
    case 'escalation':
      rec.events.push({ at: e.at, type: `escalation:${e.step}`, message: e.message });
      break;
    case 'log':
      rec.events.push({ at: e.at, type: e.level, message: e.message });
      break;
    case 'queued':
      rec.events.push({ at: e.at, type: 'queued', message: `queued at position ${e.position}` });
      break;
    case 'tuned':
      rec.events.push({ at: e.at, type: 'tuned', message: e.message, change: e.change });
      break;
    default:
      break;
  }
}

function ended(
  id: string,
  req: MoveRequestParsed,
  from: string,
  to: string,
  status: Summary['status'],
  reason: string,
  totalMs: number,
): Summary {
  return {
    type: 'summary',
    id,
    status,
    reason,
    vm: req.vm,
    from,
    to,
    kind: req.kind,
    options: null,
    totalMs,
    downtimeMs: null,
    qemuDowntimeMs: null,
    bytes: 0,
    passes: 0,
    storageCopyMs: null,
    phases: PHASES.map((p) => ({ phase: p.phase, name: p.name, ms: null })),
    warnings: [],
  };
}

function refused(
  id: string,
  req: MoveRequestParsed,
  from: string,
  to: string,
  report: PreflightReport,
  totalMs: number,
): Summary {
  const reason = report.errors.map((e) => e.message).join('; ');
  return ended(id, req, from, to, 'refused', reason, totalMs);
}
