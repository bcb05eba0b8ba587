// How figures read in the console: sizes in MiB/GiB, durations a person can take in at a glance.
export const MiB = 1024 * 1024;

export function mib(bytes: number): number {
  return bytes / MiB;
}

export function formatMiB(bytes: number, digits = 1): string {
  return `${(bytes / MiB).toFixed(digits)} MiB`;
}

export function formatMemory(memoryMiB: number): string {
  return memoryMiB >= 1024 && memoryMiB % 1024 === 0 ? `${memoryMiB / 1024} GiB` : `${memoryMiB} MiB`;
}

export function formatBytes(bytes: number): string {
  if (bytes >= 1024 * MiB) return `${(bytes / (1024 * MiB)).toFixed(2)} GiB`;
  return formatMiB(bytes);
}

export function formatRate(mibPerSec: number): string {
  return `${mibPerSec.toFixed(1)} MiB/s`;
}

/** 350 ms, 4.2 s, 2 min 05 s */
export function formatDuration(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return '—';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  const s = Math.round(ms / 1000);
  return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, '0')} s`;
}

/** Hyper-V Manager's uptime column: hh:mm:ss, with days in front when there are any. */
export function formatUptime(startedAt: string | null, now: number): string {
  if (!startedAt) return '';
  const t = Date.parse(startedAt);
  if (Number.isNaN(t)) return '';
  let s = Math.max(0, Math.floor((now - t) / 1000));
  const days = Math.floor(s / 86400);
  s -= days * 86400;
  const hh = String(Math.floor(s / 3600)).padStart(2, '0');
  const mm = String(Math.floor((s % 3600) / 60)).padStart(2, '0');
  const ss = String(s % 60).padStart(2, '0');
  return `${days > 0 ? `${days}.` : ''}${hh}:${mm}:${ss}`;
}

export function formatTime(iso: string | null): string {
  if (!iso) return '';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? '' : d.toLocaleString();
}

const STATE_LABELS: Record<string, string> = {
  stopped: 'Off',
  starting: 'Starting',
  running: 'Running',
  paused: 'Paused',
  stopping: 'Shutting down',
  migrating: 'Running (moving)',
  incoming: 'Incoming',
  crashed: 'Crashed',
};

export function stateLabel(state: string): string {
  return STATE_LABELS[state] ?? state;
}

export const PERFORMANCE_LABELS = {
  tcp: 'TCP/IP',
  compression: 'Compression',
  multichannel: 'Multichannel',
  rdma: 'RDMA',
} as const;

export const CONVERGENCE_LABELS = {
  'raise-downtime': 'Raise the downtime target',
  throttle: 'Slow the VM down (auto-converge)',
  postcopy: 'Switch to post-copy',
  abort: 'Give up and keep the VM on the source',
} as const;
