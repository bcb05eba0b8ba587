// The next look after a Ferry process died past the switch-over of a move between Ferry's own hosts
// (phases 4-6). The source's QEMU then sits paused with its outgoing migration over ("postmigrate"), and
// only the destination tells whether the VM runs on: the move's own clean-up (Confirm) never ran.
//
//   the destination is known to run the VM (its QEMU alive, running, its incoming migration completed,
//     the same VM by UUID, its configuration committed) and the source's migration completed: the
//     source copy is turned off and its files released (never disks: shared storage is the
//     destination's now, and a shared-nothing source copy is kept and named), the VM is on the
//     destination, and the history reads "completed (recovered)";
//   otherwise (the destination gone, paused, or a post-copy move that still needs the source's pages):
//     nothing is guessed; the source copy stays paused, and the history says what each host has, for an
//     administrator to resolve. A later look checks again (and notes a copy resumed by hand).
//
// All of Ferry's own hosts live on this machine under FERRY_HOME/hosts/NAME, so the source reads the
// destination's files and asks its QEMU directly (as LocalContext.settleSourceOf does).
import fs from 'node:fs';
import path from 'node:path';
import { VmConfigSchema, type VmConfig } from '../../api/index.js';
import { History } from '../../migration/history.js';
import { parseQueryMigrate } from '../../qemu/migration.js';
import { killQemu, waitForExit } from '../../qemu/process.js';
import { QmpClient } from '../../qemu/qmp.js';
import { ensureDir, readJson, writeJsonAtomic } from '../store.js';
import { isRunning, RuntimeSchema, type LocalContext, type Runtime } from './context.js';

/** What one host has of the VM, as the next look found it. */
export interface CopyFacts {
  host: string;
  /** The VM's configuration there: committed (vm.json), still incoming (incoming.json), or none. */
  config: 'committed' | 'incoming' | 'none';
  /** The configuration there is the same VM (same UUID) as the source's. */
  sameVm: boolean;
  /** Its QEMU's pid when that QEMU is alive, else null. */
  pid: number | null;
  /** QEMU's run state (query-status), null when there is no QEMU or it did not answer. */
  runState: string | null;
  /** QEMU's migration state (query-migrate), null when there is no QEMU or it did not answer. */
  migration: string | null;
}

export type AfterSwitchover =
  /** The destination runs the VM: turn the source copy off. */
  | 'recovered'
  /** Not known that the destination runs it: leave the source paused for the administrator. */
  | 'needs-administrator'
  /** The source copy runs again (resumed by hand) and the destination does not: the move did not happen. */
  | 'resolved';

/** Whether the destination is known to run the VM: the only case the next look acts on by itself. */
export function destinationRunsVm(dest: CopyFacts): boolean {
  return (
    dest.pid !== null &&
    dest.runState === 'running' &&
    dest.migration === 'completed' &&
    dest.config === 'committed' &&
    dest.sameVm
  );
}

/** What the next look does with a source copy left after the switch-over. Pure. */
export function decideAfterSwitchover(source: CopyFacts, dest: CopyFacts): AfterSwitchover {
  const destRuns = destinationRunsVm(dest);
  const sourceRuns = source.pid !== null && source.runState === 'running';
  // The source's migration must be completed: in post-copy part of the memory is still only there.
  if (destRuns && !sourceRuns && source.migration === 'completed') return 'recovered';
  if (!destRuns && sourceRuns) return 'resolved';
  return 'needs-administrator';
}

/** One host's facts in words, for the history and the VM's state reason. */
export function describeCopy(f: CopyFacts, role: 'source' | 'destination', vm: string): string {
  const who = `${f.host} (${role})`;
  if (f.pid === null) {
    const cfg =
      f.config === 'committed'
        ? `its configuration of ${vm} is there`
        : f.config === 'incoming'
          ? `only an uncommitted incoming configuration of ${vm} is there`
          : `no configuration of ${vm} is there`;
    return `${who}: no QEMU runs ${vm}; ${cfg}`;
  }
  const direction = role === 'destination' ? 'incoming' : 'outgoing';
  const mig = f.migration && f.migration !== 'none' ? `, ${direction} migration ${f.migration}` : '';
  const cfg = role === 'destination' && f.config !== 'committed' ? ', configuration not committed' : '';
  const other = f.sameVm ? '' : ', a different VM (UUID)';
  return `${who}: QEMU pid ${f.pid} ${f.runState ?? 'not answering'}${mig}${cfg}${other}`;
}

/** Asks a QEMU for its run state and migration state on its status monitor. */
async function ask(socket: string): Promise<{ runState: string | null; migration: string | null }> {
  const qmp = await QmpClient.connect(socket, { timeoutMs: 3000 }).catch(() => null);
  if (!qmp) return { runState: null, migration: null };
  try {
    const st = await qmp.execute<{ status: string }>('query-status').catch(() => null);
    const mig = await qmp.execute('query-migrate').catch(() => null);
    return {
      runState: st?.status ?? null,
      migration: mig ? parseQueryMigrate(mig as Record<string, never>).status : null,
    };
  } finally {
    await qmp.close();
  }
}

/** The destination host's facts, read from its files under FERRY_HOME/hosts/PEER and its QEMU. */
export async function peerFacts(ctx: LocalContext, peer: string, vm: VmConfig): Promise<CopyFacts> {
  const dir = path.join(path.dirname(ctx.record.stateDir), peer, 'vms', vm.name);
  const committed = await readJson(path.join(dir, 'vm.json'), VmConfigSchema).catch(() => null);
  const incoming = committed
    ? null
    : await readJson(path.join(dir, 'incoming.json'), VmConfigSchema).catch(() => null);
  const cfg = committed ?? incoming;
  const rt = await readJson(path.join(dir, 'runtime.json'), RuntimeSchema).catch(() => null);
  const alive = isRunning(rt);
  const q = alive ? await ask(rt.statusSocket) : { runState: null, migration: null };
  return {
    host: peer,
    config: committed ? 'committed' : incoming ? 'incoming' : 'none',
    sameVm: cfg?.uuid === vm.uuid,
    pid: alive ? rt.pid : null,
    ...q,
  };
}

/** FERRY_HOME: each of Ferry's own hosts keeps its state in FERRY_HOME/hosts/NAME. */
function historyOf(ctx: LocalContext): History {
  return new History(path.join(path.dirname(path.dirname(ctx.record.stateDir)), 'migrations'));
}

export interface Settled {
  outcome: AfterSwitchover;
  /** For the VM's state reason on the source (needs-administrator). */
  reason: string;
}

/**
 * Settles a source copy left after the switch-over by a Ferry process that died (called by the
 * lifecycle's next look, under the VM's lock, with a session on the source's control monitor).
 * `recovered`: the source QEMU is gone and its runtime and configuration removed (the caller removes
 * the rest of its folder once the lock is released).
 */
export async function settleAfterSwitchover(
  ctx: LocalContext,
  name: string,
  rt: Runtime,
  qmp: QmpClient,
): Promise<Settled> {
  const m = rt.migration!;
  const vm = await ctx.vmConfig(name);
  const st = await qmp.execute<{ status: string }>('query-status').catch(() => null);
  const mig = await qmp.execute('query-migrate').catch(() => null);
  const source: CopyFacts = {
    host: ctx.name,
    config: 'committed',
    sameVm: true,
    pid: rt.pid,
    runState: st?.status ?? null,
    migration: mig ? parseQueryMigrate(mig as Record<string, never>).status : null,
  };
  const dest = await peerFacts(ctx, m.peer, vm);
  const outcome = decideAfterSwitchover(source, dest);
  const history = historyOf(ctx);
  const rec = await history.get(m.id).catch(() => null);
  const who = rec?.ownerPid !== undefined ? ` (pid ${rec.ownerPid})` : '';
  const when = rec ? ` during phase ${rec.phase}` : '';
  const srcWords = describeCopy(source, 'source', name);
  const dstWords = describeCopy(dest, 'destination', name);
  let reason: string;
  if (outcome === 'recovered') {
    const destVm = await readJson(
      path.join(path.dirname(ctx.record.stateDir), m.peer, 'vms', name, 'vm.json'),
      VmConfigSchema,
    ).catch(() => null);
    const kept = vm.disks.filter((d) => !destVm?.disks.some((x) => x.path === d.path)).map((d) => d.path);
    await turnOff(ctx, name, rt, qmp);
    reason =
      `completed (recovered): the Ferry process running the move${who} ended after the switch-over${when}; ` +
      `the next look found ${name} running on ${m.peer}, so it turned off the paused copy on ${ctx.name} ` +
      `and released its files (${dstWords}; ${srcWords})` +
      (kept.length ? `; the source's own disk copies are kept: ${kept.join(', ')}` : '');
  } else if (outcome === 'resolved') {
    await writeJsonAtomic(ctx.runtimePath(name), { ...rt, migration: null });
    reason =
      `abandoned after the switch-over${when}: the Ferry process running the move${who} ended; ` +
      `${name} was resumed on ${ctx.name} and does not run on ${m.peer}, so the move did not happen (${srcWords}; ${dstWords})`;
  } else {
    reason =
      `abandoned after the switch-over${when}, needs the administrator: the Ferry process running the move${who} ended, ` +
      `and Ferry cannot tell that ${m.peer} runs ${name}, so the copy on ${ctx.name} is left paused. ` +
      `${srcWords}; ${dstWords}. Check ${m.peer}, then resume ${name} on ${ctx.name} (ferry vm resume ${name} --host ${ctx.name}, or Resolve… in the console) ` +
      `or, if ${m.peer} runs it, turn the copy on ${ctx.name} off (ferry vm stop ${name} --host ${ctx.name} --force)`;
  }
  await history
    .saveRecovery(m.id, { outcome, reason, source: srcWords, destination: dstWords })
    .catch(() => null);
  return { outcome, reason };
}

/** The source copy goes, as Confirm would have done it: QEMU quits, its runtime and configuration go. */
async function turnOff(ctx: LocalContext, name: string, rt: Runtime, qmp: QmpClient): Promise<void> {
  await writeJsonAtomic(ctx.runtimePath(name), { ...rt, stopRequested: true });
  await qmp.execute('quit').catch(() => undefined);
  await qmp.close();
  if (!(await waitForExit(rt.pid, rt.qmpSocket, 10_000))) await killQemu(rt.pid, rt.qmpSocket);
  for (const sock of ctx.socketsOf(rt)) await fs.promises.rm(sock, { force: true });
  // Keep the source's console history, as Confirm does.
  const serial = path.join(ctx.vmDir(name), 'serial.log');
  if (fs.existsSync(serial)) {
    const logs = path.join(ctx.record.stateDir, 'logs');
    await ensureDir(logs);
    await fs.promises.rename(serial, path.join(logs, `${name}-${rt.migration?.id ?? 'moved'}.serial.log`));
  }
  await fs.promises.rm(ctx.runtimePath(name), { force: true });
  await fs.promises.rm(ctx.configPath(name), { force: true });
}
