// The seed's six phases of a live migration, on real QEMU, orchestrated across two hosts through the
// host seam (libvirt's Begin → Prepare → Perform → Finish → Confirm):
//
//   1 Setup           Begin on the source, Prepare on the destination (skeleton VM, memory, listener)
//   2 Memory pages    pre-copy passes while the VM runs (Perform)
//   3 Modified pages  the source pauses at pre-switchover; the last dirty pages and device state move
//   4 Storage handle  the destination holds the disks, the source has let go of them
//   5 Online          the VM resumes on the destination (Finish); its heartbeat proves it
//   6 Network cleanup announce the VM's MACs from the destination; tear down the source (Confirm)
//
// Until phase 3 ends any failure or cancel rolls back to the VM running on the source. After it, the
// only way is forward: the destination is never left without the VM, the source never resumes once
// the destination ran. So there is always exactly one running copy.
import { setTimeout as sleep } from 'node:timers/promises';
import {
  FerryError,
  PHASES,
  postcopyUnavailable,
  type CutoverStep,
  type MigrationEvent,
  type MoveOptions,
  type MoveRequestParsed,
  type Disk,
  type PhaseName,
  type Sample,
  type Summary,
  type TuneChange,
  type TuneResult,
  type VmConfig,
} from '../api/index.js';
import type { DiskJob, HostDriver, OutgoingStats } from '../host/driver.js';
import { parseLabGuestSerial } from '../host/lab-guest.js';
import { LocalHost } from '../host/local/local-host.js';
import { planMigration } from '../qemu/migration.js';
import { ConvergenceWatch } from './convergence.js';

/** Without events in between, samples go out this often (the console draws ≥ 4 a second). */
const SAMPLE_MS = 250;
/** How often QEMU is asked between its MIGRATION events (which wake the loop at once). */
const POLL_MS = 50;
/** Bytes sent not growing for this long while QEMU says "active" is a stalled link. */
const STALL_MS = 5000;
/** How often the destination's QEMU is looked for during phase 2 (Ferry's own hosts). */
const LIVENESS_MS = 200;

export type EventSink = (e: DistributiveOmit<MigrationEvent, 'at' | 'id'>) => void;
type DistributiveOmit<T, K extends keyof never> = T extends unknown ? Omit<T, K> : never;

export interface MoveContext {
  id: string;
  request: MoveRequestParsed;
  vm: VmConfig;
  options: MoveOptions;
  source: HostDriver;
  dest: HostDriver;
  emit: EventSink;
  /** Ms since the move was started (event times are relative to it). */
  now: () => number;
  cancelRequested: () => boolean;
  /** Writes the move's record as it is now (the test hook below saves it before the process dies). */
  flush?: () => Promise<void>;
  /** Called as each phase starts, so the manager can refuse a cancel after phase 3. */
  onPhase: (phase: number) => void;
  /** Shared-nothing (R3): the disks the destination creates, its configuration, what the source deletes. */
  storage: SharedNothing | null;
  /** The administrator's tunes (ferry move-tune, the progress view), carried out by the move's loop. */
  tuning?: TuneInbox;
}

/** A tune waiting for the move's loop. */
export interface PendingTune {
  change: TuneChange;
  resolve: (r: TuneResult) => void;
  reject: (err: Error) => void;
}

/**
 * Tunes of a running move, handed to its loop: the loop carries them out between its looks at QEMU
 * (or libvirt), so they are ordered with the convergence policy's own steps in the event stream and
 * never race its calls. Open while the memory copy runs (phases 2–3); closed, every waiting tune is
 * refused with the reason. `remote`: tunes asked by other Ferry processes (the manager's request file).
 */
export class TuneInbox {
  private state: 'before' | 'open' | 'closed' = 'before';
  private why = 'the memory copy (phase 2) has not begun yet';
  private readonly queue: PendingTune[] = [];

  constructor(private readonly remote: () => Promise<PendingTune[]> = async () => []) {}

  /** Why a tune is refused now; null while the loop takes them. */
  get closedReason(): string | null {
    return this.state === 'open' ? null : this.why;
  }

  submit(change: TuneChange): Promise<TuneResult> {
    const why = this.closedReason;
    if (why !== null) return Promise.reject(new FerryError('not-supported', `cannot tune the move: ${why}`));
    return new Promise((resolve, reject) => this.queue.push({ change, resolve, reject }));
  }

  open(): void {
    if (this.state === 'before') this.state = 'open';
  }

  async take(): Promise<PendingTune[]> {
    return [...this.queue.splice(0), ...(await this.remote().catch(() => []))];
  }

  async close(why: string): Promise<void> {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.why = why;
    for (const t of await this.take())
      t.reject(new FerryError('not-supported', `cannot tune the move: ${why}`));
  }
}

/** "bandwidth limit 8 → 512 MiB/s, downtime target 300 → 2000 ms, switching to post-copy". */
export function tuneMessage(
  c: TuneChange,
  before: { bandwidthMiBs: number | null; downtimeMs: number },
): string {
  const parts: string[] = [];
  if (c.bandwidthMiBs !== undefined)
    parts.push(`bandwidth limit ${before.bandwidthMiBs ?? 'unlimited'} → ${c.bandwidthMiBs} MiB/s`);
  if (c.downtimeMs !== undefined) parts.push(`downtime target ${before.downtimeMs} → ${c.downtimeMs} ms`);
  if (c.postcopy) parts.push('switching to post-copy');
  return `tuned by the administrator: ${parts.join(', ')}`;
}

/**
 * What a move's loop keeps while the administrator tunes it (both runners). A tune wins over the
 * convergence policy, which never undoes it: a new downtime target becomes the policy's ceiling (it
 * raises no further, and goes on to its next step, post-copy or abort, once the move is stuck there),
 * and any change gives the policy a fresh look (passes without progress counted from the new
 * settings). The throttle policy keeps its watch: it only reports QEMU's auto-converge.
 */
export class Tuning {
  bandwidthMiBs: number | null;
  pinnedDowntimeMs: number | null = null;
  /** Post-copy was started (by a tune or by the policy): the policy's watch is no longer asked. */
  postcopyAsked = false;
  watch: ConvergenceWatch;

  constructor(private readonly options: MoveOptions) {
    this.bandwidthMiBs = options.bandwidthMiBs;
    this.watch = new ConvergenceWatch(options);
  }

  /**
   * Carries out the waiting tunes, each answered with the settings the move runs with afterwards.
   * `blocked`: why post-copy cannot start now beyond the capability (the source already paused).
   */
  async apply(
    ctx: MoveContext,
    ops: {
      downtimeMs: () => number;
      blocked: () => string | null;
      set: (p: { bandwidthMiBs?: number; downtimeMs?: number }) => Promise<void>;
      startPostcopy: () => Promise<void>;
    },
  ): Promise<void> {
    for (const t of (await ctx.tuning?.take()) ?? []) {
      try {
        const c = t.change;
        const why = !c.postcopy
          ? null
          : (postcopyUnavailable(this.options) ??
            (this.postcopyAsked ? 'the move has already switched to post-copy' : ops.blocked()));
        if (why) throw new FerryError('not-supported', `cannot switch to post-copy: ${why}`);
        const message = tuneMessage(c, { bandwidthMiBs: this.bandwidthMiBs, downtimeMs: ops.downtimeMs() });
        if (c.bandwidthMiBs !== undefined || c.downtimeMs !== undefined)
          await ops.set({ bandwidthMiBs: c.bandwidthMiBs, downtimeMs: c.downtimeMs });
        this.bandwidthMiBs = c.bandwidthMiBs ?? this.bandwidthMiBs;
        this.pinnedDowntimeMs = c.downtimeMs ?? this.pinnedDowntimeMs;
        if (this.options.convergence !== 'throttle')
          this.watch = new ConvergenceWatch({
            ...this.options,
            downtimeCeilingMs: this.pinnedDowntimeMs ?? this.options.downtimeCeilingMs,
          });
        ctx.emit({ type: 'tuned', change: c, message });
        if (c.postcopy) {
          this.postcopyAsked = true;
          await ops.startPostcopy();
        }
        t.resolve({
          id: ctx.id,
          bandwidthMiBs: this.bandwidthMiBs,
          downtimeMs: c.downtimeMs ?? ops.downtimeMs(),
          postcopy: this.postcopyAsked,
          message,
        });
      } catch (err) {
        t.reject(err as Error);
      }
    }
  }
}

export interface SharedNothing {
  newDisks: Disk[];
  destConfig: VmConfig;
  /** Source files to delete after success (empty with keep-source). */
  deleteSourceDisks: string[];
}

/**
 * Test hook, for the fault tests only: FERRY_TEST_EXIT_AFTER=switchover (phase 4 begun: QEMU has sent
 * everything, the destination has not run) or =finish (phase 5: the destination runs the VM) kills this
 * process with SIGKILL there, its record saved first, so a test can show what the next look does with a
 * move abandoned after the switch-over (host/local/recovery.ts). Never set outside tests. The same as
 * libvirt-migration.ts's hook for libvirt hosts.
 */
async function testExitAfter(ctx: MoveContext, step: 'switchover' | 'finish'): Promise<void> {
  if (process.env.FERRY_TEST_EXIT_AFTER !== step) return;
  await ctx.flush?.().catch(() => undefined);
  process.kill(process.pid, 'SIGKILL');
}

/** How long a post-copy move waits for its link to come back before it is reported failed. */
const POSTCOPY_RECOVER_MS = 120_000;

/**
 * A post-copy move whose link was lost (QEMU paused it, or its stream stopped moving): both ends are
 * paused, the destination listens again (migrate-recover), and the source resumes to it (migrate with
 * resume) once the link answers again. A cut link does not error on its own (TCP retries for minutes):
 * the caller's stall timer notices it. Returns the number of connection attempts.
 */
async function recoverPostcopy(
  ctx: MoveContext,
  source: LocalHost,
  dest: LocalHost,
  name: string,
  status: string,
): Promise<number> {
  ctx.emit({
    type: 'log',
    level: 'warn',
    message: `post-copy lost its link (${status === 'postcopy-paused' ? 'QEMU paused it' : 'its stream stopped'}); pausing it to resume where the link comes back`,
  });
  const deadline = Date.now() + POSTCOPY_RECOVER_MS;
  const fail = (why: string): FerryError =>
    new FerryError('migration-failed', `post-copy could not resume after losing its link: ${why}`);
  const statusNow = async (): Promise<string> => (await source.outgoingStats(name)).status;
  if (status === 'postcopy-active') await source.pauseOutgoing(name).catch(() => undefined);
  while ((await statusNow()) !== 'postcopy-paused') {
    if (Date.now() > deadline) throw new FerryError('migration-failed', 'post-copy did not pause');
    await sleep(POLL_MS);
  }
  const uri = await dest.recoverIncoming(name);
  const port = Number(uri.slice(uri.lastIndexOf(':') + 1));
  const { migrationAddress, portBase } = dest.record;
  for (let attempt = 1; ; attempt++) {
    // Connect only over a link that answers (the pre-flight's probe: a refused port is an answer), so
    // the attempt does not wait out TCP's back-off once the link is back.
    while (!(await source.canReach(migrationAddress, portBase))) {
      if (Date.now() > deadline) throw fail(`the link did not come back in ${POSTCOPY_RECOVER_MS / 1000} s`);
      await sleep(1000);
    }
    await source.resumeOutgoing(name, uri).catch(() => undefined);
    // One connection attempt at a time: a second connect while one is pending aborts the source's
    // QEMU (see LocalHost.connecting). Retry only once this one has ended without taking the VM on.
    let endedAt: number | null = null;
    for (;;) {
      const st = await statusNow();
      if (st === 'postcopy-active' || st === 'completed') {
        ctx.emit({
          type: 'log',
          level: 'info',
          message: `post-copy resumed on a new connection to ${dest.name} (attempt ${attempt})`,
        });
        return attempt;
      }
      if (st !== 'postcopy-paused' && st !== 'postcopy-recover') throw fail(`QEMU reports ${st}`);
      if (Date.now() > deadline) throw fail(`QEMU still reports ${st} after ${POSTCOPY_RECOVER_MS / 1000} s`);
      if (st === 'postcopy-recover' || (await source.connecting(migrationAddress, port))) endedAt = null;
      else if (endedAt === null) endedAt = Date.now();
      // Paused, no connect pending, for long enough to be sure QEMU is not between the two.
      else if (Date.now() - endedAt > 2000) break;
      await sleep(POLL_MS * 2);
    }
    await sleep(1000);
  }
}

export class Cancelled extends Error {
  constructor() {
    super('cancelled by the administrator');
  }
}

/**
 * The six phases as a move reports them: each start and end an event, and their durations in the
 * summary. Phases only go forward, and none is skipped: a phase reached early (a pass quicker than a
 * poll) still reports the one before it.
 */
export class PhaseClock {
  current = 0;
  readonly timings = new Map<number, { start: number; end: number | null }>();

  constructor(private readonly ctx: Pick<MoveContext, 'now' | 'onPhase' | 'emit'>) {}

  begin(phase: number): void {
    if (phase <= this.current) return;
    if (this.current > 0 && phase > this.current + 1) this.begin(phase - 1);
    if (this.current) this.end(this.current);
    this.current = phase;
    this.ctx.onPhase(phase);
    this.timings.set(phase, { start: this.ctx.now(), end: null });
    this.ctx.emit({ type: 'phase', phase, name: phaseName(phase), state: 'started', ms: null });
  }

  end(phase: number): void {
    const t = this.timings.get(phase);
    if (!t || t.end !== null) return;
    t.end = this.ctx.now();
    this.ctx.emit({ type: 'phase', phase, name: phaseName(phase), state: 'completed', ms: t.end - t.start });
  }

  /** Ends the phase that runs (the move stops here). */
  stop(): void {
    if (this.current) this.end(this.current);
  }
}

/** Each phase's duration, null for one never finished. */
export function phaseDurations(timings: PhaseClock['timings']): Summary['phases'] {
  return PHASES.map((p) => {
    const t = timings.get(p.phase);
    return { phase: p.phase, name: p.name, ms: t && t.end !== null ? t.end - t.start : null };
  });
}

export async function liveMigration(ctx: MoveContext): Promise<Summary> {
  const { source, dest, vm, options } = ctx;
  const name = vm.name;
  const clock = new PhaseClock(ctx);
  const { timings } = clock;
  const warnings: string[] = [];
  const begin = (phase: number): void => clock.begin(phase);
  const end = (phase: number): void => clock.end(phase);
  const checkCancel = (): void => {
    if (ctx.cancelRequested()) throw new Cancelled();
  };

  let begun = false;
  let prepared = false;
  let mirroring = false;
  let storageCopyMs: number | null = null;
  let completed = false; // QEMU finished sending: from here on, never roll back to the source
  let destRunning = false;
  let postcopy = false; // once post-copy runs, the source never resumes: the destination has run
  let last: OutgoingStats | null = null;
  let stoppedAt: number | null = null;
  let resumedAt: number | null = null;
  const plan = planMigration(options);
  const cut = new CutoverSteps(ctx.now);

  try {
    // ---- 1 Setup --------------------------------------------------------------------------------
    begin(1);
    await source.beginOutgoing(name, ctx.id, dest.name);
    begun = true;
    checkCancel();
    const { uri, nbd } = await dest.prepareIncoming({
      migrationId: ctx.id,
      config: ctx.storage?.destConfig ?? vm,
      capabilities: plan.destCapabilities,
      parameters: plan.destParameters,
      scheme: plan.scheme,
      ...(ctx.storage ? { newDisks: ctx.storage.newDisks } : {}),
    });
    prepared = true;
    ctx.emit({
      type: 'log',
      level: 'info',
      message: `${dest.name} is listening on ${uri}; skeleton VM started with ${vm.memoryMiB} MiB allocated`,
    });
    checkCancel();

    // ---- storage copy (shared-nothing) ----------------------------------------------------------
    // The disks are copied while the VM runs, reads and writes staying on the source; once a disk is
    // copied every write goes to both. Only when all are in sync does the memory migration start.
    if (ctx.storage && nbd) {
      end(1);
      const copyStart = ctx.now();
      mirroring = true; // before starting: a half-started mirror must be cleaned up too
      await source.startDiskMirror(name, nbd, options.bandwidthMiBs);
      await followDiskCopy(ctx, () => source.diskJobs(name), checkCancel);
      storageCopyMs = ctx.now() - copyStart;
      ctx.emit({
        type: 'log',
        level: 'info',
        message: `disks in sync after ${storageCopyMs} ms; writes now go to both hosts`,
      });
    }

    // ---- 2 Memory pages -------------------------------------------------------------------------
    begin(2);
    await source.startOutgoing(name, {
      capabilities: plan.sourceCapabilities,
      parameters: plan.sourceParameters,
      uri,
    });
    // The administrator's tunes (phases 2–3), carried out between the loop's looks at QEMU: QMP
    // migrate-set-parameters (applied within ~0.1 s) and migrate-start-postcopy on the source.
    const tuning = new Tuning(options);
    const applyTunes = (phase: number): Promise<void> =>
      tuning.apply(ctx, {
        downtimeMs: () => last?.downtimeLimitMs ?? options.downtimeMs,
        blocked: () => (phase > 2 ? 'the source is already paused for the switch-over (phase 3)' : null),
        set: (p) =>
          source.setOutgoingParameters(name, {
            ...(p.bandwidthMiBs !== undefined ? { 'max-bandwidth': p.bandwidthMiBs * 1024 * 1024 } : {}),
            ...(p.downtimeMs !== undefined ? { 'downtime-limit': p.downtimeMs } : {}),
          }),
        startPostcopy: () => source.startPostcopy(name),
      });
    ctx.tuning?.open();
    let lastSampleAt = -Infinity;
    let lastBytes = 0;
    let lastGrowthAt = ctx.now();
    let prevSample: { at: number; bytes: number } | null = null;
    let lastLivenessAt = ctx.now();
    for (;;) {
      checkCancel();
      const st = await source.outgoingStats(name);
      last = st;
      const t = ctx.now();
      if (st.transferred > lastBytes) {
        lastBytes = st.transferred;
        lastGrowthAt = t;
      }
      if (t - lastSampleAt >= SAMPLE_MS || st.status !== 'active') {
        const rate =
          prevSample && t > prevSample.at
            ? (st.transferred - prevSample.bytes) / ((t - prevSample.at) / 1000) / 1048576
            : 0;
        prevSample = { at: t, bytes: st.transferred };
        lastSampleAt = t;
        ctx.emit({ type: 'sample', sample: sampleOf(st, t, clock.current, rate) });
      }
      if (st.status === 'pre-switchover' || st.status === 'device' || st.status === 'completed') break;
      if (st.status === 'failed' || st.status === 'cancelled') {
        throw new FerryError(
          'migration-failed',
          `QEMU reports the migration ${st.status}${st.error ? `: ${st.error}` : ''}`,
        );
      }
      if (t - lastLivenessAt >= LIVENESS_MS && dest instanceof LocalHost) {
        // Behind a relay (multifd) the source never hears that the destination died: look.
        lastLivenessAt = t;
        if (!(await dest.incomingAlive(name)))
          throw new FerryError(
            'migration-failed',
            `the destination failed: ${dest.name}'s QEMU for ${name} ended during the move`,
          );
      }
      if (st.status === 'active' && t - lastGrowthAt > STALL_MS) {
        throw new FerryError(
          'migration-failed',
          `the migration stalled: no bytes sent for ${Math.round((t - lastGrowthAt) / 1000)} s (link down or peer frozen)`,
        );
      }
      await applyTunes(2);
      if (st.status === 'active' && !tuning.postcopyAsked) {
        const action = tuning.watch.observe(st);
        if (action.kind === 'raise-downtime') {
          await source.setOutgoingParameters(name, { 'downtime-limit': action.downtimeMs });
          ctx.emit({ type: 'escalation', step: 'raise-downtime', message: action.message });
        } else if (action.kind === 'postcopy') {
          ctx.emit({ type: 'escalation', step: 'postcopy', message: action.message });
          tuning.postcopyAsked = true;
          await source.startPostcopy(name);
        } else if (action.kind === 'throttle') {
          ctx.emit({ type: 'escalation', step: 'throttle', message: action.message });
        } else if (action.kind === 'abort') {
          ctx.emit({ type: 'escalation', step: 'abort', message: action.message });
          throw new FerryError('migration-failed', action.message);
        }
      }
      await source.nextMigrationEvent(name, POLL_MS);
    }

    // ---- 3 Modified pages -----------------------------------------------------------------------
    // The source's vCPUs are paused (pause-before-switchover): Ferry holds the cut-over moment.
    begin(3);
    checkCancel();
    if (mirroring) {
      // The guest is paused: end the mirrors so the destination's disks hold exactly the last state.
      await cut.time('disk mirrors ended', source.finishDiskMirror(name));
      mirroring = false;
    }
    await cut.time('migrate-continue', source.continueOutgoing(name));
    const continuedAt = ctx.now();
    let lastBytes3 = -1;
    let growthAt = ctx.now();
    for (;;) {
      // Until QEMU completes, a cancel still rolls back (the destination was started with -S and
      // has not run), and a final copy that stops moving is a stall, not a wait forever.
      checkCancel();
      const st = await source.outgoingStats(name);
      last = st;
      if (st.status === 'completed') break;
      if (st.transferred > lastBytes3) {
        lastBytes3 = st.transferred;
        growthAt = ctx.now();
      } else if (ctx.now() - growthAt > STALL_MS) {
        throw new FerryError(
          'migration-failed',
          `the final copy stalled: no bytes sent for ${Math.round((ctx.now() - growthAt) / 1000)} s`,
        );
      }
      if (st.status === 'postcopy-active') {
        postcopy = true;
        break;
      }
      if (st.status === 'failed' || st.status === 'cancelled') {
        throw new FerryError(
          'migration-failed',
          `QEMU reports the migration ${st.status} during the final copy${st.error ? `: ${st.error}` : ''}`,
        );
      }
      await applyTunes(3); // a new bandwidth limit still speeds the final copy
      await sleep(5);
    }
    await ctx.tuning?.close(
      `the memory copy is over (phase 3 ended): ${name} is switching over to ${dest.name}`,
    );
    completed = true;
    stoppedAt = last.stoppedAt;
    if (!postcopy) cut.since('final copy', continuedAt);
    ctx.emit({ type: 'sample', sample: sampleOf(last, ctx.now(), 3, 0) });

    // ---- 4 Storage handle -----------------------------------------------------------------------
    begin(4);
    await testExitAfter(ctx, 'switchover');
    const loadedFrom = ctx.now();
    let handle = await dest.storageHandle(name);
    const deadline = Date.now() + 30_000;
    while (handle.runState === 'inmigrate' && Date.now() < deadline) {
      await sleep(10);
      handle = await dest.storageHandle(name);
    }
    cut.since('state loaded, disks checked', loadedFrom);
    if (handle.runState === 'inmigrate')
      throw new FerryError('migration-failed', `${dest.name} never finished loading the VM's state`);
    const missing = handle.disks.filter((d) => !d.attached || !d.writable);
    if (missing.length > 0) {
      throw new FerryError(
        'migration-failed',
        `${dest.name} did not take over ${missing.map((d) => d.id).join(', ')} (not attached or read-only)`,
      );
    }
    if (handle.disks.length > 0) {
      ctx.emit({
        type: 'log',
        level: 'info',
        message: `${dest.name} holds ${handle.disks.map((d) => `${d.id} (${d.file})`).join(', ')}, attached and writable; ${source.name}'s migration is ${last.status}, so QEMU has inactivated its disks there`,
      });
    }

    // ---- 5 Online -------------------------------------------------------------------------------
    begin(5);
    ({ resumedAt } = await cut.time('resume', dest.finishIncoming(name)));
    destRunning = true;
    await testExitAfter(ctx, 'finish');
    if (postcopy) {
      ctx.emit({
        type: 'log',
        level: 'info',
        message: `${name} runs on ${dest.name}; the rest of its memory follows from ${source.name} (post-copy)`,
      });
      // The rest of memory follows on demand; the move is over when the source has sent it all. A lost
      // link pauses post-copy and resumes it on a new connection once the link is back (Ferry's own
      // hosts: migrate-pause / migrate-recover / migrate resume); never a cancel, the VM runs there.
      const own = source instanceof LocalHost && dest instanceof LocalHost ? { source, dest } : null;
      let bytes = -1;
      let grewAt = ctx.now();
      for (;;) {
        const st = await source.outgoingStats(name);
        last = st;
        if (st.status === 'completed') break;
        if (st.transferred > bytes) {
          bytes = st.transferred;
          grewAt = ctx.now();
        }
        const lost =
          st.status === 'postcopy-paused' ||
          (st.status === 'postcopy-active' && ctx.now() - grewAt > STALL_MS);
        if (own && lost) {
          const attempts = await recoverPostcopy(ctx, own.source, own.dest, name, st.status);
          warnings.push(
            `post-copy lost its link and resumed on a new connection (${attempts} attempt${attempts === 1 ? '' : 's'})`,
          );
          bytes = -1;
          grewAt = ctx.now();
          continue;
        }
        if (st.status === 'failed' || st.status === 'postcopy-paused') {
          throw new FerryError(
            'migration-failed',
            `post-copy ${st.status} after the switch-over: ${st.error ?? 'link lost'}`,
          );
        }
        await sleep(POLL_MS);
      }
    }
    // Proof that the guest lives on the destination is verification beside the phases, not part of the
    // switch-over: awaited while the cleanup runs, reported after it.
    // Timed on this process's clock from the resume's answer (QEMU's event time is another clock).
    const verified = vm.labGuest ? guestAlive(dest, name, vm.labGuest, null, Date.now()) : null;

    // ---- 6 Network cleanup ----------------------------------------------------------------------
    begin(6);
    await cut.time(
      'announce',
      dest.announce(name).catch((e: Error) => void warnings.push(`announce-self failed: ${e.message}`)),
    );
    // QEMU fills in its own downtime figure a moment after completion: read it before the source goes.
    last = await cut.time(
      'source statistics',
      source.outgoingStats(name).catch(() => last),
    );
    await cut.time('source off', source.confirmOutgoing(name, ctx.storage?.deleteSourceDisks ?? []));
    end(6);
    const totalMs = ctx.now();
    const alive = verified ? await verified : undefined;
    if (alive) reportAlive(ctx, alive, dest.name, warnings);
    return summary(storageCopyMs, ctx, 'completed', null, timings, last, stoppedAt, resumedAt, warnings, {
      totalMs,
      cutover: cut.steps,
      guestAliveMs: alive ? alive.ms : undefined,
    });
  } catch (err) {
    const cancelled = err instanceof Cancelled;
    const reason = cancelled ? 'cancelled by the administrator' : (err as Error).message;
    clock.stop();
    void ctx.tuning?.close(`the move is ending (${reason})`);
    if (postcopy && destRunning) {
      // Part of the guest's memory is still on the source: keep both for QEMU's post-copy recovery
      // (migrate-pause / migrate-recover), never resume or kill the source here.
      warnings.push(`post-copy did not finish: ${reason}; the source QEMU is kept for recovery`);
      return summary(storageCopyMs, ctx, 'failed', reason, timings, last, stoppedAt, resumedAt, warnings);
    }
    if (completed && !destRunning && prepared) {
      // Finish may have resumed the VM before it failed: then the destination owns it.
      destRunning = (await dest.incomingRunState(name).catch(() => 'unknown')) === 'running';
    }
    if (destRunning) {
      // The VM runs on the destination: finish forward, never resume the source.
      warnings.push(`after the switch-over: ${reason}`);
      await source
        .confirmOutgoing(name)
        .catch((e: Error) => warnings.push(`source clean-up failed: ${e.message}`));
      return summary(storageCopyMs, ctx, 'completed', null, timings, last, stoppedAt, resumedAt, warnings);
    }
    // Roll back: the VM keeps (or resumes) running on the source; the destination forgets it.
    if (mirroring)
      await source
        .abortDiskMirror(name)
        .catch((e: Error) => warnings.push(`stopping the disk copy failed: ${e.message}`));
    // The source's migration ends first, while the destination still reads: QEMU 7.2's multifd can
    // hang for good when its peer vanishes under busy channels (qemu/migration.ts, isBroken), so the
    // destination is killed only once the source has cleaned up (or was stuck before Ferry came).
    const takeBack = async (): Promise<void> => {
      const back = completed ? source.resumeSource(name) : source.cancelOutgoing(name);
      await back.catch((e: Error) =>
        warnings.push(`the source did not take the VM back cleanly: ${e.message}`),
      );
    };
    if (begun && !completed) {
      // Behind a relay (multifd) a dead destination still "receives": the source may have finished
      // sending after Ferry last looked. Such a source is paused with everything sent; it is taken
      // back like any completed one, once the destination is gone (below), never cancelled.
      const st = await source.outgoingStats(name).catch(() => null);
      if (st?.status === 'completed') completed = true;
      else await takeBack();
    }
    if (prepared)
      await dest
        .abortIncoming(name)
        .catch((e: Error) => warnings.push(`destination clean-up failed: ${e.message}`));
    if (begun && completed) await takeBack();
    return summary(
      storageCopyMs,
      ctx,
      cancelled ? 'cancelled' : 'failed',
      reason,
      timings,
      last,
      stoppedAt,
      null,
      warnings,
    );
  }
}

/**
 * Reports disk copy jobs (per disk: bytes copied of total) until all are in sync; a failed or vanished
 * job fails the move. Shared by shared-nothing and storage-only moves.
 */
export async function followDiskCopy(
  ctx: MoveContext,
  jobsOf: () => Promise<DiskJob[]>,
  checkCancel: () => void,
): Promise<void> {
  let lastEmit = -Infinity;
  let prev: { at: number; copied: number } | null = null;
  for (;;) {
    checkCancel();
    const jobs = await jobsOf();
    const at = ctx.now();
    const failed = jobs.find((j) => j.error || j.status === 'gone' || j.status === 'concluded');
    if (failed)
      throw new FerryError(
        'migration-failed',
        `copying ${failed.id} failed: ${failed.error ?? failed.status}`,
      );
    const done = jobs.every((j) => j.ready);
    if (done || ctx.now() - lastEmit >= SAMPLE_MS) {
      lastEmit = ctx.now();
      ctx.emit({
        type: 'storage-copy',
        disks: jobs.map((j) => ({ id: j.id, copied: j.copied, total: j.total })),
      });
    }
    if (done) return;
    // Sleep until the copy should be in sync at the rate seen (20-100 ms; 20 after the first look, when
    // a sparse disk may already be in sync): READY is seen within ~20 ms instead of up to 100 ms late,
    // without polling a long or stalled copy fast.
    const copied = jobs.reduce((n, j) => n + j.copied, 0);
    const left = jobs.reduce((n, j) => n + Math.max(0, j.total - j.copied), 0);
    const rate = prev && at > prev.at ? (copied - prev.copied) / (at - prev.at) : 0;
    const wait = !prev ? 20 : rate > 0 ? Math.min(POLL_MS * 2, Math.max(20, left / rate)) : POLL_MS * 2;
    prev = { at, copied };
    await sleep(wait);
  }
}

function phaseName(phase: number): PhaseName {
  return PHASES[phase - 1]!.name;
}

function sampleOf(st: OutgoingStats, at: number, phase: number, throughputMiBs: number): Sample {
  return {
    at,
    phase: Math.max(1, phase),
    pass: st.passes,
    bytesSent: st.transferred,
    remainingBytes: st.remaining,
    totalBytes: st.total,
    dirtyBytesPerSec: st.dirtyPagesRate * st.pageSize,
    throughputMiBs: Math.round(throughputMiBs * 10) / 10,
    expectedDowntimeMs: st.expectedDowntimeMs,
    throttlePct: st.throttlePct,
    downtimeLimitMs: st.downtimeLimitMs,
  };
}

/** Times the cut-over's steps, in order, for the summary (`cutover`). */
export class CutoverSteps {
  readonly steps: CutoverStep[] = [];
  constructor(private readonly now: () => number) {}
  /** A step that is one call: timed from now until it settles. */
  async time<T>(step: string, work: Promise<T>): Promise<T> {
    const t = this.now();
    try {
      return await work;
    } finally {
      this.since(step, t);
    }
  }
  /** A step that began at `from` (this clock) and is over now. */
  since(step: string, from: number): void {
    this.steps.push({ step, ms: this.now() - from });
  }
}

export const STALE_WARNING =
  'the lab guest found a write of its CPU missing from its memory after the switch-over (QEMU delivered a page older than the CPU state; see the lab guest README)';

/**
 * Waits for the lab guest's first heartbeat on the destination (newer than `afterPass`), timed from its
 * resume: the verification a move reports beside its phases.
 */
export async function guestAlive(
  dest: HostDriver,
  name: string,
  lab: NonNullable<VmConfig['labGuest']>,
  afterPass: number | null,
  resumedAt: number | null, // Date.now() when the VM resumed there, as this process saw it
): Promise<{ beat: Awaited<ReturnType<typeof waitForHeartbeat>>; ms: number | null }> {
  const beat = await waitForHeartbeat(dest, name, lab, afterPass).catch(() => null);
  return { beat, ms: beat && resumedAt !== null ? Math.max(0, Date.now() - resumedAt) : null };
}

/** The verification's outcome: a log line, or warnings for no heartbeat, memory errors, lost writes. */
export function reportAlive(
  ctx: MoveContext,
  alive: Awaited<ReturnType<typeof guestAlive>>,
  destName: string,
  warnings: string[],
): void {
  const beat = alive.beat;
  if (!beat) {
    warnings.push(`no new heartbeat from the lab guest on ${destName}`);
    return;
  }
  ctx.emit({
    type: 'log',
    level: 'info',
    message: `heartbeat on ${destName}: pass ${beat.pass}, errors ${beat.errors}${alive.ms !== null ? `, ${alive.ms} ms after it resumed` : ''}`,
  });
  if (beat.errors > 0) warnings.push(`the lab guest reports ${beat.errors} memory errors`);
  if (beat.staleWrites) warnings.push(STALE_WARNING);
}

/** The lab guest's latest heartbeat on a host; with `afterPass`, only one newer than that pass. */
export async function waitForHeartbeat(
  host: HostDriver,
  name: string,
  lab: NonNullable<VmConfig['labGuest']>,
  afterPass: number | null = null,
): Promise<{ pass: number; errors: number; staleWrites: boolean } | null> {
  const period = lab.dirtyRateMiBs > 0 ? (lab.workingSetMiB * 1000) / lab.dirtyRateMiBs : 0;
  const deadline = Date.now() + Math.max(3000, 2 * period + 1000);
  let seenAt: number | null = null;
  while (Date.now() < deadline) {
    const r = parseLabGuestSerial((await host.readSerial(name, 0)).text);
    const hb = r.heartbeats.at(-1);
    const fresh = hb && (afterPass === null || hb.pass > afterPass);
    seenAt = fresh ? (seenAt ?? Date.now()) : null;
    // The lines after a heartbeat (STALE, then clock) may still be on their way: the clock line closes
    // the group; a guest that prints none yet (its first second) is given a moment.
    if (hb && fresh && (hb.gapMs !== undefined || Date.now() - seenAt! >= 200))
      return {
        pass: hb.pass,
        errors: hb.errors + r.mismatches.length,
        // A STALE line comes with the heartbeat after the tick that found the loss.
        staleWrites: r.stale.some((s) => s.pass === hb.pass),
      };
    await sleep(50);
  }
  return null;
}

export function summary(
  storageCopyMs: number | null,
  ctx: MoveContext,
  status: Summary['status'],
  reason: string | null,
  timings: Map<number, { start: number; end: number | null }>,
  last: OutgoingStats | null,
  stoppedAt: number | null,
  resumedAt: number | null,
  warnings: string[],
  extra: { totalMs?: number; cutover?: CutoverStep[]; guestAliveMs?: number | null } = {},
): Summary {
  return {
    type: 'summary',
    id: ctx.id,
    status,
    reason,
    vm: ctx.vm.name,
    from: ctx.source.name,
    to: ctx.dest.name,
    kind: 'live',
    options: ctx.options,
    totalMs: extra.totalMs ?? ctx.now(),
    downtimeMs: stoppedAt !== null && resumedAt !== null ? resumedAt - stoppedAt : null,
    qemuDowntimeMs: last?.downtimeMs || null,
    bytes: last?.transferred ?? 0,
    passes: last?.passes ?? 0,
    storageCopyMs,
    phases: phaseDurations(timings),
    warnings,
    ...(extra.cutover?.length ? { cutover: extra.cutover } : {}),
    ...(extra.guestAliveMs !== undefined ? { guestAliveMs: extra.guestAliveMs } : {}),
  };
}
