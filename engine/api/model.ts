// The typed contract for hosts and VMs. Every boundary (CLI, IPC, WebSocket, agent RPC, files on disk)
// validates against these schemas; the TypeScript types are inferred from them so the two cannot drift.
import { z } from 'zod';

export const HostNameSchema = z
  .string()
  .regex(/^[a-z0-9][a-z0-9-]{0,31}$/, 'host names are 1-32 characters: lower-case letters, digits and "-"');
export const VmNameSchema = z
  .string()
  .regex(
    /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/,
    'VM names are 1-63 characters: letters, digits, ".", "_" and "-", starting with a letter or digit',
  );
/**
 * A name that addresses an existing VM: Ferry's own names, or any libvirt domain name (libvirt allows
 * nearly anything but "/"; "." and ".." are refused so a name can never walk a path).
 */
export const VmRefSchema = z
  .string()
  .min(1)
  .max(255)
  .regex(/^[^/\x00-\x1f]+$/, 'a VM name has no "/" and no control characters')
  .refine((n) => n !== '.' && n !== '..', 'a VM name cannot be "." or ".."');
export const MacSchema = z
  .string()
  .regex(/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/, 'a MAC address looks like 52:54:00:12:34:56');

export const AccelSchema = z.enum(['kvm', 'tcg', 'hvf', 'whpx']);
export type Accel = z.infer<typeof AccelSchema>;

export const VmStateSchema = z.enum([
  'stopped', // no QEMU process
  'starting',
  'running',
  'paused',
  'stopping',
  'migrating', // source side of a move in progress
  'incoming', // destination skeleton waiting for a migration
  'crashed', // QEMU died without being asked to
]);
export type VmState = z.infer<typeof VmStateSchema>;

export const DiskFormatSchema = z.enum(['qcow2', 'raw']);
/** Formats a disk of an existing (libvirt) VM may have; Ferry creates only qcow2 and raw. */
export const AnyDiskFormatSchema = z.string().min(1);

export const DiskSchema = z.object({
  /**
   * Stable id used by commands (`--disk-path disk0=…`): Ferry's own VMs number their disks (also the
   * QEMU node name); a libvirt domain's disk is named by its target device (vda, sdb, hdc).
   */
  id: z.string().regex(/^(disk[0-9]+|[hsvx]d[a-z]{1,3})$/),
  path: z.string().min(1),
  format: z.union([DiskFormatSchema, AnyDiskFormatSchema]),
  sizeBytes: z.number().int().nonnegative(),
  /** Ferry created the image (so `vm delete` removes it); false for an existing image used in place. */
  owned: z.boolean(),
});
export type Disk = z.infer<typeof DiskSchema>;

export const NicSchema = z.object({
  id: z.string().regex(/^net[0-9]+$/),
  mac: MacSchema,
  /** QEMU's device model for Ferry's VMs; libvirt's model name (virtio, e1000e) for a domain. */
  model: z.string().min(1),
  /** libvirt: the network or bridge the NIC is plugged into ("network:default", "bridge:br0"). */
  source: z.string().nullable().default(null),
});
export type Nic = z.infer<typeof NicSchema>;

export const LabGuestSchema = z.object({
  workingSetMiB: z.number().int().min(1).max(65536),
  /** 0 = as fast as the vCPU can. */
  dirtyRateMiBs: z.number().int().min(0).max(1_000_000),
});
export type LabGuest = z.infer<typeof LabGuestSchema>;

/** The file `vm.json` on the VM's host. `machineType` is the VM's configuration version (as in Hyper-V). */
export const DisplaySchema = z.enum(['vga', 'none']);
export type Display = z.infer<typeof DisplaySchema>;

export const VmConfigSchema = z.object({
  formatVersion: z.literal(1),
  name: VmRefSchema,
  uuid: z.guid(),
  memoryMiB: z
    .number()
    .int()
    .min(16)
    .max(4 * 1024 * 1024),
  cpus: z.number().int().min(1).max(256),
  machineType: z.string().min(1),
  cpuModel: z.string().min(1),
  disks: z.array(DiskSchema),
  nics: z.array(NicSchema),
  labGuest: LabGuestSchema.nullable(),
  createdAt: z.iso.datetime(),
  /**
   * The display device: 'vga' (a screen, seen through QEMU's VNC server) or 'none'. Guest hardware:
   * a move starts the destination with the same. Configurations written before it existed have none.
   */
  display: DisplaySchema.optional(),
});
export type VmConfig = z.infer<typeof VmConfigSchema>;

export const VmSummarySchema = z.object({
  name: VmRefSchema,
  /** Any 128-bit UUID: libvirt domains defined elsewhere need not carry an RFC 4122 version. */
  uuid: z.guid(),
  host: HostNameSchema,
  state: VmStateSchema,
  memoryMiB: z.number().int(),
  cpus: z.number().int(),
  machineType: z.string(),
  pid: z.number().int().nullable(),
  startedAt: z.iso.datetime().nullable(),
  /** Why the VM is in this state, when it is not obvious (e.g. how a QEMU died). */
  reason: z.string().nullable(),
});
export type VmSummary = z.infer<typeof VmSummarySchema>;

export const VmInfoSchema = VmSummarySchema.extend({
  configVersion: z.string(),
  cpuModel: z.string(),
  disks: z.array(DiskSchema),
  nics: z.array(NicSchema),
  labGuest: LabGuestSchema.nullable(),
  /** Ferry's own hosts: the serial log file; libvirt hosts: the serial file the domain XML names, if any. */
  serialLogPath: z.string(),
  /** Ferry's own hosts: the VM's vm.json; libvirt hosts: the domain's libvirt URI and name. */
  configPath: z.string(),
});
export type VmInfo = z.infer<typeof VmInfoSchema>;

export const PerformanceOptionSchema = z.enum(['tcp', 'compression', 'multichannel', 'rdma']);
export type PerformanceOption = z.infer<typeof PerformanceOptionSchema>;
export const ConvergencePolicySchema = z.enum(['abort', 'raise-downtime', 'postcopy', 'throttle']);
export type ConvergencePolicy = z.infer<typeof ConvergencePolicySchema>;

/** "Hyper-V Settings" of a host. Defaults follow Windows Server 2012 R2 where the seed names one. */
export const HostSettingsSchema = z.object({
  liveMigrationEnabled: z.boolean().default(true),
  maxLiveMigrations: z.number().int().min(1).max(64).default(2),
  maxStorageMigrations: z.number().int().min(1).max(64).default(2),
  /** 'any', or a list of CIDR subnets / addresses on which incoming migrations are accepted. */
  incomingNetworks: z.union([z.literal('any'), z.array(z.string().min(1)).min(1)]).default('any'),
  performance: PerformanceOptionSchema.default('compression'),
  channels: z.number().int().min(1).max(64).default(4),
  /** null = no limit (Ferry still sets QEMU's max-bandwidth explicitly). */
  bandwidthMiBs: z.number().int().min(1).nullable().default(null),
  downtimeMs: z.number().int().min(1).max(60_000).default(300),
  /** How far the raise-downtime and postcopy policies may raise the downtime target. */
  downtimeCeilingMs: z.number().int().min(1).max(60_000).default(2000),
  convergence: ConvergencePolicySchema.default('raise-downtime'),
  /** 'auto' picks KVM when the CPU has real hardware virtualization, else TCG. */
  accel: z.enum(['auto', 'kvm', 'tcg']).default('auto'),
  qemuBinary: z.string().min(1).nullable().default(null),
  storageRoots: z.array(z.string().min(1)).default([]),
  /** Memory kept for the host itself: VMs may use only what is free beyond it. */
  reservedMemoryMiB: z.number().int().min(0).default(0),
  /**
   * Whether moves between libvirt hosts encrypt the migration stream (memory and disks) with TLS:
   * 'required' refuses a move to or from a host without migration TLS certificates.
   */
  encryption: z.enum(['required', 'when-available', 'off']).default('required'),
});
export type HostSettings = z.infer<typeof HostSettingsSchema>;

/**
 * A change to some settings. Not `HostSettingsSchema.partial()`: zod still fills in the defaults of
 * absent keys there, and a one-key change would reset every other setting.
 */
export const HostSettingsPatchSchema = z
  .object(
    Object.fromEntries(
      Object.entries(HostSettingsSchema.shape).map(([k, v]) => [
        k,
        (v as z.ZodDefault<z.ZodType>).unwrap().optional(),
      ]),
    ) as {
      [K in keyof typeof HostSettingsSchema.shape]: z.ZodOptional<
        ReturnType<(typeof HostSettingsSchema.shape)[K]['unwrap']>
      >;
    },
  )
  .strict();
export type HostSettingsPatch = z.infer<typeof HostSettingsPatchSchema>;

/** `local` and `lab`: Ferry's own QEMU driver on this machine; `libvirt`: a libvirtd reached by URI. */
export const HostKindSchema = z.enum(['local', 'lab', 'libvirt']);
export type HostKind = z.infer<typeof HostKindSchema>;

/** One entry of the inventory: where a host lives and how to reach it. */
export const HostRecordSchema = z.object({
  name: HostNameSchema,
  kind: HostKindSchema,
  stateDir: z.string().min(1),
  /** Address that this host's incoming migrations (and NBD exports) listen on. */
  migrationAddress: z.string().min(1),
  /** First of the ports reserved for this host (migration, NBD): portBase .. portBase+99. */
  portBase: z.number().int().min(1024).max(65000),
  /** Folder where new VMs' disks go; for lab hosts one folder shared by the lab. */
  vmDir: z.string().min(1),
  /** Linux network namespace the host's QEMUs run in (lab hosts joined by a shaped link). */
  netns: z.string().nullable().default(null),
  /** libvirt hosts: the connection URI, one `virsh -c` takes as it is. */
  uri: z.string().nullable().default(null),
  /** Part of `ferry lab` (a lab host of Ferry's own driver, or a libvirt lab machine). */
  lab: z.boolean().default(false),
  /** libvirt over SSH: the private key file to log in with (its path; Ferry never stores a key). */
  sshKey: z.string().nullable().default(null),
});
export type HostRecord = z.infer<typeof HostRecordSchema>;

export const HostFactsSchema = z.object({
  name: HostNameSchema,
  /** The machine's own name (libvirt: what the daemon's host reports). */
  hostname: z.string().optional(),
  /** libvirt hosts: the daemon's libvirt version (9.0.0). */
  libvirtVersion: z.string().optional(),
  qemuBinary: z.string(),
  qemuVersion: z.string(),
  accel: AccelSchema,
  /** Real hardware virtualization (vmx/svm, hvf, whpx) usable by QEMU. */
  hardwareVirtualization: z.boolean(),
  accelNote: z.string(),
  cpuVendor: z.string(),
  cpuModel: z.string(),
  cpuCount: z.number().int(),
  memTotalMiB: z.number().int(),
  memFreeMiB: z.number().int(),
  diskFreeBytes: z.number(),
  machineTypes: z.array(z.string()),
  defaultMachineType: z.string(),
  cpuModels: z.array(z.string()),
  migrationCapabilities: z.array(z.string()),
  multifdCompression: z.array(z.string()),
  rdma: z.boolean(),
});
export type HostFacts = z.infer<typeof HostFactsSchema>;

export const HostSummarySchema = HostRecordSchema.extend({
  vmCount: z.number().int(),
  runningCount: z.number().int(),
  /** Ferry's own hosts are always connected; a libvirt host is while its connection is up. */
  connected: z.boolean(),
  /** Why a host is not connected (unreachable, refused login, daemon stopped…). */
  connectionError: z.string().nullable(),
  /** Something the administrator should know, e.g. an unauthenticated qemu+tcp:// connection. */
  warning: z.string().nullable(),
});
export type HostSummary = z.infer<typeof HostSummarySchema>;

export const DiskRequestSchema = z.union([
  z.object({ kind: z.literal('new'), sizeGiB: z.number().positive().max(65536) }),
  z.object({ kind: z.literal('image'), path: z.string().min(1) }),
]);
export type DiskRequest = z.infer<typeof DiskRequestSchema>;

export const CreateVmRequestSchema = z.object({
  name: VmNameSchema,
  host: HostNameSchema,
  memoryMiB: z.number().int().min(16).default(512),
  cpus: z.number().int().min(1).max(256).default(1),
  machineType: z.string().min(1).optional(),
  disks: z.array(DiskRequestSchema).default([]),
  nics: z.number().int().min(0).max(8).default(1),
  labGuest: LabGuestSchema.nullable().default(null),
  /** Folder for the VM's new disks (default: the host's VM folder). */
  storagePath: z.string().min(1).optional(),
});
export type CreateVmRequest = z.infer<typeof CreateVmRequestSchema>;
