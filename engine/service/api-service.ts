// The engine behind the API contract: validates every call's input with zod (whatever the transport,
// the caller is untrusted), runs it on the inventory and the migration manager, and pushes events.
// Transports (Electron IPC, WebSocket) only move bytes to and from here.
import { z } from 'zod';
import {
  api,
  FerryError,
  isFerryError,
  isMethod,
  type ApiError,
  type ApiMethods,
  type MethodName,
  type Output,
  type ServerEvent,
} from '../api/index.js';
import { Inventory } from '../host/inventory.js';
import { closeLibvirtConnections, onLibvirtChange } from '../host/libvirt/connection.js';
import { recoverAbandonedMoves } from '../migration/libvirt-recovery.js';
import { MigrationManager } from '../migration/manager.js';
import { findQemu, installHint } from '../qemu/system.js';

type Handlers = { [M in MethodName]: (input: z.output<ApiMethods[M]['input']>) => Promise<Output<M>> };

const MUTATING = new Set<MethodName>([
  'updateHostSettings',
  'addLocalHost',
  'addLibvirtHost',
  'reconnectHost',
  'removeHost',
  'labUp',
  'labDown',
  'createVm',
  'vmAction',
]);

export class ApiService {
  private readonly listeners = new Set<(e: ServerEvent) => void>();
  private readonly handlers: Handlers;

  constructor(
    readonly inv: Inventory = new Inventory(),
    readonly manager: MigrationManager = new MigrationManager(inv),
  ) {
    manager.subscribe((event) => {
      this.push({ kind: 'migration', event });
      if (
        event.type === 'summary' ||
        (event.type === 'phase' && event.phase === 5 && event.state === 'completed')
      ) {
        this.push({ kind: 'inventory-changed' });
      }
    });
    this.handlers = this.makeHandlers();
    // A libvirt host that connects, drops, or whose domains change (also through virsh) makes every
    // client refresh at once rather than at its next poll.
    this.unsubscribeLibvirt = onLibvirtChange(() => this.push({ kind: 'inventory-changed' }));
  }

  private readonly unsubscribeLibvirt: () => void;

  /** Stops listening to libvirt hosts and closes their connections (the process is ending). */
  async dispose(): Promise<void> {
    this.unsubscribeLibvirt();
    await closeLibvirtConnections();
  }

  subscribe(listener: (e: ServerEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private push(e: ServerEvent): void {
    for (const l of this.listeners) l(e);
  }

  /** Runs one call from an untrusted client. Throws FerryError('bad-input') for a malformed call. */
  async call(method: string, input: unknown): Promise<unknown> {
    if (!isMethod(method)) throw new FerryError('bad-input', `unknown API method "${method}"`);
    const parsed = api[method].input.safeParse(input ?? {});
    if (!parsed.success) throw new FerryError('bad-input', `${method}: ${z.prettifyError(parsed.error)}`);
    const handler = this.handlers[method] as (i: unknown) => Promise<unknown>;
    const result = await handler(parsed.data);
    if (MUTATING.has(method)) this.push({ kind: 'inventory-changed' });
    return result;
  }

  private makeHandlers(): Handlers {
    const { inv, manager } = this;
    return {
      setupStatus: async () => {
        const records = await inv.records();
        let qemuVersion: string | null = null;
        let qemuInstalled = true;
        try {
          findQemu(null);
        } catch {
          qemuInstalled = false;
        }
        // Only Ferry's own hosts run this machine's QEMU; a libvirt server (maybe unreachable) says
        // nothing about it.
        const own = records.find((r) => r.kind !== 'libvirt');
        if (qemuInstalled && own) {
          qemuVersion = await inv
            .driverFor(own)
            .facts()
            .then((f) => f.qemuVersion)
            .catch(() => null);
        }
        return {
          qemuInstalled,
          qemuVersion,
          installHint: qemuInstalled ? null : installHint(),
          hostCount: records.length,
          labUp: records.some((r) => r.kind === 'lab' || r.lab),
        };
      },
      listHosts: () => inv.hostSummaries(),
      hostDetails: async ({ host }) => {
        const h = await inv.host(host);
        const [facts, settings] = await Promise.all([h.facts(), h.settings()]);
        return { record: h.record, facts, settings };
      },
      updateHostSettings: async ({ host, patch }) => (await inv.host(host)).updateSettings(patch),
      addLocalHost: ({ name }) => inv.addLocalHost(name),
      addLibvirtHost: (req) => inv.addLibvirtHost(req),
      reconnectHost: ({ host }) => inv.reconnectHost(host),
      removeHost: async ({ host }) => {
        await inv.removeHost(host);
        return { removed: host };
      },
      labUp: async ({ hosts, withVm, libvirt }) => {
        const records = await inv.labUp(hosts, { libvirt });
        if (withVm) {
          await inv.createVm({
            name: 'lab-vm',
            host: records[0]!.name,
            memoryMiB: 256,
            labGuest: { workingSetMiB: 32, dirtyRateMiBs: 20 },
          });
          await (await inv.host(records[0]!.name)).startVm('lab-vm');
        }
        return records;
      },
      labDown: () => inv.labDown(),
      // A move whose Ferry process died is settled first (libvirt-recovery.ts).
      listVms: async () => {
        await recoverAbandonedMoves(inv);
        return inv.listVms();
      },
      vmInfo: async ({ name }) => (await inv.locate(name)).vmInfo(name),
      createVm: (req) => inv.createVm(req),
      vmAction: async ({ name, action }) => {
        if (action === 'delete') {
          await inv.deleteVm(name);
          return null;
        }
        const h = await inv.locate(name);
        switch (action) {
          case 'start':
            return h.startVm(name);
          case 'shutdown':
            return h.stopVm(name, { force: false, timeoutMs: 30_000 });
          case 'turn-off':
            return h.stopVm(name, { force: true, timeoutMs: 0 });
          case 'pause':
            return h.pauseVm(name);
          case 'resume':
            return h.resumeVm(name);
        }
      },
      checkMove: (req) => manager.check(req),
      checkDestinations: async (req) => {
        const from = (await inv.locate(req.vm)).name;
        const hosts = (await inv.records()).filter((r) => r.name !== from || req.kind === 'storage');
        return Promise.all(
          hosts.map(async (h) => {
            try {
              return { host: h.name, report: await manager.check({ ...req, to: h.name }) };
            } catch (err) {
              const e = toApiError(err);
              return {
                host: h.name,
                report: { errors: [{ code: e.code, message: e.message }], warnings: [] },
              };
            }
          }),
        );
      },
      startMove: async (req) => {
        const started = await manager.start(req);
        void started.done.catch(() => undefined); // the outcome travels as a summary event
        return { id: started.id };
      },
      cancelMove: ({ id }) => manager.cancel(id),
      listMigrations: async () => {
        await recoverAbandonedMoves(inv);
        return (await manager.history.list()).map(({ samples: _samples, ...rest }) => rest);
      },
      migration: ({ id }) => manager.history.get(id),
      queue: () => manager.queue(),
    };
  }
}

/** The error shape every transport sends; internals of unexpected errors stay on this side. */
export function toApiError(err: unknown): ApiError {
  if (isFerryError(err)) return err.toJSON();
  return { code: 'internal', message: err instanceof Error ? err.message : String(err) };
}
