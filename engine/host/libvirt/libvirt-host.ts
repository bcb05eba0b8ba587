// The libvirt host driver: a QEMU/KVM server reached through its own management service, libvirtd, as
// Hyper-V Manager reaches a Hyper-V host through its. Every domain on the server is a VM here (also
// those defined with virsh, virt-manager or OpenStack); Ferry's own per-host settings (limits,
// performance option, bandwidth, convergence) live in the host's state folder beside the inventory,
// never on the server.
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import {
  FerryError,
  HostSettingsSchema,
  type CreateVmRequest,
  type HostFacts,
  type HostRecord,
  type HostSettings,
  type VmConfig,
  type VmInfo,
  type VmState,
  type VmSummary,
} from '../../api/index.js';
import type { DomainRef, LibvirtClient } from '../../libvirt/client.js';
import { LibvirtError } from '../../libvirt/client.js';
import type {
  DiskJob,
  FileIdentity,
  HostDriver,
  SerialChunk,
  StopOptions,
  StorageMoveResult,
} from '../driver.js';
import { labGuestImage, readJson, withLock, writeJsonAtomic } from '../store.js';
import { libvirtConnection, type ConnectionStatus } from './connection.js';
import {
  buildDomainXml,
  parseCapabilities,
  parseDomainCpuModels,
  parseDomainXml,
  type DomainDescription,
} from './domain-xml.js';
import { LibvirtMigrationDriver } from './migration.js';
import { LibvirtStorageMoves } from './storage-move.js';

/** virDomainState */
const STATE = {
  nostate: 0,
  running: 1,
  blocked: 2,
  paused: 3,
  shutdown: 4,
  shutoff: 5,
  crashed: 6,
  pmsuspended: 7,
};
/** virDomainPausedReason / virDomainRunningReason values Ferry tells apart. */
const PAUSED_MIGRATION = 2;
const SHUTOFF_REASONS = [
  'unknown',
  'shut down',
  'destroyed',
  'crashed',
  'migrated',
  'saved',
  'failed',
  'from snapshot',
  'daemon',
];
const PAUSED_REASONS = [
  'unknown',
  'by the user',
  'for migration',
  'saving',
  'dumping',
  'I/O error',
  'watchdog',
  'from snapshot',
  'shutting down',
  'snapshot',
  'crashed',
  'starting up',
  'post-copy',
  'post-copy failed',
];
/** virDomainUndefineFlags: managed save, snapshot metadata, NVRAM, checkpoints — what virsh undefine removes. */
const UNDEFINE_ALL = 1 | 2 | 4 | 16;
/** VIR_ERR_NO_DOMAIN */
const ERR_NO_DOMAIN = 42;
/** VIR_DOMAIN_XML_INACTIVE: the persistent definition, not the running one. */
const XML_INACTIVE = 2;

function vmState(state: number, reason: number): VmState {
  switch (state) {
    case STATE.running:
    case STATE.blocked:
      return 'running';
    case STATE.paused:
    case STATE.pmsuspended:
      return reason === PAUSED_MIGRATION ? 'migrating' : 'paused';
    case STATE.shutdown:
      return 'stopping';
    case STATE.crashed:
      return 'crashed';
    default:
      return 'stopped';
  }
}

function stateReason(state: number, reason: number): string | null {
  if (state === STATE.paused) return `paused ${PAUSED_REASONS[reason] ?? `(reason ${reason})`}`;
  if (state === STATE.shutoff && reason > 1 && reason !== 2)
    return `shut off: ${SHUTOFF_REASONS[reason] ?? reason}`;
  if (state === STATE.crashed) return 'the guest crashed';
  return null;
}

/** libvirt packs versions as major * 1,000,000 + minor * 1,000 + micro. */
export function versionString(v: number): string {
  return `${Math.floor(v / 1e6)}.${Math.floor((v % 1e6) / 1e3)}.${v % 1e3}`;
}

export class LibvirtHost extends LibvirtMigrationDriver implements HostDriver {
  readonly name: string;
  private readonly storageMoves: LibvirtStorageMoves;
  /** When Ferry saw each domain start (libvirt keeps no start time); uptime is unknown otherwise. */
  private static readonly startedAt = new Map<string, string>();

  constructor(readonly record: HostRecord) {
    super(record.name);
    this.name = record.name;
    this.storageMoves = new LibvirtStorageMoves(
      record.name,
      () => this.client(),
      (c, name) => this.lookup(c, name),
    );
  }

  /** The open connection to the host's libvirtd. */
  client(): Promise<LibvirtClient> {
    return libvirtConnection(this.record).get();
  }

  connection(): Promise<ConnectionStatus & { warning: string | null }> {
    const c = libvirtConnection(this.record);
    const warning = /^[a-z0-9]+\+tcp:/i.test(this.record.uri ?? '')
      ? 'qemu+tcp:// is unauthenticated and unencrypted: anyone on the network can control this host; use it for labs and tests only'
      : null;
    return c.get().then(
      () => ({ ...c.status(), warning }),
      () => ({ ...c.status(), warning }),
    );
  }

  // ---- facts and settings ----------------------------------------------------------------------

  async settings(): Promise<HostSettings> {
    const s = await readJson(path.join(this.record.stateDir, 'settings.json'), HostSettingsSchema);
    return s ?? HostSettingsSchema.parse({ storageRoots: [this.record.vmDir] });
  }

  async updateSettings(patch: Partial<HostSettings>): Promise<HostSettings> {
    return withLock(path.join(this.record.stateDir, 'settings'), async () => {
      const next = HostSettingsSchema.parse({ ...(await this.settings()), ...patch });
      await writeJsonAtomic(path.join(this.record.stateDir, 'settings.json'), next);
      return next;
    });
  }

  async facts(): Promise<HostFacts> {
    const c = await this.client();
    const [hostname, libVersion, qemuVersion, capsXml, node, freeBytes] = await Promise.all([
      c.getHostname(),
      c.getLibVersion(),
      c.getVersion(),
      c.getCapabilities(),
      c.nodeGetInfo(),
      c.nodeGetFreeMemory(),
    ]);
    const caps = parseCapabilities(capsXml);
    const kvm = caps.domainTypes.includes('kvm');
    const accelSetting = (await this.settings()).accel;
    const accel = accelSetting === 'tcg' || (accelSetting === 'auto' && !kvm) ? 'tcg' : 'kvm';
    const cpuModels = await c
      .getDomainCapabilities({
        emulatorbin: null,
        arch: caps.arch,
        machine: null,
        virttype: accel === 'kvm' ? 'kvm' : 'qemu',
      })
      .then(parseDomainCpuModels)
      .catch(() => []);
    const features = c.features;
    return {
      name: this.name,
      hostname,
      libvirtVersion: versionString(libVersion),
      qemuBinary: caps.emulator ?? 'qemu-system-x86_64',
      qemuVersion: versionString(qemuVersion),
      accel,
      hardwareVirtualization: kvm,
      accelNote: kvm
        ? accel === 'kvm'
          ? 'libvirt offers KVM on this host'
          : 'libvirt offers KVM, but this host is set to TCG'
        : 'libvirt offers no KVM on this host: domains run under TCG emulation',
      cpuVendor: caps.cpuVendor,
      cpuModel: caps.cpuModel,
      cpuCount: node.cpus,
      memTotalMiB: Number(node.memoryKiB / 1024n),
      memFreeMiB: Number(freeBytes / 1048576n),
      diskFreeBytes: 0,
      machineTypes: caps.machineTypes,
      defaultMachineType: caps.defaultMachineType ?? 'pc',
      cpuModels,
      // What libvirt's migration protocol offers this client (connect features and the version).
      migrationCapabilities: [
        ...(features.migrationV3 ? ['migration-v3'] : []),
        ...(features.migrationParams ? ['migration-params'] : []),
        ...(features.changeProtection ? ['change-protection'] : []),
        'postcopy',
        'auto-converge',
        'parallel',
        'tls',
        'xbzrle',
        'mt',
      ],
      multifdCompression: libVersion >= 9_004_000 ? ['zlib', 'zstd'] : [],
      // libvirt lists the rdma transport whenever it was built with it, RDMA hardware or not; with no
      // way to see the devices through libvirt yet, an RDMA move between libvirt hosts falls back to TCP.
      rdma: false,
    };
  }

  // ---- domains ---------------------------------------------------------------------------------

  private async lookup(c: LibvirtClient, name: string): Promise<DomainRef> {
    try {
      return await c.lookupDomainByName(name);
    } catch (err) {
      if (err instanceof LibvirtError && err.libvirtCode === ERR_NO_DOMAIN) {
        throw new FerryError('unknown-vm', `no domain named "${name}" on ${this.name}`);
      }
      throw err;
    }
  }

  private summaryOf(
    dom: DomainRef,
    info: { state: number; memoryKiB: bigint; maxMemKiB: bigint; nrVirtCpu: number },
    reason: number,
    machineType: string,
  ): VmSummary {
    const state = vmState(info.state, reason);
    const key = `${this.name}/${dom.uuid}`;
    if (state === 'stopped') LibvirtHost.startedAt.delete(key);
    const kib = info.state === STATE.shutoff ? info.maxMemKiB : info.memoryKiB;
    return {
      name: dom.name,
      uuid: dom.uuid,
      host: this.name,
      state,
      memoryMiB: Number(kib / 1024n),
      cpus: info.nrVirtCpu,
      machineType,
      pid: null,
      startedAt: state === 'stopped' ? null : (LibvirtHost.startedAt.get(key) ?? null),
      reason: stateReason(info.state, reason),
    };
  }

  private async summary(c: LibvirtClient, dom: DomainRef): Promise<VmSummary> {
    const [info, st, xml] = await Promise.all([
      c.domainGetInfo(dom),
      c.domainGetState(dom, 0),
      c.domainGetXmlDesc(dom, 0),
    ]);
    return this.summaryOf(dom, info, st.reason, parseDomainXml(xml).machineType);
  }

  async listVms(): Promise<VmSummary[]> {
    const c = await this.client();
    const doms = await c.listAllDomains(0);
    const out = await Promise.all(
      doms.map((d) =>
        this.summary(c, d).catch((err: unknown) => {
          // A domain undefined between the list and the look is simply gone.
          if (err instanceof LibvirtError && err.libvirtCode === ERR_NO_DOMAIN) return null;
          throw err;
        }),
      ),
    );
    return out.filter((v): v is VmSummary => v !== null).sort((a, b) => a.name.localeCompare(b.name));
  }

  async hasVm(name: string): Promise<boolean> {
    const c = await this.client();
    return this.lookup(c, name).then(
      () => true,
      (err: unknown) => {
        if (err instanceof FerryError && err.code === 'unknown-vm') return false;
        throw err;
      },
    );
  }

  private async describe(
    name: string,
  ): Promise<{ dom: DomainRef; d: DomainDescription; summary: VmSummary }> {
    const c = await this.client();
    const dom = await this.lookup(c, name);
    const [summary, xml] = await Promise.all([this.summary(c, dom), c.domainGetXmlDesc(dom, 0)]);
    const d = parseDomainXml(xml);
    // The XML names the files; their virtual sizes come from libvirt (for free-space checks). A
    // disk libvirt cannot size (an unreachable network volume) keeps 0.
    d.disks = await Promise.all(
      d.disks.map(async (k) => ({
        ...k,
        sizeBytes: await c.domainGetBlockInfo(dom, k.id).then(
          (b) => Number(b.capacity),
          () => 0,
        ),
      })),
    );
    return { dom, d, summary };
  }

  async vmInfo(name: string): Promise<VmInfo> {
    const { d, summary } = await this.describe(name);
    return {
      ...summary,
      configVersion: d.machineType,
      cpuModel: d.cpuModel,
      disks: d.disks,
      nics: d.nics,
      labGuest: d.labGuest,
      serialLogPath: d.serialFile ?? '',
      configPath: `${this.record.uri} domain ${d.name}`,
    };
  }

  async vmConfig(name: string): Promise<VmConfig> {
    const { d } = await this.describe(name);
    return {
      formatVersion: 1,
      name: d.name,
      uuid: d.uuid,
      memoryMiB: d.memoryMiB,
      cpus: d.cpus,
      machineType: d.machineType,
      cpuModel: d.cpuModel,
      disks: d.disks,
      nics: d.nics,
      labGuest: d.labGuest,
      createdAt: new Date(0).toISOString(),
    };
  }

  /**
   * Defines a domain: the lab guest (lab hosts only: its kernel file must be on the server) or a VM
   * on existing images. libvirt 9.0 makes no plain files outside a storage pool, so new, empty disks
   * are refused with what to do instead.
   */
  async defineVm(req: CreateVmRequest): Promise<VmInfo> {
    if (req.disks.some((d) => d.kind === 'new')) {
      throw new FerryError(
        'not-supported',
        `${this.name} is a libvirt host: Ferry does not create new disk files there`,
        'create the image on the server (qemu-img create) and pass it with --disk-image PATH',
      );
    }
    if (req.labGuest && !this.record.lab) {
      throw new FerryError(
        'not-supported',
        `the lab guest runs only on lab hosts (its kernel is a file on this machine, not on ${this.name})`,
      );
    }
    const c = await this.client();
    const facts = await this.facts();
    const uuid = crypto.randomUUID();
    const xml = buildDomainXml({
      name: req.name,
      uuid,
      type: facts.accel === 'kvm' ? 'kvm' : 'qemu',
      memoryMiB: req.memoryMiB,
      cpus: req.cpus,
      machineType: req.machineType ?? facts.defaultMachineType,
      disks: req.disks.map((d, i) => ({
        target: `vd${String.fromCharCode(97 + i)}`,
        path: d.kind === 'image' ? d.path : '',
        format: d.kind === 'image' && d.path.endsWith('.qcow2') ? 'qcow2' : 'raw',
      })),
      nics: [],
      labGuest: req.labGuest ? { kernel: labGuestImage(), lab: req.labGuest } : null,
      serialFile: this.record.lab
        ? path.join(req.storagePath ?? this.record.vmDir, `${req.name}.serial.log`)
        : null,
    });
    await c.domainDefineXmlFlags(xml, 0);
    return this.vmInfo(req.name);
  }

  private async act(
    name: string,
    fn: (c: LibvirtClient, dom: DomainRef) => Promise<unknown>,
  ): Promise<VmSummary> {
    const c = await this.client();
    const dom = await this.lookup(c, name);
    await fn(c, dom);
    return this.summary(c, dom);
  }

  async startVm(name: string): Promise<VmSummary> {
    const s = await this.act(name, async (c, dom) => {
      const st = await c.domainGetState(dom, 0);
      if (st.state !== STATE.shutoff && st.state !== STATE.crashed) {
        throw new FerryError('vm-running', `${name} is already ${vmState(st.state, st.reason)}`);
      }
      await c.domainCreateWithFlags(dom, 0);
    });
    LibvirtHost.startedAt.set(`${this.name}/${s.uuid}`, new Date().toISOString());
    return { ...s, startedAt: LibvirtHost.startedAt.get(`${this.name}/${s.uuid}`) ?? null };
  }

  pauseVm(name: string): Promise<VmSummary> {
    return this.act(name, async (c, dom) => {
      const st = await c.domainGetState(dom, 0);
      if (st.state !== STATE.running) throw new FerryError('vm-not-running', `${name} is not running`);
      await c.domainSuspend(dom);
    });
  }

  resumeVm(name: string): Promise<VmSummary> {
    return this.act(name, async (c, dom) => {
      const st = await c.domainGetState(dom, 0);
      if (st.state !== STATE.paused) throw new FerryError('vm-not-running', `${name} is not paused`);
      if (st.reason === PAUSED_MIGRATION) throw new FerryError('vm-migrating', `${name} is being moved`);
      await c.domainResume(dom);
    });
  }

  /** Shut Down asks the guest (ACPI); after the timeout, or with `force`, it is turned off. */
  stopVm(name: string, opts: StopOptions): Promise<VmSummary> {
    return this.act(name, async (c, dom) => {
      const st = await c.domainGetState(dom, 0);
      if (st.state === STATE.shutoff) return;
      if (!opts.force) {
        await c.domainShutdownFlags(dom, 0);
        const deadline = Date.now() + opts.timeoutMs;
        while (Date.now() < deadline) {
          if ((await c.domainGetState(dom, 0)).state === STATE.shutoff) return;
          await new Promise((r) => setTimeout(r, 250));
        }
      }
      await c.domainDestroyFlags(dom, 0).catch((err: unknown) => {
        // It may have shut down by itself in the meantime.
        if (!(err instanceof LibvirtError && err.libvirtCode === 55)) throw err;
      });
    });
  }

  /** Removes the domain's definition; its disks stay on the server (Ferry did not create them). */
  async deleteVm(name: string): Promise<void> {
    const c = await this.client();
    const dom = await this.lookup(c, name);
    const st = await c.domainGetState(dom, 0);
    if (st.state !== STATE.shutoff && st.state !== STATE.crashed) {
      throw new FerryError('vm-running', `${name} is ${vmState(st.state, st.reason)}; turn it off first`);
    }
    await c.domainUndefineFlags(dom, UNDEFINE_ALL);
  }

  /**
   * The serial log, where it is a file this machine can read (a lab host: the servers share this
   * machine's filesystem). A remote server's console is a libvirt stream, not a file.
   */
  async readSerial(name: string, from: number): Promise<SerialChunk> {
    const c = await this.client();
    const dom = await this.lookup(c, name);
    const d = parseDomainXml(await c.domainGetXmlDesc(dom, XML_INACTIVE));
    if (!d.serialFile || !this.record.lab) {
      throw new FerryError(
        'not-supported',
        d.serialFile
          ? `${name}'s serial log is a file on ${this.name} (${d.serialFile}), not on this machine`
          : `${name} has no serial log file on ${this.name}`,
      );
    }
    let buf: Buffer;
    try {
      buf = await fs.promises.readFile(d.serialFile);
    } catch {
      return { text: '', next: from };
    }
    return { text: buf.subarray(from).toString('utf8'), next: buf.length };
  }

  /** What the VM's consoles are on this server: its first serial port's kind, its VNC screen if any. */
  async consoleFacts(name: string): Promise<{ serialType: string | null; vnc: boolean }> {
    const c = await this.client();
    const d = parseDomainXml(await c.domainGetXmlDesc(await this.lookup(c, name), 0));
    return { serialType: d.serialType, vnc: d.vnc !== null };
  }

  /**
   * The VM's console on this server, as bytes both ways: its serial port (libvirt's open-console, which
   * needs a pty serial: a file serial is only a log) or its VNC screen (raw RFB), reached through the
   * connection's SSH session (a forwarded channel to the listener the domain's XML names: its loopback
   * port or unix socket), or directly over TLS/TCP where VNC listens on an address this machine can
   * reach. Each refusal says why.
   */
  async openConsole(name: string, kind: 'serial' | 'vnc'): Promise<Duplex> {
    const c = await this.client();
    const dom = await this.lookup(c, name);
    const st = await c.domainGetState(dom, 0);
    if (st.state !== STATE.running && st.state !== STATE.paused && st.state !== STATE.blocked) {
      throw new FerryError('vm-not-running', `${name} is ${vmState(st.state, st.reason)} on ${this.name}`);
    }
    const d = parseDomainXml(await c.domainGetXmlDesc(dom, 0));
    if (kind === 'serial') {
      if (d.serialType !== 'pty') {
        throw new FerryError(
          'not-supported',
          d.serialType
            ? `${name}'s serial port on ${this.name} is a ${d.serialType}, not a pty: libvirt opens only a pty as a console${d.serialFile ? `; its output is logged to ${d.serialFile}` : ''}`
            : `${name} has no serial port on ${this.name}`,
        );
      }
      return c.domainOpenConsole(dom, null, 0);
    }
    if (!d.vnc) throw new FerryError('not-supported', `${name} has no VNC screen on ${this.name}`);
    const { listen, port, socket } = d.vnc;
    const local = c.uri.transport === 'unix'; // libvirtd on this machine: its loopback is ours
    const direct = (to: net.NetConnectOpts, where: string): Promise<Duplex> =>
      new Promise<Duplex>((ok, no) => {
        const s = net.connect(to, () => ok(s));
        s.once('error', (err) =>
          no(new FerryError('host-unreachable', `cannot reach ${name}'s screen at ${where}: ${err.message}`)),
        );
      });
    if (socket) {
      if (local) return direct({ path: socket }, socket);
      const ch = c.forward({ socket });
      if (ch) return ch;
      throw new FerryError(
        'not-supported',
        `${name}'s screen listens on a unix socket on ${this.name} (${socket}), which only an SSH connection reaches`,
      );
    }
    if (port === null) throw new FerryError('not-supported', `${name}'s VNC screen has no port yet`);
    const loopback = !listen || /^(127\.|::1$|localhost$)/.test(listen);
    const wildcard = listen === '0.0.0.0' || listen === '::';
    if (local)
      return direct({ host: loopback || wildcard ? '127.0.0.1' : listen, port }, `${listen}:${port}`);
    const ch = c.forward({ host: loopback || wildcard ? '127.0.0.1' : listen, port });
    if (ch) return ch;
    if (loopback) {
      throw new FerryError(
        'not-supported',
        `${name}'s screen listens on ${this.name}'s loopback only (${listen ?? '127.0.0.1'}:${port}); connect to ${this.name} over SSH (qemu+ssh://) to see it`,
      );
    }
    const host = wildcard ? (c.uri.host ?? 'localhost') : listen;
    return direct({ host, port }, `${host}:${port}`);
  }

  // ---- storage-only moves on this host and their pre-flight (storage-move.ts) ------------------

  startStorageMove(
    name: string,
    targets: { id: string; path: string }[],
    speedMiBs: number | null,
  ): Promise<void> {
    return this.storageMoves.startStorageMove(name, targets, speedMiBs);
  }
  storageMoveJobs(name: string): Promise<DiskJob[]> {
    return this.storageMoves.storageMoveJobs(name);
  }
  completeStorageMove(name: string): Promise<StorageMoveResult> {
    return this.storageMoves.completeStorageMove(name);
  }
  abortStorageMove(name: string): Promise<void> {
    return this.storageMoves.abortStorageMove(name);
  }
  freeSpace(dirs: string[]): Promise<{ dir: string; freeBytes: number }[]> {
    return this.storageMoves.freeSpace(dirs);
  }
  statFiles(paths: string[]): Promise<FileIdentity[]> {
    return this.storageMoves.statFiles(paths);
  }
}
