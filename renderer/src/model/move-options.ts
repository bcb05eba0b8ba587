// How a move's options read in the progress view and the history (what it really ran with), and what
// the wizard's Summary can tell of them before the move from the pre-flight report.
import type { MoveKind, MoveOptions, PreflightReport } from '../../../engine/api/index.js';
import { PERFORMANCE_LABELS } from './format.js';

/**
 * The performance option with its method: "Compression: zstd, 4 channels" (multifd), "Compression:
 * xbzrle" (libvirt before 9.4: changed bytes of pages sent before, over one connection), "TCP/IP".
 */
export function performanceText(o: Pick<MoveOptions, 'performance' | 'compression' | 'channels'>): string {
  const label = PERFORMANCE_LABELS[o.performance];
  if (o.performance === 'compression') {
    if (o.compression === 'xbzrle') return `${label}: xbzrle`;
    return `${label}${o.compression ? `: ${o.compression}` : ''}, ${o.channels} channels`;
  }
  if (o.performance === 'multichannel') return `${label}, ${o.channels} channels`;
  return label;
}

/** The options line above a move's phases. */
export function moveOptionsText(o: MoveOptions, kind: MoveKind): string {
  const bandwidth = o.bandwidthMiBs === null ? 'no bandwidth limit' : `limit ${o.bandwidthMiBs} MiB/s`;
  if (kind === 'storage') return bandwidth;
  return [
    performanceText(o),
    bandwidth,
    `downtime target ${o.downtimeMs} ms`,
    `policy ${o.convergence}`,
  ].join(' · ');
}

/** Whether the migration stream was encrypted; null when the move does not say (Ferry's own hosts). */
export function encryptionText(o: Pick<MoveOptions, 'encrypted'> | null): string | null {
  if (!o || o.encrypted === undefined) return null;
  return o.encrypted ? 'Encrypted (TLS)' : 'Not encrypted';
}

const has = (items: { code: string }[], code: string): boolean => items.some((i) => i.code === code);

/**
 * The Summary's Encryption row for a move between libvirt hosts, from the pre-flight report (the
 * engine decides: TLS when both hosts have migration certificates and the settings allow it).
 */
export function plannedEncryptionText(report: PreflightReport | null): string {
  if (!report) return 'checking…';
  if (has(report.errors, 'encryption-unavailable'))
    return 'Required, but migration TLS certificates are missing (see below)';
  if (has(report.warnings, 'unencrypted')) return 'Not encrypted (see below)';
  // A move blocked for another reason may not have got as far as the TLS check.
  if (report.errors.length > 0) return '—';
  return 'Encrypted (TLS)';
}

/** The Summary's performance row once the report says Compression falls back to xbzrle. */
export function plannedPerformanceText(base: string, report: PreflightReport | null): string {
  if (report && has(report.warnings, 'compression-xbzrle'))
    return 'Compression: xbzrle (one connection; this libvirt has no multifd compression)';
  return base;
}

/**
 * How long the memory copy took: phases 2 and 3 (between libvirt hosts the later pre-copy passes run in
 * phase 3; on Ferry's own hosts phase 3 is the final copy with the VM paused). Null when unknown.
 */
export function memoryCopyMs(phases: readonly { phase: number; ms: number | null }[]): number | null {
  const ms = phases.filter((p) => p.phase === 2 || p.phase === 3).reduce((a, p) => a + (p.ms ?? 0), 0);
  return ms > 0 ? ms : null;
}
