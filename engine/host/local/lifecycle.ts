// A VM's life on this host: define, start, pause, resume, stop, delete, its serial console, and its real
// state, observed from the process table and QEMU rather than taken from what was last written.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import {
  FerryError,
  VmConfigSchema,
  type CreateVmRequest,
  type Disk,
  type Nic,
  type VmConfig,
  type VmInfo,
  type VmState,
  type VmSummary,
} from '../../api/index.js';
import { qemuArgv } from '../../qemu/argv.js';
import { parseQueryMigrate, settleOutgoing } from '../../qemu/migration.js';
import type { QemuCaps } from '../../qemu/probe.js';
import { connectWhenReady, isQemuAlive, killQemu, tailOf, waitForExit } from '../../qemu/process.js';
import { QmpClient } from '../../qemu/qmp.js';
import { execFileAsync, findQemuImg } from '../../qemu/system.js';
import type { SerialChunk, StopOptions } from '../driver.js';
import {
  createExclusive,
  ensureDir,
  ensureSocketDir,
  labGuestImage,
  withLock,
  writeJsonAtomic,
} from '../store.js';
import {
  activeMigration,
  isRunning,
  newRuntime,
  refuseWhileMigrating,
  type LocalContext,
  type Runtime,
} from './context.js';
import type { MigrationDestination } from './migration-destination.js';
import { settleAfterSwitchover } from './recovery.js';

const QMP_STATUS_TIMEOUT_MS = 3000;

export class Lifecycle {
  constructor(
    private readonly ctx: LocalContext,
    /** Removes the skeletons of abandoned incoming moves. */
    private readonly destination: MigrationDestination,
  ) {}

  // ---- inventory and state ---------------------------------------------------------------------

  async listVms(): Promise<VmSummary[]> {
    await this.sweepAbandonedIncoming();
    let names: string[] = [];
    try {
      names = (await fs.promises.readdir(this.ctx.vmsDir)).filter((n) =>
        fs.existsSync(this.ctx.configPath(n)),
      );
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    names.sort();
    const all = await Promise.all(
      names.map(async (n) => {
        const vm = await this.ctx.vmConfig(n).catch(() => null); // gone meanwhile (moved away)
        return vm ? this.summary(vm) : null;
      }),
    );
    return all.filter((s): s is VmSummary => s !== null);
  }

  async vmInfo(name: string): Promise<VmInfo> {
    const vm = await this.ctx.vmConfig(name);
    const s = await this.summary(vm);
    if (!s)
      throw new FerryError('unknown-vm', `VM "${name}" is no longer on host ${this.ctx.name}: it moved`);
    return {
      ...s,
      configVersion: vm.machineType,
      cpuModel: vm.cpuModel,
      disks: vm.disks,
      nics: vm.nics,
      labGuest: vm.labGuest,
      serialLogPath: this.ctx.runtimePaths(vm).serialLog,
      configPath: this.ctx.configPath(name),
    };
  }

  private async current(name: string): Promise<VmSummary> {
    const s = await this.summary(await this.ctx.vmConfig(name));
    if (!s)
      throw new FerryError('unknown-vm', `VM "${name}" is no longer on host ${this.ctx.name}: it moved`);
    return s;
  }

  /** The VM as observed now; null when the look found it had moved away (see recovery.ts). */
  private async summary(vm: VmConfig): Promise<VmSummary | null> {
    const rt = await this.ctx.runtime(vm.name);
    const seen = await this.observe(vm, rt);
    if (seen === 'moved') {
      await this.ctx.removeVmState(vm.name); // its lock released: the rest of its folder goes
      return null;
    }
    const { state, reason } = seen;
    const live = state !== 'stopped' && state !== 'crashed';
    return {
      name: vm.name,
      uuid: vm.uuid,
      host: this.ctx.name,
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
  ): Promise<{ state: VmState; reason: string | null } | 'moved'> {
    if (!rt) return { state: 'stopped', reason: null };
    if (rt.crashedAt) return { state: 'crashed', reason: rt.crashReason };
    if (!isQemuAlive(rt.pid, rt.qmpSocket)) {
      // Record what happened under the VM's lock, and only if the record is still about that QEMU:
      // another process may have started the VM again meanwhile.
      return withLock(this.ctx.lockPath(vm.name), async () => {
        const cur = await this.ctx.runtime(vm.name);
        if (!cur || cur.pid !== rt.pid || cur.crashedAt) {
          if (!cur) return { state: 'stopped' as const, reason: null };
          if (cur.crashedAt) return { state: 'crashed' as const, reason: cur.crashReason };
          return { state: 'starting' as const, reason: null };
        }
        if (cur.stopRequested) {
          await fs.promises.rm(this.ctx.runtimePath(vm.name), { force: true });
          return { state: 'stopped' as const, reason: null };
        }
        // Noticed for the first time: recorded, so it is reported until the VM is started again.
        const last = tailOf(this.ctx.qemuLog(vm.name), 1);
        const reason = `QEMU (pid ${rt.pid}) exited unexpectedly${last ? `; its log ends: ${last}` : ''}`;
        await writeJsonAtomic(this.ctx.runtimePath(vm.name), {
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

  /**
   * The Ferry process that ran a move died before finishing it. Before the switch-over the source takes
   * the VM back (cancel, resume) and a destination skeleton is removed. After it (recovery.ts): when the
   * destination is known to run the VM the source copy is turned off ('moved'); otherwise nothing is
   * guessed: the VM stays paused with both hosts' facts, for the administrator to decide.
   */
  private async recoverAbandonedMove(
    name: string,
    rt: Runtime,
  ): Promise<{ state: VmState; reason: string } | 'moved' | null> {
    const m = rt.migration!;
    return withLock(this.ctx.lockPath(name), async () => {
      const cur = await this.ctx.runtime(name);
      if (!cur?.migration || cur.migration.id !== m.id || activeMigration(cur)) return null;
      if (m.role === 'destination') {
        const qmp = await QmpClient.connect(cur.statusSocket, { timeoutMs: 3000 }).catch(() => null);
        const status = qmp
          ? (await qmp.execute<{ status: string }>('query-status').catch(() => null))?.status
          : null;
        await qmp?.close();
        if (status === 'running') {
          // Finish resumed it here before the mover died: this host owns the VM.
          await writeJsonAtomic(this.ctx.runtimePath(name), { ...cur, migration: null });
          return null;
        }
        await this.destination.abortIncoming(name); // never resumed here: the source still has the VM
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
          const r = await settleAfterSwitchover(this.ctx, name, cur, qmp);
          if (r.outcome === 'recovered') return 'moved' as const;
          if (r.outcome === 'resolved') return null; // observed afresh below
          return { state: 'paused' as const, reason: r.reason };
        }
        // Cancel (yank if blocked) while the destination's skeleton may still read; a QEMU that stays
        // stuck keeps running here and the pre-flight says so before the next move.
        await settleOutgoing(qmp).catch(() => undefined);
        const run = await qmp.execute<{ status: string }>('query-status');
        if (m.wasRunning && run.status !== 'running') await qmp.execute('cont');
        await writeJsonAtomic(this.ctx.runtimePath(name), { ...cur, migration: null });
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
      dirs = await fs.promises.readdir(this.ctx.vmsDir);
    } catch {
      return;
    }
    for (const name of dirs) {
      if (!fs.existsSync(this.ctx.incomingConfigPath(name))) continue;
      const rt = await this.ctx.runtime(name).catch(() => null);
      if (rt?.migration?.role === 'destination' && !activeMigration(rt))
        await this.destination.abortIncoming(name).catch(() => undefined);
    }
  }

  // ---- define and delete -----------------------------------------------------------------------

  async defineVm(req: CreateVmRequest): Promise<VmInfo> {
    if (await this.ctx.hasVm(req.name)) {
      throw new FerryError(
        'duplicate-vm',
        `a VM named "${req.name}" already exists on host ${this.ctx.name}`,
      );
    }
    const facts = await this.ctx.facts();
    if (req.memoryMiB > facts.memFreeMiB) {
      throw new FerryError(
        'insufficient-memory',
        `${req.memoryMiB} MiB is more than host ${this.ctx.name} has free (${facts.memFreeMiB} MiB)`,
      );
    }
    const machineType = resolveMachineType(req.machineType, await this.ctx.qemuCaps());
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
      : path.join(this.ctx.record.vmDir, req.name);
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
          await ensureDir(diskFolder);
          // Never over an existing file or through a link: made exclusively, then filled by qemu-img.
          await createExclusive(file);
          disks.push({ id, path: file, format: 'qcow2', sizeBytes, owned: true });
          await execFileAsync(qemuImg, ['create', '-q', '-f', 'qcow2', file, String(sizeBytes)]);
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
          source: null, // QEMU's user-mode network: not plugged into a named network or bridge
        })),
        labGuest: req.labGuest,
        createdAt: new Date().toISOString(),
        // New VMs get a screen (VGA, seen through QEMU's VNC server on a unix socket).
        display: 'vga',
      };
      await writeJsonAtomic(this.ctx.configPath(req.name), VmConfigSchema.parse(vm));
    } catch (err) {
      // Leave nothing half-made: the images created so far and the folders.
      for (const d of disks) if (d.owned) await fs.promises.rm(d.path, { force: true });
      await fs.promises.rm(this.ctx.vmDir(req.name), { recursive: true, force: true });
      await fs.promises.rmdir(diskFolder).catch(() => undefined);
      throw err;
    }
    return this.vmInfo(req.name);
  }

  async deleteVm(name: string): Promise<void> {
    await this.ctx.withVmLock(name, async () => {
      const vm = await this.ctx.vmConfig(name);
      const rt = await this.ctx.runtime(name);
      if (isRunning(rt)) {
        throw new FerryError('vm-running', `VM "${name}" is running; stop it first (ferry vm stop ${name})`);
      }
      for (const d of vm.disks) {
        if (d.owned) {
          await fs.promises.rm(d.path, { force: true });
          await fs.promises.rmdir(path.dirname(d.path)).catch(() => undefined); // only if now empty
        }
      }
      // Keep the lock dir alive until release: remove everything else in the VM's folder.
      for (const entry of await fs.promises.readdir(this.ctx.vmDir(name))) {
        if (entry !== 'vm.lock')
          await fs.promises.rm(path.join(this.ctx.vmDir(name), entry), { recursive: true, force: true });
      }
    });
    await fs.promises.rm(this.ctx.vmDir(name), { recursive: true, force: true });
  }

  // ---- power -----------------------------------------------------------------------------------

  /** A QMP session on the control monitor of a running VM. */
  private async control(name: string): Promise<{ qmp: QmpClient; rt: Runtime }> {
    const rt = await this.ctx.runtime(name);
    if (!isRunning(rt)) {
      throw new FerryError('vm-not-running', `VM "${name}" is not running`);
    }
    refuseWhileMigrating(name, rt);
    return { qmp: await QmpClient.connect(rt.qmpSocket, { timeoutMs: 10_000 }), rt };
  }

  async startVm(name: string): Promise<VmSummary> {
    await this.ctx.withVmLock(name, async () => {
      const vm = await this.ctx.vmConfig(name);
      const rt = await this.ctx.runtime(name);
      if (isRunning(rt)) {
        throw new FerryError('vm-running', `VM "${name}" is already running on host ${this.ctx.name}`);
      }
      const facts = await this.ctx.facts();
      if (vm.memoryMiB > facts.memFreeMiB) {
        throw new FerryError(
          'insufficient-memory',
          `VM "${name}" needs ${vm.memoryMiB} MiB; host ${this.ctx.name} has ${facts.memFreeMiB} MiB free`,
        );
      }
      for (const d of vm.disks) {
        if (!fs.existsSync(d.path))
          throw new FerryError('missing-image', `disk ${d.id} of "${name}" is missing: ${d.path}`);
      }
      const paths = this.ctx.runtimePaths(vm);
      await ensureSocketDir(this.ctx.record.stateDir);
      for (const s of this.ctx.socketsOf(paths)) await fs.promises.rm(s, { force: true });
      const log = this.ctx.qemuLog(name);
      const pid = await this.ctx.spawnQemu(
        facts.qemuBinary,
        qemuArgv(vm, paths, { accel: facts.accel }),
        log,
      );
      await writeJsonAtomic(this.ctx.runtimePath(name), newRuntime(pid, paths, facts.accel, null));
      try {
        const qmp = await connectWhenReady(paths.qmpSocket, pid, log);
        await qmp.close();
      } catch (err) {
        await killQemu(pid, paths.qmpSocket).catch(() => undefined);
        await fs.promises.rm(this.ctx.runtimePath(name), { force: true });
        throw err;
      }
    });
    return this.current(name);
  }

  async pauseVm(name: string): Promise<VmSummary> {
    return this.qmpAction(name, 'stop');
  }

  async resumeVm(name: string): Promise<VmSummary> {
    return this.qmpAction(name, 'cont');
  }

  private async qmpAction(name: string, command: string): Promise<VmSummary> {
    await this.ctx.withVmLock(name, async () => {
      const { qmp } = await this.control(name);
      try {
        await qmp.execute(command);
      } finally {
        await qmp.close();
      }
    });
    return this.current(name);
  }

  async stopVm(name: string, opts: StopOptions): Promise<VmSummary> {
    await this.ctx.withVmLock(name, async () => {
      await this.ctx.vmConfig(name);
      const rt = await this.ctx.runtime(name);
      if (!isRunning(rt)) {
        await fs.promises.rm(this.ctx.runtimePath(name), { force: true });
        return;
      }
      // Turning a VM off wins over its move (the move then fails and cleans up); a shut-down waits.
      if (!opts.force) refuseWhileMigrating(name, rt);
      await writeJsonAtomic(this.ctx.runtimePath(name), { ...rt, stopRequested: true });
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
      await fs.promises.rm(this.ctx.runtimePath(name), { force: true });
      for (const s of this.ctx.socketsOf(rt)) await fs.promises.rm(s, { force: true });
    });
    return this.current(name);
  }

  // ---- console ---------------------------------------------------------------------------------

  async readSerial(name: string, from: number): Promise<SerialChunk> {
    const vm = await this.ctx.vmConfig(name);
    const file = this.ctx.runtimePaths(vm).serialLog;
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
