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
  type HostSummary,
  type VmInfo,
  type VmSummary,
} from '../api/index.js';
import type { HostDriver } from './driver.js';
import { createLink, planLink, removeLink } from './lab-link.js';
import { LocalHost } from './local-host.js';
import { ferryHome, readJson, socketDir, withLock, writeJsonAtomic } from './store.js';

const InventorySchema = z.object({
  formatVersion: z.literal(1),
  hosts: z.array(HostRecordSchema),
});
type InventoryFile = z.infer<typeof InventorySchema>;

/** Lab hosts get port ranges 100 apart from here. */
const LAB_PORT_BASE = 47100;

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

  driverFor(record: HostRecord): HostDriver {
    return new LocalHost(record);
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
    return Promise.all(
      (await this.hosts()).map(async (h) => {
        const vms = await h.listVms();
        return {
          ...h.record,
          vmCount: vms.length,
          runningCount: vms.filter((v) => v.state !== 'stopped' && v.state !== 'crashed').length,
        };
      }),
    );
  }

  async listVms(): Promise<VmSummary[]> {
    return (await Promise.all((await this.hosts()).map((h) => h.listVms()))).flat();
  }

  /** The host that holds the VM. */
  async locate(vm: string): Promise<HostDriver> {
    for (const h of await this.hosts()) if (await h.hasVm(vm)) return h;
    throw new FerryError('unknown-vm', `no VM named "${vm}" on any host (see: ferry vm list)`);
  }

  async createVm(input: unknown): Promise<VmInfo> {
    const parsed = CreateVmRequestSchema.safeParse(input);
    if (!parsed.success) throw new FerryError('bad-input', z.prettifyError(parsed.error));
    const req: CreateVmRequest = parsed.data;
    return this.locked(async () => {
      const target = await this.host(req.host);
      for (const h of await this.hosts()) {
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
      };
      await this.driverFor(rec).facts(); // QEMU must be there before the host is
      await writeJsonAtomic(this.file, { ...inv, hosts: [...inv.hosts, rec] });
      return rec;
    });
  }

  /** Forgets a host (its files stay); refused while it runs VMs. */
  async removeHost(name: string): Promise<void> {
    await this.locked(async () => {
      const inv = await this.load();
      const rec = inv.hosts.find((h) => h.name === name);
      if (!rec) throw new FerryError('unknown-host', `unknown host "${name}"`);
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
    return (await this.records()).filter((h) => h.kind === 'lab');
  }

  /**
   * Creates lab hosts lab1..labN on this machine: own state folders and port ranges, on loopback, one
   * shared storage folder (the lab's "SMB share"). Checks QEMU first so a broken setup adds nothing.
   */
  async labUp(count: number, opts: { linkMbit?: number } = {}): Promise<HostRecord[]> {
    if (!Number.isInteger(count) || count < 1 || count > 16) {
      throw new FerryError('bad-input', `--hosts must be a whole number from 1 to 16, not ${count}`);
    }
    return this.locked(async () => {
      const inv = await this.load();
      const existing = inv.hosts.filter((h) => h.kind === 'lab');
      if (existing.length > 0) {
        throw new FerryError(
          'lab-already-up',
          `the lab is already up (${existing.map((h) => h.name).join(', ')}); run "ferry lab down" first`,
        );
      }
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
        });
      }
      // Probe QEMU on the first host before writing anything (all lab hosts share the binary).
      await this.driverFor(added[0]!).facts();
      if (link) await createLink(link, opts.linkMbit!);
      await writeJsonAtomic(this.file, { ...inv, hosts: [...inv.hosts, ...added] });
      return added;
    });
  }

  /** Stops every VM on the lab hosts (turned off: the lab guest ignores ACPI) and removes the lab. */
  async labDown(): Promise<{ hosts: string[]; stoppedVms: string[] }> {
    return this.locked(async () => {
      const inv = await this.load();
      const lab = inv.hosts.filter((h) => h.kind === 'lab');
      if (lab.length === 0) throw new FerryError('lab-not-up', 'the lab is not up (nothing to take down)');
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
}
