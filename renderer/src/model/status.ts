// What the VM table's Status column says about a VM that is being moved.
import type { QueueEntry, VmSummary } from '../../../engine/api/index.js';

export interface MoveStatusInput {
  state: 'queued' | 'running' | 'completed' | 'failed' | 'cancelled' | 'refused';
  to: string | null;
  phase: number;
  pass: number;
  queuePosition: number | null;
  /** Storage-only moves have no phases: their progress is the disk copy. */
  kind?: 'live' | 'storage';
  copiedPct?: number | null;
}

/** Percent of all disks copied, from storage-copy progress (null before the first report). */
export function copiedPercent(disks: readonly { copied: number; total: number }[]): number | null {
  const total = disks.reduce((a, d) => a + d.total, 0);
  if (total <= 0) return null;
  return Math.min(100, Math.floor((disks.reduce((a, d) => a + d.copied, 0) / total) * 100));
}

export function moveStatusText(m: MoveStatusInput): string {
  if (m.state === 'queued') return `Move queued${m.queuePosition ? ` (position ${m.queuePosition})` : ''}`;
  if (m.kind === 'storage') {
    return `Moving storage${m.copiedPct !== null && m.copiedPct !== undefined ? ` — ${m.copiedPct}% copied` : ''}`;
  }
  const where = m.to ? ` to ${m.to}` : '';
  if (m.phase < 1) return `Moving${where} — checking`;
  // The pass count only means something while memory is being copied.
  const pass = m.phase >= 2 && m.pass > 0 ? `, pass ${m.pass}` : '';
  return `Moving${where} — phase ${m.phase}${pass}`;
}

export function vmStatusText(vm: VmSummary, move: MoveStatusInput | null): string {
  if (move && (move.state === 'queued' || move.state === 'running')) return moveStatusText(move);
  if (vm.state === 'crashed' && vm.reason) return vm.reason;
  return vm.reason ?? '';
}

/** A queue entry (for moves another Ferry process runs) as a status input. */
export function queueStatus(q: QueueEntry): MoveStatusInput {
  return {
    state: q.state,
    to: q.to,
    phase: q.phase,
    pass: 0,
    queuePosition: q.state === 'queued' ? q.position : null,
  };
}
