// The engine behind the API contract: validates every call's input with zod (whatever the transport,
// the caller is untrusted), runs it on the inventory and the migration manager, and pushes events.
// Transports (Electron IPC, WebSocket) only move bytes to and from here.
//
// Who calls matters. An API client (the web mode's token holder, the desktop renderer) manages VMs and
// moves; it may not choose the programs Ferry runs or the files VMs may use: changing a host's
// `qemuBinary` or `storageRoots` is refused (or, in the desktop app, asked of the person at the
// machine in a dialog the main process draws), and the paths of a new VM must lie inside the storage
// roots after resolving symlinks. The administrator's CLI works on the inventory directly.
import path from 'node:path';
import { z } from 'zod';
import {
  api,
  ConsoleKindSchema,
  FerryError,
  HostNameSchema,
  VmRefSchema,
  isFerryError,
  isMethod,
  type ApiError,
  type ApiMethods,
  type HostSettings,
  type MethodName,
  type MoveRequestParsed,
  type Output,
  type ServerEvent,
} from '../api/index.js';
import { adminOnlyChanges, Inventory, type AdminOnlySetting } from '../host/inventory.js';
import { isInside, realPathOf } from '../host/store.js';
import { closeLibvirtConnections, onLibvirtChange } from '../host/libvirt/connection.js';
import { recoverAbandonedMoves } from '../migration/libvirt-recovery.js';
import { MigrationManager } from '../migration/manager.js';
import { findQemu, installHint } from '../qemu/system.js';
import { consoleInfo, openConsole, type ConsoleStream } from './console.js';

/** A console request as a transport receives it (a WebSocket's query, an IPC call). */
export const ConsoleRequestSchema = z
  .object({ vm: VmRefSchema, host: HostNameSchema.optional(), kind: ConsoleKindSchema })
  .strict();

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

/** 'admin': the person at the machine (no limits beyond the engine's own checks); 'client': an API client. */
export type CallerRole = 'admin' | 'client';

/** An administrator-only settings change an API client asked for, as the confirmation dialog shows it. */
export interface AdminChange {
  host: string;
  settings: AdminOnlySetting[];
  from: Partial<HostSettings>;
  to: Partial<HostSettings>;
}

export interface ApiServiceOptions {
  /** Default 'client': transports serve API clients. */
  role?: CallerRole;
  /**
   * Desktop app only: asks the person at the machine, in a dialog drawn by the Electron main process
   * (never by the renderer), whether the renderer's administrator-only change may go ahead. Without it
   * (web mode) such changes are refused.
   */
  confirmAdminChange?: (change: AdminChange) => Promise<boolean>;
  manager?: MigrationManager;
}

export class ApiService {
  private readonly listeners = new Set<(e: ServerEvent) => void>();
  private readonly handlers: Handlers;
  readonly manager: MigrationManager;
  readonly role: CallerRole;
  private readonly confirmAdminChange: ApiServiceOptions['confirmAdminChange'];

  constructor(
    readonly inv: Inventory = new Inventory(),
    options: ApiServiceOptions = {},
  ) {
    const manager = (this.manager = options.manager ?? new MigrationManager(inv));
    this.role = options.role ?? 'client';
    this.confirmAdminChange = options.confirmAdminChange;
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
    if (!isMethod(method)) throw new FerryError('bad-input', `unknown API method "${clip(method, 64)}"`);
    const parsed = api[method].input.safeParse(input ?? {});
    if (!parsed.success) throw badInput(method, parsed.error);
    const handler = this.handlers[method] as (i: unknown) => Promise<unknown>;
    const result = await handler(parsed.data).catch((err: unknown) => {
      // A refusal may quote what the client sent (an id, a path): never megabytes of it.
      if (isFerryError(err) && err.message.length > MAX_MESSAGE)
        throw new FerryError(err.code, clip(err.message, MAX_MESSAGE), err.hint, err.details);
      throw err;
    });
    if (MUTATING.has(method)) this.push({ kind: 'inventory-changed' });
    return result;
  }

  /**
   * "Connect…": a live console of a VM (serial bytes, or RFB for a VNC viewer), for a transport to carry
   * to its authenticated client. The request is untrusted: checked like every call's input.
   */
  async openConsole(request: unknown): Promise<ConsoleStream> {
    const parsed = ConsoleRequestSchema.safeParse(request);
    if (!parsed.success) throw badInput('console', parsed.error);
    const { vm, host, kind } = parsed.data;
    return openConsole(this.inv, { vm, kind, ...(host === undefined ? {} : { host }) });
  }

  /** An API client may change an administrator-only setting only when the main process's dialog says so. */
  private async allowSettingsChange(
    host: string,
    patch: Partial<HostSettings>,
    current: HostSettings,
  ): Promise<void> {
    if (this.role === 'admin') return;
    const changed = adminOnlyChanges(patch, current);
    if (changed.length === 0) return;
    const names = changed.join(' and ');
    if (!this.confirmAdminChange) {
      throw new FerryError(
        'not-permitted',
        `${names} of ${host} can be changed only by the administrator, not through the API`,
        `on the machine running Ferry: ferry host settings ${host} --set ${changed[0]}=…`,
      );
    }
    const pick = (s: Partial<HostSettings>): Partial<HostSettings> =>
      Object.fromEntries(changed.map((k) => [k, s[k]]));
    const ok = await this.confirmAdminChange({
      host,
      settings: changed,
      from: pick(current),
      to: pick(patch),
    });
    if (!ok) throw new FerryError('not-permitted', `the change of ${names} of ${host} was not confirmed`);
  }

  /**
   * The folders a move writes to (Ferry's own hosts) must lie inside the destination's storage roots
   * after resolving symlinks; the pre-flight compares them as typed.
   */
  private async checkMovePaths(req: MoveRequestParsed): Promise<void> {
    if (this.role === 'admin') return;
    const folders = [
      ...(req.storagePath === undefined ? [] : [req.storagePath]),
      ...Object.values(req.diskPaths ?? {}),
    ];
    if (folders.length === 0) return;
    const dest = req.to ? await this.inv.host(req.to) : await this.inv.locate(req.vm);
    if (dest.record.kind === 'libvirt') return; // the server's files: libvirt-preflight.ts checks them
    const roots = (await dest.settings()).storageRoots;
    const realRoots = await Promise.all(roots.map((r) => realPathOf(r)));
    for (const folder of folders) {
      if (!path.isAbsolute(folder)) continue; // the pre-flight says so, in its report
      const real = await realPathOf(folder);
      if (!realRoots.some((r) => isInside(real, r)))
        throw outsideRoots(dest.name, { what: 'storage path', path: folder, real }, roots);
    }
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
      updateHostSettings: async ({ host, patch }) => {
        const h = await inv.host(host);
        await this.allowSettingsChange(host, patch, await h.settings());
        return h.updateSettings(patch);
      },
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
      createVm: async (req) => {
        if (this.role === 'admin') return inv.createVm(req);
        // Checked, then used as resolved: a link swapped after the check cannot lead elsewhere.
        const paths = await inv.requestPaths(req);
        const outside = paths.find((p) => !p.inRoots);
        if (outside)
          throw outsideRoots(req.host, outside, (await (await inv.host(req.host)).settings()).storageRoots);
        const real = (p: string): string => paths.find((x) => x.path === p)!.real;
        return inv.createVm({
          ...req,
          disks: req.disks.map((d) => (d.kind === 'image' ? { ...d, path: real(d.path) } : d)),
          ...(req.storagePath === undefined ? {} : { storagePath: real(req.storagePath) }),
        });
      },
      vmAction: async ({ name, action, host }) => {
        if (action === 'delete' && host === undefined) {
          await inv.deleteVm(name);
          return null;
        }
        const h = host === undefined ? await inv.locate(name) : await inv.host(host);
        if (host !== undefined && !(await h.hasVm(name)))
          throw new FerryError('unknown-vm', `there is no VM named "${name}" on ${host}`);
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
          case 'delete':
            await h.deleteVm(name);
            return null;
        }
      },
      checkMove: async (req) => {
        await this.checkMovePaths(req);
        return manager.check(req);
      },
      checkDestinations: async (req) => {
        const from = (await inv.locate(req.vm)).name;
        const hosts = (await inv.records()).filter((r) => r.name !== from || req.kind === 'storage');
        return Promise.all(
          hosts.map(async (h) => {
            try {
              await this.checkMovePaths({ ...req, to: h.name });
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
        await this.checkMovePaths(req);
        const started = await manager.start(req);
        void started.done.catch(() => undefined); // the outcome travels as a summary event
        return { id: started.id };
      },
      cancelMove: ({ id }) => manager.cancel(id),
      tuneMove: ({ id, ...change }) => manager.tune(id, change),
      listMigrations: async () => {
        await recoverAbandonedMoves(inv);
        return (await manager.history.list()).map(({ samples: _samples, ...rest }) => rest);
      },
      migration: ({ id }) => manager.history.get(id),
      queue: () => manager.queue(),
      consoleInfo: ({ name, host }) => consoleInfo(inv, name, host),
    };
  }
}

const MAX_MESSAGE = 4000;

/** At most `max` characters of a client's string, as a refusal quotes it. */
function clip(s: string, max: number): string {
  return s.length <= max ? s : `${s.slice(0, max)}… (${s.length} characters)`;
}

/**
 * A refusal of malformed input: zod's issues, each clipped (an unknown key is quoted in its issue, and a
 * hostile client may send a key of megabytes), at most ten of them.
 */
export function badInput(prefix: string, error: z.ZodError): FerryError {
  const issues = error.issues.slice(0, 10).map((i) => ({ ...i, message: clip(i.message, 300) }));
  const more = error.issues.length > 10 ? `\n… and ${error.issues.length - 10} more` : '';
  const text = z.prettifyError(new z.ZodError(issues)) + more;
  return new FerryError('bad-input', `${prefix}: ${clip(text, MAX_MESSAGE)}`);
}

function outsideRoots(
  host: string,
  p: { what: string; path: string; real: string },
  roots: string[],
): FerryError {
  const via = p.real === path.resolve(p.path) ? '' : ` (it leads to ${clip(p.real, 1000)})`;
  return new FerryError(
    'not-permitted',
    `the ${p.what} ${clip(p.path, 1000)}${via} is outside ${host}'s storage roots (${roots.join(', ') || 'none'})`,
    'use a file or folder inside the storage roots; only the administrator can change them (ferry host settings)',
  );
}

/** The error shape every transport sends; internals of unexpected errors stay on this side. */
export function toApiError(err: unknown): ApiError {
  if (isFerryError(err)) return err.toJSON();
  return { code: 'internal', message: err instanceof Error ? err.message : String(err) };
}
