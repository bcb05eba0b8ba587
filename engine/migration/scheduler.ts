// Per-host limits on simultaneous moves (R5: "simultaneous live migrations" and "simultaneous storage
// migrations", counted on the source and on the destination), with a FIFO queue. The table lives in
// FERRY_HOME under a lock, so the limits hold across every Ferry process using it.
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { z } from 'zod';
import { MoveKindSchema, type MoveKind, type QueueEntry } from '../api/index.js';
import { readJson, withLock, writeJsonAtomic } from '../host/store.js';
import { processAlive } from '../qemu/process.js';

const EntrySchema = z.object({
  id: z.string(),
  vm: z.string(),
  from: z.string(),
  to: z.string(),
  kind: MoveKindSchema,
  state: z.enum(['queued', 'running']),
  pid: z.number().int(),
  phase: z.number().int().default(0),
});
type Entry = z.infer<typeof EntrySchema>;
const TableSchema = z.object({ entries: z.array(EntrySchema) });

export type Limits = (host: string) => Promise<{ live: number; storage: number }>;

/** Which limit a move counts against, on which hosts. */
function demand(e: Pick<Entry, 'kind' | 'from' | 'to'>): { host: string; slot: 'live' | 'storage' }[] {
  if (e.kind === 'storage') return [{ host: e.from, slot: 'storage' }];
  return e.from === e.to
    ? [{ host: e.from, slot: 'live' }]
    : [
        { host: e.from, slot: 'live' },
        { host: e.to, slot: 'live' },
      ];
}

export class Scheduler {
  constructor(
    private readonly home: string,
    private readonly limits: Limits,
  ) {}

  private get file(): string {
    return path.join(this.home, 'scheduler.json');
  }

  private async update<T>(fn: (entries: Entry[]) => Promise<T> | T): Promise<T> {
    return withLock(path.join(this.home, 'scheduler'), async () => {
      const table = (await readJson(this.file, TableSchema)) ?? { entries: [] };
      // Moves whose Ferry process died hold no slot.
      const entries = table.entries.filter((e) => processAlive(e.pid));
      const result = await fn(entries);
      await writeJsonAtomic(this.file, { entries });
      return result;
    });
  }

  /**
   * Waits for a slot. Queued moves start in the order they were asked for: a move may start only if
   * its hosts have room and no earlier queued move is waiting for one of the same hosts.
   */
  async acquire(
    e: { id: string; vm: string; from: string; to: string; kind: MoveKind },
    hooks: { onQueued: (position: number) => void; cancelled: () => boolean },
  ): Promise<void> {
    await this.update((entries) => void entries.push({ ...e, state: 'queued', pid: process.pid, phase: 0 }));
    let lastPosition = 0;
    for (;;) {
      const outcome = await this.update(async (entries) => {
        const me = entries.find((x) => x.id === e.id);
        if (!me) return { started: false, position: 0, gone: true };
        if (hooks.cancelled()) {
          entries.splice(entries.indexOf(me), 1);
          return { started: false, position: 0, gone: true };
        }
        const used = new Map<string, number>();
        for (const r of entries.filter((x) => x.state === 'running')) {
          for (const d of demand(r))
            used.set(`${d.host}/${d.slot}`, (used.get(`${d.host}/${d.slot}`) ?? 0) + 1);
        }
        const blocked = new Set<string>();
        for (const q of entries.filter((x) => x.state === 'queued')) {
          const needs = demand(q);
          let fits = true;
          for (const d of needs) {
            const cap = (await this.limits(d.host))[d.slot];
            if ((used.get(`${d.host}/${d.slot}`) ?? 0) >= cap || blocked.has(`${d.host}/${d.slot}`))
              fits = false;
          }
          if (q.id === e.id) {
            if (fits) {
              q.state = 'running';
              return { started: true, position: 0, gone: false };
            }
            const position = entries.filter((x) => x.state === 'queued').indexOf(q) + 1;
            return { started: false, position, gone: false };
          }
          // An earlier move that cannot start yet keeps its hosts for itself (FIFO, no overtaking).
          if (!fits) for (const d of needs) blocked.add(`${d.host}/${d.slot}`);
        }
        return { started: false, position: 0, gone: true };
      });
      if (outcome.started) return;
      if (outcome.gone) throw new QueueCancelled();
      if (outcome.position !== lastPosition) {
        lastPosition = outcome.position;
        hooks.onQueued(outcome.position);
      }
      await sleep(150);
    }
  }

  async setPhase(id: string, phase: number): Promise<void> {
    await this.update((entries) => {
      const me = entries.find((x) => x.id === id);
      if (me) me.phase = phase;
    });
  }

  async release(id: string): Promise<void> {
    await this.update((entries) => {
      const i = entries.findIndex((x) => x.id === id);
      if (i >= 0) entries.splice(i, 1);
    });
  }

  async list(): Promise<QueueEntry[]> {
    return this.update((entries) => {
      let position = 0;
      return entries.map((e) => ({
        id: e.id,
        vm: e.vm,
        from: e.from,
        to: e.to,
        kind: e.kind,
        state: e.state,
        position: e.state === 'queued' ? ++position : 0,
        phase: e.phase,
      }));
    });
  }
}

export class QueueCancelled extends Error {
  constructor() {
    super('cancelled while queued');
  }
}
