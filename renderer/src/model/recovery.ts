// A move whose Ferry process ended after the switch-over and that the next look could not settle: the
// history keeps what each host had of the VM as a sentence (engine/host/local/recovery.ts, describeCopy).
// The "Resolve…" dialog shows those facts as labelled rows; a sentence in another form is shown as it is.
import type { MigrationListItem } from '../../../engine/api/index.js';

export type Recovery = NonNullable<MigrationListItem['recovery']>;

/** Whether a past move waits for the administrator (the console's "needs you"). */
export function needsAdministrator(m: Pick<MigrationListItem, 'recovery'> | null | undefined): boolean {
  return m?.recovery?.outcome === 'needs-administrator';
}

export interface FactRow {
  key: 'vm' | 'qemu' | 'run-state' | 'migration' | 'configuration' | 'same-vm' | 'note';
  label: string;
  value: string;
}

export interface CopyFactsView {
  /** The host the sentence is about, when it names one. */
  host: string | null;
  role: 'source' | 'destination' | null;
  /** What the VM is on that host: running, paused, or absent (no QEMU runs it). */
  presence: 'running' | 'paused' | 'absent' | 'unknown';
  rows: FactRow[];
  /** The sentence as recorded, for when it could not be read into rows. */
  text: string;
}

/** QEMU's run states (query-status), in words. */
const RUN_STATES: Record<string, string> = {
  running: 'Running',
  paused: 'Paused',
  postmigrate: 'Paused, its memory sent (post-migrate)',
  inmigrate: 'Waiting for the incoming migration',
  'finish-migrate': 'Paused, finishing the migration',
  prelaunch: 'Not started yet (prelaunch)',
  suspended: 'Suspended by the guest',
  shutdown: 'Shut down',
  'io-error': 'Paused on a disk I/O error',
  'internal-error': 'Stopped on an internal error',
  'guest-panicked': 'The guest panicked',
  watchdog: 'Stopped by the watchdog',
  'restore-vm': 'Restoring a saved state',
  'save-vm': 'Saving its state',
  debug: 'Stopped in the debugger',
  colo: 'Paused for COLO',
  'not answering': 'Not answering its monitor',
};

/** QEMU's migration states (query-migrate), in words. */
const MIGRATION_STATES: Record<string, string> = {
  none: 'None',
  setup: 'Setting up',
  active: 'In progress',
  'pre-switchover': 'Before the switch-over',
  device: 'Copying the device state',
  'wait-unplug': 'Waiting for devices to unplug',
  'postcopy-active': 'Post-copy in progress',
  'postcopy-paused': 'Post-copy paused (its link was lost)',
  'postcopy-recover-setup': 'Post-copy recovering',
  'postcopy-recover': 'Post-copy recovering',
  completed: 'Completed',
  failed: 'Failed',
  cancelling: 'Cancelling',
  cancelled: 'Cancelled',
  colo: 'COLO',
};

const PRESENCE_LABELS: Record<CopyFactsView['presence'], string> = {
  running: 'Running',
  paused: 'Paused',
  absent: 'Absent: no QEMU runs it',
  unknown: 'Unknown: its QEMU does not answer',
};

export const runStateLabel = (s: string): string => RUN_STATES[s] ?? s;
export const migrationStateLabel = (s: string): string => MIGRATION_STATES[s] ?? s;

const row = (key: FactRow['key'], label: string, value: string): FactRow => ({ key, label, value });

/** One host's facts, read from the sentence the history keeps. */
export function copyFacts(text: string): CopyFactsView {
  const view: CopyFactsView = { host: null, role: null, presence: 'unknown', rows: [], text };
  const head = /^(\S+) \((source|destination)\): (.*)$/s.exec(text.trim());
  if (!head) return view;
  view.host = head[1]!;
  view.role = head[2] as 'source' | 'destination';
  const rest = head[3]!;

  const gone = /^no QEMU runs \S+; (.*)$/s.exec(rest);
  if (gone) {
    const cfg = gone[1]!;
    view.presence = 'absent';
    view.rows.push(row('vm', 'VM', PRESENCE_LABELS.absent), row('qemu', 'QEMU process', 'Not running'));
    view.rows.push(
      row(
        'configuration',
        'Configuration',
        cfg.startsWith('its configuration of')
          ? 'Committed (this host owns the VM)'
          : cfg.startsWith('only an uncommitted incoming configuration')
            ? 'Incoming only, not committed'
            : cfg.startsWith('no configuration')
              ? 'None'
              : cfg,
      ),
    );
    return view;
  }

  const alive = /^QEMU pid (\d+) (.*)$/s.exec(rest);
  if (!alive) return view;
  const [state, ...notes] = alive[2]!.split(', ');
  const runState = state!.trim();
  view.presence = runState === 'running' ? 'running' : runState === 'not answering' ? 'unknown' : 'paused';
  view.rows.push(
    row('vm', 'VM', PRESENCE_LABELS[view.presence]),
    row('qemu', 'QEMU process', `Alive (pid ${alive[1]})`),
    row('run-state', 'Run state', runStateLabel(runState)),
  );
  let committed = true;
  let sameVm = true;
  for (const n of notes) {
    const mig = /^(incoming|outgoing) migration (.+)$/.exec(n);
    if (mig) {
      view.rows.push(row('migration', `Migration (${mig[1]})`, migrationStateLabel(mig[2]!.trim())));
    } else if (n === 'configuration not committed') committed = false;
    else if (n === 'a different VM (UUID)') sameVm = false;
    else view.rows.push(row('note', 'Note', n));
  }
  // The sentence leaves out a migration state of none, and one QEMU did not give (it did not answer).
  if (!view.rows.some((r) => r.key === 'migration'))
    view.rows.push(row('migration', 'Migration', view.presence === 'unknown' ? 'Unknown' : 'None'));
  if (view.role === 'destination')
    view.rows.push(
      row(
        'configuration',
        'Configuration',
        committed ? 'Committed (this host owns the VM)' : 'Incoming only, not committed',
      ),
    );
  // The source's copy is the VM by definition; the destination's may be another VM of that name.
  if (view.role === 'destination' || !sameVm)
    view.rows.push(row('same-vm', 'Same VM', sameVm ? 'Yes (same UUID)' : 'No: a different VM (UUID)'));
  return view;
}

/** Whether the move was in post-copy: then each host holds part of the VM's newest state. */
export function inPostcopy(facts: CopyFactsView): boolean {
  return facts.rows.some((r) => r.key === 'migration' && r.value.startsWith('Post-copy'));
}
