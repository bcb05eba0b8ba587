// Everything a progress view shows about one move, live or from the history: its phases, the latest
// figures, the charts' plain arrays and whether (and why not) it can still be cancelled.
import { computed, ref, watch, type Ref } from 'vue';
import { errorText } from '../api/errors.js';
import {
  dirtyPoints,
  outlook,
  passBoundaries,
  remainingPoints,
  throughputPoints,
  type PassMark,
  type Point,
} from '../model/chart-data.js';
import { isActive, type LiveMove } from '../model/live-move.js';
import { useMigrationsStore } from '../stores/migrations.js';

export interface ChartSeries {
  throughput: Point[];
  remaining: Point[];
  dirty: Point[];
  passes: PassMark[];
}

/** Why Cancel is unavailable (null: it is available). */
export function cancelUnavailable(m: LiveMove | null): string | null {
  if (!m) return 'loading…';
  if (!isActive(m)) return `the move is over (${m.status})`;
  if (m.phase > 3) {
    return `phase 3 is over: the VM already runs on ${m.to ?? 'the destination'}, so the move can only finish`;
  }
  return null;
}

export function useMigration(id: Ref<string | null>) {
  const store = useMigrationsStore();
  const loadError = ref<string | null>(null);

  const move = computed<LiveMove | null>(() => (id.value ? (store.moves[id.value] ?? null) : null));

  // A move opened from the history (or joined late) needs its record: samples from before we listened.
  watch(
    id,
    (value) => {
      loadError.value = null;
      if (!value) return;
      const m = store.moves[value];
      if (m?.hydrated) return;
      store.load(value).catch((err: unknown) => {
        // A move started a moment ago may not be in the history yet; its events keep the view going.
        if (!store.moves[value]) loadError.value = errorText(err);
      });
    },
    { immediate: true },
  );

  /** Rebuilt when a sample arrives; plain arrays, so Chart.js never walks a reactive proxy. */
  const series = computed<ChartSeries>(() => {
    const m = move.value;
    void m?.sampleCount; // the dependency: samples themselves are not reactive
    const samples = m ? m.samples.slice() : [];
    return {
      throughput: throughputPoints(samples),
      remaining: remainingPoints(samples),
      dirty: dirtyPoints(samples),
      passes: passBoundaries(samples),
    };
  });

  const last = computed(() => move.value?.lastSample ?? null);
  const eta = computed(() => outlook(last.value, move.value?.options ?? null));
  const cancelReason = computed(() => cancelUnavailable(move.value));

  return { move, series, last, eta, cancelReason, loadError };
}
