// The API every client uses (desktop IPC, web mode WebSocket, and later the host agent): one table of
// methods, each with a zod schema for its input and output. Transports validate inputs against it at
// their boundary; the renderer gets the same types through `ApiClient`.
import { z } from 'zod';
import {
  MigrationEventSchema,
  MigrationRecordSchema,
  MoveRequestSchema,
  PreflightReportSchema,
  QueueEntrySchema,
  TuneChangeSchema,
  TuneResultSchema,
} from './migration.js';
import {
  CreateVmRequestSchema,
  DisplaySchema,
  HostFactsSchema,
  HostNameSchema,
  HostRecordSchema,
  HostSettingsPatchSchema,
  HostSettingsSchema,
  HostSummarySchema,
  VmInfoSchema,
  VmRefSchema,
  VmSummarySchema,
} from './model.js';

const none = z.object({}).strict();

export const VmActionSchema = z.enum(['start', 'shutdown', 'turn-off', 'pause', 'resume', 'delete']);
export type VmAction = z.infer<typeof VmActionSchema>;

export const SetupStatusSchema = z.object({
  qemuInstalled: z.boolean(),
  qemuVersion: z.string().nullable(),
  /** How to install QEMU when it is missing. */
  installHint: z.string().nullable(),
  hostCount: z.number().int(),
  labUp: z.boolean(),
});
export type SetupStatus = z.infer<typeof SetupStatusSchema>;

export const HostDetailsSchema = z.object({
  record: HostRecordSchema,
  facts: HostFactsSchema,
  settings: HostSettingsSchema,
});
export type HostDetails = z.infer<typeof HostDetailsSchema>;

export const DestinationVerdictSchema = z.object({
  host: HostNameSchema,
  report: PreflightReportSchema,
});
export type DestinationVerdict = z.infer<typeof DestinationVerdictSchema>;

export const CancelResultSchema = z.object({
  id: z.string(),
  accepted: z.boolean(),
  reason: z.string().nullable(),
});

/** A history entry without its samples (the list view); `migration` returns the whole record. */
export const MigrationListItemSchema = MigrationRecordSchema.omit({ samples: true });
export type MigrationListItem = z.infer<typeof MigrationListItemSchema>;

export const ConsoleKindSchema = z.enum(['serial', 'vnc']);
export type ConsoleKind = z.infer<typeof ConsoleKindSchema>;

/** What the console window learns before it connects ("Connect…"), and all it shows of a VM that is off. */
export const ConsoleInfoSchema = z.object({
  /** The host the VM is on: the one whose copy runs when two hosts list it (a move being finished). */
  host: HostNameSchema,
  vm: VmRefSchema,
  /** Its QEMU is up (running, paused, moving): a console can be opened. */
  running: z.boolean(),
  display: DisplaySchema,
  serial: z.literal(true),
  /** The end of the serial log (about the last 64 KiB), also of a VM that is off. */
  serialLog: z.string(),
  /** Why a console cannot be opened now (the VM is off, a libvirt host, …); absent when it can. */
  reason: z.string().optional(),
});
export type ConsoleInfo = z.infer<typeof ConsoleInfoSchema>;

export const api = {
  setupStatus: { input: none, output: SetupStatusSchema },
  listHosts: { input: none, output: z.array(HostSummarySchema) },
  hostDetails: { input: z.object({ host: HostNameSchema }).strict(), output: HostDetailsSchema },
  updateHostSettings: {
    input: z.object({ host: HostNameSchema, patch: HostSettingsPatchSchema }).strict(),
    output: HostSettingsSchema,
  },
  /** "This computer": a host for the local machine's QEMU. */
  addLocalHost: {
    input: z.object({ name: HostNameSchema.default('local') }).strict(),
    output: HostRecordSchema,
  },
  /**
   * "Connect to Server…": a libvirt host by URI. An unknown SSH host key fails with `host-key-unknown`
   * and its fingerprint in the error's details; calling again with `acceptHostKey` set to it accepts it.
   */
  addLibvirtHost: {
    input: z
      .object({
        name: HostNameSchema,
        uri: z.string().min(1).max(2048),
        sshKey: z.string().min(1).max(4096).nullable().default(null),
        acceptHostKey: z
          .string()
          .regex(/^SHA256:[A-Za-z0-9+/]{43}$/, 'a host key fingerprint looks like SHA256: and 43 characters')
          .nullable()
          .default(null),
      })
      .strict(),
    output: HostRecordSchema,
  },
  /** Drops a libvirt host's connection and opens it again. */
  reconnectHost: { input: z.object({ host: HostNameSchema }).strict(), output: HostSummarySchema },
  removeHost: {
    input: z.object({ host: HostNameSchema }).strict(),
    output: z.object({ removed: HostNameSchema }),
  },
  /** A local lab of N hosts; with `withVm`, a running lab VM on the first so a move can be tried at once. */
  labUp: {
    input: z
      .object({
        hosts: z.number().int().min(1).max(16).default(2),
        withVm: z.boolean().default(false),
        /** libvirt "machines" (root only) instead of Ferry's own lab hosts. */
        libvirt: z.boolean().default(false),
      })
      .strict(),
    output: z.array(HostRecordSchema),
  },
  labDown: { input: none, output: z.object({ hosts: z.array(z.string()), stoppedVms: z.array(z.string()) }) },
  listVms: { input: none, output: z.array(VmSummarySchema) },
  vmInfo: { input: z.object({ name: VmRefSchema }).strict(), output: VmInfoSchema },
  createVm: { input: CreateVmRequestSchema, output: VmInfoSchema },
  vmAction: {
    // `host` aims the action at that host's copy of the VM (resolving a move interrupted after the
    // switch-over, where both hosts list it); without it, the host the VM is found on.
    input: z.object({ name: VmRefSchema, action: VmActionSchema, host: HostNameSchema.optional() }).strict(),
    output: VmSummarySchema.nullable(),
  },
  checkMove: { input: MoveRequestSchema, output: PreflightReportSchema },
  /** The wizard's "Specify Destination" page: every other host with its pre-flight verdict. */
  checkDestinations: {
    input: MoveRequestSchema.omit({ to: true }),
    output: z.array(DestinationVerdictSchema),
  },
  startMove: { input: MoveRequestSchema, output: z.object({ id: z.string() }) },
  cancelMove: { input: z.object({ id: z.string() }).strict(), output: CancelResultSchema },
  /**
   * Tunes a running move in phases 2–3: bandwidth limit, downtime target, or the switch to post-copy
   * (only for a move started with the post-copy capability). Refusals say why (`not-supported`).
   */
  tuneMove: {
    input: TuneChangeSchema.extend({ id: z.string() })
      .strict()
      .refine((t) => t.bandwidthMiBs !== undefined || t.downtimeMs !== undefined || t.postcopy, {
        message: 'give a bandwidth (MiB/s), a downtime target (ms), or postcopy',
      }),
    output: TuneResultSchema,
  },
  listMigrations: { input: none, output: z.array(MigrationListItemSchema) },
  migration: { input: z.object({ id: z.string() }).strict(), output: MigrationRecordSchema },
  queue: { input: none, output: z.array(QueueEntrySchema) },
  /** "Connect…": where the VM's console is, whether it has a screen, and its serial log so far. */
  consoleInfo: {
    input: z.object({ name: VmRefSchema, host: HostNameSchema.optional() }).strict(),
    output: ConsoleInfoSchema,
  },
} as const;

export type ApiMethods = typeof api;
export type MethodName = keyof ApiMethods;
export type Input<M extends MethodName> = z.input<ApiMethods[M]['input']>;
export type Output<M extends MethodName> = z.output<ApiMethods[M]['output']>;

/** What the engine pushes to clients: migration progress, and a hint to refresh the inventory. */
export const ServerEventSchema = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('migration'), event: MigrationEventSchema }),
  z.object({ kind: z.literal('inventory-changed') }),
]);
export type ServerEvent = z.infer<typeof ServerEventSchema>;

/** The client both the preload bridge and the WebSocket client implement. */
export interface ApiClient {
  call<M extends MethodName>(method: M, input: Input<M>): Promise<Output<M>>;
  subscribe(listener: (e: ServerEvent) => void): () => void;
}

/** Errors cross every transport as this shape. */
export const ApiErrorSchema = z.object({
  code: z.string(),
  message: z.string(),
  hint: z.string().optional(),
  details: z.record(z.string(), z.string()).optional(),
});
export type ApiError = z.infer<typeof ApiErrorSchema>;

/** WebSocket frames (web mode). */
export const WsRequestSchema = z
  .object({ id: z.number().int(), method: z.string(), input: z.unknown() })
  .strict();
export const WsResponseSchema = z.union([
  z.object({ id: z.number().int(), ok: z.literal(true), result: z.unknown() }),
  z.object({ id: z.number().int(), ok: z.literal(false), error: ApiErrorSchema }),
  z.object({ event: ServerEventSchema }),
]);

export function isMethod(name: string): name is MethodName {
  return Object.prototype.hasOwnProperty.call(api, name);
}
