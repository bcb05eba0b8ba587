// Pre-flight for a move between two libvirt hosts: the same judgement as between Ferry's own hosts
// (Q1, Q2, Q4, Q6, R6, memory, settings), fed from libvirt, plus what only libvirt hosts have: shared
// storage proven through both daemons, the networks the VM uses, migration TLS, and the flags and
// parameters of libvirt's migration protocol that the move will use. Nothing here changes a host.
import path from 'node:path';
import type { CheckItem, MoveOptions, MoveRequestParsed, VmConfig } from '../api/index.js';
import type { LibvirtClient, TypedParam } from '../libvirt/client.js';
import { JobType, MigrateFlags } from '../libvirt/protocol.js';
import { LibvirtHost } from '../host/libvirt/libvirt-host.js';
import { migrationTlsReady, parseDomainDisks, proveSharedFolder, statFile } from '../host/libvirt/storage.js';
import { judge, resolveOptions, type HostView, type Prepared } from './preflight.js';

/** One disk copied to the destination in a shared-nothing move. */
export interface DiskCopy {
  target: string;
  from: string;
  to: string;
  format: string;
  capacity: bigint;
}

/** What Begin/Prepare/Perform/Finish/Confirm are called with. */
export interface LibvirtMovePlan {
  /** Flags for the source's calls (Begin, Perform, Confirm); the destination's drop two of them. */
  flags: number;
  params: TypedParam[];
  tls: boolean;
  /** Shared-nothing: the destination's files, made before Prepare. */
  copies: DiskCopy[];
  /** Source files deleted after a successful shared-nothing move (none with keep-source). */
  deleteSource: string[];
}

/** virDomainJobOperation, as GET_JOB_STATS names it in its `operation` field. */
const JOB_OPERATIONS = [
  'an operation',
  'a start',
  'a save',
  'a restore',
  'an incoming migration',
  'a migration',
  'a snapshot',
  'a snapshot revert',
  'a memory dump',
  'a backup',
  'a snapshot deletion',
];

/** libvirt 9.4 brought multifd zlib/zstd to its migration API; before it only xbzrle and mt. */
const MULTIFD_COMPRESSION_SINCE = '9.4.0';
/** VIR_ERR_NO_NETWORK */
const ERR_NO_NETWORK = 43;
/** REMOTE_PROC_NETWORK_LOOKUP_BY_NAME */
const PROC_NETWORK_LOOKUP_BY_NAME = 40;

function atLeast(version: string | undefined, min: string): boolean {
  const a = (version ?? '0').split('.').map(Number);
  const b = min.split('.').map(Number);
  for (let i = 0; i < 3; i++) if ((a[i] ?? 0) !== (b[i] ?? 0)) return (a[i] ?? 0) > (b[i] ?? 0);
  return true;
}

/** Whether a libvirt virtual network of this name exists on the host. */
async function hasNetwork(c: LibvirtClient, name: string): Promise<boolean> {
  try {
    await c.call(PROC_NETWORK_LOOKUP_BY_NAME, (w) => w.string(name));
    return true;
  } catch (err) {
    if ((err as { libvirtCode?: number }).libvirtCode === ERR_NO_NETWORK) return false;
    throw err;
  }
}

export async function libvirtMovePreflight(
  request: MoveRequestParsed,
  source: LibvirtHost,
  dest: LibvirtHost,
): Promise<Prepared & { libvirt: LibvirtMovePlan }> {
  const [src, dst] = await Promise.all([source.client(), dest.client()]);
  // The probes that touch storage run beside the gathering of facts: each is a few round trips.
  const tlsProbe = Promise.all([migrationTlsReady(src), migrationTlsReady(dst)]);
  void tlsProbe.catch(() => undefined);
  const vmP = source.vmConfig(request.vm);
  const proofs = vmP.then((v) => {
    const dirs = [...new Set(v.disks.map((k) => path.dirname(k.path)))];
    return Promise.all(dirs.map(async (dir) => [dir, await proveSharedFolder(src, dst, dir)] as const));
  });
  void proofs.catch(() => undefined);
  // The live definition and any running job, fetched beside the rest (a pass-through disk, a busy VM).
  const live = src
    .lookupDomainByName(request.vm)
    .then((dom) =>
      Promise.all([src.domainGetXmlDesc(dom, 0), src.domainGetJobStats(dom, 0).catch(() => null)]),
    );
  void live.catch(() => undefined);
  const [vm, info, sFacts, dFacts, sSettings, dSettings, destHasVm] = await Promise.all([
    vmP,
    source.vmInfo(request.vm),
    source.facts(),
    dest.facts(),
    source.settings(),
    dest.settings(),
    dest.hasVm(request.vm),
  ]);
  const s: HostView = {
    name: source.name,
    facts: sFacts,
    settings: sSettings,
    migrationAddress: source.record.migrationAddress,
  };
  const d: HostView = {
    name: dest.name,
    facts: dFacts,
    settings: dSettings,
    migrationAddress: dest.record.migrationAddress,
  };
  const errors: CheckItem[] = [];
  const warnings: CheckItem[] = [];

  // The performance option: what libvirt on both ends can do; a host default it cannot do falls back.
  const options: MoveOptions = resolveOptions(request, sSettings, sFacts);
  const both = (v: string) => atLeast(sFacts.libvirtVersion, v) && atLeast(dFacts.libvirtVersion, v);
  if (options.performance === 'rdma' && !(sFacts.rdma && dFacts.rdma)) {
    warnings.push({
      code: 'rdma-fallback',
      message: 'RDMA is not available between these hosts: the move uses TCP/IP',
    });
    options.performance = 'tcp';
  }
  if (options.performance === 'compression') {
    if (both(MULTIFD_COMPRESSION_SINCE)) {
      options.compression = 'zstd';
    } else {
      options.compression = 'xbzrle';
      warnings.push({
        code: 'compression-xbzrle',
        message: `libvirt ${[sFacts.libvirtVersion, dFacts.libvirtVersion].filter((v, i, a) => a.indexOf(v) === i).join(' / ')} offers no multifd compression (zlib/zstd over parallel connections came in libvirt 9.4): Compression uses xbzrle, which sends only the changed bytes of pages sent before, over one connection`,
      });
    }
  }

  // Shared storage: each disk's folder, seen by both daemons as the same folder (a marker made
  // through one and found through the other) — wherever the disks are, no Ferry configuration needed.
  const sharedStorage: { id: string; path: string; inRoots: boolean; sameFile: boolean; why: string }[] = [];
  const proven = new Map(await proofs);
  for (const disk of vm.disks) {
    const p = proven.get(path.dirname(disk.path))!;
    sharedStorage.push({ id: disk.id, path: disk.path, inRoots: true, sameFile: p.shared, why: p.why });
  }

  // A host block device given to the guest (<disk type='block'>) is a pass-through disk; a file that
  // merely lies under /dev (a tmpfs such as /dev/shm) is not.
  const [liveXml, job] = await live;
  const liveDisks = parseDomainDisks(liveXml);
  // A job already running on the domain (a migration started elsewhere, a dump, a backup): libvirt
  // would refuse Begin only after its 30 s state-change-lock timeout, with a message about locks.
  if (job && (job.type === JobType.BOUNDED || job.type === JobType.UNBOUNDED)) {
    const op = job.params.find((p) => p.field === 'operation')?.value;
    const what = JOB_OPERATIONS[typeof op === 'number' ? op : 0] ?? JOB_OPERATIONS[0]!;
    errors.push({
      code: 'vm-busy',
      message: `${vm.name} is busy on ${s.name}: ${what} is running on it; wait for it to end or abort it (virsh domjobabort ${vm.name}), then move again`,
    });
  }
  errors.push(
    ...judge({
      request,
      vm,
      vmState: info.state,
      source: s,
      dest: d,
      destHasVm,
      options: {
        ...options,
        performance: options.performance === 'compression' ? 'tcp' : options.performance,
      },
      passthroughDisks: liveDisks.filter((k) => k.type === 'block').map((k) => k.target),
      sharedStorage,
    }).errors,
  );
  if (!atLeast(dFacts.libvirtVersion, sFacts.libvirtVersion ?? '0')) {
    errors.push({
      code: 'older-destination-libvirt',
      message: `${d.name} runs libvirt ${dFacts.libvirtVersion}, older than ${s.name}'s ${sFacts.libvirtVersion}; moving to an older version is not supported`,
    });
  }
  if (!src.features.migrationParams || !dst.features.migrationParams) {
    errors.push({
      code: 'libvirt-too-old',
      message: 'both daemons must support libvirt migration with parameters (libvirt 1.1.0 or newer)',
    });
  }

  // Every network the VM is plugged into must exist on the destination.
  for (const nic of vm.nics) {
    const [kind, name] = (nic.source ?? '').split(':');
    if (kind === 'network' && name && !(await hasNetwork(dst, name))) {
      errors.push({
        code: 'network-missing',
        message: `${vm.name}'s ${nic.id} (${nic.mac}) uses the network "${name}", which ${d.name} does not have`,
      });
    } else if (kind === 'bridge' && name) {
      warnings.push({
        code: 'bridge-unchecked',
        message: `${vm.name}'s ${nic.id} uses the bridge ${name}: make sure ${d.name} has it too (libvirt does not report host bridges)`,
      });
    }
  }

  // Encryption: the stricter of the two hosts' settings.
  const setting = [sSettings.encryption, dSettings.encryption].includes('required')
    ? 'required'
    : sSettings.encryption === 'off' || dSettings.encryption === 'off'
      ? 'off'
      : 'when-available';
  let tls = false;
  if (setting !== 'off') {
    const [sTls, dTls] = await tlsProbe;
    const missing = [
      ...sTls.missing.map((f) => `${s.name}: ${f}`),
      ...dTls.missing.map((f) => `${d.name}: ${f}`),
    ];
    tls = sTls.ready && dTls.ready;
    if (!tls && setting === 'required') {
      errors.push({
        code: 'encryption-unavailable',
        message: `encryption is required, but migration TLS certificates are missing (${missing.join(', ')}); put the CA, server and client certificates in /etc/pki/qemu on both hosts (libvirt's migrate_tls_x509_cert_dir), or set Encryption to "when available" or "off"`,
      });
    } else if (!tls) {
      warnings.push({
        code: 'unencrypted',
        message: `the move is not encrypted: migration TLS certificates are missing (${missing.join(', ')})`,
      });
    }
  } else {
    warnings.push({
      code: 'unencrypted',
      message: 'encryption is off: memory and disks cross the network in the clear',
    });
  }
  options.encrypted = tls;
  // Parallel connections only for Multichannel (and multifd compression): say one otherwise.
  if (options.performance !== 'multichannel' && options.compression !== 'zstd') options.channels = 1;

  // Shared-nothing: where each disk goes on the destination (the same path unless told otherwise).
  const copies: DiskCopy[] = [];
  if (request.includeStorage) {
    for (const disk of vm.disks) {
      const folder = request.diskPaths?.[disk.id] ?? request.storagePath ?? null;
      const to = folder ? path.join(folder, path.basename(disk.path)) : disk.path;
      if (folder && !path.isAbsolute(folder)) {
        errors.push({
          code: 'relative-path',
          message: `${folder} is a relative path; give an absolute folder for ${disk.id}`,
        });
        continue;
      }
      if (
        folder &&
        !dSettings.storageRoots.some((r) => folder === r || folder.startsWith(r.endsWith('/') ? r : `${r}/`))
      ) {
        errors.push({
          code: 'outside-storage-roots',
          message: `${folder} is outside ${d.name}'s storage roots (${dSettings.storageRoots.join(', ') || 'none'})`,
        });
        continue;
      }
      const shared = sharedStorage.find((x) => x.id === disk.id)?.sameFile;
      if (to === disk.path && shared) {
        errors.push({
          code: 'copy-onto-itself',
          message: `${d.name} sees ${disk.path} as the very same file: copying the disk there would overwrite it; move without copying storage, or choose another folder`,
        });
        continue;
      }
      const [here, there] = await Promise.all([statFile(src, disk.path), statFile(dst, to)]);
      if (there) {
        errors.push({
          code: 'target-exists',
          message: `${to} already exists on ${d.name}; Ferry never overwrites a file`,
        });
        continue;
      }
      copies.push({
        target: disk.id,
        from: disk.path,
        to,
        format: disk.format,
        capacity: here?.capacity ?? 0n,
      });
    }
  }

  const plan = libvirtPlan(request, options, vm, {
    tls,
    shared: sharedStorage.every((x) => x.sameFile),
    copies,
    dest: dest.record.migrationAddress,
  });
  return {
    report: { errors, warnings },
    options,
    vm,
    targets: [],
    libvirt: { ...plan, copies, deleteSource: request.keepSource ? [] : copies.map((c) => c.from) },
  };
}

/** The options → libvirt's migration flags and typed parameters. */
function libvirtPlan(
  request: MoveRequestParsed,
  o: MoveOptions,
  vm: VmConfig,
  x: { tls: boolean; shared: boolean; copies: DiskCopy[]; dest: string },
): { flags: number; params: TypedParam[]; tls: boolean } {
  let flags = MigrateFlags.LIVE | MigrateFlags.PERSIST_DEST | MigrateFlags.UNDEFINE_SOURCE;
  const params: TypedParam[] = [{ field: 'migrate_uri', type: 'string', value: `tcp://${x.dest}` }];
  if (o.bandwidthMiBs !== null)
    params.push({ field: 'bandwidth', type: 'ullong', value: BigInt(o.bandwidthMiBs) });
  if (x.tls) flags |= MigrateFlags.TLS;
  if (o.performance === 'multichannel' || o.compression === 'zstd') {
    flags |= MigrateFlags.PARALLEL;
    params.push({ field: 'parallel.connections', type: 'int', value: o.channels });
  }
  if (o.performance === 'compression' && o.compression) {
    flags |= MigrateFlags.COMPRESSED;
    params.push({ field: 'compression', type: 'string', value: o.compression });
  }
  if (o.convergence === 'throttle') flags |= MigrateFlags.AUTO_CONVERGE;
  if (o.convergence === 'postcopy') flags |= MigrateFlags.POSTCOPY;
  if (request.includeStorage) {
    flags |= MigrateFlags.NON_SHARED_DISK;
    for (const c of x.copies) params.push({ field: 'migrate_disks', type: 'string', value: c.target });
  } else if (vm.disks.length > 0 && x.shared) {
    // libvirt 9.0 calls a disk on a local filesystem unsafe to migrate even when both hosts see the
    // same file (as NFS would show it); Ferry has just proven they do, and only then says so.
    flags |= MigrateFlags.UNSAFE;
  }
  return { flags, params, tls: x.tls };
}
