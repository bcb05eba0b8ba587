// Emptying a host before maintenance: every running VM goes to another host, over shared storage when
// the pre-flight allows it, else with its storage (shared-nothing). The moves then run within the
// per-host limits, queued by the scheduler.
import { FerryError, type MoveRequest, type Summary } from '../api/index.js';
import type { Inventory } from '../host/inventory.js';
import type { MigrationManager } from './manager.js';

export interface DrainItem {
  vm: string;
  memoryMiB: number;
  to: string | null;
  mode: 'shared' | 'with-storage' | 'stays';
  /** Why a VM stays, or why it needs its storage moved. */
  reason: string | null;
}

export async function planDrain(
  inv: Inventory,
  manager: MigrationManager,
  host: string,
  opts: { to?: string; auto?: boolean },
): Promise<DrainItem[]> {
  if (!opts.to && !opts.auto)
    throw new FerryError('bad-input', 'choose where the VMs go: --to HOST or --auto');
  if (opts.to && opts.auto) throw new FerryError('bad-input', '--to and --auto exclude each other');
  const source = await inv.host(host);
  if (opts.to) await inv.host(opts.to);
  if (opts.to === host) throw new FerryError('bad-input', `cannot drain ${host} onto itself`);
  const candidates = opts.to ? [opts.to] : (await inv.records()).map((r) => r.name).filter((n) => n !== host);
  if (candidates.length === 0)
    throw new FerryError('bad-input', `there is no other host to drain ${host} to`);
  const free = new Map<string, number>();
  for (const c of candidates) {
    const h = await inv.host(c);
    free.set(c, (await h.facts()).memFreeMiB - (await h.settings()).reservedMemoryMiB);
  }
  const vms = (await source.listVms()).filter((v) => v.state === 'running' || v.state === 'paused');
  // Largest first, each to the host with the most memory left (after what the plan already sends).
  vms.sort((a, b) => b.memoryMiB - a.memoryMiB);
  const plan: DrainItem[] = [];
  for (const vm of vms) {
    const order = [...candidates].sort((a, b) => free.get(b)! - free.get(a)!);
    let chosen: DrainItem | null = null;
    const why: string[] = [];
    for (const to of order) {
      if (free.get(to)! < vm.memoryMiB) {
        why.push(`${to}: not enough memory left in the plan`);
        continue;
      }
      const shared = await manager.check({ vm: vm.name, to });
      if (shared.errors.length === 0) {
        chosen = { vm: vm.name, memoryMiB: vm.memoryMiB, to, mode: 'shared', reason: null };
        break;
      }
      const withStorage = await manager.check({ vm: vm.name, to, includeStorage: true });
      if (withStorage.errors.length === 0) {
        chosen = {
          vm: vm.name,
          memoryMiB: vm.memoryMiB,
          to,
          mode: 'with-storage',
          reason: shared.errors.map((e) => e.message).join('; '),
        };
        break;
      }
      why.push(`${to}: ${withStorage.errors.map((e) => e.message).join('; ')}`);
    }
    if (chosen) free.set(chosen.to!, free.get(chosen.to!)! - vm.memoryMiB);
    plan.push(
      chosen ?? { vm: vm.name, memoryMiB: vm.memoryMiB, to: null, mode: 'stays', reason: why.join(' | ') },
    );
  }
  return plan;
}

/** Starts every planned move at once; the scheduler keeps them within the hosts' limits. */
export async function runDrain(
  manager: MigrationManager,
  plan: DrainItem[],
  base: Partial<MoveRequest> = {},
): Promise<Summary[]> {
  const started = await Promise.all(
    plan
      .filter((p) => p.to)
      .map((p) => manager.start({ ...base, vm: p.vm, to: p.to!, includeStorage: p.mode === 'with-storage' })),
  );
  return Promise.all(started.map((s) => s.done));
}
