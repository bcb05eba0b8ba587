// Pre-flight checks before any live migration (the seed's Q1-Q7, R6 and the hosts' settings), as a
// report of blocking errors and warnings. Gathering talks to both hosts; judging is a pure function.
import crypto from 'node:crypto';
import path from 'node:path';
import {
  FerryError,
  type CheckItem,
  type HostRecord,
  type HostFacts,
  type HostSettings,
  type MoveOptions,
  type MoveRequestParsed,
  type PreflightReport,
  type VmConfig,
  type VmSummary,
} from '../api/index.js';
import type { HostDriver } from '../host/driver.js';
import { LibvirtHost } from '../host/libvirt/libvirt-host.js';
import { libvirtMovePreflight, type LibvirtMovePlan } from './libvirt-preflight.js';
import { brokenMigrationMessage, planMigration } from '../qemu/migration.js';
import { LocalHost } from '../host/local/local-host.js';
import type { MemoryMeasurement } from '../host/driver.js';
import { estimateMove, type FixedCosts } from './estimate.js';

export interface HostView {
  name: string;
  facts: HostFacts;
  settings: HostSettings;
  migrationAddress: string;
}

/** Everything the judgement needs, gathered from both hosts. */
export interface PreflightInput {
  request: MoveRequestParsed;
  vm: VmConfig;
  vmState: VmSummary['state'];
  source: HostView;
  dest: HostView;
  destHasVm: boolean;
  options: MoveOptions;
  /** Disk ids whose file on the source is a host device (a pass-through disk). */
  passthroughDisks: string[];
  /** Per disk: can the destination reach the very same file (not just the same path)? */
  sharedStorage: { id: string; path: string; inRoots: boolean; sameFile: boolean; why: string }[];
  /**
   * The source QEMU's own migration state (Ferry's own hosts; null where not asked or QEMU did not
   * answer): a new migration starts only from one that is over and cleaned up.
   */
  sourceMigration?: { ready: boolean; broken: boolean; status: string } | null;
  /** The destination's migration address answers from the source's network (false: link down). */
  destReachable?: boolean;
}

/** Settings and per-move overrides → the options a move runs with. */
export function resolveOptions(req: MoveRequestParsed, s: HostSettings, src: HostFacts): MoveOptions {
  const performance = req.performance ?? s.performance;
  const compression =
    performance !== 'compression' ? null : src.multifdCompression.includes('zstd') ? 'zstd' : 'zlib';
  const downtimeMs = req.downtimeMs ?? s.downtimeMs;
  return {
    performance,
    channels: req.channels ?? s.channels,
    bandwidthMiBs: req.bandwidthMiBs ?? s.bandwidthMiBs,
    downtimeMs,
    downtimeCeilingMs: Math.max(downtimeMs, s.downtimeCeilingMs),
    convergence: req.convergence ?? s.convergence,
    compression,
  };
}

function compareVersions(a: string, b: string): number {
  const pa = a.split('.').map(Number);
  const pb = b.split('.').map(Number);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

/** Whether an IPv4 address lies in a CIDR subnet (or equals a plain address). */
export function inNetwork(address: string, network: string): boolean {
  const [base, bitsText] = network.split('/');
  if (bitsText === undefined) return address === base;
  const toInt = (ip: string): number | null => {
    const parts = ip.split('.').map(Number);
    if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255)) return null;
    return ((parts[0]! << 24) | (parts[1]! << 16) | (parts[2]! << 8) | parts[3]!) >>> 0;
  };
  const a = toInt(address);
  const b = toInt(base ?? '');
  const bits = Number(bitsText);
  if (a === null || b === null || !Number.isInteger(bits) || bits < 0 || bits > 32) return false;
  const mask = bits === 0 ? 0 : (~0 << (32 - bits)) >>> 0;
  return (a & mask) === (b & mask);
}

export function judge(i: PreflightInput): PreflightReport {
  const errors: CheckItem[] = [];
  const warnings: CheckItem[] = [];
  const err = (code: string, message: string): void => void errors.push({ code, message });
  const warn = (code: string, message: string): void => void warnings.push({ code, message });
  const { source: s, dest: d, vm } = i;

  if (s.name === d.name) err('same-host', `${vm.name} is already on ${d.name}; choose another destination`);
  if (i.vmState === 'migrating') {
    err('vm-migrating', `${vm.name} is already being moved`);
  } else if (i.vmState !== 'running' && i.vmState !== 'paused') {
    err('vm-not-running', `${vm.name} is ${i.vmState}; a live migration moves a running VM (start it first)`);
  }
  if (i.destHasVm) err('duplicate-vm', `a VM named "${vm.name}" already exists on ${d.name}`);
  // The source QEMU's migration state: 'failed' and 'cancelled' are fine to start again from once QEMU
  // has cleaned up; one still running (not Ferry's: that is vm-migrating), cancelling, or never cleaned
  // up is not.
  const sm = i.sourceMigration;
  if (sm && !sm.ready && i.vmState !== 'migrating') {
    if (sm.broken) err('migration-broken', brokenMigrationMessage(vm.name));
    else
      err(
        'migration-in-progress',
        `${vm.name}'s QEMU on ${s.name} is still running a migration (${sm.status}) that Ferry did not start; wait for it to end or cancel it first`,
      );
  }
  if (i.destReachable === false && s.name !== d.name)
    err(
      'destination-unreachable',
      `${d.name}'s migration address ${d.migrationAddress} does not answer from ${s.name}: is the link between them down?`,
    );

  // Settings of both hosts (Hyper-V Settings → Live Migrations).
  if (!s.settings.liveMigrationEnabled)
    err('migration-disabled-source', `outgoing live migrations are disabled on ${s.name}`);
  if (!d.settings.liveMigrationEnabled)
    err('migration-disabled-destination', `incoming live migrations are disabled on ${d.name}`);
  const nets = d.settings.incomingNetworks;
  if (nets !== 'any' && !nets.some((n) => inNetwork(d.migrationAddress, n))) {
    err(
      'network-not-accepted',
      `${d.name} accepts incoming migrations only on ${nets.join(', ')}, not on its migration address ${d.migrationAddress}`,
    );
  }

  // Q1: both hosts run VMs with the same kind of accelerator.
  if (s.facts.accel !== d.facts.accel) {
    err(
      'accelerator-mismatch',
      `${s.name} runs VMs with ${s.facts.accel}, ${d.name} with ${d.facts.accel}; both must use the same accelerator`,
    );
  }
  for (const h of [s, d]) {
    if (!h.facts.hardwareVirtualization) {
      warn(
        'no-hardware-virtualization',
        `${h.name} has no hardware virtualization (${h.facts.accelNote}): the VM works there, slowly`,
      );
    }
  }
  // Q2: same CPU maker, and the VM's CPU model exists on the destination.
  if (s.facts.cpuVendor !== d.facts.cpuVendor) {
    err(
      'cpu-vendor-mismatch',
      `${s.name} has ${s.facts.cpuVendor} processors, ${d.name} has ${d.facts.cpuVendor}; both must be of the same maker`,
    );
  }
  if (!d.facts.cpuModels.includes(vm.cpuModel)) {
    err('cpu-model-unsupported', `the VM's CPU model ${vm.cpuModel} is not available on ${d.name}`);
  }
  // Q4: virtual disks only (a host block or character device is a pass-through disk).
  for (const disk of vm.disks.filter((d) => i.passthroughDisks.includes(d.id))) {
    err(
      'passthrough-disk',
      `${disk.id} is a physical pass-through disk (${disk.path}); live migration needs virtual disks`,
    );
  }

  // Q6: shared storage: every file reachable by the destination, and the same file.
  if (!i.request.includeStorage) {
    for (const sh of i.sharedStorage) {
      if (!sh.inRoots)
        err(
          'storage-not-allowed',
          `${d.name} is not allowed to reach ${sh.path} (${sh.id}): it is outside its storage roots ` +
            `(${d.settings.storageRoots.join(', ') || 'none'}); move ${i.vm.name} with its storage ` +
            `(ferry move ${i.vm.name} --to ${d.name} --include-storage), or put the disk on storage ` +
            `shared by both hosts, inside ${d.name}'s storage roots`,
        );
      else if (!sh.sameFile)
        err('storage-not-shared', `${d.name} does not see the same ${sh.id} at ${sh.path}: ${sh.why}`);
    }
  }
  // R6: same QEMU version or newer, with the VM's machine type.
  if (compareVersions(d.facts.qemuVersion, s.facts.qemuVersion) < 0) {
    err(
      'older-destination',
      `${d.name} runs QEMU ${d.facts.qemuVersion}, older than ${s.name}'s ${s.facts.qemuVersion}; moving to an older version is not supported`,
    );
  }
  if (!d.facts.machineTypes.includes(vm.machineType)) {
    err(
      'machine-type-unsupported',
      `${d.name} (QEMU ${d.facts.qemuVersion}) does not support the VM's configuration version ${vm.machineType}`,
    );
  }
  // Memory on the destination, beyond what it keeps for itself.
  const free = d.facts.memFreeMiB - d.settings.reservedMemoryMiB;
  if (vm.memoryMiB > free)
    err(
      'insufficient-memory',
      `${vm.name} needs ${vm.memoryMiB} MiB; ${d.name} has ${Math.max(0, free)} MiB available`,
    );

  // The performance option and convergence policy.
  const o = i.options;
  if (o.performance === 'rdma' && !(s.facts.rdma && d.facts.rdma)) {
    err(
      'rdma-unavailable',
      `RDMA needs RDMA-capable links on both hosts (${[s, d]
        .filter((h) => !h.facts.rdma)
        .map((h) => h.name)
        .join(' and ')} ${[s, d].filter((h) => !h.facts.rdma).length > 1 ? 'have' : 'has'} none)`,
    );
  }
  try {
    planMigration(o);
  } catch (e) {
    err('options-conflict', (e as Error).message);
  }
  if (o.performance === 'compression' && o.compression === 'zlib') {
    warn(
      'zstd-missing',
      `zstd is not available in ${s.name}'s QEMU: Compression uses zlib, which is CPU-bound`,
    );
  }
  if (o.performance === 'compression' && !d.facts.multifdCompression.includes(o.compression ?? 'zstd')) {
    err('compression-unsupported', `${d.name}'s QEMU cannot decompress ${o.compression}`);
  }
  return { errors, warnings };
}

async function hostView(h: HostDriver): Promise<HostView> {
  const [facts, settings] = await Promise.all([h.facts(), h.settings()]);
  return { name: h.name, facts, settings, migrationAddress: h.record.migrationAddress };
}

function underRoots(file: string, roots: string[]): boolean {
  return roots.some((r) => {
    const rel = path.relative(path.resolve(r), path.resolve(file));
    return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
  });
}

/**
 * Q6 by file identity: the source leaves a random marker beside each disk and the destination must
 * read it back at the same path, so two different folders that merely share a name do not pass.
 */
async function checkSharedStorage(
  vm: VmConfig,
  source: HostDriver,
  dest: HostDriver,
  destRoots: string[],
): Promise<PreflightInput['sharedStorage']> {
  const out: PreflightInput['sharedStorage'] = [];
  for (const disk of vm.disks) {
    const inRoots = underRoots(disk.path, destRoots);
    const [seen] = await dest.statFiles([disk.path]);
    if (!seen?.exists) {
      out.push({
        id: disk.id,
        path: disk.path,
        inRoots,
        sameFile: false,
        why: 'the file does not exist there',
      });
      continue;
    }
    const token = crypto.randomBytes(16).toString('hex');
    const marker = await source.writeMarker(path.dirname(disk.path), token);
    try {
      const read = await dest.readMarker(marker);
      out.push({
        id: disk.id,
        path: disk.path,
        inRoots,
        sameFile: read === token,
        why:
          read === token
            ? ''
            : 'the folder there is different storage (a marker written by the source is not visible)',
      });
    } finally {
      await source.removeFile(marker);
    }
  }
  return out;
}

/** A host's own local storage: where shared-nothing moves put disks unless told otherwise. */
export function localStorageDir(rec: HostRecord): string {
  return rec.kind === 'lab'
    ? path.join(path.dirname(rec.vmDir), rec.name)
    : path.join(rec.stateDir, 'storage');
}

export interface DiskTarget {
  id: string;
  path: string;
}

/**
 * Where each disk goes (Hyper-V's move options): every file to one folder, a folder per disk, or by
 * default the destination's own storage. Files keep their names. Checked: absolute paths inside the
 * destination's storage roots, no two disks onto one file, nothing overwritten, room for each.
 */
export async function planDiskTargets(
  req: MoveRequestParsed,
  vm: VmConfig,
  dest: HostDriver,
  roots: string[],
): Promise<{ targets: DiskTarget[]; errors: CheckItem[] }> {
  const errors: CheckItem[] = [];
  const storageOnly = req.kind === 'storage';
  const targets: DiskTarget[] = [];
  const folderOf = (diskId: string): string | null => {
    if (req.diskPaths) return req.diskPaths[diskId] ?? null;
    if (req.storagePath) return req.storagePath;
    return storageOnly ? null : path.join(localStorageDir(dest.record), vm.name);
  };
  if (storageOnly && !req.diskPaths && !req.storagePath) {
    errors.push({
      code: 'no-destination-path',
      message: 'a storage move needs --storage-path DIR or --disk-path DISK=DIR',
    });
  }
  for (const id of Object.keys(req.diskPaths ?? {})) {
    if (!vm.disks.some((d) => d.id === id)) {
      errors.push({
        code: 'unknown-disk',
        message: `${vm.name} has no disk ${id} (its disks: ${vm.disks.map((d) => d.id).join(', ') || 'none'})`,
      });
    }
  }
  for (const disk of vm.disks) {
    const folder = folderOf(disk.id);
    if (folder === null) {
      if (!storageOnly)
        errors.push({ code: 'disk-path-missing', message: `no destination folder for ${disk.id}` });
      continue;
    }
    if (!path.isAbsolute(folder)) {
      errors.push({
        code: 'relative-path',
        message: `${folder} is a relative path; give an absolute folder for ${disk.id}`,
      });
      continue;
    }
    if (!underRoots(folder, roots)) {
      errors.push({
        code: 'path-outside-roots',
        message: `${folder} is outside ${dest.name}'s storage roots (${roots.join(', ') || 'none'})`,
      });
      continue;
    }
    const file = path.join(path.resolve(folder), path.basename(disk.path));
    if (file === path.resolve(disk.path)) {
      if (storageOnly) errors.push({ code: 'same-location', message: `${disk.id} is already at ${file}` });
      else
        errors.push({
          code: 'same-location',
          message: `${file} is ${disk.id}'s current file; choose another folder`,
        });
      continue;
    }
    if (targets.some((t) => t.path === file)) {
      errors.push({ code: 'target-collision', message: `two disks would be copied to ${file}` });
      continue;
    }
    targets.push({ id: disk.id, path: file });
  }
  const seen = await dest.statFiles(targets.map((t) => t.path));
  for (const f of seen.filter((x) => x.exists)) {
    errors.push({
      code: 'target-exists',
      message: `${f.path} already exists on ${dest.name}; Ferry will not overwrite it`,
    });
  }
  // Room at each destination folder for the disks going there (their full virtual size).
  const need = new Map<string, number>();
  for (const t of targets) {
    const size = vm.disks.find((d) => d.id === t.id)!.sizeBytes;
    need.set(path.dirname(t.path), (need.get(path.dirname(t.path)) ?? 0) + size);
  }
  let free: { dir: string; freeBytes: number }[] = [];
  try {
    free = await dest.freeSpace([...need.keys()]);
  } catch (err) {
    // A folder the destination does not have (a libvirt host cannot create one for Ferry).
    if (!(err instanceof FerryError && err.code === 'bad-input')) throw err;
    errors.push({ code: 'no-such-folder', message: err.message });
  }
  for (const f of free) {
    const n = need.get(f.dir)!;
    if (n > f.freeBytes) {
      errors.push({
        code: 'insufficient-disk',
        message: `${f.dir} on ${dest.name} has ${gib(f.freeBytes)} free; the disks going there need ${gib(n)}`,
      });
    }
  }
  return { targets, errors };
}

const gib = (b: number): string => `${(b / 1024 ** 3).toFixed(1)} GiB`;

export interface Prepared {
  report: PreflightReport;
  options: MoveOptions;
  vm: VmConfig;
  /** Disk targets for shared-nothing and storage-only moves. */
  targets: DiskTarget[];
  /** A move between libvirt hosts: the flags and parameters of libvirt's migration protocol. */
  libvirt?: LibvirtMovePlan;
}

/** Storage-only move (R4): same host, running VM, valid targets with room. */
async function storagePreflight(request: MoveRequestParsed, host: HostDriver): Promise<Prepared> {
  const [vm, info, view] = await Promise.all([
    host.vmConfig(request.vm),
    host.vmInfo(request.vm),
    hostView(host),
  ]);
  const options = resolveOptions(request, view.settings, view.facts);
  const errors: CheckItem[] = [];
  if (info.state === 'migrating')
    errors.push({ code: 'vm-migrating', message: `${vm.name} is already being moved` });
  else if (info.state !== 'running' && info.state !== 'paused') {
    errors.push({
      code: 'vm-not-running',
      message: `${vm.name} is ${info.state}; a live storage move needs it running`,
    });
  }
  if (vm.disks.length === 0) errors.push({ code: 'no-disks', message: `${vm.name} has no disks to move` });
  const { targets, errors: targetErrors } = await planDiskTargets(
    request,
    vm,
    host,
    view.settings.storageRoots,
  );
  return { report: { errors: [...errors, ...targetErrors], warnings: [] }, options, vm, targets };
}

/** A move between a libvirt host and one of Ferry's own: refused, they speak different protocols. */
async function mixedPreflight(
  request: MoveRequestParsed,
  source: HostDriver,
  dest: HostDriver,
): Promise<Prepared> {
  const vm = await source.vmConfig(request.vm);
  const view = await hostView(source);
  const kind = (h: HostDriver): string =>
    h.record.kind === 'libvirt' ? 'a libvirt host' : "one of Ferry's own hosts";
  return {
    report: {
      errors: [
        {
          code: 'mixed-host-kinds',
          message: `${source.name} is ${kind(source)} and ${dest.name} ${kind(dest)}: a VM moves only between hosts of the same kind (libvirt's migration protocol, or Ferry's own)`,
        },
      ],
      warnings: [],
    },
    options: resolveOptions(request, view.settings, view.facts),
    vm,
    targets: [],
  };
}

/** How long one measurement of a VM's memory serves every check that asks for it. */
export const MEASUREMENT_TTL_MS = 5000;
const measurements = new Map<string, { at: number | null; promise: Promise<MemoryMeasurement> }>();

/**
 * A VM's memory measured once for all the checks that ask within a few seconds (the wizard judges
 * every other host at once, and QEMU 7.2 measures one dirty rate per VM at a time, in whole seconds):
 * callers while it runs await the same measurement; a failed one is not kept.
 */
export function sharedMeasurement(host: LocalHost, vm: string): Promise<MemoryMeasurement> {
  const key = `${path.resolve(host.record.stateDir)}\0${vm}`;
  const hit = measurements.get(key);
  if (hit && (hit.at === null || Date.now() - hit.at < MEASUREMENT_TTL_MS)) return hit.promise;
  const entry: { at: number | null; promise: Promise<MemoryMeasurement> } = {
    at: null,
    promise: host.measureMemory(vm),
  };
  measurements.set(key, entry);
  entry.promise.then(
    () => (entry.at = Date.now()),
    () => {
      if (measurements.get(key) === entry) measurements.delete(key);
    },
  );
  return entry.promise;
}

export interface PreflightOptions {
  /**
   * Checks only (not a move's own pre-flight, which must not wait for a measurement): estimate the
   * move, with the fixed costs of past moves for the options it resolves to.
   */
  estimate?: { costs: (options: MoveOptions) => FixedCosts };
}

function withoutEstimate(p: Prepared, opts: PreflightOptions, note: string): Prepared {
  if (opts.estimate) {
    p.report.estimate = null;
    p.report.estimateNote = note;
  }
  return p;
}

export async function preflight(
  request: MoveRequestParsed,
  source: HostDriver,
  dest: HostDriver,
  opts: PreflightOptions = {},
): Promise<Prepared> {
  if ((source.record.kind === 'libvirt') !== (dest.record.kind === 'libvirt')) {
    return withoutEstimate(
      await mixedPreflight(request, source, dest),
      opts,
      'no estimate: the hosts are of different kinds',
    );
  }
  if (request.kind === 'storage')
    return withoutEstimate(
      await storagePreflight(request, source),
      opts,
      "no estimate for a storage-only move (only for live moves between Ferry's own hosts)",
    );
  if (source instanceof LibvirtHost && dest instanceof LibvirtHost) {
    return withoutEstimate(
      await libvirtMovePreflight(request, source, dest),
      opts,
      "no estimate for libvirt hosts yet: only moves between Ferry's own hosts are estimated (QEMU's dirty-rate measurement is not reached through libvirt here)",
    );
  }
  const [vm, info, s, d, destHasVm] = await Promise.all([
    source.vmConfig(request.vm),
    source.vmInfo(request.vm),
    hostView(source),
    hostView(dest),
    dest.hasVm(request.vm),
  ]);
  // The measurement takes a second: it runs while the rest is checked.
  const measuring =
    opts.estimate && source instanceof LocalHost && (info.state === 'running' || info.state === 'paused')
      ? sharedMeasurement(source, vm.name).then(
          (m) => ({ m, error: null }),
          (err: unknown) => ({ m: null, error: (err as Error).message }),
        )
      : null;
  const options = resolveOptions(request, s.settings, s.facts);
  const onSource = await source.statFiles(vm.disks.map((disk) => disk.path));
  const passthroughDisks = vm.disks.filter((_, n) => onSource[n]?.kind === 'device').map((disk) => disk.id);
  const sharedStorage = await checkSharedStorage(vm, source, dest, d.settings.storageRoots);
  const live = info.state === 'running' || info.state === 'paused';
  const [sourceMigration, destReachable] = await Promise.all([
    source instanceof LocalHost && live
      ? source.outgoingReadiness(vm.name).then((r) => r && { ...r, status: r.state.status })
      : null,
    source instanceof LocalHost && dest instanceof LocalHost
      ? source.canReach(d.migrationAddress, dest.record.portBase)
      : true,
  ]);
  const report = judge({
    sourceMigration,
    destReachable,
    passthroughDisks,
    request,
    vm,
    vmState: info.state,
    source: s,
    dest: d,
    destHasVm,
    options,
    sharedStorage,
  });
  let targets: DiskTarget[] = [];
  if (request.includeStorage) {
    const planned = await planDiskTargets(request, vm, dest, d.settings.storageRoots);
    targets = planned.targets;
    report.errors.push(...planned.errors);
  }
  if (opts.estimate) {
    const measured = measuring ? await measuring : null;
    if (!measured) report.estimateNote = `no estimate: ${vm.name} is ${info.state}, not running`;
    else if (report.errors.length > 0)
      report.estimateNote = 'no estimate: the pre-flight check found blocking errors';
    else if (!measured.m) report.estimateNote = `no estimate: measuring ${vm.name} failed: ${measured.error}`;
    if (!measured?.m || report.errors.length > 0) report.estimate = null;
    else {
      const link =
        (source instanceof LocalHost ? await source.linkRate() : null) ??
        (dest instanceof LocalHost ? await dest.linkRate() : null);
      // Shared-nothing: the disks' allocated bytes (a qcow2 file's size), at most their virtual size.
      const diskBytes = request.includeStorage
        ? vm.disks.reduce(
            (a, disk, n) => a + Math.min(onSource[n]?.size ?? disk.sizeBytes, disk.sizeBytes),
            0,
          )
        : 0;
      report.estimate = estimateMove({
        options,
        memoryBytes: vm.memoryMiB * 1024 * 1024,
        dirtyBytesPerSec: measured.m.dirtyBytesPerSec,
        dirtyRateWindowS: measured.m.windowS,
        zeroPageRatio: measured.m.zeroPageRatio,
        compressionRatio: measured.m.compressionRatio,
        linkBytesPerSec: link,
        diskBytes,
        costs: opts.estimate.costs(options),
      });
    }
  }
  return { report, options, vm, targets };
}
