// Ferry's own host driver: a host on this machine, which is a state directory plus a QEMU binary. Lab
// hosts are several of these on one machine, each with its own folder and port range.
//
// LocalHost is the HostDriver table: each entry hands the call to the part that does it, split along
// the seam in driver.ts. The parts share one LocalContext (files, settings, facts, runtime records,
// QMP sessions) and nothing else.
import type {
  CreateVmRequest,
  HostFacts,
  HostRecord,
  HostSettings,
  VmConfig,
  VmInfo,
  VmSummary,
} from '../../api/index.js';
import type { OutgoingState } from '../../qemu/migration.js';
import type { QemuCaps } from '../../qemu/probe.js';
import { execFileAsync } from '../../qemu/system.js';
import type {
  MemoryMeasurement,
  DiskJob,
  FileIdentity,
  HostDriver,
  IncomingRequest,
  NbdTarget,
  OutgoingStats,
  SerialChunk,
  StopOptions,
  StorageHandle,
  StorageMoveResult,
} from '../driver.js';
import { LocalContext } from './context.js';
import { Disks } from './disks.js';
import { Lifecycle } from './lifecycle.js';
import { MigrationDestination } from './migration-destination.js';
import { MigrationSource } from './migration-source.js';

export class LocalHost implements HostDriver {
  readonly name: string;
  private readonly ctx: LocalContext;
  private readonly lifecycle: Lifecycle;
  private readonly source: MigrationSource;
  private readonly destination: MigrationDestination;
  private readonly disks: Disks;

  constructor(readonly record: HostRecord) {
    this.name = record.name;
    this.ctx = new LocalContext(record);
    this.destination = new MigrationDestination(this.ctx);
    // Observing a VM removes the skeletons of abandoned incoming moves, hence the destination.
    this.lifecycle = new Lifecycle(this.ctx, this.destination);
    this.source = new MigrationSource(this.ctx);
    this.disks = new Disks(this.ctx);
  }

  // ---- facts and settings (context.ts) ---------------------------------------------------------

  settings(): Promise<HostSettings> {
    return this.ctx.settings();
  }
  updateSettings(patch: Partial<HostSettings>): Promise<HostSettings> {
    return this.ctx.updateSettings(patch);
  }
  /** QEMU's capabilities, cached per binary build (probing starts a QEMU). */
  qemuCaps(): Promise<QemuCaps> {
    return this.ctx.qemuCaps();
  }
  facts(): Promise<HostFacts> {
    return this.ctx.facts();
  }

  // ---- VMs (lifecycle.ts) ----------------------------------------------------------------------

  listVms(): Promise<VmSummary[]> {
    return this.lifecycle.listVms();
  }
  hasVm(name: string): Promise<boolean> {
    return this.ctx.hasVm(name);
  }
  vmInfo(name: string): Promise<VmInfo> {
    return this.lifecycle.vmInfo(name);
  }
  vmConfig(name: string): Promise<VmConfig> {
    return this.ctx.vmConfig(name);
  }
  defineVm(req: CreateVmRequest): Promise<VmInfo> {
    return this.lifecycle.defineVm(req);
  }
  startVm(name: string): Promise<VmSummary> {
    return this.lifecycle.startVm(name);
  }
  pauseVm(name: string): Promise<VmSummary> {
    return this.lifecycle.pauseVm(name);
  }
  resumeVm(name: string): Promise<VmSummary> {
    return this.lifecycle.resumeVm(name);
  }
  stopVm(name: string, opts: StopOptions): Promise<VmSummary> {
    return this.lifecycle.stopVm(name, opts);
  }
  deleteVm(name: string): Promise<void> {
    return this.lifecycle.deleteVm(name);
  }
  readSerial(name: string, from: number): Promise<SerialChunk> {
    return this.lifecycle.readSerial(name, from);
  }

  // ---- migration: source, Begin / Perform / Confirm (migration-source.ts) -----------------------

  beginOutgoing(name: string, migrationId: string, peer: string): Promise<VmConfig> {
    return this.source.beginOutgoing(name, migrationId, peer);
  }
  startOutgoing(
    name: string,
    req: { capabilities: Record<string, boolean>; parameters: Record<string, unknown>; uri: string },
  ): Promise<void> {
    return this.source.startOutgoing(name, req);
  }
  /** The id of the move this VM's QEMU is still marked with here (also one whose mover died), or null. */
  async pendingMove(name: string): Promise<string | null> {
    return (await this.ctx.runtime(name).catch(() => null))?.migration?.id ?? null;
  }

  /** Post-copy link loss (Ferry's own hosts): pause, then resume to the destination's recovery URI. */
  pauseOutgoing(name: string): Promise<void> {
    return this.source.pauseOutgoing(name);
  }
  resumeOutgoing(name: string, uri: string): Promise<void> {
    return this.source.resumeOutgoing(name, uri);
  }
  recoverIncoming(name: string): Promise<string> {
    return this.destination.recoverIncoming(name);
  }
  outgoingStats(name: string): Promise<OutgoingStats> {
    return this.source.outgoingStats(name);
  }
  /** Ferry's own hosts only: whether the skeleton QEMU of an incoming move still runs. */
  incomingAlive(name: string): Promise<boolean> {
    return this.destination.incomingAlive(name);
  }
  /**
   * Ferry's own hosts only (the pre-flight's look at the destination): does a TCP connection from this
   * host's network reach `address`? A refused port counts as reached: something answered. Hosts
   * outside a network namespace share this machine's network and always reach each other.
   */
  async canReach(address: string, port: number): Promise<boolean> {
    const ns = this.record.netns;
    if (!ns) return true;
    const probe =
      `const s=require('net').connect({host:${JSON.stringify(address)},port:${port}});` +
      `s.setTimeout(1500,()=>process.exit(2));s.on('connect',()=>process.exit(0));` +
      `s.on('error',e=>process.exit(e.code==='ECONNREFUSED'?0:3));`;
    try {
      await execFileAsync('ip', ['netns', 'exec', ns, process.execPath, '-e', probe], { timeout: 5000 });
      return true;
    } catch {
      return false;
    }
  }
  /**
   * Ferry's own hosts only: is a TCP connection from this host to address:port still being set up
   * (SYN sent, no answer yet)? A post-copy resume must never connect again while its last connect is
   * pending: QEMU 7.2 aborts on the second connection (migrate_fd_connect: Assertion `!s->cleanup_bh'),
   * and the guest is lost. When `ss` cannot tell, the answer is yes (never risk a second connect).
   */
  async connecting(address: string, port: number): Promise<boolean> {
    const ns = this.record.netns;
    const dst = address.includes(':') ? `[${address}]` : address;
    const ss = ['ss', '-Htn', 'state', 'syn-sent', 'dst', dst, 'dport', '=', `:${port}`];
    try {
      const { stdout } = await execFileAsync(
        ns ? 'ip' : 'ss',
        ns ? ['netns', 'exec', ns, ...ss] : ss.slice(1),
        { timeout: 5000 },
      );
      return stdout.trim().length > 0;
    } catch {
      return true;
    }
  }
  /** Ferry's own hosts only (the estimate): the VM's dirty rate and a sample of its memory. */
  measureMemory(name: string, windowS = 1): Promise<MemoryMeasurement> {
    return this.source.measureMemory(name, windowS);
  }
  /**
   * Ferry's own hosts only (the estimate): the rate this host's traffic leaves at, in bytes/s, when it
   * is a lab host on a shaped link (the token bucket on its side of the link); null when it shares
   * this machine's loopback, where nothing but the streams themselves limits a move.
   */
  async linkRate(): Promise<number | null> {
    const ns = this.record.netns;
    if (!ns) return null;
    return execFileAsync('ip', ['netns', 'exec', ns, 'tc', '-j', 'qdisc', 'show'], { timeout: 5000 })
      .then(({ stdout }) => {
        const qdiscs = JSON.parse(String(stdout)) as { kind?: string; options?: { rate?: number } }[];
        const shaped = qdiscs
          .filter((q) => (q.kind === 'tbf' || q.kind === 'htb') && typeof q.options?.rate === 'number')
          .map((q) => q.options!.rate!);
        return shaped.length ? Math.min(...shaped) : null;
      })
      .catch(() => null);
  }
  /** Ferry's own hosts only (the pre-flight): can QEMU start a new outgoing migration of the VM? */
  outgoingReadiness(name: string): Promise<{ ready: boolean; broken: boolean; state: OutgoingState } | null> {
    return this.source.outgoingReadiness(name);
  }
  nextMigrationEvent(name: string, timeoutMs: number): Promise<string | null> {
    return this.source.nextMigrationEvent(name, timeoutMs);
  }
  setOutgoingParameters(name: string, parameters: Record<string, unknown>): Promise<void> {
    return this.source.setOutgoingParameters(name, parameters);
  }
  continueOutgoing(name: string): Promise<void> {
    return this.source.continueOutgoing(name);
  }
  startPostcopy(name: string): Promise<void> {
    return this.source.startPostcopy(name);
  }
  cancelOutgoing(name: string): Promise<void> {
    return this.source.cancelOutgoing(name);
  }
  resumeSource(name: string): Promise<void> {
    return this.source.resumeSource(name);
  }
  confirmOutgoing(name: string, deleteDisks?: string[]): Promise<void> {
    return this.source.confirmOutgoing(name, deleteDisks);
  }

  // ---- disks: shared-nothing mirror, storage-only moves, files (disks.ts) ------------------------

  startDiskMirror(name: string, target: NbdTarget, speedMiBs: number | null): Promise<void> {
    return this.disks.startDiskMirror(name, target, speedMiBs);
  }
  diskJobs(name: string): Promise<DiskJob[]> {
    return this.disks.diskJobs(name);
  }
  finishDiskMirror(name: string): Promise<void> {
    return this.disks.finishDiskMirror(name);
  }
  abortDiskMirror(name: string): Promise<void> {
    return this.disks.abortDiskMirror(name);
  }
  startStorageMove(
    name: string,
    targets: { id: string; path: string }[],
    speedMiBs: number | null,
  ): Promise<void> {
    return this.disks.startStorageMove(name, targets, speedMiBs);
  }
  storageMoveJobs(name: string): Promise<DiskJob[]> {
    return this.disks.storageMoveJobs(name);
  }
  completeStorageMove(name: string): Promise<StorageMoveResult> {
    return this.disks.completeStorageMove(name);
  }
  abortStorageMove(name: string): Promise<void> {
    return this.disks.abortStorageMove(name);
  }
  freeSpace(dirs: string[]): Promise<{ dir: string; freeBytes: number }[]> {
    return this.disks.freeSpace(dirs);
  }
  statFiles(paths: string[]): Promise<FileIdentity[]> {
    return this.disks.statFiles(paths);
  }
  writeMarker(dir: string, token: string): Promise<string> {
    return this.disks.writeMarker(dir, token);
  }
  readMarker(file: string): Promise<string | null> {
    return this.disks.readMarker(file);
  }
  removeFile(file: string): Promise<void> {
    return this.disks.removeFile(file);
  }

  // ---- migration: destination, Prepare / Finish (migration-destination.ts) ----------------------

  prepareIncoming(req: IncomingRequest): Promise<{ uri: string; nbd: NbdTarget | null }> {
    return this.destination.prepareIncoming(req);
  }
  incomingRunState(name: string): Promise<string> {
    return this.destination.incomingRunState(name);
  }
  storageHandle(name: string): Promise<StorageHandle> {
    return this.destination.storageHandle(name);
  }
  finishIncoming(name: string): Promise<{ resumedAt: number }> {
    return this.destination.finishIncoming(name);
  }
  announce(name: string): Promise<void> {
    return this.destination.announce(name);
  }
  abortIncoming(name: string): Promise<void> {
    return this.destination.abortIncoming(name);
  }
}
