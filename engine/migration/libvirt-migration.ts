// The seed's six phases of a live migration between two libvirt hosts, over libvirt's own migration
// protocol (version 3 with parameters), each step issued by Ferry as libvirt's client library does for
// a "managed direct" migration — one connection per host for the whole move:
//
//   1 Setup           Begin on the source (describe the VM), Prepare on the destination (paused
//                     skeleton, listening); shared-nothing: the destination's disk files made first
//   2 Memory pages    Perform on the source: the first pass over memory (after the disk copy)
//   3 Modified pages  Perform's later passes, until the source is paused and the last pages moved
//   4 Storage handle  Finish on the destination: it takes over the disks and the device state
//   5 Online          the destination resumed (libvirt's "resumed" event ends phase 4 inside Finish)
//   6 Network cleanup Confirm on the source: its domain is killed and undefined; QEMU announced the
//                     VM's MACs from the destination as it resumed
//
// Until Perform has returned, any failure or cancel leaves the VM running on the source (Finish with
// cancelled=1 tears the skeleton down; Confirm with cancelled=1 resumes the source). After it, Finish
// decides: the destination runs the VM, or (no domain from Finish) Confirm resumes it on the source —
// exactly one running copy either way.
//
// Faults (test/integration/libvirt-faults.test.ts): a link that stops carrying bytes, or a lost
// connection to the destination's libvirtd, aborts the job while it can still be undone (the VM stays
// on the source). If this process itself dies, libvirt's connection cleanup undoes what it can; after
// Perform it leaves the source paused, and libvirt-recovery.ts settles that at the next look.
import { setTimeout as sleep } from 'node:timers/promises';
import { FerryError, type Sample, type Summary } from '../api/index.js';
import type { DomainRef, LibvirtEvent, TypedParam } from '../libvirt/client.js';
import { LibvirtError, paramNumber } from '../libvirt/client.js';
import { DomainEventId, LifecycleEvent, MigrateFlags } from '../libvirt/protocol.js';
import type { LibvirtHost } from '../host/libvirt/libvirt-host.js';
import { createImage, deleteImage } from '../host/libvirt/storage.js';
import type { ConvergenceAction } from './convergence.js';
import type { LibvirtMovePlan } from './libvirt-preflight.js';
import { parseLabGuestSerial } from '../host/lab-guest.js';
import {
  Cancelled,
  PhaseClock,
  phaseDurations,
  Tuning,
  CutoverSteps,
  guestAlive,
  reportAlive,
  type MoveContext,
} from './live-migration.js';

/** Samples go out at least this often while Perform runs (the console draws ≥ 4 a second). */
const SAMPLE_MS = 200;
/** Bytes sent not growing for this long while the job runs is a stalled link. */
const STALL_MS = 5000;
/** libvirt error codes the rollback tells apart. */
const ERR_OPERATION_ABORTED = 78;
const ERR_NO_DOMAIN = 42;
/** Flags the destination's calls must not carry (libvirt's client drops them too). */
const SOURCE_ONLY = MigrateFlags.ABORT_ON_ERROR | MigrateFlags.AUTO_CONVERGE;
/** A lost destination connection with no bytes sent for this long is reported as a stall too. */
const STALLED_TOO_MS = 2000;

/**
 * Test hook, for the fault tests only: FERRY_TEST_EXIT_AFTER=perform (or =finish) kills this process
 * with SIGKILL right after that step returns, so a test can show deterministically what libvirt's
 * connection cleanup and Ferry's next look (libvirt-recovery.ts) do. Never set outside tests.
 */
function testExitAfter(step: 'perform' | 'finish'): void {
  if (process.env.FERRY_TEST_EXIT_AFTER === step) process.kill(process.pid, 'SIGKILL');
}

export async function libvirtMigration(
  ctx: MoveContext,
  source: LibvirtHost,
  dest: LibvirtHost,
  plan: LibvirtMovePlan,
): Promise<Summary> {
  const name = ctx.vm.name;
  const clock = new PhaseClock(ctx);
  const warnings: string[] = [];
  const begin = (phase: number): void => clock.begin(phase);
  const end = (phase: number): void => clock.end(phase);

  const [src, dst] = await Promise.all([source.client(), dest.client()]);
  const prot = src.features.changeProtection ? MigrateFlags.CHANGE_PROTECTION : 0;
  const flags = plan.flags;
  const destFlags = flags & ~SOURCE_ONLY;
  const dom = await src.lookupDomainByName(name);

  // Events: the source's pause (switch-over), iterations and completion; the destination's resume.
  let stoppedAt: number | null = null;
  let resumedAt: number | null = null;
  let iteration = 0;
  let completedStats: TypedParam[] | null = null;
  const onSource = (e: LibvirtEvent): void => {
    if (!('dom' in e) || e.dom.uuid !== dom.uuid) return;
    if (e.kind === 'lifecycle' && e.event === LifecycleEvent.SUSPENDED && stoppedAt === null) {
      stoppedAt = Date.now();
      begin(3);
    } else if (e.kind === 'migration-iteration') iteration = Math.max(iteration, e.iteration);
    else if (e.kind === 'job-completed') completedStats = e.params;
  };
  const onDest = (e: LibvirtEvent): void => {
    if (e.kind !== 'lifecycle' || e.dom.uuid !== dom.uuid) return;
    if (e.event === LifecycleEvent.RESUMED || (e.event === LifecycleEvent.STARTED && stoppedAt !== null)) {
      if (resumedAt === null) resumedAt = Date.now();
      if (clock.current === 4) begin(5);
    }
  };
  // The destination's daemon gone (killed, or its link down past the keepalive): Finish can never run
  // on this connection, and libvirt destroys the incoming VM when it notices; Perform would still go on
  // to pause the source at the switch-over for nothing. Seen in the loop below, which aborts the job.
  let destLost: string | null = dst.closed ? 'the connection was closed' : null;
  const onDestClose = (err: Error | null): void => {
    destLost ??= err?.message ?? 'the connection was closed';
  };
  src.on('event', onSource);
  dst.on('event', onDest);
  dst.on('close', onDestClose);
  const callbacks = await Promise.all([
    src.registerDomainEvent(DomainEventId.MIGRATION_ITERATION, dom),
    src.registerDomainEvent(DomainEventId.JOB_COMPLETED, dom),
  ]);

  let begun = false;
  let prepared = false;
  let performed = false;
  let finished: DomainRef | null = null;
  const made: string[] = []; // destination files Ferry created for a shared-nothing move
  let last: TypedParam[] = [];
  let storageCopyMs: number | null = null;
  const cut = new CutoverSteps(ctx.now);
  let totalMs: number | null = null; // the six phases' end; the verification after it is reported beside
  let guestAliveMs: number | null | undefined;
  const checkCancel = (): void => {
    if (ctx.cancelRequested()) throw new Cancelled();
  };

  try {
    // ---- 1 Setup: Begin, (the destination's files), Prepare ---------------------------------------
    begin(1);
    await src.domainMigrateSetMaxDowntime(dom, ctx.options.downtimeMs);
    const begun3 = await src.migrateBegin3Params(dom, plan.params, flags | prot);
    begun = true;
    checkCancel();
    for (const c of plan.copies) {
      await createImage(dst, c.to, c.format === 'qcow2' ? 'qcow2' : 'raw', c.capacity);
      made.push(c.to);
    }
    const destXml = plan.copies.reduce(
      (xml, c) => xml.split(`'${c.from}'`).join(`'${c.to}'`).split(`"${c.from}"`).join(`"${c.to}"`),
      begun3.xml,
    );
    const prep = await dst.migratePrepare3Params(
      [...plan.params, { field: 'destination_xml', type: 'string', value: destXml }],
      begun3.cookie,
      destFlags,
    );
    prepared = true;
    // Prepare answers with the port it listens on; Perform must use exactly that URI.
    const performParams = plan.params.map((p) =>
      p.field === 'migrate_uri' && prep.uriOut ? { ...p, value: prep.uriOut } : p,
    );
    ctx.emit({
      type: 'log',
      level: 'info',
      message: `${dest.name} is listening on ${prep.uriOut ?? String(plan.params[0]!.value)}${plan.tls ? ' (TLS)' : ''}; Perform follows`,
    });
    checkCancel();

    // ---- 2 and 3 Memory pages, Modified pages: Perform, watched from the source's job ----------
    const copying = plan.copies.length > 0;
    if (!copying) begin(2);
    else end(1);
    const copyStart = ctx.now();
    let performDone = false;
    let performError: unknown = null;
    const perform = src
      .migratePerform3Params(dom, null, performParams, prep.cookie, flags | prot)
      .then((r) => r.cookie)
      .catch((err: unknown) => {
        performError = err;
        return null;
      })
      .finally(() => (performDone = true));

    let downtimeLimit = ctx.options.downtimeMs;
    // The administrator's tunes while Perform runs, on the source's domain (as on Ferry's own hosts,
    // they win over the policy: see Tuning).
    const tuning = new Tuning(ctx.options);
    const applyTunes = (): Promise<void> =>
      tuning.apply(ctx, {
        downtimeMs: () => downtimeLimit,
        blocked: () => (stoppedAt !== null ? 'the source is already paused for the switch-over' : null),
        set: async (p) => {
          if (p.bandwidthMiBs !== undefined) await src.domainMigrateSetMaxSpeed(dom, p.bandwidthMiBs);
          if (p.downtimeMs !== undefined) {
            await src.domainMigrateSetMaxDowntime(dom, p.downtimeMs);
            downtimeLimit = p.downtimeMs;
          }
        },
        startPostcopy: () => src.domainMigrateStartPostCopy(dom, 0),
      });
    let lastBytes = -1;
    let growthAt = ctx.now();
    let prev: { at: number; bytes: number } | null = null;
    let aborting: string | null = null;
    let cancelled = false;
    while (!performDone) {
      if (ctx.cancelRequested() && !cancelled && clock.current <= 3) {
        cancelled = true;
        await src.domainAbortJob(dom).catch(() => undefined);
      }
      const st = await src.domainGetJobStats(dom, 0).catch(() => null);
      if (st && st.params.length > 0) {
        last = st.params;
        const t = ctx.now();
        const bytes = num(last, 'data_processed');
        const memory = num(last, 'memory_processed');
        const pass = Math.max(iteration, num(last, 'memory_iteration'));
        if (copying && storageCopyMs === null && clock.current >= 2) {
          // Phase 2 began without this loop seeing the copy end (the pause came first).
          storageCopyMs = ctx.now() - copyStart;
        } else if (copying && storageCopyMs === null) {
          // Per disk from its mirror job (libvirt copies each disk with one); the job's disk totals,
          // shared out by size, where a disk's job cannot be read.
          const total = num(last, 'disk_total');
          const disks = await Promise.all(
            plan.copies.map(async (c) => {
              const job = await src.domainGetBlockJobInfo(dom, c.target, 0).catch(() => null);
              return job && job.found && job.end > 0n
                ? { id: c.target, copied: Number(job.cur), total: Number(job.end) }
                : {
                    id: c.target,
                    copied: Math.round(
                      (num(last, 'disk_processed') * Number(c.capacity)) / Math.max(1, total),
                    ),
                    total: Number(c.capacity),
                  };
            }),
          );
          ctx.emit({ type: 'storage-copy', disks });
          if (memory > 0) {
            storageCopyMs = ctx.now() - copyStart;
            begin(2);
          }
        }
        if (pass >= 2 && clock.current === 2) begin(3);
        if (bytes > lastBytes) {
          lastBytes = bytes;
          growthAt = t;
        } else if (t - growthAt > STALL_MS && !aborting && clock.current <= 3) {
          aborting = `the migration stalled: no bytes sent for ${Math.round((t - growthAt) / 1000)} s (link down or peer frozen)`;
          await src.domainAbortJob(dom).catch(() => undefined);
        }
        if (destLost !== null && !aborting && !cancelled && clock.current <= 3) {
          const idle = t - growthAt;
          aborting =
            idle >= STALLED_TOO_MS
              ? `the migration stalled: no bytes sent for ${Math.round(idle / 1000)} s, and the connection to ${dest.name} dropped (${destLost})`
              : `lost the connection to ${dest.name}'s libvirtd (${destLost}): the move cannot finish there`;
          await src.domainAbortJob(dom).catch(() => undefined);
        }
        const rate = prev && t > prev.at ? (bytes - prev.bytes) / ((t - prev.at) / 1000) / 1048576 : 0;
        prev = { at: t, bytes };
        const sample = sampleOf(last, t, Math.max(2, clock.current), pass, rate, downtimeLimit);
        if (clock.current >= 2) ctx.emit({ type: 'sample', sample });
        if (clock.current >= 2 && clock.current <= 3 && !aborting && !cancelled) {
          ctx.tuning?.open();
          await applyTunes();
        }
        const action: ConvergenceAction =
          clock.current >= 2 && !aborting && !cancelled && !tuning.postcopyAsked
            ? tuning.watch.observe({
                passes: pass,
                remaining: num(last, 'memory_remaining'),
                expectedDowntimeMs: sample.expectedDowntimeMs,
                downtimeLimitMs: downtimeLimit,
                throttlePct: num(last, 'auto_converge_throttle'),
              })
            : { kind: 'none' as const };
        if (action.kind === 'raise-downtime') {
          await src.domainMigrateSetMaxDowntime(dom, action.downtimeMs);
          downtimeLimit = action.downtimeMs;
          ctx.emit({ type: 'escalation', step: 'raise-downtime', message: action.message });
        } else if (action.kind === 'postcopy') {
          ctx.emit({ type: 'escalation', step: 'postcopy', message: action.message });
          tuning.postcopyAsked = true;
          await src.domainMigrateStartPostCopy(dom, 0);
        } else if (action.kind === 'throttle') {
          ctx.emit({ type: 'escalation', step: 'throttle', message: action.message });
        } else if (action.kind === 'abort') {
          ctx.emit({ type: 'escalation', step: 'abort', message: action.message });
          aborting = action.message;
          await src.domainAbortJob(dom).catch(() => undefined);
        }
      }
      await Promise.race([perform, sleep(SAMPLE_MS)]);
    }
    await ctx.tuning?.close(`the memory copy is over: ${name} is switching over to ${dest.name}`);
    const performCookie = await perform;
    if (performCookie === null) {
      if (cancelled) throw new Cancelled();
      const err = performError as Error;
      const why =
        aborting ??
        (err instanceof LibvirtError && err.libvirtCode === ERR_OPERATION_ABORTED
          ? 'the migration was aborted on the source'
          : `libvirt's Perform failed: ${err.message}`);
      throw new FerryError('migration-failed', why);
    }
    performed = true;
    if (stoppedAt !== null) cut.steps.push({ step: 'final copy (Perform)', ms: Date.now() - stoppedAt });
    // The guest's last pass so far (the source is paused), read beside Finish so the read costs no
    // downtime; a pass the destination logs meanwhile only makes the later check wait for a newer one.
    const passAtPause: Promise<number | null> = ctx.vm.labGuest
      ? source
          .readSerial(name, 0)
          .then((c) => parseLabGuestSerial(c.text).heartbeats.at(-1)?.pass ?? 0)
          .catch(() => null)
      : Promise.resolve(null);
    testExitAfter('perform');
    begin(3); // a move that converged in one pass still passed through the switch-over
    if (storageCopyMs === null && copying) storageCopyMs = ctx.now() - copyStart;
    // Finish goes out at once, beside the read of the job's final figures: the guest waits paused for
    // Finish, not for a statistics round trip (the events keep their order: phase 3's last sample, then 4).
    const finishFrom = ctx.now();
    const finishing = dst
      .migrateFinish3Params(
        [...plan.params, { field: 'destination_name', type: 'string', value: name }],
        performCookie,
        destFlags,
        false,
      )
      .catch((err: unknown) => {
        warnings.push(`Finish failed on ${dest.name}: ${(err as Error).message}`);
        return null;
      })
      .finally(() => cut.since('Finish (resume there)', finishFrom));
    const final = await src.domainGetJobStats(dom, 1).catch(() => null);
    if (final) last = final.params;
    ctx.emit({
      type: 'sample',
      sample: sampleOf(
        last,
        ctx.now(),
        3,
        Math.max(iteration, num(last, 'memory_iteration')),
        0,
        downtimeLimit,
      ),
    });

    // ---- 4 Storage handle, 5 Online: Finish on the destination -----------------------------------
    begin(4);
    const fin = await finishing;
    finished = fin?.dom ?? null;
    if (finished) testExitAfter('finish');
    if (!finished) {
      // The destination could not take the VM: it is torn down there, and Confirm resumes it here.
      await src.migrateConfirm3Params(dom, plan.params, Buffer.alloc(0), flags | prot, true);
      throw new FerryError(
        'migration-failed',
        `${dest.name} could not start the VM; it runs on ${source.name} again`,
      );
    }
    begin(5);
    if (resumedAt === null) resumedAt = Date.now();
    // Proof that the guest lives on the destination is verification beside the phases, not part of
    // the switch-over: a heartbeat newer than the last one before the pause (the lab's serial log is
    // one file both hosts append to), awaited while Confirm runs.
    const verified = ctx.vm.labGuest
      ? passAtPause.then((p) => guestAlive(dest, name, ctx.vm.labGuest!, p, resumedAt))
      : null;

    // ---- 6 Network cleanup: Confirm on the source ----------------------------------------------
    begin(6);
    await cut.time(
      'Confirm (source off)',
      src.migrateConfirm3Params(dom, plan.params, fin!.cookie, flags | prot, false),
    );
    const gone = await src.lookupDomainByName(name).then(
      () => false,
      (err: unknown) => err instanceof LibvirtError && err.libvirtCode === ERR_NO_DOMAIN,
    );
    if (!gone) warnings.push(`${source.name} still has a definition of ${name}`);
    for (const file of plan.deleteSource) {
      await deleteImage(src, file).catch((e: Error) =>
        warnings.push(`could not delete ${file} on ${source.name}: ${e.message}`),
      );
    }
    end(6);
    totalMs = ctx.now();
    const alive = verified ? await verified : undefined;
    if (alive) {
      reportAlive(ctx, alive, dest.name, warnings);
      guestAliveMs = alive.ms;
    }
    return result('completed', null);
  } catch (err) {
    const isCancel = err instanceof Cancelled;
    const reason = isCancel ? 'cancelled by the administrator' : (err as Error).message;
    clock.stop();
    if (finished) {
      // The VM runs on the destination: go forward, never back.
      warnings.push(`after the switch-over: ${reason}`);
      return result('completed', null);
    }
    if (prepared && !finished) {
      // Finish with cancelled=1: the destination kills the skeleton (libvirt answers "finish OK"-ish
      // error 93 by design).
      await dst
        .migrateFinish3Params(
          [...plan.params, { field: 'destination_name', type: 'string', value: name }],
          Buffer.alloc(0),
          destFlags,
          true,
        )
        .catch(() => undefined);
    }
    if (begun && !performed) {
      // After a failed Perform libvirt has already resumed the source; after Begin alone the source's
      // migration job is released by a cancelled Confirm.
      await src
        .migrateConfirm3Params(dom, plan.params, Buffer.alloc(0), flags | prot, true)
        .catch(() => undefined);
    }
    for (const file of made) await deleteImage(dst, file).catch(() => undefined);
    // Whatever happened, the source must run the VM now: resume it if libvirt left it paused.
    const st = await src.domainGetState(dom, 0).catch(() => null);
    if (st && st.state === 3)
      await src
        .domainResume(dom)
        .catch((e: Error) => warnings.push(`resuming on ${source.name} failed: ${e.message}`));
    return result(isCancel ? 'cancelled' : 'failed', reason);
  } finally {
    src.off('event', onSource);
    dst.off('event', onDest);
    dst.off('close', onDestClose);
    for (const id of callbacks) await src.deregisterDomainEvent(id).catch(() => undefined);
  }

  function result(status: Summary['status'], reason: string | null): Summary {
    const stats = completedStats ?? last;
    return {
      type: 'summary',
      id: ctx.id,
      status,
      reason,
      vm: name,
      from: source.name,
      to: dest.name,
      kind: 'live',
      options: ctx.options,
      totalMs: totalMs ?? ctx.now(),
      downtimeMs:
        status === 'completed' && stoppedAt !== null && resumedAt !== null ? resumedAt - stoppedAt : null,
      qemuDowntimeMs: status === 'completed' ? num(stats, 'downtime') || null : null,
      bytes: num(stats, 'data_processed'),
      passes: Math.max(iteration, num(stats, 'memory_iteration')),
      storageCopyMs,
      phases: phaseDurations(clock.timings),
      warnings,
      ...(cut.steps.length ? { cutover: cut.steps } : {}),
      ...(guestAliveMs !== undefined ? { guestAliveMs } : {}),
    };
  }
}

function num(params: TypedParam[], field: string): number {
  return paramNumber(params, field) ?? 0;
}

/** One sample from libvirt's job statistics (the same figures Ferry's own driver reports). */
function sampleOf(
  p: TypedParam[],
  at: number,
  phase: number,
  pass: number,
  throughputMiBs: number,
  downtimeLimitMs: number,
): Sample {
  const remaining = num(p, 'data_remaining');
  const bps = num(p, 'memory_bps');
  return {
    at,
    phase: Math.min(6, Math.max(1, phase)),
    pass,
    bytesSent: num(p, 'data_processed'),
    remainingBytes: remaining,
    totalBytes: num(p, 'data_total'),
    dirtyBytesPerSec: num(p, 'memory_dirty_rate') * (num(p, 'memory_page_size') || 4096),
    throughputMiBs: Math.round(throughputMiBs * 10) / 10,
    expectedDowntimeMs: bps > 0 ? Math.round((num(p, 'memory_remaining') / bps) * 1000) : null,
    throttlePct: num(p, 'auto_converge_throttle'),
    downtimeLimitMs,
  };
}
