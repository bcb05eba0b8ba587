// The host seam (after libvirt's driver table): everything Ferry asks of a host goes through this
// interface, with plain serializable arguments and results, so a host on another machine is just another
// implementation behind an authenticated agent. No implementation shares in-process state with another.
import type {
  CreateVmRequest,
  Disk,
  HostFacts,
  HostRecord,
  HostSettings,
  VmConfig,
  VmInfo,
  VmSummary,
} from '../api/index.js';
import type { MigrationStats } from '../qemu/migration.js';

export interface StopOptions {
  /** Skip the graceful ACPI power-down and turn the VM off at once. */
  force: boolean;
  /** How long a graceful shut-down may take before the VM is turned off. */
  timeoutMs: number;
}

export interface SerialChunk {
  text: string;
  /** Byte offset to pass next time to read only what is new. */
  next: number;
}

export interface HostDriver extends MigrationDriver {
  readonly name: string;
  readonly record: HostRecord;

  facts(): Promise<HostFacts>;
  settings(): Promise<HostSettings>;
  updateSettings(patch: Partial<HostSettings>): Promise<HostSettings>;

  listVms(): Promise<VmSummary[]>;
  hasVm(name: string): Promise<boolean>;
  vmInfo(name: string): Promise<VmInfo>;
  vmConfig(name: string): Promise<VmConfig>;
  /** Creates the VM's configuration and new disks. Name uniqueness across hosts is the inventory's job. */
  defineVm(req: CreateVmRequest): Promise<VmInfo>;
  startVm(name: string): Promise<VmSummary>;
  pauseVm(name: string): Promise<VmSummary>;
  resumeVm(name: string): Promise<VmSummary>;
  stopVm(name: string, opts: StopOptions): Promise<VmSummary>;
  /** Removes the VM with the disks Ferry created for it; a running VM is refused. */
  deleteVm(name: string): Promise<void>;
  readSerial(name: string, from: number): Promise<SerialChunk>;
}

/** What the destination needs to start the skeleton VM and listen (libvirt's Prepare). */
export interface IncomingRequest {
  migrationId: string;
  config: VmConfig;
  capabilities: Record<string, boolean>;
  parameters: Record<string, unknown>;
  scheme: 'tcp' | 'rdma';
  /**
   * Shared-nothing: create these disks here (empty, same format and virtual size; `config` already
   * names them) and export them over NBD on the migration address for the source to mirror into.
   */
  newDisks?: Disk[];
}

export interface NbdTarget {
  host: string;
  port: number;
  /** Export name per disk id. */
  exports: { id: string; name: string }[];
}

/** One disk's copy job, as QEMU reports it. */
export interface DiskJob {
  id: string;
  copied: number;
  total: number;
  /** In sync: every new write goes to both sides. */
  ready: boolean;
  status: string;
  error: string | null;
}

export interface StorageMoveResult {
  disks: { id: string; from: string; to: string }[];
  /** Times QEMU stopped the vCPUs during the move (a storage move should never pause the VM). */
  pauses: number;
}

export interface OutgoingStats extends MigrationStats {
  downtimeLimitMs: number;
  /** Epoch ms of QEMU's STOP event on the source during this migration (vCPUs paused for cut-over). */
  stoppedAt: number | null;
}

/**
 * A short look at a running VM's memory, for the estimate before a move (Ferry's own hosts): QEMU's
 * dirty-rate calculation in page-sampling mode, and a sample of its memory pages.
 */
export interface MemoryMeasurement {
  /** Distinct bytes the guest dirtied a second over the window (QEMU reports whole MiB/s). */
  dirtyBytesPerSec: number;
  /** QEMU 7.2 measures in whole seconds. */
  windowS: number;
  /** 0..1: sampled pages that are all zeros. */
  zeroPageRatio: number;
  /** Uncompressed ÷ deflate level 1 size of the sampled non-zero pages (1 when all were zero). */
  compressionRatio: number;
  sampledBytes: number;
  /** Epoch ms the measurement ended. */
  at: number;
}

export interface StorageHandle {
  disks: { id: string; file: string; attached: boolean; writable: boolean }[];
  /** The destination VM's run state (paused until Online). */
  runState: string;
}

export interface FileIdentity {
  path: string;
  exists: boolean;
  device: number;
  inode: number;
  size: number;
  /** A block or character device is a physical (pass-through) disk, not a virtual one. */
  kind: 'file' | 'device' | 'other' | 'missing';
}

/**
 * The migration half of the host seam: the source's Begin/Perform/Confirm and the destination's
 * Prepare/Finish, after libvirt's migration protocol. Each step has a defined rollback, which is how
 * "exactly one running copy" is kept.
 */
export interface MigrationDriver {
  // source
  beginOutgoing(name: string, migrationId: string, peer: string): Promise<VmConfig>;
  startOutgoing(
    name: string,
    req: { capabilities: Record<string, boolean>; parameters: Record<string, unknown>; uri: string },
  ): Promise<void>;
  outgoingStats(name: string): Promise<OutgoingStats>;
  /** Waits up to timeoutMs for QEMU's next MIGRATION status event (a long poll, so a pause at
   * pre-switchover is answered at once rather than at the next poll). */
  nextMigrationEvent(name: string, timeoutMs: number): Promise<string | null>;
  setOutgoingParameters(name: string, parameters: Record<string, unknown>): Promise<void>;
  continueOutgoing(name: string): Promise<void>;
  startPostcopy(name: string): Promise<void>;
  /** Cancels a migration that has not switched over; the VM keeps running here. */
  cancelOutgoing(name: string): Promise<void>;
  /** Takes the VM back after a switch-over whose destination never ran (re-activates the disks). */
  resumeSource(name: string): Promise<void>;
  /** The destination runs the VM: tear down the source QEMU and forget the VM here (and, for a
   * shared-nothing move, delete these disk files). */
  confirmOutgoing(name: string, deleteDisks?: string[]): Promise<void>;
  /** Shared-nothing: mirror every disk into the destination's NBD exports (full copy, then writes to both). */
  startDiskMirror(name: string, target: NbdTarget, speedMiBs: number | null): Promise<void>;
  diskJobs(name: string): Promise<DiskJob[]>;
  /** At the cut-over (vCPUs paused): end the mirrors so the destination holds the last state. */
  finishDiskMirror(name: string): Promise<void>;
  abortDiskMirror(name: string): Promise<void>;
  // storage-only move on this host (R4)
  startStorageMove(
    name: string,
    targets: { id: string; path: string }[],
    speedMiBs: number | null,
  ): Promise<void>;
  storageMoveJobs(name: string): Promise<DiskJob[]>;
  /** Pivots the running VM onto the copies, records the new paths, deletes the old files. */
  completeStorageMove(name: string): Promise<StorageMoveResult>;
  /** Stops the copy and removes the new files; the VM keeps its disks. */
  abortStorageMove(name: string): Promise<void>;
  freeSpace(dirs: string[]): Promise<{ dir: string; freeBytes: number }[]>;
  // destination
  prepareIncoming(req: IncomingRequest): Promise<{ uri: string; nbd: NbdTarget | null }>;
  incomingRunState(name: string): Promise<string>;
  storageHandle(name: string): Promise<StorageHandle>;
  /** Commits the configuration here and resumes the VM; returns the epoch ms it resumed at. */
  finishIncoming(name: string): Promise<{ resumedAt: number }>;
  announce(name: string): Promise<void>;
  /** Kills the skeleton and removes what Prepare created (never shared disks). */
  abortIncoming(name: string): Promise<void>;
  // files, for the shared-storage checks
  statFiles(paths: string[]): Promise<FileIdentity[]>;
  writeMarker(dir: string, token: string): Promise<string>;
  readMarker(file: string): Promise<string | null>;
  removeFile(file: string): Promise<void>;
}
