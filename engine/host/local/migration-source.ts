// The source side of a move (libvirt's Begin / Perform / Confirm): one QMP session held from Begin to
// Confirm or rollback, which also sees the STOP of the cut-over. The disk mirrors of a shared-nothing
// move are in disks.ts.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import zlib from 'node:zlib';
import { FerryError, type VmConfig } from '../../api/index.js';
import {
  brokenMigrationMessage,
  capabilityList,
  isBroken,
  isSettled,
  outgoingState,
  parseQueryMigrate,
  settleOutgoing,
  type OutgoingState,
} from '../../qemu/migration.js';
import { QmpClient } from '../../qemu/qmp.js';
import { killQemu, waitForExit } from '../../qemu/process.js';
import type { MemoryMeasurement, OutgoingStats } from '../driver.js';
import { ensureDir, writeJsonAtomic } from '../store.js';
import { isRunning, refuseWhileMigrating, type LocalContext } from './context.js';

export class MigrationSource {
  constructor(private readonly ctx: LocalContext) {}

  async beginOutgoing(name: string, migrationId: string, peer: string): Promise<VmConfig> {
    return this.ctx.withVmLock(name, async () => {
      const vm = await this.ctx.vmConfig(name);
      const rt = await this.ctx.runtime(name);
      if (!isRunning(rt)) {
        throw new FerryError('vm-not-running', `VM "${name}" is not running on ${this.ctx.name}`);
      }
      refuseWhileMigrating(name, rt);
      const session = await this.ctx.openSession(name, rt.qmpSocket);
      const st = await session.qmp.execute<{ status: string }>('query-status');
      if (st.status !== 'running' && st.status !== 'paused') {
        await this.ctx.closeSession(name);
        throw new FerryError('vm-not-running', `VM "${name}" is ${st.status}, not running or paused`);
      }
      await writeJsonAtomic(this.ctx.runtimePath(name), {
        ...rt,
        migration: {
          id: migrationId,
          role: 'source',
          peer,
          ownerPid: process.pid,
          wasRunning: st.status === 'running',
        },
      });
      return vm;
    });
  }

  async startOutgoing(
    name: string,
    req: { capabilities: Record<string, boolean>; parameters: Record<string, unknown>; uri: string },
  ): Promise<void> {
    const s = this.ctx.session(name);
    await s.qmp
      .execute('migrate-set-capabilities', { capabilities: capabilityList(req.capabilities) })
      .catch((err: unknown) => {
        if (err instanceof Error && /migration process in progress/i.test(err.message))
          throw new FerryError('migration-failed', `${brokenMigrationMessage(name)} (${err.message})`);
        throw err;
      });
    await s.qmp.execute('migrate-set-parameters', req.parameters);
    const limit = req.parameters['downtime-limit'];
    if (typeof limit === 'number') s.downtimeLimitMs = limit;
    s.stoppedAt = null;
    await s.qmp.execute('migrate', { uri: req.uri }).catch((err: unknown) => {
      // The pre-flight refuses such a VM; should it get here, say what it means, not QEMU's words.
      if (err instanceof Error && /duplicate yank instance|migration process in progress/i.test(err.message))
        throw new FerryError('migration-failed', `${brokenMigrationMessage(name)} (${err.message})`);
      throw err;
    });
  }

  async outgoingStats(name: string): Promise<OutgoingStats> {
    const s = this.ctx.session(name);
    const stats = parseQueryMigrate(await s.qmp.execute('query-migrate'));
    return { ...stats, downtimeLimitMs: s.downtimeLimitMs, stoppedAt: s.stoppedAt };
  }

  async nextMigrationEvent(name: string, timeoutMs: number): Promise<string | null> {
    const ev = await this.ctx
      .session(name)
      .qmp.waitEvent('MIGRATION', () => true, timeoutMs)
      .catch((err: unknown) => {
        if (err instanceof FerryError && err.code === 'qmp-timeout') return null;
        throw err;
      });
    return ev ? String(ev.data.status) : null;
  }

  async setOutgoingParameters(name: string, parameters: Record<string, unknown>): Promise<void> {
    const s = this.ctx.session(name);
    await s.qmp.execute('migrate-set-parameters', parameters);
    const limit = parameters['downtime-limit'];
    if (typeof limit === 'number') s.downtimeLimitMs = limit;
  }

  async continueOutgoing(name: string): Promise<void> {
    await this.ctx.session(name).qmp.execute('migrate-continue', { state: 'pre-switchover' });
  }

  async startPostcopy(name: string): Promise<void> {
    await this.ctx.session(name).qmp.execute('migrate-start-postcopy');
  }

  /**
   * Post-copy only: pauses a post-copy migration whose link is lost (QEMU's migrate-pause shuts its
   * stream down), so that it can resume on a new connection with resumeOutgoing. Never cancel there:
   * the destination already runs, and part of the memory is only here.
   */
  async pauseOutgoing(name: string): Promise<void> {
    await this.ctx.session(name).qmp.execute('migrate-pause');
  }

  /** Resumes a paused post-copy migration to the destination's recovery address (migrate-recover). */
  async resumeOutgoing(name: string, uri: string): Promise<void> {
    await this.ctx.session(name).qmp.execute('migrate', { uri, resume: true });
  }

  async cancelOutgoing(name: string): Promise<void> {
    const s = await this.ctx.sessionForCleanup(name);
    const before = parseQueryMigrate(await s.qmp.execute('query-migrate'));
    if (before.status === 'completed' || before.status.startsWith('postcopy')) {
      throw new FerryError(
        'cancel-refused',
        `the migration of "${name}" has already switched over (${before.status})`,
      );
    }
    try {
      // Called before the destination is killed (live-migration.ts): see settleOutgoing.
      const r = await settleOutgoing(s.qmp);
      if (!r.settled) {
        throw new FerryError(
          'migration-failed',
          `${brokenMigrationMessage(name)} (QEMU's migration is ${r.state.status}${r.state.cleanedUp ? '' : ' and never cleaned up'}${r.steps.length ? ` after ${r.steps.join(' and ')}` : ''})`,
        );
      }
    } finally {
      await this.keepRunningHere(name);
    }
  }

  /**
   * Whether this VM's QEMU can start a new outgoing migration (the pre-flight's check of the source):
   * idle and cleaned up, still busy with a migration, or stuck in a broken one (QEMU 7.2, see
   * isBroken). A migration that has just ended gets a moment for QEMU's own clean-up. Asked on the
   * status monitor, so a move's session is never disturbed; null when QEMU does not answer.
   */
  async outgoingReadiness(
    name: string,
  ): Promise<{ ready: boolean; broken: boolean; state: OutgoingState } | null> {
    const rt = await this.ctx.runtime(name);
    if (!isRunning(rt)) return null;
    const qmp = await QmpClient.connect(rt.statusSocket, { timeoutMs: 3000 }).catch(() => null);
    if (!qmp) return null;
    try {
      let st = await outgoingState(qmp);
      const deadline = Date.now() + 1500;
      while (!isSettled(st) && Date.now() < deadline) {
        await sleep(50);
        st = await outgoingState(qmp);
      }
      return { ready: isSettled(st), broken: isBroken(st), state: st };
    } finally {
      await qmp.close();
    }
  }

  /**
   * The estimate's look at the VM's memory: QEMU's calc-dirty-rate in page-sampling mode over one
   * second (the dirty-bitmap mode crashes QEMU 7.2 under TCG, dirty-ring is unavailable there), and,
   * meanwhile, a sample of its pages read with pmemsave: how many are zero, and how well the rest
   * compresses. On the status monitor, in two short connections, so other callers are not held up.
   * QEMU measures one dirty rate per VM at a time: if one is already running (another Ferry process),
   * its result is taken.
   */
  async measureMemory(name: string, windowS = 1): Promise<MemoryMeasurement> {
    const rt = await this.ctx.runtime(name);
    if (!isRunning(rt))
      throw new FerryError('vm-not-running', `VM "${name}" is not running on ${this.ctx.name}`);
    const vm = await this.ctx.vmConfig(name);
    // The status monitor takes one client at a time and queues one more: others (a VM list, another
    // check) may hold it for a moment, so a refused connection is tried again.
    const connect = async (): Promise<QmpClient> => {
      const deadline = Date.now() + 5000;
      for (;;) {
        try {
          return await QmpClient.connect(rt.statusSocket, { timeoutMs: 3000 });
        } catch (err) {
          if (Date.now() > deadline) throw err;
          await sleep(30 + Math.random() * 70);
        }
      }
    };
    const start = Date.now();
    let qmp = await connect();
    let sample: { zero: number; pages: number; compressed: number; nonZeroBytes: number };
    try {
      const pagesPerGiB = vm.memoryMiB <= 2048 ? 16384 : 4096; // QEMU's sample-pages: per GiB, ≤ 16384
      await qmp
        .execute('calc-dirty-rate', {
          'calc-time': windowS,
          'sample-pages': pagesPerGiB,
          mode: 'page-sampling',
        })
        .catch((err: unknown) => {
          if (!(err instanceof Error && /already being measured/i.test(err.message))) throw err;
        });
      sample = await sampleMemory(qmp, vm.memoryMiB * 1024 * 1024);
    } finally {
      await qmp.close();
    }
    await sleep(Math.max(0, windowS * 1000 - (Date.now() - start)));
    qmp = await connect();
    try {
      const deadline = Date.now() + windowS * 1000 + 10_000;
      for (;;) {
        const r = await qmp.execute<{ status: string; 'dirty-rate'?: number; 'calc-time'?: number }>(
          'query-dirty-rate',
        );
        if (r.status === 'measured') {
          return {
            dirtyBytesPerSec: (r['dirty-rate'] ?? 0) * 1024 * 1024,
            windowS: r['calc-time'] ?? windowS,
            zeroPageRatio: sample.pages ? sample.zero / sample.pages : 0,
            compressionRatio: sample.compressed ? sample.nonZeroBytes / sample.compressed : 1,
            sampledBytes: sample.pages * PAGE,
            at: Date.now(),
          };
        }
        if (Date.now() > deadline)
          throw new FerryError(
            'internal',
            `QEMU did not finish measuring ${name}'s dirty rate (${r.status})`,
          );
        await sleep(50);
      }
    } finally {
      await qmp.close();
    }
  }

  /** After a cancel or failure: the VM runs here as before the move, and is no longer marked. */
  private async keepRunningHere(name: string): Promise<void> {
    try {
      const s = await this.ctx.sessionForCleanup(name);
      const rt = await this.ctx.runtime(name);
      const st = await s.qmp.execute<{ status: string }>('query-status');
      // QEMU restarts a VM that was running when its migration fails; make sure of it.
      if (rt?.migration?.wasRunning && st.status !== 'running') await s.qmp.execute('cont');
    } finally {
      await this.ctx.setMigrationMarker(name, null);
      await this.ctx.closeSession(name);
    }
  }

  async resumeSource(name: string): Promise<void> {
    // `cont` in postmigrate re-activates the disks the source inactivated at completion.
    await this.keepRunningHere(name);
  }

  async confirmOutgoing(name: string, deleteDisks: string[] = []): Promise<void> {
    const rt = await this.ctx.runtime(name);
    const s = this.ctx.openSessionOf(name);
    if (s) await s.qmp.execute('quit').catch(() => undefined);
    await this.ctx.closeSession(name);
    if (rt) {
      await writeJsonAtomic(this.ctx.runtimePath(name), { ...rt, stopRequested: true });
      if (!(await waitForExit(rt.pid, rt.qmpSocket, 10_000))) await killQemu(rt.pid, rt.qmpSocket);
      for (const sock of [rt.qmpSocket, rt.statusSocket]) await fs.promises.rm(sock, { force: true });
    }
    // Keep the source's console history; the VM's files on shared storage are the destination's now.
    const serial = path.join(this.ctx.vmDir(name), 'serial.log');
    if (fs.existsSync(serial)) {
      const logs = path.join(this.ctx.record.stateDir, 'logs');
      await ensureDir(logs);
      await fs.promises.rename(serial, path.join(logs, `${name}-${rt?.migration?.id ?? 'moved'}.serial.log`));
    }
    await this.ctx.removeVmState(name);
    // Shared-nothing: the destination has its own copies now.
    for (const f of deleteDisks) {
      await fs.promises.rm(f, { force: true });
      await fs.promises.rmdir(path.dirname(f)).catch(() => undefined);
    }
  }
}

const PAGE = 4096;
/**
 * Chunks read from guest memory for the estimate, evenly spread, and their size: each pmemsave takes
 * about 4 ms here (QEMU 7.2, TCG), so 48 of them keep the status monitor for about 0.2 s.
 */
const SAMPLE_CHUNKS = 48;
const CHUNK_BYTES = 32 * 1024;

/**
 * Reads SAMPLE_CHUNKS chunks of guest-physical memory (below 2 GiB, where a q35 VM's low memory ends)
 * with pmemsave: the share of zero pages, and the deflate level 1 size of the others (a stand-in for
 * the zstd level 1 of multifd Compression; Node 20 has no zstd).
 */
async function sampleMemory(
  qmp: QmpClient,
  memoryBytes: number,
): Promise<{ zero: number; pages: number; compressed: number; nonZeroBytes: number }> {
  const dir = await fs.promises.mkdtemp(path.join(os.tmpdir(), 'ferry-mem-'));
  const file = path.join(dir, 'chunk');
  const low = Math.min(memoryBytes, 2 * 1024 ** 3);
  const nonZero: Buffer[] = [];
  let zero = 0;
  let pages = 0;
  try {
    for (let k = 0; k < SAMPLE_CHUNKS; k++) {
      const at = Math.floor((k * (low - CHUNK_BYTES)) / SAMPLE_CHUNKS / PAGE) * PAGE;
      await qmp.execute('pmemsave', { val: at, size: CHUNK_BYTES, filename: file });
      const buf = await fs.promises.readFile(file);
      for (let off = 0; off + PAGE <= buf.length; off += PAGE) {
        const page = buf.subarray(off, off + PAGE);
        pages++;
        if (isZero(page)) zero++;
        else nonZero.push(Buffer.from(page));
      }
    }
  } finally {
    await fs.promises.rm(dir, { recursive: true, force: true });
  }
  const raw = Buffer.concat(nonZero);
  const compressed = raw.length ? zlib.deflateRawSync(raw, { level: 1 }).length : 0;
  return { zero, pages, compressed, nonZeroBytes: raw.length };
}

function isZero(page: Buffer): boolean {
  for (let i = 0; i < page.length; i += 8) if (page.readBigUInt64LE(i) !== 0n) return false;
  return true;
}
