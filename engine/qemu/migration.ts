// QEMU's side of a live migration: which capabilities and parameters each performance option and
// convergence policy needs, and what query-migrate says. Facts from ../shared/notes/qemu-7.2-facts.md.
import { FerryError, type MoveOptions } from '../api/index.js';

/** QEMU's max-bandwidth is always set: its default (128 MiB/s) silently caps a move at about 1 Gbit/s. */
export const UNLIMITED_BANDWIDTH = 2 ** 40; // bytes/s: far above any link

export interface MigrationPlan {
  /** Set on both ends before `migrate` / `migrate-incoming`; fixed for the whole migration. */
  sourceCapabilities: Record<string, boolean>;
  destCapabilities: Record<string, boolean>;
  sourceParameters: Record<string, unknown>;
  destParameters: Record<string, unknown>;
  /** Scheme of the migration URI: tcp, or rdma. */
  scheme: 'tcp' | 'rdma';
}

export function bandwidthBytes(o: MoveOptions): number {
  return o.bandwidthMiBs === null ? UNLIMITED_BANDWIDTH : o.bandwidthMiBs * 1024 * 1024;
}

export function planMigration(o: MoveOptions): MigrationPlan {
  const multifd = o.performance === 'compression' || o.performance === 'multichannel';
  const postcopy = o.convergence === 'postcopy';
  if (multifd && postcopy) {
    // In 7.2 the source reports completed, then the destination aborts and the guest is lost.
    throw new FerryError(
      'bad-input',
      `the postcopy convergence policy cannot be combined with ${o.performance === 'compression' ? 'Compression' : 'Multichannel'} (multifd): in QEMU 7.2 that loses the guest; use TCP/IP or another policy`,
    );
  }
  const shared = { multifd, 'postcopy-ram': postcopy };
  const sourceCapabilities = {
    ...shared,
    events: true,
    'pause-before-switchover': true, // Ferry, not QEMU alone, holds the cut-over moment
    'auto-converge': o.convergence === 'throttle',
    'validate-uuid': true, // the destination must be the same VM
    xbzrle: false,
    compress: false,
  };
  const params: Record<string, unknown> = {};
  if (multifd) {
    params['multifd-channels'] = o.channels;
    params['multifd-compression'] = o.performance === 'compression' ? (o.compression ?? 'zstd') : 'none';
  }
  return {
    sourceCapabilities,
    destCapabilities: { ...shared },
    sourceParameters: {
      ...params,
      'max-bandwidth': bandwidthBytes(o),
      'downtime-limit': o.downtimeMs,
      ...(postcopy ? { 'max-postcopy-bandwidth': 0 } : {}),
      ...(o.convergence === 'throttle'
        ? { 'cpu-throttle-initial': 20, 'cpu-throttle-increment': 10, 'max-cpu-throttle': 99 }
        : {}),
    },
    destParameters: params,
    scheme: o.performance === 'rdma' ? 'rdma' : 'tcp',
  };
}

export function capabilityList(caps: Record<string, boolean>): { capability: string; state: boolean }[] {
  return Object.entries(caps).map(([capability, state]) => ({ capability, state }));
}

export interface MigrationStats {
  status: string;
  transferred: number;
  remaining: number;
  total: number;
  dirtyPagesRate: number;
  pageSize: number;
  /** Completed dirty-bitmap syncs: the pre-copy pass number. */
  passes: number;
  expectedDowntimeMs: number | null;
  downtimeMs: number | null;
  totalTimeMs: number | null;
  throttlePct: number;
  error: string | null;
  postcopyRequests: number;
}

interface QueryMigrate {
  status?: string;
  ram?: {
    transferred?: number;
    remaining?: number;
    total?: number;
    'dirty-pages-rate'?: number;
    'page-size'?: number;
    'dirty-sync-count'?: number;
    'postcopy-requests'?: number;
  };
  'expected-downtime'?: number;
  downtime?: number;
  'total-time'?: number;
  'cpu-throttle-percentage'?: number;
  'error-desc'?: string;
}

export function parseQueryMigrate(r: QueryMigrate): MigrationStats {
  const ram = r.ram ?? {};
  return {
    status: r.status ?? 'none',
    transferred: ram.transferred ?? 0,
    remaining: ram.remaining ?? 0,
    total: ram.total ?? 0,
    dirtyPagesRate: ram['dirty-pages-rate'] ?? 0,
    pageSize: ram['page-size'] ?? 4096,
    passes: ram['dirty-sync-count'] ?? 0,
    expectedDowntimeMs: r['expected-downtime'] ?? null,
    downtimeMs: r.downtime ?? null,
    totalTimeMs: r['total-time'] ?? null,
    throttlePct: r['cpu-throttle-percentage'] ?? 0,
    error: r['error-desc'] ?? null,
    postcopyRequests: ram['postcopy-requests'] ?? 0,
  };
}
