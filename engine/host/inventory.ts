// The inventory: which hosts Ferry manages and where each lives. VM names are unique across all of
// them, so a VM is addressed by its name alone.
import fs from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import {
  CreateVmRequestSchema,
  FerryError,
  HostRecordSchema,
  type CreateVmRequest,
  type HostRecord,
  type HostSettings,
  type HostSummary,
  type VmInfo,
  type VmSummary,
} from '../api/index.js';
import { LibvirtClient } from '../libvirt/client.js';
import { parseLibvirtUri } from '../libvirt/transport.js';
import { probeQemu } from '../qemu/probe.js';
import { detectAccel } from '../qemu/system.js';
import type { HostDriver } from './driver.js';
import { createLink, planLink, removeLink } from './lab-link.js';
import { closeLibvirtConnections, libvirtConnection } from './libvirt/connection.js';
import { assertLibvirtLabPossible, startLibvirtLab, stopLibvirtLab } from './libvirt/lab.js';
import { LibvirtHost } from './libvirt/libvirt-host.js';
import { LocalHost } from './local/local-host.js';
import { ferryHome, isInside, readJson, realPathOf, socketDir, withLock, writeJsonAtomic } from './store.js';

export interface HostStatus {
  connected: boolean;
  connectionError: string | null;
  warning: string | null;
}

export interface AddLibvirtHostRequest {
  name: string;
  uri: string;
  sshKey: string | null;
  acceptHostKey: string | null;
}

/** libvirt's own port range for incoming migrations and NBD (qemu.conf migration_port_min/max). */
const LIBVIRT_PORT_BASE = 49152;

const InventorySchema = z.object({
  formatVersion: z.literal(1),
  hosts: z.array(HostRecordSchema),
});
type InventoryFile = z.infer<typeof InventorySchema>;

/** Lab hosts get port ranges 100 apart from here. */
const LAB_PORT_BASE = 47100;

/**
 * Settings only the administrator may change: a QEMU binary is a program Ferry runs, and the storage
 * roots bound which files VMs may use as disks. API clients (web token, renderer) are refused them
 * (engine/service/api-service.ts), unless the desktop app's main process asked the person at the machine.
 */
export const ADMIN_ONLY_SETTINGS = ['qemuBinary', 'storageRoots'] as const;
export type AdminOnlySetting = (typeof ADMIN_ONLY_SETTINGS)[number];

/** The administrator-only settings a patch really changes (a client resending the current value is fine). */
export function adminOnlyChanges(patch: Partial<HostSettings>, current: HostSettings): AdminOnlySetting[] {
  return ADMIN_ONLY_SETTINGS.filter(
    (k) => patch[k] !== undefined && JSON.stringify(patch[k]) !== JSON.stringify(current[k]),
  );
}

/** A path of a VM request (an existing disk image, or the folder for new disks) and where it really is. */
export interface RequestPath {
  what: 'disk image' | 'storage path';
  path: string;
  /** Symlinks resolved (libvirt hosts: only normalized, the file is on the server). */
  real: string;
  inRoots: boolean;
}

export class Inventory {
  constructor(readonly home: string = ferryHome()) {}

  private get file(): string {
    return path.join(this.home, 'inventory.json');
  }
  private get lockPath(): string {
    return path.join(this.home, 'inventory');
  }
  get labDir(): string {
    return path.join(this.home, 'lab');
  }

  private async load(): Promise<InventoryFile> {
    return (await readJson(this.file, InventorySchema)) ?? { formatVersion: 1, hosts: [] };
  }

  /** Serializes changes to the inventory and to the set of VM names across every Ferry process. */
  private locked<T>(fn: () => Promise<T>): Promise<T> {
    return withLock(this.lockPath, fn);
  }

  async records(): Promise<HostRecord[]> {
    return (await this.load()).hosts;
  }

  /**
   * The driver of a host. Every settings change through it is checked: a QEMU binary must be one Ferry
   * probes as QEMU, storage roots absolute folders. Who may change what is the API service's business.
   */
  driverFor(record: HostRecord): HostDriver {
    const driver: HostDriver = record.kind === 'libvirt' ? new LibvirtHost(record) : new LocalHost(record);
    const update = driver.updateSettings.bind(driver);
    driver.updateSettings = async (patch) => {
      await checkSettingsPatch(driver, patch);
      return update(patch);
    };
    return driver;
  }

  /**
   * The paths a VM request names (existing disk images, the folder for new disks) and whether each lies
   * inside the host's storage roots, compared after resolving symlinks on both sides.
   */
  async requestPaths(req: CreateVmRequest): Promise<RequestPath[]> {
    const h = await this.host(req.host);
    const remote = h.record.kind === 'libvirt';
    const real = (p: string): Promise<string> => (remote ? Promise.resolve(path.resolve(p)) : realPathOf(p));
    const roots = await Promise.all((await h.settings()).storageRoots.map(real));
    const named: Omit<RequestPath, 'real' | 'inRoots'>[] = [
      ...req.disks.flatMap((d) =>
        d.kind === 'image' ? [{ what: 'disk image' as const, path: d.path }] : [],
      ),
      ...(req.storagePath === undefined ? [] : [{ what: 'storage path' as const, path: req.storagePath }]),
    ];
    return Promise.all(
      named.map(async (n) => {
        const r = await real(n.path);
        return { ...n, real: r, inRoots: roots.some((root) => isInside(r, root)) };
      }),
    );
  }

  /**
   * What the administrator is told when a new VM's disk lies outside the host's storage roots (shared
   * storage): it runs, but a live move without its storage will be refused.
   */
  async diskWarnings(input: z.input<typeof CreateVmRequestSchema>): Promise<string[]> {
    const req = CreateVmRequestSchema.parse(input);
    const roots = (await (await this.host(req.host)).settings()).storageRoots;
    return (await this.requestPaths(req))
      .filter((p) => p.what === 'disk image' && !p.inRoots)
      .map(
        (p) =>
          `${p.path} is outside ${req.host}'s storage roots (${roots.join(', ') || 'none'}): a live move ` +
          `of ${req.name} will be refused unless it moves with its storage (ferry move ${req.name} --to HOST ` +
          '--include-storage); to move it over shared storage, put the disk inside the storage roots',
      );
  }

  /** Whether Ferry can reach the host now: always for its own hosts; a libvirt host's connection. */
  async hostStatus(h: HostDriver): Promise<HostStatus> {
    if (!(h instanceof LibvirtHost)) return { connected: true, connectionError: null, warning: null };
    const s = await h.connection();
    return { connected: s.connected, connectionError: s.error, warning: s.warning };
  }

  /**
   * The hosts that answer, and the names of those that do not: one server being down must never
   * hide the VMs of the others, nor fail a command about them.
   */
  private async reachable(): Promise<{ hosts: HostDriver[]; down: string[] }> {
    const all = await this.hosts();
    const status = await Promise.all(all.map((h) => this.hostStatus(h)));
    return {
      hosts: all.filter((_, i) => status[i]!.connected),
      down: all.filter((_, i) => !status[i]!.connected).map((h) => h.name),
    };
  }

  async host(name: string): Promise<HostDriver> {
    const hosts = await this.records();
    const rec = hosts.find((h) => h.name === name);
    if (!rec) {
      const known = hosts.map((h) => h.name).join(', ') || 'none (try: ferry lab up)';
      throw new FerryError('unknown-host', `unknown host "${name}"; known hosts: ${known}`);
    }
    return this.driverFor(rec);
  }

  async hosts(): Promise<HostDriver[]> {
    return (await this.records()).map((r) => this.driverFor(r));
  }

  async hostSummaries(): Promise<HostSummary[]> {
    return Promise.all((await this.hosts()).map((h) => this.hostSummary(h)));
  }

  private async hostSummary(h: HostDriver): Promise<HostSummary> {
    let status = await this.hostStatus(h);
    let vms: VmSummary[] = [];
    if (status.connected) {
      try {
        vms = await h.listVms();
      } catch (err) {
        if (h.record.kind !== 'libvirt') throw err;
        // The connection dropped between the look and the list.
        status = { ...status, connected: false, connectionError: (err as Error).message };
      }
    }
    return {
      ...h.record,
      ...status,
      vmCount: vms.length,
      runningCount: vms.filter((v) => v.state !== 'stopped' && v.state !== 'crashed').length,
    };
  }

  async listVms(): Promise<VmSummary[]> {
    const { hosts } = await this.reachable();
    const lists = await Promise.all(
      hosts.map((h) =>
        h.listVms().catch((err: unknown) => (h.record.kind === 'libvirt' ? [] : Promise.reject(err))),
      ),
    );
    return lists.flat();
  }

  /** The host that holds the VM. */
  async locate(vm: string): Promise<HostDriver> {
    const { hosts, down } = await this.reachable();
    // Every host is asked at once: a round trip per host would add up before every command.
    const has = await Promise.all(hosts.map((h) => h.hasVm(vm)));
    const found = hosts.filter((_, i) => has[i]);
    if (found.length > 1) {
      // A VM in a migration started outside Ferry (virsh) also shows on its destination, paused for
      // the incoming stream: the copy that runs is where the VM lives.
      for (const h of found) if ((await h.vmInfo(vm).catch(() => null))?.state === 'running') return h;
    }
    if (found[0]) return found[0];
    const unchecked = down.length ? `; not reachable now: ${down.join(', ')}` : '';
    throw new FerryError('unknown-vm', `no VM named "${vm}" on any host (see: ferry vm list)${unchecked}`);
  }

  async createVm(input: unknown): Promise<VmInfo> {
    const parsed = CreateVmRequestSchema.safeParse(input);
    if (!parsed.success) throw new FerryError('bad-input', z.prettifyError(parsed.error));
    const req: CreateVmRequest = parsed.data;
    return this.locked(async () => {
      const target = await this.host(req.host);
      for (const h of (await this.reachable()).hosts) {
        if (await h.hasVm(req.name)) {
          throw new FerryError(
            'duplicate-vm',
            `a VM named "${req.name}" already exists (on host ${h.name}); VM names are unique across hosts`,
          );
        }
      }
      return target.defineVm(req);
    });
  }

  async deleteVm(vm: string): Promise<void> {
    await this.locked(async () => (await this.locate(vm)).deleteVm(vm));
  }

  /** "This computer": a host for this machine's QEMU, with its VMs under FERRY_HOME/hosts/NAME/. */
  async addLocalHost(name: string): Promise<HostRecord> {
    return this.locked(async () => {
      const inv = await this.load();
      if (inv.hosts.some((h) => h.name === name))
        throw new FerryError('duplicate-host', `a host named ${name} already exists`);
      const stateDir = path.join(this.home, 'hosts', name);
      const rec: HostRecord = {
        name,
        kind: 'local',
        stateDir,
        migrationAddress: '127.0.0.1',
        portBase: 47000,
        vmDir: path.join(stateDir, 'storage'),
        netns: null,
        uri: null,
        lab: false,
        sshKey: null,
      };
      await this.driverFor(rec).facts(); // QEMU must be there before the host is
      await writeJsonAtomic(this.file, { ...inv, hosts: [...inv.hosts, rec] });
      return rec;
    });
  }

  /**
   * "Connect to Server…": a libvirt host by its URI. Ferry connects once before saving anything, so a
   * wrong URI, an unreachable host, a refused login, an unknown host key or a server without libvirtd
   * is reported (each as itself) and leaves the inventory as it was. Only the key's path is kept.
   */
  async addLibvirtHost(req: AddLibvirtHostRequest): Promise<HostRecord> {
    const name = HostRecordSchema.shape.name.safeParse(req.name);
    if (!name.success) throw new FerryError('bad-input', name.error.issues[0]!.message);
    const uri = parseLibvirtUri(req.uri);
    let sshKey: string | null = null;
    if (req.sshKey !== null) {
      sshKey = path.resolve(req.sshKey);
      try {
        await fs.promises.access(sshKey, fs.constants.R_OK);
      } catch {
        throw new FerryError('bad-input', `cannot read the SSH key file ${sshKey}`);
      }
      if (uri.transport !== 'ssh') {
        throw new FerryError('bad-input', `--ssh-key is for qemu+ssh:// URIs; ${req.uri} does not use SSH`);
      }
    }
    return this.locked(async () => {
      const inv = await this.load();
      if (inv.hosts.some((h) => h.name === req.name))
        throw new FerryError('duplicate-host', `a host named ${req.name} already exists`);
      const same = inv.hosts.find((h) => h.uri === req.uri);
      if (same) throw new FerryError('duplicate-host', `${req.uri} is already added, as ${same.name}`);
      const client = await LibvirtClient.connect({
        uri: req.uri,
        sshKey,
        acceptHostKey: req.acceptHostKey,
        timeoutMs: 10_000,
      });
      try {
        await client.getHostname();
      } finally {
        await client.close().catch(() => undefined);
      }
      const stateDir = path.join(this.home, 'hosts', req.name);
      const rec: HostRecord = {
        name: req.name,
        kind: 'libvirt',
        stateDir,
        migrationAddress: uri.host || '127.0.0.1',
        portBase: LIBVIRT_PORT_BASE,
        // Where Ferry puts files it chooses on the server (storage roots); existing disks stay put.
        vmDir: '/var/lib/libvirt/images',
        netns: null,
        uri: req.uri,
        lab: false,
        sshKey,
      };
      await writeJsonAtomic(this.file, { ...inv, hosts: [...inv.hosts, rec] });
      return rec;
    });
  }

  /** Drops a libvirt host's connection and opens it again (the console's "Reconnect"). */
  async reconnectHost(name: string): Promise<HostSummary> {
    const h = await this.host(name);
    if (h.record.kind === 'libvirt')
      await libvirtConnection(h.record)
        .reconnect()
        .catch(() => undefined);
    return this.hostSummary(h);
  }

  /**
   * Forgets a host. Ferry's own hosts keep their files and are refused while they run VMs; a libvirt
   * host is only disconnected: the server and its domains are untouched.
   */
  async removeHost(name: string): Promise<void> {
    await this.locked(async () => {
      const inv = await this.load();
      const rec = inv.hosts.find((h) => h.name === name);
      if (!rec) throw new FerryError('unknown-host', `unknown host "${name}"`);
      if (rec.kind === 'libvirt') {
        await writeJsonAtomic(this.file, { ...inv, hosts: inv.hosts.filter((h) => h.name !== name) });
        await closeLibvirtConnections(name);
        return;
      }
      const running = (await this.driverFor(rec).listVms()).filter(
        (v) => v.state !== 'stopped' && v.state !== 'crashed',
      );
      if (running.length > 0) {
        throw new FerryError(
          'vm-running',
          `${name} still runs ${running.map((v) => v.name).join(', ')}; stop or move them first`,
        );
      }
      await writeJsonAtomic(this.file, { ...inv, hosts: inv.hosts.filter((h) => h.name !== name) });
    });
  }

  async labHosts(): Promise<HostRecord[]> {
    return (await this.records()).filter((h) => h.kind === 'lab' || h.lab);
  }

  /**
   * Creates lab hosts lab1..labN on this machine: own state folders and port ranges, on loopback, one
   * shared storage folder (the lab's "SMB share"). Checks QEMU first so a broken setup adds nothing.
   */
  async labUp(count: number, opts: { linkMbit?: number; libvirt?: boolean } = {}): Promise<HostRecord[]> {
    if (!Number.isInteger(count) || count < 1 || count > 16) {
      throw new FerryError('bad-input', `--hosts must be a whole number from 1 to 16, not ${count}`);
    }
    if (opts.libvirt) await assertLibvirtLabPossible();
    return this.locked(async () => {
      const inv = await this.load();
      const existing = inv.hosts.filter((h) => h.kind === 'lab' || h.lab);
      if (existing.length > 0) {
        throw new FerryError(
          'lab-already-up',
          `the lab is already up (${existing.map((h) => h.name).join(', ')}); run "ferry lab down" first`,
        );
      }
      if (opts.libvirt) return this.libvirtLabUp(inv, count, opts.linkMbit ?? null);
      const shared = path.join(this.labDir, 'shared');
      const link = opts.linkMbit ? planLink(this.home, count) : null;
      const added: HostRecord[] = [];
      for (let i = 1; i <= count; i++) {
        const name = `lab${i}`;
        if (inv.hosts.some((h) => h.name === name)) {
          throw new FerryError('duplicate-host', `a host named ${name} already exists`);
        }
        added.push({
          name,
          kind: 'lab',
          stateDir: path.join(this.home, 'hosts', name),
          migrationAddress: link ? link.hosts[i - 1]!.address : '127.0.0.1',
          portBase: LAB_PORT_BASE + i * 100,
          vmDir: shared,
          netns: link ? link.hosts[i - 1]!.netns : null,
          uri: null,
          lab: true,
          sshKey: null,
        });
      }
      // Probe QEMU on the first host before writing anything (all lab hosts share the binary).
      await this.driverFor(added[0]!).facts();
      if (link) await createLink(link, opts.linkMbit!);
      await writeJsonAtomic(this.file, { ...inv, hosts: [...inv.hosts, ...added] });
      return added;
    });
  }

  /**
   * The libvirt lab: N libvirt "machines" on this computer (engine/host/libvirt/lab.ts), added as
   * libvirt hosts reached over SSH, exactly as real servers are. Their URI works with virsh as it is.
   */
  private async libvirtLabUp(
    inv: InventoryFile,
    count: number,
    linkMbit: number | null,
  ): Promise<HostRecord[]> {
    const names = Array.from({ length: count }, (_, i) => `lab${i + 1}`);
    const taken = names.filter((n) => inv.hosts.some((h) => h.name === n));
    if (taken.length) throw new FerryError('duplicate-host', `a host named ${taken[0]} already exists`);
    const machines = await startLibvirtLab({ home: this.home, count, linkMbit });
    const added: HostRecord[] = machines.map((m, i) => ({
      name: names[i]!,
      kind: 'libvirt',
      stateDir: path.join(this.home, 'hosts', names[i]!),
      migrationAddress: m.address,
      portBase: LIBVIRT_PORT_BASE,
      vmDir: m.sharedDir,
      netns: m.netns,
      uri: m.uris.ssh,
      lab: true,
      sshKey: null,
    }));
    try {
      // The lab runs on this machine: TCG unless it has real hardware virtualization.
      const accel = detectAccel('auto').hardwareVirtualization ? 'auto' : 'tcg';
      for (const rec of added) {
        const h = new LibvirtHost(rec);
        await h.updateSettings({ accel, storageRoots: [machines[0]!.sharedDir] });
        await h.facts();
      }
      await writeJsonAtomic(this.file, { ...inv, hosts: [...inv.hosts, ...added] });
    } catch (err) {
      for (const rec of added) await closeLibvirtConnections(rec.name);
      await stopLibvirtLab(this.home).catch(() => undefined);
      throw err;
    }
    return added;
  }

  /** Stops every VM on the lab hosts (turned off: the lab guest ignores ACPI) and removes the lab. */
  async labDown(): Promise<{ hosts: string[]; stoppedVms: string[] }> {
    return this.locked(async () => {
      const inv = await this.load();
      const lab = inv.hosts.filter((h) => h.kind === 'lab' || h.lab);
      if (lab.length === 0) throw new FerryError('lab-not-up', 'the lab is not up (nothing to take down)');
      if (lab.some((h) => h.kind === 'libvirt')) return this.libvirtLabDown(inv, lab);
      const stopped: string[] = [];
      for (const rec of lab) {
        const h = this.driverFor(rec);
        for (const vm of await h.listVms()) {
          if (vm.state !== 'stopped') {
            await h.stopVm(vm.name, { force: true, timeoutMs: 0 });
            stopped.push(vm.name);
          }
        }
      }
      await writeJsonAtomic(this.file, { ...inv, hosts: inv.hosts.filter((h) => h.kind !== 'lab') });
      if (lab.some((h) => h.netns)) await removeLink(planLink(this.home, lab.length));
      for (const rec of lab) {
        await fs.promises.rm(rec.stateDir, { recursive: true, force: true });
        await fs.promises.rm(socketDir(rec.stateDir), { recursive: true, force: true });
      }
      await fs.promises.rm(this.labDir, { recursive: true, force: true });
      return { hosts: lab.map((h) => h.name), stoppedVms: stopped };
    });
  }

  /** Turns off every domain of the libvirt lab (also ones defined with virsh) and removes it all. */
  private async libvirtLabDown(
    inv: InventoryFile,
    lab: HostRecord[],
  ): Promise<{ hosts: string[]; stoppedVms: string[] }> {
    const stopped: string[] = [];
    for (const rec of lab) {
      const vms = await new LibvirtHost(rec).listVms().catch(() => []);
      stopped.push(...vms.filter((v) => v.state !== 'stopped').map((v) => v.name));
      await closeLibvirtConnections(rec.name);
    }
    await writeJsonAtomic(this.file, { ...inv, hosts: inv.hosts.filter((h) => !lab.includes(h)) });
    await stopLibvirtLab(this.home);
    for (const rec of lab) await fs.promises.rm(rec.stateDir, { recursive: true, force: true });
    await fs.promises.rm(this.labDir, { recursive: true, force: true });
    return { hosts: lab.map((h) => h.name), stoppedVms: stopped };
  }
}

/** Checks the values of a settings change (whoever makes it). */
async function checkSettingsPatch(h: HostDriver, patch: Partial<HostSettings>): Promise<void> {
  const current = await h.settings();
  const changed = adminOnlyChanges(patch, current);
  if (changed.includes('storageRoots')) {
    const bad = (patch.storageRoots ?? []).find((r) => !path.isAbsolute(r));
    if (bad !== undefined)
      throw new FerryError('bad-input', `storage roots are absolute folders; "${bad}" is not absolute`);
  }
  if (changed.includes('qemuBinary') && patch.qemuBinary) {
    const binary = patch.qemuBinary;
    if (h.record.kind === 'libvirt') {
      throw new FerryError(
        'bad-input',
        `${h.name} is a libvirt host: its QEMU is the one its libvirtd runs, not a Ferry setting`,
      );
    }
    if (!path.isAbsolute(binary))
      throw new FerryError('bad-input', `qemuBinary is an absolute path; "${binary}" is not absolute`);
    try {
      await probeQemu(binary);
    } catch (err) {
      throw new FerryError(
        'bad-input',
        `${binary} is not a QEMU Ferry can use: ${(err as Error).message}`,
        'name a qemu-system binary, e.g. /usr/bin/qemu-system-x86_64 (or "none" for the one on PATH)',
      );
    }
  }
}
