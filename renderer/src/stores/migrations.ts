// Every move this console knows of: live ones kept current from the event stream, past ones from the
// history. Samples stay out of Vue's reactivity (markRaw): a long move has thousands, and charts copy
// them into plain arrays anyway; `sampleCount` is what views watch.
import { defineStore } from 'pinia';
import { computed, markRaw, reactive, ref } from 'vue';
import type {
  CancelResultSchema,
  MigrationEvent,
  MigrationListItem,
  MoveRequest,
  QueueEntry,
  Summary,
  TuneChange,
  TuneResult,
} from '../../../engine/api/index.js';
import type { z } from 'zod';
import { apiClient } from '../api/index.js';
import { errorText } from '../api/errors.js';
import {
  applyEvent,
  hydrate,
  isActive,
  moveFromListItem,
  newMove,
  type LiveMove,
} from '../model/live-move.js';
import { copiedPercent, queueStatus, type MoveStatusInput } from '../model/status.js';

export type FinishedListener = (summary: Summary, move: LiveMove) => void;

function rawSamples(m: LiveMove): LiveMove {
  m.samples = markRaw(m.samples);
  return m;
}

export const useMigrationsStore = defineStore('migrations', () => {
  const moves = reactive<Record<string, LiveMove>>({});
  const history = ref<MigrationListItem[]>([]);
  const queue = ref<QueueEntry[]>([]);
  const error = ref<string | null>(null);
  const finishedListeners = new Set<FinishedListener>();
  const loading = new Map<string, Promise<LiveMove>>();

  function ensure(id: string): LiveMove {
    let m = moves[id];
    if (!m) {
      moves[id] = rawSamples(newMove(id));
      m = moves[id]!;
    }
    return m;
  }

  /** Feeds one engine event in. */
  function applyMigrationEvent(e: MigrationEvent): void {
    const known = e.id in moves;
    const m = ensure(e.id);
    if (!known && e.type !== 'queued' && e.type !== 'started' && e.type !== 'summary') {
      // Joined a move half-way (a reload, or it was started elsewhere): fetch what came before.
      void load(e.id).catch(() => undefined);
    }
    if (!applyEvent(m, e)) return;
    if (e.type === 'summary') {
      for (const fn of finishedListeners) fn(e, m);
      void refresh();
    } else if (e.type === 'queued' || e.type === 'started') {
      void refresh();
    }
  }

  /** The whole record of a move (samples included), merged with what events already brought. */
  function load(id: string): Promise<LiveMove> {
    const running = loading.get(id);
    if (running) return running;
    const p = (async () => {
      try {
        const rec = await apiClient().call('migration', { id });
        moves[id] = rawSamples(hydrate(moves[id] ?? null, rec));
        return moves[id]!;
      } finally {
        loading.delete(id);
      }
    })();
    loading.set(id, p);
    return p;
  }

  async function refresh(): Promise<void> {
    try {
      const api = apiClient();
      const [h, q] = await Promise.all([api.call('listMigrations', {}), api.call('queue', {})]);
      history.value = h;
      queue.value = q;
      error.value = null;
      // Moves this console never saw an event for (another process runs them) still show as moving.
      for (const item of h) {
        const m = moves[item.id];
        if (!m && isActive(item)) moves[item.id] = rawSamples(moveFromListItem(item));
        else if (m && !m.summary && isActive(m) && !isActive(item)) {
          // It ended while this console was not listening (a reconnect): the history has the outcome.
          m.status = item.status;
          m.reason = item.reason;
        }
      }
    } catch (err) {
      error.value = errorText(err);
    }
  }

  async function startMove(req: MoveRequest): Promise<string> {
    const { id } = await apiClient().call('startMove', req);
    const m = ensure(id);
    m.vm ??= req.vm;
    m.to ??= req.to ?? null;
    m.requestedAt ??= new Date().toISOString();
    void refresh();
    return id;
  }

  async function cancel(id: string): Promise<z.infer<typeof CancelResultSchema>> {
    return apiClient().call('cancelMove', { id });
  }

  /** Tunes a running move (phases 2–3); the engine refuses, with the reason, what it cannot do. */
  async function tune(id: string, change: TuneChange): Promise<TuneResult> {
    return apiClient().call('tuneMove', { id, ...change });
  }

  function onFinished(fn: FinishedListener): () => void {
    finishedListeners.add(fn);
    return () => finishedListeners.delete(fn);
  }

  /** Active moves: this console's live ones, plus running/queued ones another process reported. */
  const active = computed<LiveMove[]>(() => {
    const list = Object.values(moves).filter((m) => isActive(m));
    const ids = new Set(list.map((m) => m.id));
    for (const q of queue.value) {
      if (ids.has(q.id)) continue;
      const m = newMove(q.id);
      Object.assign(m, { vm: q.vm, from: q.from, to: q.to, kind: q.kind, status: q.state, phase: q.phase });
      if (q.state === 'queued') m.queuePosition = q.position;
      list.push(m);
    }
    return list.sort((a, b) => a.id.localeCompare(b.id));
  });

  const running = computed(() => active.value.filter((m) => m.status === 'running'));
  const queued = computed(() => active.value.filter((m) => m.status === 'queued'));
  const past = computed(() =>
    history.value
      .filter((h) => !isActive(h) && !(moves[h.id] && isActive(moves[h.id]!)))
      .map((h) => (moves[h.id]?.summary ? { ...h, status: moves[h.id]!.status } : h)),
  );

  /** What the VM table's Status column needs for a VM that is moving or waiting to. */
  function moveStatusFor(vm: string): MoveStatusInput | null {
    const m = active.value.find((x) => x.vm === vm);
    if (m) {
      return {
        state: m.status === 'queued' ? 'queued' : 'running',
        to: m.to,
        phase: m.phase,
        pass: m.pass,
        queuePosition: m.queuePosition,
        kind: m.kind,
        copiedPct: copiedPercent(m.disks),
      };
    }
    const q = queue.value.find((x) => x.vm === vm);
    return q ? queueStatus(q) : null;
  }

  return {
    moves,
    history,
    queue,
    error,
    active,
    running,
    queued,
    past,
    applyMigrationEvent,
    load,
    refresh,
    startMove,
    cancel,
    tune,
    onFinished,
    moveStatusFor,
  };
});
