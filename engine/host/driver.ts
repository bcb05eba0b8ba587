// The host seam (after libvirt's driver table): everything Ferry asks of a host goes through this
// interface, with plain serializable arguments and results, so a host on another machine is just another
// implementation behind an authenticated agent. No implementation shares in-process state with another.
import type {
  CreateVmRequest,
  HostFacts,
  HostRecord,
  HostSettings,
  VmConfig,
  VmInfo,
  VmSummary,
} from '../api/index.js';

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

export interface HostDriver {
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
