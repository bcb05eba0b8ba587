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

/** What `migrate` needs: QEMU's last outgoing migration over, and its clean-up done. */
export interface OutgoingState {
  status: string;
  error: string | null;
  /**
   * QEMU's clean-up of the last outgoing migration has run: the migration's yank instance is gone. It
   * is registered by `migrate` and removed last by migrate_fd_cleanup; while it is there a new
   * `migrate` fails with "duplicate yank instance".
   */
  cleanedUp: boolean;
}

interface QmpLike {
  execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs?: number): Promise<T>;
}

/** Statuses in which no outgoing migration runs (a `completed` source has handed its VM over). */
const OVER = new Set(['none', 'failed', 'cancelled', 'completed']);

export async function outgoingState(qmp: QmpLike): Promise<OutgoingState> {
  const q = parseQueryMigrate(await qmp.execute('query-migrate'));
  // query-yank is there since QEMU 6.0; without it, nothing tells a clean-up that never ran.
  const yank = await qmp.execute<{ type: string }[]>('query-yank').catch(() => []);
  return { status: q.status, error: q.error, cleanedUp: !yank.some((y) => y.type === 'migration') };
}

/** A new migration can start from here. */
export function isSettled(s: OutgoingState): boolean {
  return OVER.has(s.status) && s.cleanedUp;
}

/**
 * QEMU 7.2 bug, seen here as a source stuck for good after its destination vanished mid-move with
 * multifd (Compression, Multichannel). When one multifd send channel fails (the peer's reset),
 * multifd_send_terminate_threads() sets `exiting` and wakes every channel; a channel that then sees
 * `exiting` before taking its pending SYNC job leaves without posting its sem_sync (only a channel whose
 * own write failed posts it), so the migration thread waits in multifd_send_sync_main() for ever
 * (migration/multifd.c of 7.2.22: the `exiting` check at the top of multifd_send_thread's loop, the
 * `ret != 0` posts at its end; gdb shows live_migration in qemu_sem_wait from multifd_send_sync_main).
 * The status says failed (set by the failing channel), but migrate_fd_cleanup never runs, so the
 * migration's yank instance stays registered: the next `migrate` resets the state to setup and is
 * refused ("duplicate yank instance"), and a migrate_cancel then turns that setup into a "cancelling"
 * nothing ever completes. Reworked upstream for QEMU 9.0 (Peter Xu's multifd series:
 * "multifd_send_kick_main()", "Drop MultiFDSendParams.quit, cleanup error paths", "Separate SYNC request
 * with normal jobs"). Nothing outside QEMU can post that semaphore: only a new QEMU process migrates
 * again. Ferry keeps the reset away instead (the relay, qemu/relay.ts, and settleOutgoing's order).
 */
export function isBroken(s: OutgoingState): boolean {
  return s.status === 'cancelling' || (!s.cleanedUp && (OVER.has(s.status) || s.status === 'setup'));
}

export interface SettleResult {
  settled: boolean;
  state: OutgoingState;
  /** What was done, in order: "cancel", "yank". */
  steps: string[];
}

/**
 * Ends an outgoing migration that will not complete, so that the VM can move again: `migrate_cancel`
 * while the destination still reads (its channels then finish their jobs and QEMU cleans up at once);
 * if the stream is blocked (a cut link, a frozen peer), `yank` the migration's channels so that every
 * blocked write fails and the migration thread gets out. Only then may the destination be killed: a
 * destination that vanishes while multifd channels are busy can hang QEMU 7.2 (see isBroken).
 */
export async function settleOutgoing(
  qmp: QmpLike,
  opts: { cancelWaitMs?: number; yankWaitMs?: number } = {},
): Promise<SettleResult> {
  const steps: string[] = [];
  const waitSettled = async (ms: number): Promise<OutgoingState> => {
    const deadline = Date.now() + ms;
    for (;;) {
      const st = await outgoingState(qmp);
      if (isSettled(st) || Date.now() > deadline) return st;
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  let st = await outgoingState(qmp);
  if (isSettled(st)) return { settled: true, state: st, steps };
  if (!OVER.has(st.status) && st.status !== 'cancelling') {
    await qmp.execute('migrate_cancel');
    steps.push('cancel');
  }
  st = await waitSettled(opts.cancelWaitMs ?? 2000);
  if (isSettled(st)) return { settled: true, state: st, steps };
  if (!st.cleanedUp) {
    await qmp.execute('yank', { instances: [{ type: 'migration' }] });
    steps.push('yank');
    st = await waitSettled(opts.yankWaitMs ?? 3000);
  }
  return { settled: isSettled(st), state: st, steps };
}

/** The pre-flight's words for a source QEMU that isBroken(): what it means and the way out. */
export function brokenMigrationMessage(vm: string): string {
  return (
    `this VM's QEMU still holds a broken migration; it can move again after a restart (shut down and start, ` +
    `or turn off and start if the guest does not shut down): ferry vm stop ${vm}, then ferry vm start ${vm}. ` +
    `Until then ${vm} keeps running where it is`
  );
}
