// Every move, successful or not, kept under FERRY_HOME/migrations/ with its options, phase timings,
// samples (for the charts), outcome and reason. A cancel request from another process is a file beside
// the record, so `ferry cancel` works from any shell.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { FerryError, MigrationRecordSchema, type MigrationRecord } from '../api/index.js';
import { ensureDir, readJson, withLock, writeJsonAtomic } from '../host/store.js';
import { processAlive } from '../qemu/process.js';

export class History {
  /**
   * `beforeRead`: "the next look" that settles moves whose Ferry process died (Ferry's own hosts: the
   * manager's), run before the records are listed or read.
   */
  constructor(
    readonly dir: string,
    private readonly beforeRead: (() => Promise<void>) | null = null,
  ) {}

  newId(): string {
    const t = new Date().toISOString().replace(/[-:]/g, '').replace('T', '-').slice(0, 15);
    return `m-${t}-${crypto.randomBytes(2).toString('hex')}`;
  }

  private file(id: string): string {
    if (!/^m-[0-9a-z-]+$/.test(id))
      throw new FerryError('unknown-migration', `"${id}" is not a migration id`);
    return path.join(this.dir, `${id}.json`);
  }

  cancelFile(id: string): string {
    return path.join(this.dir, `${id}.cancel`);
  }

  async save(rec: MigrationRecord): Promise<void> {
    await writeJsonAtomic(this.file(rec.id), rec);
  }

  async get(id: string): Promise<MigrationRecord> {
    await this.beforeRead?.().catch(() => undefined);
    const rec = await readJson(this.file(id), MigrationRecordSchema);
    if (!rec) throw new FerryError('unknown-migration', `no migration with id ${id} (see: ferry migrations)`);
    return settle(rec);
  }

  /** Newest first. */
  async list(): Promise<MigrationRecord[]> {
    await this.beforeRead?.().catch(() => undefined);
    return (await this.saved()).map(settle);
  }

  /** The records as saved, abandoned ones still "running" (libvirt-recovery.ts settles those). Newest first. */
  async saved(): Promise<MigrationRecord[]> {
    let names: string[];
    try {
      names = (await fs.promises.readdir(this.dir)).filter((n) => n.endsWith('.json'));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    const recs = await Promise.all(
      names.map((n) => readJson(path.join(this.dir, n), MigrationRecordSchema).catch(() => null)),
    );
    return recs
      .filter((r): r is MigrationRecord => r !== null)
      .sort((a, b) => b.requestedAt.localeCompare(a.requestedAt));
  }

  /**
   * Writes what the next look found after a move's Ferry process died past the switch-over (see
   * MigrationRecord.recovery), under the record's recovery lock. Only a record still waiting for that
   * (abandoned while running, or left for the administrator) is changed, and only when something
   * changed: a later look that finds the same facts writes nothing. Returns the record as saved, or
   * null when it was not changed.
   */
  async saveRecovery(
    id: string,
    found: {
      outcome: NonNullable<MigrationRecord['recovery']>['outcome'];
      reason: string;
      source: string;
      destination: string;
    },
  ): Promise<MigrationRecord | null> {
    return withLock(path.join(this.dir, `${id}.recovery`), async () => {
      const rec = await readJson(this.file(id), MigrationRecordSchema).catch(() => null);
      if (!rec) return null;
      const waiting =
        (rec.status === 'running' && isAbandoned(rec)) || rec.recovery?.outcome === 'needs-administrator';
      if (!waiting) return null;
      if (
        rec.recovery?.outcome === found.outcome &&
        rec.recovery.source === found.source &&
        rec.recovery.destination === found.destination
      )
        return null;
      const at = new Date().toISOString();
      const next: MigrationRecord = {
        ...rec,
        status: found.outcome === 'recovered' ? 'completed' : 'failed',
        reason: found.reason,
        endedAt: rec.endedAt ?? at,
        events: [
          ...rec.events,
          { at: Date.now() - Date.parse(rec.requestedAt), type: 'recovery', message: found.reason },
        ],
        recovery: { outcome: found.outcome, at, source: found.source, destination: found.destination },
      };
      await writeJsonAtomic(this.file(id), next);
      return next;
    });
  }

  async requestCancel(id: string): Promise<void> {
    await ensureDir(this.dir);
    await fs.promises.writeFile(this.cancelFile(id), new Date().toISOString(), { mode: 0o600 });
  }

  cancelRequested(id: string): boolean {
    return fs.existsSync(this.cancelFile(id));
  }

  async clearCancel(id: string): Promise<void> {
    await fs.promises.rm(this.cancelFile(id), { force: true });
  }
}

/** Queued or running, and the Ferry process running it is gone. */
export function isAbandoned(rec: MigrationRecord): boolean {
  if ((rec.status !== 'running' && rec.status !== 'queued') || rec.ownerPid === undefined) return false;
  return !processAlive(rec.ownerPid);
}

export function abandonedReason(rec: MigrationRecord): string {
  return `abandoned: the Ferry process running it (pid ${rec.ownerPid}) ended during phase ${rec.phase}`;
}

/** A record still "running" whose Ferry process is gone was abandoned: say so rather than "running". */
function settle(rec: MigrationRecord): MigrationRecord {
  if (!isAbandoned(rec)) return rec;
  return { ...rec, status: 'failed', reason: abandonedReason(rec) };
}
