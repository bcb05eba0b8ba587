// The Move wizard's pages and rules, apart from the components that draw them: which pages a choice
// leads to, why Next or Finish is unavailable, and the MoveRequest the choices add up to.
import type {
  DestinationVerdict,
  HostSettings,
  MoveRequest,
  PreflightReport,
} from '../../../engine/api/index.js';
import {
  CONVERGENCE_LABELS,
  formatBytes,
  formatDuration,
  formatRate,
  MiB,
  PERFORMANCE_LABELS,
} from './format.js';

export type MoveType = 'vm' | 'storage';
/** Choose Move Options, as Hyper-V words them. */
export type StorageOption = 'one-location' | 'per-item' | 'shared';
export type WizardPage = 'begin' | 'type' | 'destination' | 'options' | 'locations' | 'summary';

export const PAGE_TITLES: Record<WizardPage, string> = {
  begin: 'Before You Begin',
  type: 'Choose Move Type',
  destination: 'Specify Destination',
  options: 'Choose Move Options',
  locations: 'Choose Locations',
  summary: 'Summary',
};

export interface WizardDisk {
  id: string;
  path: string;
}

export interface MoveWizardState {
  vm: string;
  source: string;
  disks: WizardDisk[];
  moveType: MoveType;
  destination: string | null;
  option: StorageOption;
  /** one-location: the folder for all of the VM's files. */
  storagePath: string;
  /** per-item: a folder per disk id. */
  diskPaths: Record<string, string>;
  /** Shared-nothing and storage moves: remove the source's files after success. */
  deleteSource: boolean;
}

export function initialState(vm: string, source: string, disks: WizardDisk[]): MoveWizardState {
  return {
    vm,
    source,
    disks,
    moveType: 'vm',
    destination: null,
    // Shared storage is how the lab and most clusters are set up: the VM moves, its files stay.
    option: 'shared',
    storagePath: '',
    diskPaths: Object.fromEntries(disks.map((d) => [d.id, ''])),
    deleteSource: true,
  };
}

export function wizardPages(s: MoveWizardState): WizardPage[] {
  const pages: WizardPage[] = ['begin', 'type', 'destination', 'options'];
  if (s.option !== 'shared') pages.push('locations');
  pages.push('summary');
  return pages;
}

/** Why an option cannot be chosen for this move type (null: it can). */
export function optionUnavailable(option: StorageOption, moveType: MoveType): string | null {
  if (option === 'shared' && moveType === 'storage') {
    return "a storage move moves the VM's files, so it cannot leave them where they are";
  }
  return null;
}

/** Each move type starts from its usual option: a live move leaves shared files, a storage move needs a place. */
export function withMoveType(s: MoveWizardState, moveType: MoveType): MoveWizardState {
  if (moveType === s.moveType) return s;
  return moveType === 'storage'
    ? { ...s, moveType, destination: s.source, option: 'one-location' }
    : { ...s, moveType, destination: null, option: 'shared' };
}

/** Absolute POSIX or Windows folder. */
export function folderProblem(folder: string): string | null {
  const f = folder.trim();
  if (f === '') return 'enter a folder';
  if (!(f.startsWith('/') || /^[A-Za-z]:[\\/]/.test(f))) return 'use a full path, such as /var/lib/ferry/vms';
  return null;
}

export type VerdictLevel = 'ready' | 'warnings' | 'blocked';

export function verdictLevel(report: PreflightReport): VerdictLevel {
  if (report.errors.length > 0) return 'blocked';
  if (report.warnings.length > 0) return 'warnings';
  return 'ready';
}

export function verdictText(report: PreflightReport): string {
  switch (verdictLevel(report)) {
    case 'ready':
      return 'Ready';
    case 'warnings':
      return `Ready, ${report.warnings.length} warning${report.warnings.length > 1 ? 's' : ''}`;
    case 'blocked':
      return `Blocked: ${report.errors.length} error${report.errors.length > 1 ? 's' : ''}`;
  }
}

export interface PageContext {
  verdicts: DestinationVerdict[] | null;
  report: PreflightReport | null;
  checking: boolean;
}

/** Why the page's Next (or, on Summary, Finish) is unavailable; null when it is available. */
export function pageProblem(page: WizardPage, s: MoveWizardState, ctx: PageContext): string | null {
  switch (page) {
    case 'begin':
    case 'type':
      return null;
    case 'destination':
      if (s.moveType === 'storage') return null;
      if (ctx.verdicts === null) return 'checking the hosts…';
      if (ctx.verdicts.length === 0) return 'there is no other host to move to: add a host first';
      return s.destination ? null : 'choose a destination host';
    case 'options':
      return optionUnavailable(s.option, s.moveType);
    case 'locations':
      if (s.option === 'one-location') return folderProblem(s.storagePath);
      for (const d of s.disks) {
        const p = folderProblem(s.diskPaths[d.id] ?? '');
        if (p) return `${d.id}: ${p}`;
      }
      return null;
    case 'summary':
      if (ctx.checking || ctx.report === null) return 'running the pre-flight check…';
      if (ctx.report.errors.length > 0) return 'the pre-flight check found blocking errors (listed above)';
      return null;
  }
}

export function destinationOf(s: MoveWizardState): string | null {
  return s.moveType === 'storage' ? s.source : s.destination;
}

export function buildMoveRequest(s: MoveWizardState): MoveRequest {
  const req: MoveRequest = { vm: s.vm, kind: s.moveType === 'storage' ? 'storage' : 'live' };
  const to = destinationOf(s);
  if (to) req.to = to;
  if (s.moveType === 'vm') req.includeStorage = s.option !== 'shared';
  // Folders only once given: the destination page judges hosts before the locations page is reached.
  if (s.option === 'one-location' && s.storagePath.trim()) req.storagePath = s.storagePath.trim();
  if (s.option === 'per-item') {
    const paths = s.disks.map((d) => [d.id, (s.diskPaths[d.id] ?? '').trim()] as const).filter(([, p]) => p);
    if (paths.length > 0) req.diskPaths = Object.fromEntries(paths);
  }
  if (s.option !== 'shared') req.keepSource = !s.deleteSource;
  return req;
}

/** The request for "Specify Destination": every host judged with what is chosen so far. */
export function destinationsQuery(s: MoveWizardState): Omit<MoveRequest, 'to'> {
  const { to: _to, ...rest } = buildMoveRequest(s);
  return rest;
}

export function optionText(s: MoveWizardState): string {
  switch (s.option) {
    case 'shared':
      return 'Move only the virtual machine: its files stay on storage both hosts share';
    case 'one-location':
      return `Move all of the VM's data to one location: ${s.storagePath.trim()}`;
    case 'per-item':
      return s.disks.length === 0
        ? "Move the VM's data to a location per item (the VM has no virtual disks)"
        : `Move the VM's data to a location per item: ${s.disks
            .map((d) => `${d.id} → ${(s.diskPaths[d.id] ?? '').trim()}`)
            .join(', ')}`;
  }
}

export interface SummaryRow {
  label: string;
  value: string;
}

/** What the Summary page lists; the performance settings come from the source host (it runs the move). */
export function summaryRows(s: MoveWizardState, sourceSettings: HostSettings | null): SummaryRow[] {
  const rows: SummaryRow[] = [
    { label: 'Virtual machine', value: s.vm },
    {
      label: 'Move type',
      value:
        s.moveType === 'vm'
          ? 'Move the virtual machine (live migration)'
          : "Move the virtual machine's storage",
    },
    { label: 'Source host', value: s.source },
    { label: 'Destination host', value: destinationOf(s) ?? '—' },
    { label: 'Storage', value: optionText(s) },
  ];
  if (s.option !== 'shared') {
    rows.push({ label: 'Source files', value: s.deleteSource ? 'Deleted after the move' : 'Kept' });
  }
  if (s.moveType === 'vm' && sourceSettings) {
    const o = sourceSettings;
    const multifd = o.performance === 'compression' || o.performance === 'multichannel';
    rows.push(
      {
        label: 'Performance option',
        value: `${PERFORMANCE_LABELS[o.performance]}${multifd ? ` (${o.channels} channels)` : ''}`,
      },
      { label: 'Bandwidth limit', value: o.bandwidthMiBs === null ? 'None' : `${o.bandwidthMiBs} MiB/s` },
      {
        label: 'Downtime target',
        value: `${o.downtimeMs} ms (may rise to ${Math.max(o.downtimeMs, o.downtimeCeilingMs)} ms)`,
      },
      { label: 'If it does not converge', value: CONVERGENCE_LABELS[o.convergence] },
    );
  }
  return rows;
}

/** The estimate before Finish, as the Summary page shows it (engine/migration/estimate.ts). */
export interface EstimateView {
  converges: boolean;
  /** One line: what to expect, or that it will not converge. */
  headline: string;
  rows: SummaryRow[];
  /** When it will not converge: what would make it. */
  help: string[];
}

const STEP_TEXT = {
  none: 'Yes',
  'raise-downtime': 'Yes, once the downtime target is raised',
  throttle: "Yes, with QEMU slowing the VM's processors",
  postcopy: 'Not by itself: post-copy finishes it',
} as const;

export function estimateView(report: PreflightReport | null): EstimateView | null {
  const e = report?.estimate;
  if (!e) return null;
  const i = e.inputs;
  const linkFrom = {
    'bandwidth-limit': 'the bandwidth limit',
    'lab-link': "the lab's link",
    loopback: 'loopback, no link between the hosts',
  }[i.linkSource];
  const measured = [
    `the VM dirties ${formatRate(i.dirtyBytesPerSec / MiB)}`,
    `link ${formatRate(i.linkBytesPerSec / MiB)} (${linkFrom})`,
    ...(i.compressionRatio > 1 ? [`memory compresses ${i.compressionRatio.toFixed(1)}×`] : []),
    `${Math.round(i.zeroPageRatio * 100)} % of memory is empty`,
  ].join(', ');
  const data =
    e.wireBytes < e.bytes * 0.95
      ? `${formatBytes(e.bytes)} (${formatBytes(e.wireBytes)} over the link)`
      : formatBytes(e.bytes);
  if (!e.converges) {
    return {
      converges: false,
      headline: `The move will not converge with these settings: ${e.message.replace(/^will not converge with the [a-z-]+ policy: /, '')}.`,
      rows: [
        { label: 'Converges', value: 'No' },
        { label: 'Measured', value: measured },
      ],
      help: e.fixes.map((f) => f.message),
    };
  }
  return {
    converges: true,
    headline: `Expected: about ${formatDuration(e.totalMs)} in all, the VM paused for about ${formatDuration(e.downtimeMs)}.`,
    rows: [
      { label: 'Expected total time', value: formatDuration(e.totalMs) },
      { label: 'Expected downtime', value: formatDuration(e.downtimeMs) },
      { label: 'Data to send', value: data },
      { label: 'Converges', value: STEP_TEXT[e.step] },
      { label: 'Measured', value: measured },
    ],
    help: [],
  };
}

/** A destination's estimate in a few words, for Specify Destination; null without one. */
export function estimateShort(report: PreflightReport): string | null {
  const e = report.estimate;
  if (!e) return null;
  if (!e.converges) return 'Estimate: will not converge with these settings';
  return `Estimate: about ${formatDuration(e.totalMs)}, ${formatDuration(e.downtimeMs)} of downtime`;
}
