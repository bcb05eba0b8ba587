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

/** What would make a move that will not converge converge (the estimate's advice). */
export const EstimateFixSchema = z
  .object({
    kind: z.enum(['bandwidth', 'link', 'downtime', 'policy']),
    /** MiB/s (bandwidth, link), ms (downtime), or the policy's name. */
    value: z.union([z.number(), z.string()]),
    message: z.string(),
  })
  .strict();
export type EstimateFix = z.infer<typeof EstimateFixSchema>;

/**
 * Before a live move between Ferry's own hosts: how long it will take, how long the guest will stand
 * still, how much data goes over, and whether pre-copy converges (engine/migration/estimate.ts).
 */
export const MoveEstimateSchema = z
  .object({
    /** Whole move, all six phases (and the disk copy of a shared-nothing move); null: never ends. */
    totalMs: z.number().nullable(),
    /** The guest paused at the switch-over (or at the switch to post-copy); null: never switches over. */
    downtimeMs: z.number().nullable(),
    /**
     * Data to send, as the move's summary will count it (QEMU counts memory uncompressed, a zero
     * page as a few bytes), with the disks of a shared-nothing move.
     */
    bytes: z.number(),
    /** What goes over the link: `bytes` with memory compressed by the Compression option. */
    wireBytes: z.number(),
    /** The move completes with its options and its convergence policy. */
    converges: z.boolean(),
    /** The convergence step it likely needs (whether or not its policy allows it). */
    step: z.enum(['none', 'raise-downtime', 'throttle', 'postcopy']),
    /** Pre-copy passes expected (1 = the first full copy only). */
    passes: z.number().int(),
    /** A sentence for people: what to expect, or why it will not converge (`fixes` say what helps). */
    message: z.string(),
    /** When it will not converge: what would make it. */
    fixes: z.array(EstimateFixSchema),
    inputs: z
      .object({
        /** Measured by QEMU's calc-dirty-rate (page-sampling) over `dirtyRateWindowS` seconds. */
        dirtyBytesPerSec: z.number(),
        dirtyRateWindowS: z.number(),
        /** The rate memory goes over at: the bandwidth limit, the link's, or the loopback's. */
        linkBytesPerSec: z.number(),
        linkSource: z.enum(['bandwidth-limit', 'lab-link', 'loopback']),
        /** Uncompressed memory bytes a second the move is expected to reach (channels, compression, cap). */
        effectiveBytesPerSec: z.number(),
        /** Uncompressed ÷ compressed size of a sample of the VM's memory (Compression only; else 1). */
        compressionRatio: z.number(),
        /** Share of the VM's memory pages that are all zeros (sampled; they are sent as a flag). */
        zeroPageRatio: z.number(),
        memoryBytes: z.number(),
        /** Shared-nothing: the disks' allocated bytes to copy; 0 otherwise. */
        diskBytes: z.number(),
        /** Fixed costs around the memory copy: setup, hand-over, online, clean-up. */
        overheadMs: z.number(),
        /** Downtime beyond the last copy (pausing, handing over, resuming). */
        switchoverMs: z.number(),
        /** Where overheadMs and switchoverMs come from: past moves here, or constants. */
        costsFrom: z.enum(['history', 'constants']),
      })
      .strict(),
  })
  .strict();
export type MoveEstimate = z.infer<typeof MoveEstimateSchema>;

export const PreflightReportSchema = z.object({
  errors: z.array(CheckItemSchema),
  warnings: z.array(CheckItemSchema),
  /**
   * Checks only (`ferry move --check`, the wizard): the estimate, or null with `estimateNote` saying
   * why there is none (libvirt hosts, a VM not running, blocking errors). Absent in older records.
   */
  estimate: MoveEstimateSchema.nullable().optional(),
  estimateNote: z.string().optional(),
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

/** One step of the cut-over (from the source's pause to the source gone), with its own figure. */
export const CutoverStepSchema = z.object({ step: z.string(), ms: z.number() });
export type CutoverStep = z.infer<typeof CutoverStepSchema>;

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
  /** The cut-over's steps in order, each timed, so a slow one shows (absent in older records). */
  cutover: z.array(CutoverStepSchema).optional(),
  /**
   * Verification beside the phases, not inside them: ms from the VM's resume on the destination to the
   * lab guest's first heartbeat seen there; null when none came in time; absent for other guests.
   */
  guestAliveMs: z.number().nullable().optional(),
});
export type Summary = z.infer<typeof SummarySchema>;

/**
 * A change to a running move, asked by the administrator during phases 2–3 (`ferry move-tune`, the
 * progress view): a new bandwidth limit, a new downtime target, or the switch to post-copy.
 */
export const TuneChangeSchema = z
  .object({
    bandwidthMiBs: z.number().int().min(1).max(1_000_000).optional(),
    downtimeMs: z.number().int().min(1).max(60_000).optional(),
    /** Only for a move started with QEMU's post-copy capability (the postcopy convergence policy). */
    postcopy: z.literal(true).optional(),
  })
  .strict();
export type TuneChange = z.infer<typeof TuneChangeSchema>;

/** The settings a move runs with after a tune (null bandwidth: no limit). */
export const TuneResultSchema = z
  .object({
    id: z.string(),
    bandwidthMiBs: z.number().int().nullable(),
    downtimeMs: z.number().int(),
    postcopy: z.boolean(),
    message: z.string(),
  })
  .strict();
export type TuneResult = z.infer<typeof TuneResultSchema>;

/**
 * Why a move cannot switch to post-copy while it runs (null: it can). QEMU's capabilities are fixed once
 * a migration starts, and Ferry asks for post-copy only with the postcopy convergence policy, which is
 * never combined with multifd (in QEMU 7.2 multifd + post-copy loses the guest).
 */
export function postcopyUnavailable(
  o: Pick<MoveOptions, 'convergence' | 'performance'> | null,
): string | null {
  if (!o) return 'the move has not started yet';
  if (o.convergence === 'postcopy') return null;
  const multifd = o.performance === 'compression' || o.performance === 'multichannel';
  return `the move started without QEMU's post-copy capability (convergence policy "${o.convergence}"), and capabilities cannot change once a migration runs; post-copy needs a move started with the postcopy policy${multifd ? ' and TCP/IP (post-copy with multifd loses the guest in QEMU 7.2)' : ''}`;
}

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
  /** The administrator changed the running move (ferry move-tune, the progress view): what, and to what. */
  z.object({ type: z.literal('tuned'), ...base, change: TuneChangeSchema, message: z.string() }).strict(),
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
  events: z.array(
    // `change`: a tune's new settings (type 'tuned'); absent in older records.
    z.object({ at: z.number(), type: z.string(), message: z.string(), change: TuneChangeSchema.optional() }),
  ),
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
