// Every move, successful or not, kept under FERRY_HOME/migrations/ with its options, phase timings,
// samples (for the charts), outcome and reason. A cancel request from another process is a file beside
// the record, so `ferry cancel` works from any shell.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { FerryError, MigrationRecordSchema, type MigrationRecord } from '../api/index.js';
import { ensureDir, readJson, writeJsonAtomic } from '../host/store.js';
import { processAlive } from '../qemu/process.js';

export class History {
  constructor(readonly dir: string) {}

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
    const rec = await readJson(this.file(id), MigrationRecordSchema);
    if (!rec) throw new FerryError('unknown-migration', `no migration with id ${id} (see: ferry migrations)`);
    return settle(rec);
  }

  /** Newest first. */
  async list(): Promise<MigrationRecord[]> {
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

  async requestCancel(id: string): Promise<void> {
    await ensureDir(this.dir);
    await fs.promises.writeFile(this.cancelFile(id), new Date().toISOString());
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
