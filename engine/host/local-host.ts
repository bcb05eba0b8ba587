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
import type { HostDriver, SerialChunk, StopOptions } from './driver.js';
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
});
type Runtime = z.infer<typeof RuntimeSchema>;

const QMP_STATUS_TIMEOUT_MS = 3000;

export class LocalHost implements HostDriver {
  readonly name: string;

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

  async listVms(): Promise<VmSummary[]> {
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
      if (rt.stopRequested) {
        await fs.promises.rm(this.runtimePath(vm.name), { force: true });
        return { state: 'stopped', reason: null };
      }
      // Noticed for the first time: record it so the crash is reported until the VM is started again.
      const last = tailOf(this.qemuLog(vm.name), 1);
      const reason = `QEMU (pid ${rt.pid}) exited unexpectedly${last ? `; its log ends: ${last}` : ''}`;
      await writeJsonAtomic(this.runtimePath(vm.name), {
        ...rt,
        crashedAt: new Date().toISOString(),
        crashReason: reason,
      });
      return { state: 'crashed', reason };
    }
    if (rt.stopRequested) return { state: 'stopping', reason: null };
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
    const diskFolder = path.join(this.record.vmDir, req.name);
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
      const pid = await spawnDetached(facts.qemuBinary, qemuArgv(vm, paths, { accel: facts.accel }), log);
      const record: Runtime = {
        pid,
        qmpSocket: paths.qmpSocket,
        statusSocket: paths.statusSocket,
        startedAt: new Date().toISOString(),
        accel: facts.accel,
        stopRequested: false,
        crashedAt: null,
        crashReason: null,
      };
      await writeJsonAtomic(this.runtimePath(name), record);
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
