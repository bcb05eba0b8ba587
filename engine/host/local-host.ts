// A host on this machine: a state directory plus a QEMU binary. Lab hosts are several of these on one
// machine, each with its own folder and port range.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import {
  FerryError,
  HostSettingsSchema,
  VmConfigSchema,
  type CreateVmRequest,
  type Disk,
  type HostFacts,
  type HostRecord,
  type HostSettings,
  type Nic,
  type VmConfig,
  type VmInfo,
  type VmState,
  type VmSummary,
} from '../api/index.js';
import { qemuArgv, type VmRuntimePaths } from '../qemu/argv.js';
import { probeQemu, binaryId, QemuCapsSchema, type QemuCaps } from '../qemu/probe.js';
import {
  connectWhenReady,
  isQemuAlive,
  killQemu,
  processAlive,
  spawnDetached,
  tailOf,
  waitForExit,
} from '../qemu/process.js';
import { QmpClient } from '../qemu/qmp.js';
import {
  cpuIdentity,
  detectAccel,
  diskFreeBytes,
  execFileAsync,
  findQemu,
  findQemuImg,
  hasRdma,
  memoryMiB,
} from '../qemu/system.js';
import type {
  DiskJob,
  NbdTarget,
  StorageMoveResult,
  FileIdentity,
  HostDriver,
  IncomingRequest,
  OutgoingStats,
  SerialChunk,
  StopOptions,
  StorageHandle,
} from './driver.js';
import { setTimeout as sleep } from 'node:timers/promises';
import { capabilityList, parseQueryMigrate } from '../qemu/migration.js';
import {
  cancelMirrors,
  currentNode,
  deleteNodes,
  diskJobs,
  mirrorJobId,
  startMirrors,
  waitJobsGone,
} from '../qemu/block.js';
import { ensureDir, labGuestImage, readJson, socketDir, withLock, writeJsonAtomic } from './store.js';

/** What Ferry remembers about a VM's QEMU process between invocations. */
const RuntimeSchema = z.object({
  pid: z.number().int(),
  qmpSocket: z.string(),
  statusSocket: z.string(),
  startedAt: z.iso.datetime(),
  accel: z.string(),
  /** Set before Ferry stops the VM, so that the exit is not taken for a crash. */
  stopRequested: z.boolean().default(false),
  /** Filled when Ferry first notices that QEMU died on its own. */
  crashedAt: z.iso.datetime().nullable().default(null),
  crashReason: z.string().nullable().default(null),
  /** Set while the VM is the source or the destination of a move. */
  migration: z
    .object({
      id: z.string(),
      role: z.enum(['source', 'destination']),
      peer: z.string(),
      /** The Ferry process running the move: when it is gone the marker is stale. */
      ownerPid: z.number().int(),
      wasRunning: z.boolean(),
    })
    .nullable()
    .default(null),
});
type Runtime = z.infer<typeof RuntimeSchema>;

/** A QMP session held for the length of a migration, with the cut-over moments it saw. */
interface Session {
  qmp: QmpClient;
  /** STOP events seen (a storage-only move must not pause the guest). */
  stops: number;
  stoppedAt: number | null;
  resumedAt: number | null;
  downtimeLimitMs: number;
}

const eventMs = (ev: { timestamp: { seconds: number; microseconds: number } }): number =>
  ev.timestamp.seconds * 1000 + Math.round(ev.timestamp.microseconds / 1000);

function newRuntime(
  pid: number,
  paths: VmRuntimePaths,
  accel: string,
  migration: Runtime['migration'],
): Runtime {
  return {
    pid,
    qmpSocket: paths.qmpSocket,
    statusSocket: paths.statusSocket,
    startedAt: new Date().toISOString(),
    accel,
    stopRequested: false,
    crashedAt: null,
    crashReason: null,
    migration,
  };
}

/** A migration marker whose owning Ferry process died no longer blocks the VM. */
function activeMigration(rt: Runtime | null): Runtime['migration'] {
  const m = rt?.migration ?? null;
  if (!m) return null;
  return processAlive(m.ownerPid) ? m : null;
}

const QMP_STATUS_TIMEOUT_MS = 3000;

/** A storage-only move in progress, kept beside the VM so an abort knows what it made. */
const StoragePlanSchema = z.object({
  targets: z.array(z.object({ id: z.string(), path: z.string(), made: z.boolean(), node: z.string() })),
});
type StoragePlan = z.infer<typeof StoragePlanSchema>;

export class LocalHost implements HostDriver {
  readonly name: string;
  private readonly sessions = new Map<string, Session>();

  constructor(readonly record: HostRecord) {
    this.name = record.name;
  }

  // ---- files -----------------------------------------------------------------------------------

  private get vmsDir(): string {
    return path.join(this.record.stateDir, 'vms');
  }
  private vmDir(name: string): string {
    return path.join(this.vmsDir, name);
  }
  private configPath(name: string): string {
    return path.join(this.vmDir(name), 'vm.json');
  }
  private runtimePath(name: string): string {
    return path.join(this.vmDir(name), 'runtime.json');
  }
  private lockPath(name: string): string {
    return path.join(this.vmDir(name), 'vm');
  }
  private runtimePaths(vm: VmConfig): VmRuntimePaths {
    const sock = socketDir(this.record.stateDir);
    const id = vm.uuid.replace(/-/g, '').slice(0, 12);
    return {
      qmpSocket: path.join(sock, `${id}.qmp`),
      statusSocket: path.join(sock, `${id}.st`),
      serialLog: path.join(this.vmDir(vm.name), 'serial.log'),
      pidFile: path.join(this.vmDir(vm.name), 'qemu.pid'),
      labGuestKernel: labGuestImage(),
    };
  }
  private qemuLog(name: string): string {
    return path.join(this.vmDir(name), 'qemu.log');
  }

  /** QEMU runs in the host's network namespace when it has one (`ip netns exec` keeps the pid). */
  private spawnQemu(binary: string, argv: string[], log: string): Promise<number> {
    const ns = this.record.netns;
    return ns
      ? spawnDetached('ip', ['netns', 'exec', ns, binary, ...argv], log)
      : spawnDetached(binary, argv, log);
  }

  // ---- facts and settings ----------------------------------------------------------------------

  async settings(): Promise<HostSettings> {
    const s = await readJson(path.join(this.record.stateDir, 'settings.json'), HostSettingsSchema);
    return s ?? HostSettingsSchema.parse({ storageRoots: this.defaultStorageRoots() });
  }

  private defaultStorageRoots(): string[] {
    return this.record.kind === 'lab' ? [path.dirname(this.record.vmDir)] : [this.record.vmDir];
  }

  async updateSettings(patch: Partial<HostSettings>): Promise<HostSettings> {
    return withLock(path.join(this.record.stateDir, 'settings'), async () => {
      const next = HostSettingsSchema.parse({ ...(await this.settings()), ...patch });
      await writeJsonAtomic(path.join(this.record.stateDir, 'settings.json'), next);
      return next;
    });
  }

  private async qemuBinary(): Promise<string> {
    return findQemu((await this.settings()).qemuBinary);
  }

  /** QEMU's capabilities, cached per binary build (probing starts a QEMU). */
  async qemuCaps(): Promise<QemuCaps> {
    const binary = await this.qemuBinary();
    const cacheFile = path.join(this.record.stateDir, 'qemu-caps.json');
    const cached = await readJson(cacheFile, QemuCapsSchema).catch(() => null);
    if (cached && cached.binary === binary && cached.binaryId === binaryId(binary)) return cached;
    const caps = await probeQemu(binary);
    await writeJsonAtomic(cacheFile, caps);
    return caps;
  }

  async facts(): Promise<HostFacts> {
    const caps = await this.qemuCaps();
    const accel = detectAccel((await this.settings()).accel);
    const cpu = cpuIdentity();
    const mem = memoryMiB();
    await ensureDir(this.record.vmDir);
    return {
      name: this.name,
      qemuBinary: caps.binary,
      qemuVersion: caps.version,
      accel: accel.accel,
      hardwareVirtualization: accel.hardwareVirtualization,
      accelNote: accel.note,
      cpuVendor: cpu.vendor,
      cpuModel: cpu.model,
      cpuCount: cpu.count,
      memTotalMiB: mem.total,
      memFreeMiB: mem.free,
      diskFreeBytes: await diskFreeBytes(this.record.vmDir),
      machineTypes: caps.machineTypes,
      defaultMachineType: caps.defaultMachineType,
      cpuModels: caps.cpuModels,
      migrationCapabilities: caps.migrationCapabilities,
      multifdCompression: caps.multifdCompression,
      rdma: hasRdma(),
    };
  }

  // ---- VM inventory ----------------------------------------------------------------------------

  async hasVm(name: string): Promise<boolean> {
    return fs.existsSync(this.configPath(name));
  }

  async vmConfig(name: string): Promise<VmConfig> {
    const vm = await readJson(this.configPath(name), VmConfigSchema);
    if (!vm) throw new FerryError('unknown-vm', `no VM named "${name}" on host ${this.name}`);
    return vm;
  }

  private async runtime(name: string): Promise<Runtime | null> {
    return readJson(this.runtimePath(name), RuntimeSchema);
  }

  /**
   * The Ferry process that ran a move died before finishing it. Before the switch-over the source takes
   * the VM back (cancel, resume) and a destination skeleton is removed. After it, nothing is guessed:
   * the VM stays paused with the reason, for the administrator to decide.
   */
  private async recoverAbandonedMove(
    name: string,
    rt: Runtime,
  ): Promise<{ state: VmState; reason: string } | null> {
    const m = rt.migration!;
    return withLock(this.lockPath(name), async () => {
      const cur = await this.runtime(name);
      if (!cur?.migration || cur.migration.id !== m.id || activeMigration(cur)) return null;
      if (m.role === 'destination') {
        const qmp = await QmpClient.connect(cur.statusSocket, { timeoutMs: 3000 }).catch(() => null);
        const status = qmp
          ? (await qmp.execute<{ status: string }>('query-status').catch(() => null))?.status
          : null;
        await qmp?.close();
        if (status === 'running') {
          // Finish resumed it here before the mover died: this host owns the VM.
          await writeJsonAtomic(this.runtimePath(name), { ...cur, migration: null });
          return null;
        }
        await this.abortIncoming(name); // never resumed here: the source still has the VM
        return {
          state: 'stopped' as const,
          reason: `the move ${m.id} was abandoned; its skeleton here was removed`,
        };
      }
      const qmp = await QmpClient.connect(cur.qmpSocket, { timeoutMs: 5000 }).catch(() => null);
      if (!qmp) return null;
      try {
        const st = parseQueryMigrate(await qmp.execute('query-migrate')).status;
        if (st === 'completed' || st.startsWith('postcopy')) {
          return {
            state: 'paused' as const,
            reason: `the move ${m.id} to ${m.peer} was abandoned after the switch-over: check ${m.peer} before resuming this copy`,
          };
        }
        if (st !== 'none' && st !== 'failed' && st !== 'cancelled')
          await qmp.execute('migrate_cancel').catch(() => undefined);
        for (let i = 0; i < 100; i++) {
          const now = parseQueryMigrate(await qmp.execute('query-migrate')).status;
          if (now === 'none' || now === 'failed' || now === 'cancelled') break;
          await sleep(20);
        }
        const run = await qmp.execute<{ status: string }>('query-status');
        if (m.wasRunning && run.status !== 'running') await qmp.execute('cont');
        await writeJsonAtomic(this.runtimePath(name), { ...cur, migration: null });
        return null; // observed afresh below
      } finally {
        await qmp.close();
      }
    });
  }

  /** Destination skeletons of moves whose Ferry process died (they never show as VMs). */
  private async sweepAbandonedIncoming(): Promise<void> {
    let dirs: string[] = [];
    try {
      dirs = await fs.promises.readdir(this.vmsDir);
    } catch {
      return;
    }
    for (const name of dirs) {
      if (!fs.existsSync(path.join(this.vmDir(name), 'incoming.json'))) continue;
      const rt = await this.runtime(name).catch(() => null);
      if (rt?.migration?.role === 'destination' && !activeMigration(rt))
        await this.abortIncoming(name).catch(() => undefined);
    }
  }

  async listVms(): Promise<VmSummary[]> {
    await this.sweepAbandonedIncoming();
    let names: string[] = [];
    try {
      names = (await fs.promises.readdir(this.vmsDir)).filter((n) => fs.existsSync(this.configPath(n)));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    names.sort();
    return Promise.all(names.map(async (n) => this.summary(await this.vmConfig(n))));
  }

  private async summary(vm: VmConfig): Promise<VmSummary> {
    const rt = await this.runtime(vm.name);
    const { state, reason } = await this.observe(vm, rt);
    const live = state !== 'stopped' && state !== 'crashed';
    return {
      name: vm.name,
      uuid: vm.uuid,
      host: this.name,
      state,
      memoryMiB: vm.memoryMiB,
      cpus: vm.cpus,
      machineType: vm.machineType,
      pid: live && rt ? rt.pid : null,
      startedAt: live && rt ? rt.startedAt : null,
      reason,
    };
  }

  /** The VM's real state: the process table and QEMU's own run state, never only what was last written. */
  private async observe(
    vm: VmConfig,
    rt: Runtime | null,
  ): Promise<{ state: VmState; reason: string | null }> {
    if (!rt) return { state: 'stopped', reason: null };
    if (rt.crashedAt) return { state: 'crashed', reason: rt.crashReason };
    if (!isQemuAlive(rt.pid, rt.qmpSocket)) {
      // Record what happened under the VM's lock, and only if the record is still about that QEMU:
      // another process may have started the VM again meanwhile.
      return withLock(this.lockPath(vm.name), async () => {
        const cur = await this.runtime(vm.name);
        if (!cur || cur.pid !== rt.pid || cur.crashedAt) {
          if (!cur) return { state: 'stopped' as const, reason: null };
          if (cur.crashedAt) return { state: 'crashed' as const, reason: cur.crashReason };
          return { state: 'starting' as const, reason: null };
        }
        if (cur.stopRequested) {
          await fs.promises.rm(this.runtimePath(vm.name), { force: true });
          return { state: 'stopped' as const, reason: null };
        }
        // Noticed for the first time: recorded, so it is reported until the VM is started again.
        const last = tailOf(this.qemuLog(vm.name), 1);
        const reason = `QEMU (pid ${rt.pid}) exited unexpectedly${last ? `; its log ends: ${last}` : ''}`;
        await writeJsonAtomic(this.runtimePath(vm.name), {
          ...cur,
          crashedAt: new Date().toISOString(),
          crashReason: reason,
        });
        return { state: 'crashed' as const, reason };
      });
    }
    if (rt.stopRequested) return { state: 'stopping', reason: null };
    if (rt.migration && !activeMigration(rt)) {
      const outcome = await this.recoverAbandonedMove(vm.name, rt);
      if (outcome) return outcome;
    }
    const mig = activeMigration(rt);
    if (mig?.role === 'source') return { state: 'migrating', reason: `moving to ${mig.peer} (${mig.id})` };
    try {
      const qmp = await QmpClient.connect(rt.statusSocket, { timeoutMs: QMP_STATUS_TIMEOUT_MS });
      try {
        const st = await qmp.execute<{ status: string; running: boolean }>('query-status');
        return { state: runState(st.status), reason: null };
      } finally {
        await qmp.close();
      }
    } catch (err) {
      return { state: 'running', reason: `status unknown: ${(err as Error).message}` };
    }
  }

  async vmInfo(name: string): Promise<VmInfo> {
    const vm = await this.vmConfig(name);
    const s = await this.summary(vm);
    return {
      ...s,
      configVersion: vm.machineType,
      cpuModel: vm.cpuModel,
      disks: vm.disks,
      nics: vm.nics,
      labGuest: vm.labGuest,
      serialLogPath: this.runtimePaths(vm).serialLog,
      configPath: this.configPath(name),
    };
  }

  async defineVm(req: CreateVmRequest): Promise<VmInfo> {
    if (await this.hasVm(req.name)) {
      throw new FerryError('duplicate-vm', `a VM named "${req.name}" already exists on host ${this.name}`);
    }
    const facts = await this.facts();
    if (req.memoryMiB > facts.memFreeMiB) {
      throw new FerryError(
        'insufficient-memory',
        `${req.memoryMiB} MiB is more than host ${this.name} has free (${facts.memFreeMiB} MiB)`,
      );
    }
    const machineType = resolveMachineType(req.machineType, await this.qemuCaps());
    if (req.labGuest) {
      if (!fs.existsSync(labGuestImage())) {
        throw new FerryError(
          'missing-image',
          `the lab guest image is missing: ${labGuestImage()}`,
          'run: npm run build:guest',
        );
      }
      // The guest's working set starts at 2 MiB and needs room below the top of RAM.
      if (req.labGuest.workingSetMiB > req.memoryMiB - 4) {
        throw new FerryError(
          'bad-input',
          `a ${req.labGuest.workingSetMiB} MiB working set does not fit in ${req.memoryMiB} MiB of memory (at most ${req.memoryMiB - 4} MiB)`,
        );
      }
    }
    // Check every existing image before creating anything, so a refusal leaves nothing behind.
    const images = await Promise.all(
      req.disks.map(async (d) =>
        d.kind === 'image' ? inspectImage(findQemuImg(facts.qemuBinary), d.path) : null,
      ),
    );
    const uuid = crypto.randomUUID();
    if (req.storagePath && !path.isAbsolute(req.storagePath)) {
      throw new FerryError('bad-input', `--storage-path must be an absolute folder, not ${req.storagePath}`);
    }
    const diskFolder = req.storagePath
      ? path.resolve(req.storagePath)
      : path.join(this.record.vmDir, req.name);
    const disks: Disk[] = [];
    const qemuImg = findQemuImg(facts.qemuBinary);
    try {
      for (const [i, d] of req.disks.entries()) {
        const id = `disk${i}`;
        const image = images[i];
        if (image) {
          disks.push({
            id,
            path: image.path,
            format: image.format,
            sizeBytes: image.sizeBytes,
            owned: false,
          });
        } else if (d.kind === 'new') {
          const sizeBytes = Math.round(d.sizeGiB * 1024 ** 3);
          const file = path.join(diskFolder, `${id}.qcow2`);
          if (fs.existsSync(file)) {
            throw new FerryError(
              'bad-input',
              `${file} already exists; Ferry will not overwrite a disk image`,
            );
          }
          await ensureDir(diskFolder);
          await execFileAsync(qemuImg, ['create', '-q', '-f', 'qcow2', file, String(sizeBytes)]);
          disks.push({ id, path: file, format: 'qcow2', sizeBytes, owned: true });
        }
      }
      const vm: VmConfig = {
        formatVersion: 1,
        name: req.name,
        uuid,
        memoryMiB: req.memoryMiB,
        cpus: req.cpus,
        machineType,
        cpuModel: 'qemu64',
        disks,
        nics: Array.from({ length: req.nics }, (_, i): Nic => ({
          id: `net${i}`,
          mac: macFor(uuid, i),
          model: 'virtio-net-pci',
        })),
        labGuest: req.labGuest,
        createdAt: new Date().toISOString(),
      };
      await writeJsonAtomic(this.configPath(req.name), VmConfigSchema.parse(vm));
    } catch (err) {
      // Leave nothing half-made: the images created so far and the folders.
      for (const d of disks) if (d.owned) await fs.promises.rm(d.path, { force: true });
      await fs.promises.rm(this.vmDir(req.name), { recursive: true, force: true });
      await fs.promises.rmdir(diskFolder).catch(() => undefined);
      throw err;
    }
    return this.vmInfo(req.name);
  }

  // ---- lifecycle -------------------------------------------------------------------------------

  private async withVmLock<T>(name: string, fn: () => Promise<T>): Promise<T> {
    if (!(await this.hasVm(name)))
      throw new FerryError('unknown-vm', `no VM named "${name}" on host ${this.name}`);
    return withLock(this.lockPath(name), fn);
  }

  /** A QMP session on the control monitor of a running VM. */
  private async control(name: string): Promise<{ qmp: QmpClient; rt: Runtime }> {
    const rt = await this.runtime(name);
    if (!rt || rt.crashedAt || !isQemuAlive(rt.pid, rt.qmpSocket)) {
      throw new FerryError('vm-not-running', `VM "${name}" is not running`);
    }
    refuseWhileMigrating(name, rt);
    return { qmp: await QmpClient.connect(rt.qmpSocket, { timeoutMs: 10_000 }), rt };
  }

  async startVm(name: string): Promise<VmSummary> {
    await this.withVmLock(name, async () => {
      const vm = await this.vmConfig(name);
      const rt = await this.runtime(name);
      if (rt && !rt.crashedAt && isQemuAlive(rt.pid, rt.qmpSocket)) {
        throw new FerryError('vm-running', `VM "${name}" is already running on host ${this.name}`);
      }
      const facts = await this.facts();
      if (vm.memoryMiB > facts.memFreeMiB) {
        throw new FerryError(
          'insufficient-memory',
          `VM "${name}" needs ${vm.memoryMiB} MiB; host ${this.name} has ${facts.memFreeMiB} MiB free`,
        );
      }
      for (const d of vm.disks) {
        if (!fs.existsSync(d.path))
          throw new FerryError('missing-image', `disk ${d.id} of "${name}" is missing: ${d.path}`);
      }
      const paths = this.runtimePaths(vm);
      await ensureDir(path.dirname(paths.qmpSocket), 0o700);
      for (const s of [paths.qmpSocket, paths.statusSocket]) await fs.promises.rm(s, { force: true });
      const log = this.qemuLog(name);
      const pid = await this.spawnQemu(facts.qemuBinary, qemuArgv(vm, paths, { accel: facts.accel }), log);
      await writeJsonAtomic(this.runtimePath(name), newRuntime(pid, paths, facts.accel, null));
      try {
        const qmp = await connectWhenReady(paths.qmpSocket, pid, log);
        await qmp.close();
      } catch (err) {
        await killQemu(pid, paths.qmpSocket).catch(() => undefined);
        await fs.promises.rm(this.runtimePath(name), { force: true });
        throw err;
      }
    });
    return this.summary(await this.vmConfig(name));
  }

  async pauseVm(name: string): Promise<VmSummary> {
    return this.qmpAction(name, 'stop');
  }

  async resumeVm(name: string): Promise<VmSummary> {
    return this.qmpAction(name, 'cont');
  }

  private async qmpAction(name: string, command: string): Promise<VmSummary> {
    await this.withVmLock(name, async () => {
      const { qmp } = await this.control(name);
      try {
        await qmp.execute(command);
      } finally {
        await qmp.close();
      }
    });
    return this.summary(await this.vmConfig(name));
  }

  async stopVm(name: string, opts: StopOptions): Promise<VmSummary> {
    await this.withVmLock(name, async () => {
      await this.vmConfig(name);
      const rt = await this.runtime(name);
      if (!rt || rt.crashedAt || !isQemuAlive(rt.pid, rt.qmpSocket)) {
        await fs.promises.rm(this.runtimePath(name), { force: true });
        return;
      }
      // Turning a VM off wins over its move (the move then fails and cleans up); a shut-down waits.
      if (!opts.force) refuseWhileMigrating(name, rt);
      await writeJsonAtomic(this.runtimePath(name), { ...rt, stopRequested: true });
      let gone = false;
      if (!opts.force) {
        // Graceful: ACPI power button, then wait for the guest to power off (QEMU exits with it).
        const qmp = await QmpClient.connect(rt.qmpSocket, { timeoutMs: 10_000 }).catch(() => null);
        if (qmp) {
          await qmp.execute('system_powerdown').catch(() => undefined);
          await qmp.close();
        }
        gone = await waitForExit(rt.pid, rt.qmpSocket, opts.timeoutMs);
      }
      if (!gone) {
        // Turn off: QEMU's quit stops the guest at once but still flushes its disk caches.
        const qmp = await QmpClient.connect(rt.qmpSocket, { timeoutMs: 5000 }).catch(() => null);
        if (qmp) {
          await qmp.execute('quit').catch(() => undefined);
          await qmp.close();
        }
        if (!(await waitForExit(rt.pid, rt.qmpSocket, 10_000))) await killQemu(rt.pid, rt.qmpSocket);
      }
      await fs.promises.rm(this.runtimePath(name), { force: true });
      for (const s of [rt.qmpSocket, rt.statusSocket]) await fs.promises.rm(s, { force: true });
    });
    return this.summary(await this.vmConfig(name));
  }

  async deleteVm(name: string): Promise<void> {
    await this.withVmLock(name, async () => {
      const vm = await this.vmConfig(name);
      const rt = await this.runtime(name);
      if (rt && !rt.crashedAt && isQemuAlive(rt.pid, rt.qmpSocket)) {
        throw new FerryError('vm-running', `VM "${name}" is running; stop it first (ferry vm stop ${name})`);
      }
      for (const d of vm.disks) {
        if (d.owned) {
          await fs.promises.rm(d.path, { force: true });
          await fs.promises.rmdir(path.dirname(d.path)).catch(() => undefined); // only if now empty
        }
      }
      // Keep the lock dir alive until release: remove everything else in the VM's folder.
      for (const entry of await fs.promises.readdir(this.vmDir(name))) {
        if (entry !== 'vm.lock')
          await fs.promises.rm(path.join(this.vmDir(name), entry), { recursive: true, force: true });
      }
    });
    await fs.promises.rm(this.vmDir(name), { recursive: true, force: true });
  }

  // ---- migration: source (Begin / Perform / Confirm) --------------------------------------------

  private async openSession(name: string, socket: string): Promise<Session> {
    const qmp = await QmpClient.connect(socket, { timeoutMs: 10_000 });
    const session: Session = { qmp, stops: 0, stoppedAt: null, resumedAt: null, downtimeLimitMs: 300 };
    qmp.on('STOP', (ev) => {
      session.stoppedAt = eventMs(ev);
      session.stops++;
    });
    qmp.on('RESUME', (ev) => (session.resumedAt = eventMs(ev)));
    this.sessions.set(name, session);
    return session;
  }

  private session(name: string): Session {
    const s = this.sessions.get(name);
    if (!s || s.qmp.isClosed) {
      throw new FerryError('migration-failed', `lost the QMP session of "${name}" on ${this.name}`);
    }
    return s;
  }

  private async closeSession(name: string): Promise<void> {
    const s = this.sessions.get(name);
    this.sessions.delete(name);
    await s?.qmp.close();
  }

  private async setMigrationMarker(name: string, marker: Runtime['migration']): Promise<void> {
    const rt = await this.runtime(name);
    if (rt) await writeJsonAtomic(this.runtimePath(name), { ...rt, migration: marker });
  }

  async beginOutgoing(name: string, migrationId: string, peer: string): Promise<VmConfig> {
    return this.withVmLock(name, async () => {
      const vm = await this.vmConfig(name);
      const rt = await this.runtime(name);
      if (!rt || rt.crashedAt || !isQemuAlive(rt.pid, rt.qmpSocket)) {
        throw new FerryError('vm-not-running', `VM "${name}" is not running on ${this.name}`);
      }
      refuseWhileMigrating(name, rt);
      const session = await this.openSession(name, rt.qmpSocket);
      const st = await session.qmp.execute<{ status: string }>('query-status');
      if (st.status !== 'running' && st.status !== 'paused') {
        await this.closeSession(name);
        throw new FerryError('vm-not-running', `VM "${name}" is ${st.status}, not running or paused`);
      }
      await writeJsonAtomic(this.runtimePath(name), {
        ...rt,
        migration: {
          id: migrationId,
          role: 'source',
          peer,
          ownerPid: process.pid,
          wasRunning: st.status === 'running',
        },
      });
      return vm;
    });
  }

  async startOutgoing(
    name: string,
    req: { capabilities: Record<string, boolean>; parameters: Record<string, unknown>; uri: string },
  ): Promise<void> {
    const s = this.session(name);
    await s.qmp.execute('migrate-set-capabilities', { capabilities: capabilityList(req.capabilities) });
    await s.qmp.execute('migrate-set-parameters', req.parameters);
    const limit = req.parameters['downtime-limit'];
    if (typeof limit === 'number') s.downtimeLimitMs = limit;
    s.stoppedAt = null;
    await s.qmp.execute('migrate', { uri: req.uri });
  }

  async outgoingStats(name: string): Promise<OutgoingStats> {
    const s = this.session(name);
    const stats = parseQueryMigrate(await s.qmp.execute('query-migrate'));
    return { ...stats, downtimeLimitMs: s.downtimeLimitMs, stoppedAt: s.stoppedAt };
  }

  async nextMigrationEvent(name: string, timeoutMs: number): Promise<string | null> {
    const ev = await this.session(name)
      .qmp.waitEvent('MIGRATION', () => true, timeoutMs)
      .catch((err: unknown) => {
        if (err instanceof FerryError && err.code === 'qmp-timeout') return null;
        throw err;
      });
    return ev ? String(ev.data.status) : null;
  }

  async setOutgoingParameters(name: string, parameters: Record<string, unknown>): Promise<void> {
    const s = this.session(name);
    await s.qmp.execute('migrate-set-parameters', parameters);
    const limit = parameters['downtime-limit'];
    if (typeof limit === 'number') s.downtimeLimitMs = limit;
  }

  async continueOutgoing(name: string): Promise<void> {
    await this.session(name).qmp.execute('migrate-continue', { state: 'pre-switchover' });
  }

  async startPostcopy(name: string): Promise<void> {
    await this.session(name).qmp.execute('migrate-start-postcopy');
  }

  async cancelOutgoing(name: string): Promise<void> {
    const s = await this.sessionForCleanup(name);
    const before = parseQueryMigrate(await s.qmp.execute('query-migrate'));
    if (before.status === 'completed' || before.status.startsWith('postcopy')) {
      throw new FerryError(
        'cancel-refused',
        `the migration of "${name}" has already switched over (${before.status})`,
      );
    }
    try {
      if (before.status !== 'none' && before.status !== 'failed' && before.status !== 'cancelled') {
        await s.qmp.execute('migrate_cancel');
        const deadline = Date.now() + 10_000;
        for (;;) {
          const st = parseQueryMigrate(await s.qmp.execute('query-migrate')).status;
          if (st === 'cancelled' || st === 'failed') break;
          if (Date.now() > deadline) {
            throw new FerryError(
              'migration-failed',
              `QEMU did not cancel the migration of "${name}" (${st})`,
            );
          }
          await sleep(20);
        }
      }
    } finally {
      await this.keepRunningHere(name);
    }
  }

  /** The move's session, or a new one if it was lost: a rollback must still reach QEMU. */
  private async sessionForCleanup(name: string): Promise<Session> {
    const s = this.sessions.get(name);
    if (s && !s.qmp.isClosed) return s;
    const rt = await this.runtime(name);
    if (!rt) throw new FerryError('vm-not-running', `VM "${name}" is not running on ${this.name}`);
    return this.openSession(name, rt.qmpSocket);
  }

  /** After a cancel or failure: the VM runs here as before the move, and is no longer marked. */
  private async keepRunningHere(name: string): Promise<void> {
    try {
      const s = await this.sessionForCleanup(name);
      const rt = await this.runtime(name);
      const st = await s.qmp.execute<{ status: string }>('query-status');
      // QEMU restarts a VM that was running when its migration fails; make sure of it.
      if (rt?.migration?.wasRunning && st.status !== 'running') await s.qmp.execute('cont');
    } finally {
      await this.setMigrationMarker(name, null);
      await this.closeSession(name);
    }
  }

  async resumeSource(name: string): Promise<void> {
    // `cont` in postmigrate re-activates the disks the source inactivated at completion.
    await this.keepRunningHere(name);
  }

  async confirmOutgoing(name: string, deleteDisks: string[] = []): Promise<void> {
    const rt = await this.runtime(name);
    const s = this.sessions.get(name);
    if (s && !s.qmp.isClosed) await s.qmp.execute('quit').catch(() => undefined);
    await this.closeSession(name);
    if (rt) {
      await writeJsonAtomic(this.runtimePath(name), { ...rt, stopRequested: true });
      if (!(await waitForExit(rt.pid, rt.qmpSocket, 10_000))) await killQemu(rt.pid, rt.qmpSocket);
      for (const sock of [rt.qmpSocket, rt.statusSocket]) await fs.promises.rm(sock, { force: true });
    }
    // Keep the source's console history; the VM's files on shared storage are the destination's now.
    const serial = path.join(this.vmDir(name), 'serial.log');
    if (fs.existsSync(serial)) {
      const logs = path.join(this.record.stateDir, 'logs');
      await ensureDir(logs);
      await fs.promises.rename(serial, path.join(logs, `${name}-${rt?.migration?.id ?? 'moved'}.serial.log`));
    }
    await this.removeVmState(name);
    // Shared-nothing: the destination has its own copies now.
    for (const f of deleteDisks) {
      await fs.promises.rm(f, { force: true });
      await fs.promises.rmdir(path.dirname(f)).catch(() => undefined);
    }
  }

  /** Removes Ferry's own files of a VM on this host (configuration, runtime, logs), never its disks. */
  private async removeVmState(name: string): Promise<void> {
    const dir = this.vmDir(name);
    for (const f of [
      'vm.json',
      'incoming.json',
      'runtime.json',
      'qemu.log',
      'qemu.pid',
      'serial.log',
      'vm.lock',
    ]) {
      await fs.promises.rm(path.join(dir, f), { recursive: true, force: true });
    }
    await fs.promises.rmdir(dir).catch(() => undefined);
  }

  // ---- disks: shared-nothing mirror (source) and storage-only moves -----------------------------

  private async diskIds(name: string): Promise<string[]> {
    return (await this.vmConfig(name)).disks.map((d) => d.id);
  }

  async startDiskMirror(name: string, target: NbdTarget, speedMiBs: number | null): Promise<void> {
    const { qmp } = this.session(name);
    for (const e of target.exports) {
      await qmp.execute('blockdev-add', {
        driver: 'nbd',
        'node-name': `${e.id}-nbd`,
        server: { type: 'inet', host: target.host, port: String(target.port) },
        export: e.name,
      });
    }
    await startMirrors(
      qmp,
      target.exports.map((e) => e.id),
      (id) => `${id}-nbd`,
      speedMiBs,
    );
  }

  async diskJobs(name: string): Promise<DiskJob[]> {
    return diskJobs(this.session(name).qmp, await this.diskIds(name));
  }

  async finishDiskMirror(name: string): Promise<void> {
    const { qmp } = this.session(name);
    const ids = await this.diskIds(name);
    // Every mirror must still be in sync: one that failed after READY would leave a stale copy.
    const jobs = await diskJobs(qmp, ids);
    const bad = jobs.find((j) => !j.ready || j.error || j.status !== 'ready');
    if (bad)
      throw new FerryError(
        'migration-failed',
        `the copy of ${bad.id} is not in sync (${bad.error ?? bad.status})`,
      );
    await cancelMirrors(qmp, ids, false);
    // The destination can close its exports only after the source dropped its NBD clients.
    await deleteNodes(
      qmp,
      ids.map((id) => `${id}-nbd`),
    );
  }

  async abortDiskMirror(name: string): Promise<void> {
    const s = await this.sessionForCleanup(name);
    const ids = await this.diskIds(name);
    await cancelMirrors(s.qmp, ids, true).catch(() => undefined);
    await deleteNodes(
      s.qmp,
      ids.map((id) => `${id}-nbd`),
    );
  }

  private storageMovePath(name: string): string {
    return path.join(this.vmDir(name), 'storage-move.json');
  }

  async startStorageMove(
    name: string,
    targets: { id: string; path: string }[],
    speedMiBs: number | null,
  ): Promise<void> {
    await this.withVmLock(name, async () => {
      const vm = await this.vmConfig(name);
      const rt = await this.runtime(name);
      if (!rt || rt.crashedAt || !isQemuAlive(rt.pid, rt.qmpSocket)) {
        throw new FerryError('vm-not-running', `VM "${name}" is not running on ${this.name}`);
      }
      refuseWhileMigrating(name, rt);
      const qemuImg = findQemuImg(await this.qemuBinary());
      const session = await this.openSession(name, rt.qmpSocket);
      await writeJsonAtomic(this.runtimePath(name), {
        ...rt,
        migration: {
          id: `storage-${Date.now()}`,
          role: 'source',
          peer: this.name,
          ownerPid: process.pid,
          wasRunning: true,
        },
      });
      // Only files this move made are ever removed by an abort: `made` is recorded as each is created.
      const plan: StoragePlan = { targets: targets.map((t) => ({ ...t, made: false, node: '' })) };
      try {
        for (const t of plan.targets) {
          const disk = vm.disks.find((d) => d.id === t.id)!;
          if (fs.existsSync(t.path)) throw new FerryError('bad-input', `${t.path} already exists`);
          await ensureDir(path.dirname(t.path));
          await execFileAsync(qemuImg, ['create', '-q', '-f', disk.format, t.path, String(disk.sizeBytes)]);
          t.made = true;
          const stamp = Date.now().toString(36);
          t.node = `${t.id}-n${stamp}`;
          await writeJsonAtomic(this.storageMovePath(name), plan);
          await session.qmp.execute('blockdev-add', {
            driver: 'file',
            'node-name': `${t.id}-f${stamp}`,
            filename: t.path,
            'auto-read-only': true,
            discard: 'unmap',
          });
          await session.qmp.execute('blockdev-add', {
            driver: disk.format,
            'node-name': t.node,
            file: `${t.id}-f${stamp}`,
          });
        }
        await startMirrors(
          session.qmp,
          plan.targets.map((t) => t.id),
          (id) => plan.targets.find((t) => t.id === id)!.node,
          speedMiBs,
        );
      } catch (err) {
        await this.abortStorageMove(name);
        throw err;
      }
    });
  }

  async storageMoveJobs(name: string): Promise<DiskJob[]> {
    const plan = await readJson(this.storageMovePath(name), StoragePlanSchema);
    return diskJobs(
      this.session(name).qmp,
      (plan?.targets ?? []).map((t) => t.id),
    );
  }

  async completeStorageMove(name: string): Promise<StorageMoveResult> {
    const s = this.session(name);
    const plan = await readJson(this.storageMovePath(name), StoragePlanSchema);
    if (!plan) throw new FerryError('migration-failed', `no storage move of "${name}" in progress`);
    const ids = plan.targets.map((t) => t.id);
    const vm = await this.vmConfig(name);
    // The nodes the devices use now (format node, then the file node under it) go once pivoted.
    const named =
      await s.qmp.execute<{ 'node-name': string; drv: string; file: string }[]>('query-named-block-nodes');
    const oldNodes: string[] = [];
    for (const id of ids) {
      const node = await currentNode(s.qmp, id);
      const file = named.find((n) => n['node-name'] === node)?.file;
      const fileNode = named.find((n) => n.drv === 'file' && n.file === file && n['node-name'] !== node);
      oldNodes.push(node, ...(fileNode ? [fileNode['node-name']] : []));
    }
    // Pivot: the device switches to the copy without pausing the guest.
    for (const id of ids)
      await s.qmp.execute('block-job-complete', { device: mirrorJobId(id) }).catch(() => undefined);
    await waitJobsGone(s.qmp, ids).catch(() => undefined);
    // Record at once every disk that now runs on its copy: those copies are the VM's disks from here on.
    const pivoted: string[] = [];
    for (const t of plan.targets) if ((await currentNode(s.qmp, t.id)) === t.node) pivoted.push(t.id);
    const moved = plan.targets
      .filter((t) => pivoted.includes(t.id))
      .map((t) => ({ id: t.id, from: vm.disks.find((d) => d.id === t.id)!.path, to: t.path }));
    const next: VmConfig = {
      ...vm,
      disks: vm.disks.map((d) => {
        const m = moved.find((x) => x.id === d.id);
        return m ? { ...d, path: m.to, owned: true } : d;
      }),
    };
    await writeJsonAtomic(this.configPath(name), VmConfigSchema.parse(next));
    const stuck = ids.filter((id) => !pivoted.includes(id));
    if (stuck.length > 0)
      throw new FerryError('migration-failed', `${stuck.join(', ')} did not switch to the new file`);
    // The old nodes are unused now; delete format nodes before their file nodes.
    await deleteNodes(s.qmp, oldNodes);
    for (const m of moved) {
      await fs.promises.rm(m.from, { force: true });
      await fs.promises.rmdir(path.dirname(m.from)).catch(() => undefined);
    }
    const pauses = s.stops;
    await fs.promises.rm(this.storageMovePath(name), { force: true });
    await this.setMigrationMarker(name, null);
    await this.closeSession(name);
    return { disks: moved, pauses };
  }

  async abortStorageMove(name: string): Promise<void> {
    const all = await readJson(this.storageMovePath(name), StoragePlanSchema).catch(() => null);
    // A disk that already pivoted onto its copy keeps it (the configuration says so): never delete that.
    const inUse = new Set((await this.vmConfig(name)).disks.map((d) => d.path));
    const plan = all ? { targets: all.targets.filter((t) => !inUse.has(t.path)) } : null;
    const s = this.sessions.get(name);
    if (s && !s.qmp.isClosed && plan) {
      const ids = plan.targets.map((t) => t.id);
      await cancelMirrors(s.qmp, ids, true).catch(() => undefined);
      // The copies' own nodes: format node first, then the file node under it.
      const made = plan.targets.filter((t) => t.node);
      await deleteNodes(s.qmp, [
        ...made.map((t) => t.node),
        ...made.map((t) => t.node.replace(/-n(\w+)$/, '-f$1')),
      ]);
    }
    for (const t of (plan?.targets ?? []).filter((x) => x.made)) {
      await fs.promises.rm(t.path, { force: true });
      await fs.promises.rmdir(path.dirname(t.path)).catch(() => undefined);
    }
    await fs.promises.rm(this.storageMovePath(name), { force: true });
    await this.setMigrationMarker(name, null);
    await this.closeSession(name);
  }

  async freeSpace(dirs: string[]): Promise<{ dir: string; freeBytes: number }[]> {
    return Promise.all(
      dirs.map(async (dir) => {
        // The folder may not exist yet: measure the nearest existing parent.
        let d = path.resolve(dir);
        while (!fs.existsSync(d) && path.dirname(d) !== d) d = path.dirname(d);
        return { dir, freeBytes: await diskFreeBytes(d) };
      }),
    );
  }

  // ---- migration: destination (Prepare / Finish) ------------------------------------------------

  async prepareIncoming(req: IncomingRequest): Promise<{ uri: string; nbd: NbdTarget | null }> {
    const vm = VmConfigSchema.parse(req.config);
    if (await this.hasVm(vm.name)) {
      throw new FerryError('duplicate-vm', `a VM named "${vm.name}" already exists on host ${this.name}`);
    }
    const facts = await this.facts();
    await this.removeVmState(vm.name); // leftovers of an earlier, failed attempt
    await ensureDir(this.vmDir(vm.name));
    await writeJsonAtomic(path.join(this.vmDir(vm.name), 'incoming.json'), vm);
    const newDisks = req.newDisks ?? [];
    if (newDisks.length > 0) {
      const qemuImg = findQemuImg(facts.qemuBinary);
      const made: string[] = [];
      try {
        for (const d of newDisks) {
          if (fs.existsSync(d.path))
            throw new FerryError('bad-input', `${d.path} already exists on ${this.name}`);
          // Noted before it is made, so an abort removes a half-made file, and never someone else's.
          made.push(d.path);
          await writeJsonAtomic(this.newDisksPath(vm.name), made);
          await ensureDir(path.dirname(d.path));
          await execFileAsync(qemuImg, ['create', '-q', '-f', d.format, d.path, String(d.sizeBytes)]);
        }
      } catch (err) {
        await this.abortIncoming(vm.name);
        throw err;
      }
    }
    const paths = this.runtimePaths(vm);
    await ensureDir(path.dirname(paths.qmpSocket), 0o700);
    for (const sock of [paths.qmpSocket, paths.statusSocket]) await fs.promises.rm(sock, { force: true });
    const log = this.qemuLog(vm.name);
    const argv = qemuArgv(vm, paths, { accel: facts.accel, incoming: true, paused: true, prealloc: true });
    const pid = await this.spawnQemu(facts.qemuBinary, argv, log);
    await writeJsonAtomic(
      this.runtimePath(vm.name),
      newRuntime(pid, paths, facts.accel, {
        id: req.migrationId,
        role: 'destination',
        peer: '',
        ownerPid: process.pid,
        wasRunning: false,
      }),
    );
    try {
      const first = await connectWhenReady(paths.qmpSocket, pid, log, 60_000); // -mem-prealloc takes a while
      await first.close();
      const s = await this.openSession(vm.name, paths.qmpSocket);
      await s.qmp.execute('migrate-set-capabilities', { capabilities: capabilityList(req.capabilities) });
      if (Object.keys(req.parameters).length > 0)
        await s.qmp.execute('migrate-set-parameters', req.parameters);
      // Listen only on this host's migration address; port 0 lets the kernel pick a free port.
      const addr = this.record.migrationAddress;
      const host = addr.includes(':') ? `[${addr}]` : addr;
      await s.qmp.execute('migrate-incoming', { uri: `${req.scheme}:${host}:0` });
      const q = await s.qmp.execute<{ 'socket-address'?: { port: string }[] }>('query-migrate');
      const port = q['socket-address']?.[0]?.port;
      if (!port)
        throw new FerryError('migration-failed', `QEMU on ${this.name} did not report its migration port`);
      const nbd =
        newDisks.length > 0
          ? await this.exportDisks(
              s.qmp,
              newDisks.map((d) => d.id),
            )
          : null;
      return { uri: `${req.scheme}:${host}:${port}`, nbd };
    } catch (err) {
      await this.abortIncoming(vm.name).catch(() => undefined);
      throw err;
    }
  }

  private newDisksPath(name: string): string {
    return path.join(this.vmDir(name), 'incoming-disks.json');
  }

  /**
   * Writable NBD exports of the skeleton's new disks, on the migration address only, on a port from
   * this host's range (QEMU 7.2 does not report a port it picked itself).
   */
  private async exportDisks(qmp: QmpClient, ids: string[]): Promise<NbdTarget> {
    const host = this.record.migrationAddress;
    let port = 0;
    for (let p = this.record.portBase + 1; p < this.record.portBase + 100 && !port; p++) {
      try {
        // 7.2 wants the legacy address form {type, data}.
        await qmp.execute('nbd-server-start', { addr: { type: 'inet', data: { host, port: String(p) } } });
        port = p;
      } catch (err) {
        if (!/in use|already/i.test((err as Error).message)) throw err;
      }
    }
    if (!port)
      throw new FerryError(
        'migration-failed',
        `no free NBD port on ${this.name} in ${this.record.portBase + 1}-${this.record.portBase + 99}`,
      );
    for (const id of ids) {
      await qmp.execute('block-export-add', {
        type: 'nbd',
        id: `ferry-export-${id}`,
        'node-name': id,
        name: id,
        writable: true,
      });
    }
    return { host, port, exports: ids.map((id) => ({ id, name: id })) };
  }

  async incomingRunState(name: string): Promise<string> {
    return (await this.session(name).qmp.execute<{ status: string }>('query-status')).status;
  }

  async storageHandle(name: string): Promise<StorageHandle> {
    const s = this.session(name);
    const blocks =
      await s.qmp.execute<{ inserted?: { 'node-name'?: string; file: string; ro: boolean } }[]>(
        'query-block',
      );
    const vm = VmConfigSchema.parse(
      await readJson(path.join(this.vmDir(name), 'incoming.json'), VmConfigSchema),
    );
    const disks = vm.disks.map((d) => {
      const b = blocks.find((x) => x.inserted?.['node-name'] === d.id);
      return {
        id: d.id,
        file: b?.inserted?.file ?? '',
        attached: !!b?.inserted,
        writable: !!b && !b.inserted?.ro,
      };
    });
    const runState = (await s.qmp.execute<{ status: string }>('query-status')).status;
    return { disks, runState };
  }

  async finishIncoming(name: string): Promise<{ resumedAt: number }> {
    const s = this.session(name);
    // The source has let go of the NBD exports (its mirror nodes are deleted): close them.
    if (fs.existsSync(this.newDisksPath(name))) await s.qmp.execute('nbd-server-stop').catch(() => undefined);
    // Commit, then run. Until the marker is cleared below, an abort still removes all of it.
    await fs.promises.rename(path.join(this.vmDir(name), 'incoming.json'), this.configPath(name));
    const resumed = s.qmp.waitEvent('RESUME', () => true, 10_000);
    await s.qmp.execute('cont');
    const ev = await resumed;
    const st = await s.qmp.execute<{ status: string }>('query-status');
    if (st.status !== 'running')
      throw new FerryError('migration-failed', `VM "${name}" on ${this.name} is ${st.status} after cont`);
    await fs.promises.rm(this.newDisksPath(name), { force: true });
    await this.setMigrationMarker(name, null);
    return { resumedAt: eventMs(ev) };
  }

  async announce(name: string): Promise<void> {
    // RARP / gratuitous announcements so switches learn the VM's MACs behind this host (QEMU's defaults).
    await this.session(name).qmp.execute('announce-self', { initial: 50, max: 550, rounds: 5, step: 100 });
    await this.closeSession(name);
  }

  async abortIncoming(name: string): Promise<void> {
    await this.closeSession(name);
    const rt = await this.runtime(name);
    if (rt) await killQemu(rt.pid, rt.qmpSocket);
    if (rt) for (const sock of [rt.qmpSocket, rt.statusSocket]) await fs.promises.rm(sock, { force: true });
    // Uncommitted, or committed by a Finish that never completed (the marker is still set).
    if (!(await this.hasVm(name)) || rt?.migration?.role === 'destination') {
      // Partial copies of a shared-nothing move: never leave them behind.
      const made = await readJson(this.newDisksPath(name), z.array(z.string())).catch(() => null);
      for (const f of made ?? []) {
        await fs.promises.rm(f, { force: true });
        await fs.promises.rmdir(path.dirname(f)).catch(() => undefined);
      }
      await fs.promises.rm(this.newDisksPath(name), { force: true });
      await this.removeVmState(name);
    }
  }

  // ---- files ----------------------------------------------------------------------------------

  /**
   * Lab hosts share one machine but model separate ones: lab/shared is their shared storage, and
   * lab/<host>/ is that host's own local storage, out of the other lab hosts' reach.
   */
  private reaches(p: string): boolean {
    if (this.record.kind !== 'lab') return true;
    const rel = path.relative(path.dirname(this.record.vmDir), path.resolve(p));
    const top = rel.split(path.sep)[0] ?? '';
    return rel.startsWith('..') || !/^lab\d+$/.test(top) || top === this.name;
  }

  async statFiles(paths: string[]): Promise<FileIdentity[]> {
    return Promise.all(
      paths.map(async (p) => {
        if (!this.reaches(p))
          return { path: p, exists: false, device: 0, inode: 0, size: 0, kind: 'missing' } as const;
        try {
          const st = await fs.promises.stat(p);
          const kind = st.isFile()
            ? 'file'
            : st.isBlockDevice() || st.isCharacterDevice()
              ? 'device'
              : 'other';
          return { path: p, exists: true, device: st.dev, inode: st.ino, size: st.size, kind } as const;
        } catch {
          return { path: p, exists: false, device: 0, inode: 0, size: 0, kind: 'missing' } as const;
        }
      }),
    );
  }

  async writeMarker(dir: string, token: string): Promise<string> {
    const file = path.join(dir, `.ferry-probe-${token.slice(0, 12)}`);
    await fs.promises.writeFile(file, token);
    return file;
  }

  async readMarker(file: string): Promise<string | null> {
    if (!this.reaches(file)) return null;
    return fs.promises.readFile(file, 'utf8').catch(() => null);
  }

  async removeFile(file: string): Promise<void> {
    await fs.promises.rm(file, { force: true });
  }

  async readSerial(name: string, from: number): Promise<SerialChunk> {
    const vm = await this.vmConfig(name);
    const file = this.runtimePaths(vm).serialLog;
    let fh: fs.promises.FileHandle;
    try {
      fh = await fs.promises.open(file, 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { text: '', next: 0 };
      throw err;
    }
    try {
      const { size } = await fh.stat();
      const start = from > size ? 0 : from; // the log was truncated: read it from the start
      const buf = Buffer.alloc(size - start);
      await fh.read(buf, 0, buf.length, start);
      return { text: buf.toString('utf8'), next: size };
    } finally {
      await fh.close();
    }
  }
}

function refuseWhileMigrating(name: string, rt: Runtime): void {
  const m = activeMigration(rt);
  if (m) {
    throw new FerryError(
      'vm-migrating',
      `VM "${name}" is being moved (${m.id}); cancel the move first: ferry cancel ${m.id}`,
    );
  }
}

function runState(status: string): VmState {
  switch (status) {
    case 'running':
      return 'running';
    case 'inmigrate':
      return 'incoming';
    case 'finish-migrate':
    case 'postmigrate':
      return 'migrating';
    case 'shutdown':
      return 'stopping';
    case 'prelaunch':
      return 'starting';
    default:
      return 'paused'; // paused, suspended, debug, io-error, watchdog, …: the vCPUs are not running
  }
}

/** Accepts a concrete machine type or an alias (pc, q35) and stores the concrete, versioned name. */
function resolveMachineType(requested: string | undefined, caps: QemuCaps): string {
  const wanted = requested ?? 'q35';
  const concrete = caps.machineAliases[wanted] ?? wanted;
  if (!caps.machineTypes.includes(concrete)) {
    throw new FerryError(
      'bad-input',
      `machine type "${wanted}" is not supported by QEMU ${caps.version} on this host`,
    );
  }
  return concrete;
}

/** A stable locally administered MAC (QEMU's 52:54:00 prefix) derived from the VM's uuid. */
function macFor(uuid: string, index: number): string {
  const h = crypto.createHash('sha256').update(`${uuid}/${index}`).digest();
  return ['52', '54', '00', h[0], h[1], h[2]]
    .map((b) => (typeof b === 'number' ? b.toString(16).padStart(2, '0') : b))
    .join(':');
}

async function inspectImage(
  qemuImg: string,
  file: string,
): Promise<{ path: string; format: 'qcow2' | 'raw'; sizeBytes: number }> {
  const abs = path.resolve(file);
  if (!fs.existsSync(abs)) throw new FerryError('missing-image', `disk image not found: ${abs}`);
  let info: { format: string; 'virtual-size': number };
  try {
    const { stdout } = await execFileAsync(qemuImg, ['info', '--output=json', '-U', abs]);
    info = JSON.parse(stdout) as typeof info;
  } catch (err) {
    throw new FerryError('missing-image', `${abs} is not a readable disk image: ${(err as Error).message}`);
  }
  if (info.format !== 'qcow2' && info.format !== 'raw') {
    throw new FerryError('bad-input', `${abs} is a ${info.format} image; Ferry uses qcow2 and raw images`);
  }
  return { path: abs, format: info.format, sizeBytes: info['virtual-size'] };
}
