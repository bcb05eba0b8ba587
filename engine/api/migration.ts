// The contract of a move: what is asked, the pre-flight report, the progress events and the record
// kept in the history. One stream of these events feeds the CLI, the desktop app and the web mode.
import { z } from 'zod';
import { ConvergencePolicySchema, HostNameSchema, PerformanceOptionSchema, VmRefSchema } from './model.js';

/** The seed's six phases of a live migration, in order. */
export const PHASES = [
  { phase: 1, name: 'setup', title: 'Setup' },
  { phase: 2, name: 'memory', title: 'Memory pages' },
  { phase: 3, name: 'modified-pages', title: 'Modified pages' },
  { phase: 4, name: 'storage-handle', title: 'Storage handle' },
  { phase: 5, name: 'online', title: 'Online' },
  { phase: 6, name: 'network-cleanup', title: 'Network cleanup' },
] as const;
export const PhaseNameSchema = z.enum([
  'setup',
  'memory',
  'modified-pages',
  'storage-handle',
  'online',
  'network-cleanup',
]);
export type PhaseName = z.infer<typeof PhaseNameSchema>;
export const PhaseNumberSchema = z.number().int().min(1).max(6);

export const MoveKindSchema = z.enum(['live', 'storage']);
export type MoveKind = z.infer<typeof MoveKindSchema>;

export const MoveRequestSchema = z.object({
  vm: VmRefSchema,
  /** Destination host; for a storage-only move, the VM's own host (may be omitted). */
  to: HostNameSchema.optional(),
  kind: MoveKindSchema.default('live'),
  performance: PerformanceOptionSchema.optional(),
  channels: z.number().int().min(1).max(64).optional(),
  bandwidthMiBs: z.number().int().min(1).max(1_000_000).optional(),
  downtimeMs: z.number().int().min(1).max(60_000).optional(),
  convergence: ConvergencePolicySchema.optional(),
  /** Shared-nothing: copy the disks to the destination while the VM runs. */
  includeStorage: z.boolean().default(false),
  /** All of the VM's files to this folder. */
  storagePath: z.string().min(1).optional(),
  /** A folder per disk, by disk id (disk0 → /path). */
  diskPaths: z.record(z.string().regex(/^(disk[0-9]+|[hsvx]d[a-z]{1,3})$/), z.string().min(1)).optional(),
  /** Keep the source's disk files after a shared-nothing move. */
  keepSource: z.boolean().default(false),
});
export type MoveRequest = z.input<typeof MoveRequestSchema>;
export type MoveRequestParsed = z.output<typeof MoveRequestSchema>;

/** The options a move really ran with, after host settings and per-move overrides. */
export const MoveOptionsSchema = z.object({
  performance: PerformanceOptionSchema,
  channels: z.number().int(),
  /** null: no limit (QEMU's max-bandwidth is still set, to its maximum). */
  bandwidthMiBs: z.number().int().nullable(),
  downtimeMs: z.number().int(),
  downtimeCeilingMs: z.number().int(),
  convergence: ConvergencePolicySchema,
  /**
   * The compression method for the Compression option: multifd zstd/zlib (Ferry's own hosts, libvirt
   * 9.4+), or xbzrle (libvirt before 9.4 offers only xbzrle or mt).
   */
  compression: z.enum(['zstd', 'zlib', 'xbzrle']).nullable(),
  /** libvirt hosts: the migration stream (memory and disks) is encrypted with TLS. */
  encrypted: z.boolean().optional(),
});
export type MoveOptions = z.infer<typeof MoveOptionsSchema>;

export const CheckItemSchema = z.object({ code: z.string(), message: z.string() });
export type CheckItem = z.infer<typeof CheckItemSchema>;
export const PreflightReportSchema = z.object({
  errors: z.array(CheckItemSchema),
  warnings: z.array(CheckItemSchema),
});
export type PreflightReport = z.infer<typeof PreflightReportSchema>;

export const MigrationStatusSchema = z.enum([
  'queued',
  'running',
  'completed',
  'failed',
  'cancelled',
  'refused',
]);
export type MigrationStatus = z.infer<typeof MigrationStatusSchema>;

export const SampleSchema = z.object({
  at: z.number(), // ms since the move started
  phase: PhaseNumberSchema,
  pass: z.number().int(),
  bytesSent: z.number(),
  remainingBytes: z.number(),
  totalBytes: z.number(),
  /** Pages the guest dirties, as bytes per second (QEMU's dirty-pages-rate × page size). */
  dirtyBytesPerSec: z.number(),
  /** Measured from bytes sent between samples. */
  throughputMiBs: z.number(),
  expectedDowntimeMs: z.number().nullable(),
  throttlePct: z.number(),
  downtimeLimitMs: z.number(),
});
export type Sample = z.infer<typeof SampleSchema>;

export const DiskCopySchema = z.object({ id: z.string(), copied: z.number(), total: z.number() });

export const PhaseTimingSchema = z.object({
  phase: PhaseNumberSchema,
  name: PhaseNameSchema,
  ms: z.number().nullable(),
});

export const SummarySchema = z.object({
  type: z.literal('summary'),
  id: z.string(),
  status: z.enum(['completed', 'failed', 'cancelled', 'refused']),
  reason: z.string().nullable(),
  vm: z.string(),
  from: z.string(),
  to: z.string(),
  kind: MoveKindSchema,
  options: MoveOptionsSchema.nullable(),
  totalMs: z.number(),
  /** How long the guest was paused, as Ferry saw it (source stopped → destination running). */
  downtimeMs: z.number().nullable(),
  /** QEMU's own downtime figure (final copy only). */
  qemuDowntimeMs: z.number().nullable(),
  bytes: z.number(),
  passes: z.number().int(),
  storageCopyMs: z.number().nullable(),
  phases: z.array(PhaseTimingSchema),
  warnings: z.array(z.string()),
});
export type Summary = z.infer<typeof SummarySchema>;

const base = { id: z.string(), at: z.number() };
export const MigrationEventSchema = z.discriminatedUnion('type', [
  z.object({
    type: z.literal('queued'),
    ...base,
    vm: z.string(),
    from: z.string(),
    to: z.string(),
    position: z.number().int(),
  }),
  z.object({
    type: z.literal('started'),
    ...base,
    vm: z.string(),
    from: z.string(),
    to: z.string(),
    kind: MoveKindSchema,
    options: MoveOptionsSchema,
  }),
  z.object({
    type: z.literal('phase'),
    ...base,
    phase: PhaseNumberSchema,
    name: PhaseNameSchema,
    state: z.enum(['started', 'completed']),
    ms: z.number().nullable(),
  }),
  z.object({ type: z.literal('sample'), ...base, sample: SampleSchema }),
  z.object({ type: z.literal('storage-copy'), ...base, disks: z.array(DiskCopySchema) }),
  z.object({
    type: z.literal('escalation'),
    ...base,
    step: z.enum(['raise-downtime', 'postcopy', 'throttle', 'abort']),
    message: z.string(),
  }),
  z.object({ type: z.literal('log'), ...base, level: z.enum(['info', 'warn']), message: z.string() }),
  SummarySchema.extend({ at: z.number() }),
]);
export type MigrationEvent = z.infer<typeof MigrationEventSchema>;

export const MigrationRecordSchema = z.object({
  id: z.string(),
  vm: z.string(),
  from: z.string(),
  to: z.string(),
  kind: MoveKindSchema,
  request: MoveRequestSchema,
  status: MigrationStatusSchema,
  reason: z.string().nullable(),
  requestedAt: z.iso.datetime(),
  startedAt: z.iso.datetime().nullable(),
  endedAt: z.iso.datetime().nullable(),
  /** Current phase while running; the last one reached when over. */
  phase: z.number().int().min(0).max(6),
  pass: z.number().int(),
  options: MoveOptionsSchema.nullable(),
  preflight: PreflightReportSchema.nullable(),
  phases: z.array(
    z.object({
      phase: PhaseNumberSchema,
      name: PhaseNameSchema,
      startedAt: z.number().nullable(),
      endedAt: z.number().nullable(),
    }),
  ),
  samples: z.array(SampleSchema),
  events: z.array(z.object({ at: z.number(), type: z.string(), message: z.string() })),
  summary: SummarySchema.nullable(),
  /** The Ferry process running the move; a queued or running record whose owner is gone was abandoned. */
  ownerPid: z.number().int().optional(),
  /**
   * Set by "the next look" when the Ferry process running a move on Ferry's own hosts died after the
   * switch-over (phases 4-6). `recovered`: the destination was found running the VM, so the paused
   * source copy was turned off (status completed, reason "completed (recovered): …").
   * `needs-administrator`: whether the destination runs the VM is not known, so the source copy stays
   * paused (status failed, the reason and `source` / `destination` saying what each host has) until an
   * administrator resolves it; a later look checks again. `resolved`: it was resolved meanwhile by
   * hand (the source copy resumed, or turned off).
   */
  recovery: z
    .object({
      outcome: z.enum(['recovered', 'needs-administrator', 'resolved']),
      at: z.iso.datetime(),
      /** What the source host has of the VM (QEMU process, run state, migration state). */
      source: z.string(),
      /** What the destination host has of the VM. */
      destination: z.string(),
    })
    .optional(),
});
export type MigrationRecord = z.infer<typeof MigrationRecordSchema>;

export const QueueEntrySchema = z.object({
  id: z.string(),
  vm: z.string(),
  from: z.string(),
  to: z.string(),
  kind: MoveKindSchema,
  state: z.enum(['queued', 'running']),
  position: z.number().int(),
  phase: z.number().int(),
});
export type QueueEntry = z.infer<typeof QueueEntrySchema>;
