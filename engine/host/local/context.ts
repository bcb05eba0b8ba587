// What every part of Ferry's own driver shares: the host's record and files, its settings and facts,
// each VM's runtime record and lock, and the QMP sessions held for moves in progress. One per LocalHost;
// the parts (lifecycle, migration source and destination, disks) hold it and nothing else in common.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import {
  FerryError,
  HostSettingsSchema,
  VmConfigSchema,
  type HostFacts,
  type HostRecord,
  type HostSettings,
  type VmConfig,
} from '../../api/index.js';
import { vmDisplay, type VmRuntimePaths } from '../../qemu/argv.js';
import { settleOutgoing } from '../../qemu/migration.js';
import { probeQemu, binaryId, QemuCapsSchema, type QemuCaps } from '../../qemu/probe.js';
import { isQemuAlive, processAlive, spawnDetached } from '../../qemu/process.js';
import { QmpClient } from '../../qemu/qmp.js';
import { cpuIdentity, detectAccel, diskFreeBytes, findQemu, hasRdma, memoryMiB } from '../../qemu/system.js';
import { ensureDir, labGuestImage, readJson, socketDir, withLock, writeJsonAtomic } from '../store.js';

/** What Ferry remembers about a VM's QEMU process between invocations. */
export const RuntimeSchema = z.object({
  pid: z.number().int(),
  qmpSocket: z.string(),
  statusSocket: z.string(),
  /** The serial port's socket (console); null for a QEMU started before Ferry had consoles. */
  serialSocket: z.string().nullable().default(null),
  /** QEMU's VNC server; null when the VM has no display (or was started before Ferry had consoles). */
  vncSocket: z.string().nullable().default(null),
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
  /** A destination's migration relay (qemu/relay.ts), if its move uses multifd. */
  relayPid: z.number().int().nullable().default(null),
});
export type Runtime = z.infer<typeof RuntimeSchema>;

/** A QMP session held for the length of a migration, with the cut-over moments it saw. */
export interface Session {
  qmp: QmpClient;
  /** STOP events seen (a storage-only move must not pause the guest). */
  stops: number;
  stoppedAt: number | null;
  resumedAt: number | null;
  downtimeLimitMs: number;
}

export const eventMs = (ev: { timestamp: { seconds: number; microseconds: number } }): number =>
  ev.timestamp.seconds * 1000 + Math.round(ev.timestamp.microseconds / 1000);

export function newRuntime(
  pid: number,
  paths: VmRuntimePaths,
  accel: string,
  migration: Runtime['migration'],
): Runtime {
  return {
    pid,
    qmpSocket: paths.qmpSocket,
    statusSocket: paths.statusSocket,
    serialSocket: paths.serialSocket ?? null,
    vncSocket: paths.vncSocket ?? null,
    startedAt: new Date().toISOString(),
    accel,
    stopRequested: false,
    crashedAt: null,
    crashReason: null,
    migration,
    relayPid: null,
  };
}

/** A migration marker whose owning Ferry process died no longer blocks the VM. */
export function activeMigration(rt: Runtime | null): Runtime['migration'] {
  const m = rt?.migration ?? null;
  if (!m) return null;
  return processAlive(m.ownerPid) ? m : null;
}

export function refuseWhileMigrating(name: string, rt: Runtime): void {
  const m = activeMigration(rt);
  if (m) {
    throw new FerryError(
      'vm-migrating',
      `VM "${name}" is being moved (${m.id}); cancel the move first: ferry cancel ${m.id}`,
    );
  }
}

/** The VM's QEMU is up: a runtime record that is not a crash, whose process answers. */
export function isRunning(rt: Runtime | null): rt is Runtime {
  return !!rt && !rt.crashedAt && isQemuAlive(rt.pid, rt.qmpSocket);
}

export class LocalContext {
  readonly name: string;
  private readonly sessions = new Map<string, Session>();

  constructor(readonly record: HostRecord) {
    this.name = record.name;
  }

  // ---- files -----------------------------------------------------------------------------------

  get vmsDir(): string {
    return path.join(this.record.stateDir, 'vms');
  }
  vmDir(name: string): string {
    return path.join(this.vmsDir, name);
  }
  configPath(name: string): string {
    return path.join(this.vmDir(name), 'vm.json');
  }
  /** A destination's configuration until Finish commits it as vm.json. */
  incomingConfigPath(name: string): string {
    return path.join(this.vmDir(name), 'incoming.json');
  }
  runtimePath(name: string): string {
    return path.join(this.vmDir(name), 'runtime.json');
  }
  lockPath(name: string): string {
    return path.join(this.vmDir(name), 'vm');
  }
  runtimePaths(vm: VmConfig): VmRuntimePaths {
    const sock = socketDir(this.record.stateDir);
    const id = vm.uuid.replace(/-/g, '').slice(0, 12);
    return {
      qmpSocket: path.join(sock, `${id}.qmp`),
      statusSocket: path.join(sock, `${id}.st`),
      serialSocket: path.join(sock, `${id}.ser`),
      ...(vmDisplay(vm) === 'vga' ? { vncSocket: path.join(sock, `${id}.vnc`) } : {}),
      serialLog: path.join(this.vmDir(vm.name), 'serial.log'),
      pidFile: path.join(this.vmDir(vm.name), 'qemu.pid'),
      labGuestKernel: labGuestImage(),
    };
  }
  /** Every socket of a VM's QEMU (removed before a start and after a stop: QEMU leaves the VNC one). */
  socketsOf(paths: VmRuntimePaths | Runtime): string[] {
    return [paths.qmpSocket, paths.statusSocket, paths.serialSocket, paths.vncSocket].filter(
      (s): s is string => typeof s === 'string',
    );
  }
  qemuLog(name: string): string {
    return path.join(this.vmDir(name), 'qemu.log');
  }

  /**
   * QEMU runs in the host's network namespace when it has one (`ip netns exec` keeps the pid), with
   * `env` added to this process's environment.
   */
  spawnQemu(binary: string, argv: string[], log: string, env?: Record<string, string>): Promise<number> {
    const ns = this.record.netns;
    return ns
      ? spawnDetached('ip', ['netns', 'exec', ns, binary, ...argv], log, env)
      : spawnDetached(binary, argv, log, env);
  }

  /** Removes Ferry's own files of a VM on this host (configuration, runtime, logs), never its disks. */
  async removeVmState(name: string): Promise<void> {
    const dir = this.vmDir(name);
    for (const f of [
      'vm.json',
      'incoming.json',
      'runtime.json',
      'qemu.log',
      'qemu.pid',
      'serial.log',
      'vm.lock',
      'relay.port',
      'relay.port.tmp',
      'relay.log',
    ]) {
      await fs.promises.rm(path.join(dir, f), { recursive: true, force: true });
    }
    await fs.promises.rmdir(dir).catch(() => undefined);
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

  async qemuBinary(): Promise<string> {
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
      hostname: os.hostname(),
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

  // ---- VMs: configuration, runtime record, lock ------------------------------------------------

  async hasVm(name: string): Promise<boolean> {
    return fs.existsSync(this.configPath(name));
  }

  async vmConfig(name: string): Promise<VmConfig> {
    const vm = await readJson(this.configPath(name), VmConfigSchema);
    if (!vm) throw new FerryError('unknown-vm', `no VM named "${name}" on host ${this.name}`);
    return vm;
  }

  async runtime(name: string): Promise<Runtime | null> {
    return readJson(this.runtimePath(name), RuntimeSchema);
  }

  async withVmLock<T>(name: string, fn: () => Promise<T>): Promise<T> {
    if (!(await this.hasVm(name)))
      throw new FerryError('unknown-vm', `no VM named "${name}" on host ${this.name}`);
    return withLock(this.lockPath(name), fn);
  }

  async setMigrationMarker(name: string, marker: Runtime['migration']): Promise<void> {
    const rt = await this.runtime(name);
    if (rt) await writeJsonAtomic(this.runtimePath(name), { ...rt, migration: marker });
  }

  /**
   * Before the skeleton of a move is killed: if the move's source (on another of Ferry's own hosts, all
   * on this machine) still sends, end its migration first, while the skeleton still reads. A Ferry
   * process that died mid-move leaves both running, and "the next look" may reach the destination
   * first; see settleOutgoing in qemu/migration.ts for why the order matters.
   */
  async settleSourceOf(name: string, moveId: string): Promise<void> {
    const hostsDir = path.dirname(this.record.stateDir);
    const hosts = await fs.promises.readdir(hostsDir).catch(() => [] as string[]);
    for (const h of hosts) {
      if (path.join(hostsDir, h) === this.record.stateDir) continue;
      const file = path.join(hostsDir, h, 'vms', name, 'runtime.json');
      const rt = await readJson(file, RuntimeSchema).catch(() => null);
      if (rt?.migration?.id !== moveId || rt.migration.role !== 'source' || !isRunning(rt)) continue;
      const qmp = await QmpClient.connect(rt.statusSocket, { timeoutMs: 3000 }).catch(() => null);
      if (!qmp) continue;
      try {
        await settleOutgoing(qmp).catch(() => undefined);
      } finally {
        await qmp.close();
      }
    }
  }

  // ---- QMP sessions of moves in progress --------------------------------------------------------

  async openSession(name: string, socket: string): Promise<Session> {
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

  session(name: string): Session {
    const s = this.sessions.get(name);
    if (!s || s.qmp.isClosed) {
      throw new FerryError('migration-failed', `lost the QMP session of "${name}" on ${this.name}`);
    }
    return s;
  }

  /** The open session, if any: for steps that act on it only when it is there. */
  openSessionOf(name: string): Session | null {
    const s = this.sessions.get(name);
    return s && !s.qmp.isClosed ? s : null;
  }

  /** The move's session, or a new one if it was lost: a rollback must still reach QEMU. */
  async sessionForCleanup(name: string): Promise<Session> {
    const s = this.openSessionOf(name);
    if (s) return s;
    const rt = await this.runtime(name);
    if (!rt) throw new FerryError('vm-not-running', `VM "${name}" is not running on ${this.name}`);
    return this.openSession(name, rt.qmpSocket);
  }

  async closeSession(name: string): Promise<void> {
    const s = this.sessions.get(name);
    this.sessions.delete(name);
    await s?.qmp.close();
  }
}
