// Storage-only moves on a libvirt host (R4): each disk of a running domain is block-copied into a new
// file while the guest runs (libvirt's virDomainBlockCopy, writes go to both once copied), then pivoted
// onto it without pausing the guest, and the old file is deleted. Also the file checks of their
// pre-flight (free space, whether a target already exists), through libvirt's storage API only.
//
// What a move is doing is kept in libvirt, not in this process: the plan (which disks, from where, to
// which files, which of those files this move made) is Ferry's metadata element of the running domain
// (live only: it never reaches the saved definition), and the copies themselves are the `<mirror>`
// elements of its live XML. So any driver instance, in any process, can follow, finish or undo a move.
// Only the count of pauses needs events, watched by this process from the start to the end of a move.
import { FerryError } from '../../api/index.js';
import type { DomainRef, LibvirtClient, LibvirtEvent } from '../../libvirt/client.js';
import { LibvirtError } from '../../libvirt/client.js';
import {
  BlockJobStatus,
  BlockJobType,
  DomainEventId,
  ErrorNumber,
  LifecycleEvent,
  writeDomain,
} from '../../libvirt/protocol.js';
import type { DiskJob, FileIdentity, StorageMoveResult } from '../driver.js';
import {
  abortBlockCopy,
  deleteImage,
  folderSpace,
  parseDomainDisks,
  pivotBlockCopy,
  startBlockCopy,
  statFile,
  xmlEscape,
  xmlUnescape,
} from './storage.js';

/** REMOTE_PROC_DOMAIN_SET_METADATA / GET_METADATA (remote_protocol.x). */
const PROC_DOMAIN_SET_METADATA = 264;
const PROC_DOMAIN_GET_METADATA = 265;
/** VIR_DOMAIN_METADATA_ELEMENT: an XML element under <metadata>, in its own namespace. */
const METADATA_ELEMENT = 2;
/** VIR_DOMAIN_AFFECT_LIVE: the running domain only, never its saved definition. */
const AFFECT_LIVE = 1;
/** VIR_ERR_NO_DOMAIN_METADATA */
const ERR_NO_DOMAIN_METADATA = 80;
const METADATA_URI = 'https://ferry.invalid/xmlns/storage-move/1';
const METADATA_KEY = 'ferry';
/** virDomainState values this file tells apart. */
const STATE_RUNNING = 1;
const STATE_BLOCKED = 2;
const STATE_PAUSED = 3;

/** One disk of a storage move, as recorded in the domain's metadata. */
interface PlannedDisk {
  id: string;
  from: string;
  to: string;
  format: string;
  /** This move created `to` (only such files are ever removed by an abort). */
  made: boolean;
}

function planXml(disks: PlannedDisk[]): string {
  const items = disks.map(
    (d) =>
      `<disk id='${xmlEscape(d.id)}' from='${xmlEscape(d.from)}' to='${xmlEscape(d.to)}' ` +
      `format='${xmlEscape(d.format)}' made='${d.made ? 'yes' : 'no'}'/>`,
  );
  return `<move>${items.join('')}</move>`;
}

/** The disks of a plan element as libvirt hands it back (it may carry a namespace prefix). */
function parsePlan(xml: string): PlannedDisk[] {
  const out: PlannedDisk[] = [];
  for (const m of xml.matchAll(/<(?:[\w.-]+:)?disk\b([^>]*?)\/?>/g)) {
    const attrs = new Map<string, string>();
    for (const a of m[1]!.matchAll(/([\w:.-]+)=(['"])([\s\S]*?)\2/g)) attrs.set(a[1]!, xmlUnescape(a[3]!));
    const id = attrs.get('id');
    const from = attrs.get('from');
    const to = attrs.get('to');
    if (!id || !from || !to) continue;
    out.push({ id, from, to, format: attrs.get('format') ?? 'raw', made: attrs.get('made') === 'yes' });
  }
  return out;
}

// ---- pauses and failed copies, from events ----------------------------------------------------------

/**
 * Lifecycle and block-job events of one domain during a move: how often it was paused, and which
 * copies libvirt reported failed or cancelled. Own callbacks for the domain (the connection's own
 * lifecycle callback for all domains delivers the same events again: only ours are counted).
 */
class MoveWatch {
  pauses = 0;
  readonly failures = new Map<string, string>();
  private ids: number[] = [];
  /** The lifecycle callback whose events count; 'any' when ours could not be registered. */
  private lifecycle: number | 'any' | null = null;
  private readonly listener = (e: LibvirtEvent): void => {
    if (!('dom' in e) || e.dom.uuid !== this.dom.uuid) return;
    if (e.kind === 'lifecycle') {
      if (this.lifecycle === null || (this.lifecycle !== 'any' && e.callbackID !== this.lifecycle)) return;
      if (e.event === LifecycleEvent.SUSPENDED) this.pauses++;
    } else if (e.kind === 'block-job' && this.ids.includes(e.callbackID) && e.type === BlockJobType.COPY) {
      if (e.status === BlockJobStatus.FAILED) this.failures.set(e.dst, 'libvirt reports the copy failed');
      else if (e.status === BlockJobStatus.CANCELED)
        this.failures.set(e.dst, 'the copy was cancelled on the host');
    }
  };

  private constructor(
    private readonly c: LibvirtClient,
    private readonly dom: DomainRef,
  ) {}

  static async start(c: LibvirtClient, dom: DomainRef): Promise<MoveWatch> {
    const w = new MoveWatch(c, dom);
    c.on('event', w.listener);
    const lifecycle = await c.registerDomainEvent(DomainEventId.LIFECYCLE, dom).catch(() => null);
    const jobs = await c.registerDomainEvent(DomainEventId.BLOCK_JOB_2, dom).catch(() => null);
    w.ids = [lifecycle, jobs].filter((x): x is number => x !== null);
    w.lifecycle = lifecycle ?? 'any';
    return w;
  }

  async stop(): Promise<void> {
    this.c.off('event', this.listener);
    for (const id of this.ids) await this.c.deregisterDomainEvent(id).catch(() => undefined);
    this.ids = [];
  }
}

/** Per connection and domain (uuid): the watch of the move running in this process. */
const watches = new WeakMap<LibvirtClient, Map<string, MoveWatch>>();

function watchesOf(c: LibvirtClient): Map<string, MoveWatch> {
  let m = watches.get(c);
  if (!m) {
    m = new Map();
    watches.set(c, m);
  }
  return m;
}

// ---- the driver part --------------------------------------------------------------------------------

export class LibvirtStorageMoves {
  constructor(
    private readonly hostName: string,
    private readonly client: () => Promise<LibvirtClient>,
    private readonly lookup: (c: LibvirtClient, name: string) => Promise<DomainRef>,
  ) {}

  private async domain(name: string): Promise<{ c: LibvirtClient; dom: DomainRef }> {
    const c = await this.client();
    return { c, dom: await this.lookup(c, name) };
  }

  /** The move recorded in the running domain; null when there is none (or it is not running). */
  private async readPlan(c: LibvirtClient, dom: DomainRef): Promise<PlannedDisk[] | null> {
    try {
      const xml = await c.call(
        PROC_DOMAIN_GET_METADATA,
        (w) => {
          writeDomain(w, dom);
          w.int(METADATA_ELEMENT)
            .optional(METADATA_URI, (x, v) => x.string(v))
            .uint(AFFECT_LIVE);
        },
        (r) => r.string(),
      );
      return parsePlan(xml);
    } catch (err) {
      if (
        err instanceof LibvirtError &&
        (err.libvirtCode === ERR_NO_DOMAIN_METADATA || err.libvirtCode === ErrorNumber.OPERATION_INVALID)
      )
        return null;
      throw err;
    }
  }

  /** Records the plan in the running domain (null: removes it). */
  private async writePlan(c: LibvirtClient, dom: DomainRef, disks: PlannedDisk[] | null): Promise<void> {
    await c.call(PROC_DOMAIN_SET_METADATA, (w) => {
      writeDomain(w, dom);
      w.int(METADATA_ELEMENT)
        .optional(disks ? planXml(disks) : null, (x, v) => x.string(v))
        .optional(disks ? METADATA_KEY : null, (x, v) => x.string(v))
        .optional(METADATA_URI, (x, v) => x.string(v))
        .uint(AFFECT_LIVE);
    });
  }

  private async stopWatch(c: LibvirtClient, dom: DomainRef): Promise<number> {
    const m = watchesOf(c);
    const w = m.get(dom.uuid);
    if (!w) return 0;
    m.delete(dom.uuid);
    await w.stop();
    return w.pauses;
  }

  async startStorageMove(
    name: string,
    targets: { id: string; path: string }[],
    speedMiBs: number | null,
  ): Promise<void> {
    const { c, dom } = await this.domain(name);
    const st = await c.domainGetState(dom, 0);
    if (![STATE_RUNNING, STATE_BLOCKED, STATE_PAUSED].includes(st.state)) {
      throw new FerryError('vm-not-running', `${name} is not running on ${this.hostName}`);
    }
    if (await this.readPlan(c, dom)) {
      throw new FerryError('vm-migrating', `a storage move of ${name} is already in progress`);
    }
    const disks = parseDomainDisks(await c.domainGetXmlDesc(dom, 0));
    const plan: PlannedDisk[] = targets.map((t) => {
      const d = disks.find((x) => x.target === t.id);
      if (!d?.source) throw new FerryError('bad-input', `${name} has no disk ${t.id} with a file to move`);
      if (d.mirror) {
        throw new FerryError('vm-migrating', `${name}'s disk ${t.id} is already being copied (a block job)`);
      }
      return { id: t.id, from: d.source, to: t.path, format: d.format ?? 'raw', made: false };
    });
    const prev = watchesOf(c).get(dom.uuid);
    if (prev) await prev.stop();
    watchesOf(c).set(dom.uuid, await MoveWatch.start(c, dom));
    try {
      await this.writePlan(c, dom, plan);
      for (const p of plan) {
        // Creates the file (the disk's virtual size and format; never over an existing one) and starts
        // the copy; if libvirt refuses, the file is removed again there.
        await startBlockCopy(c, dom, { target: p.id, format: p.format }, p.to, speedMiBs);
        p.made = true;
        await this.writePlan(c, dom, plan);
      }
    } catch (err) {
      await this.abortStorageMove(name).catch(() => undefined);
      throw err;
    }
  }

  async storageMoveJobs(name: string): Promise<DiskJob[]> {
    const { c, dom } = await this.domain(name);
    const plan = (await this.readPlan(c, dom)) ?? [];
    const disks = parseDomainDisks(await c.domainGetXmlDesc(dom, 0));
    const failures = watchesOf(c).get(dom.uuid)?.failures;
    return Promise.all(
      plan.map(async (p): Promise<DiskJob> => {
        const disk = disks.find((d) => d.target === p.id);
        const info = await c.domainGetBlockJobInfo(dom, p.id);
        if (info.found && info.type === BlockJobType.COPY && disk?.mirror?.file === p.to) {
          // Ready once libvirt marks the mirror ready (then cur == end): only then can it pivot.
          const ready = disk.mirror.ready;
          return {
            id: p.id,
            copied: Number(info.cur),
            total: Number(info.end),
            ready,
            status: ready ? 'ready' : 'running',
            error: null,
          };
        }
        const error =
          failures?.get(p.id) ??
          (disk?.source === p.to
            ? null
            : `the copy of ${p.id} into ${p.to} is no longer running on ${this.hostName}`);
        if (error === null) {
          // Already switched to the copy (a retried completion): nothing left to copy.
          return { id: p.id, copied: 1, total: 1, ready: true, status: 'ready', error: null };
        }
        return { id: p.id, copied: 0, total: 0, ready: false, status: 'gone', error };
      }),
    );
  }

  async completeStorageMove(name: string): Promise<StorageMoveResult> {
    const { c, dom } = await this.domain(name);
    const plan = await this.readPlan(c, dom);
    if (!plan) throw new FerryError('migration-failed', `no storage move of ${name} in progress`);
    const moved: StorageMoveResult['disks'] = [];
    const stuck: string[] = [];
    for (const p of plan) {
      const before = parseDomainDisks(await c.domainGetXmlDesc(dom, 0)).find((d) => d.target === p.id);
      if (before?.source !== p.to) {
        // The switch (libvirt waits for it) and the saved definition naming the new file.
        await pivotBlockCopy(c, dom, p.id);
      }
      const after = parseDomainDisks(await c.domainGetXmlDesc(dom, 0)).find((d) => d.target === p.id);
      if (after?.source === p.to) moved.push({ id: p.id, from: p.from, to: p.to });
      else stuck.push(p.id);
    }
    if (stuck.length > 0) {
      // The abort that follows keeps the disks already on their copies and undoes the others.
      throw new FerryError('migration-failed', `${stuck.join(', ')} did not switch to the new file`);
    }
    for (const m of moved) {
      // Only a file no disk of the domain uses any more.
      const inUse = parseDomainDisks(await c.domainGetXmlDesc(dom, 0)).some((d) => d.source === m.from);
      if (!inUse) await deleteImage(c, m.from);
    }
    await this.writePlan(c, dom, null);
    const pauses = await this.stopWatch(c, dom);
    return { disks: moved, pauses };
  }

  async abortStorageMove(name: string): Promise<void> {
    const { c, dom } = await this.domain(name);
    try {
      const plan = await this.readPlan(c, dom);
      for (const p of plan ?? []) {
        const disk = parseDomainDisks(await c.domainGetXmlDesc(dom, 0)).find((d) => d.target === p.id);
        // A disk that already runs on its copy keeps it: never delete a file in use.
        if (!disk || disk.source === p.to) continue;
        if (disk.mirror?.file === p.to) await abortBlockCopy(c, dom, p.id);
        if (p.made) await deleteImage(c, p.to);
      }
      if (plan) await this.writePlan(c, dom, null);
    } finally {
      await this.stopWatch(c, dom);
    }
  }

  // ---- files, for the pre-flight -------------------------------------------------------------------

  /** Free bytes of each folder's file system (the folder must exist: libvirt makes no folders). */
  async freeSpace(dirs: string[]): Promise<{ dir: string; freeBytes: number }[]> {
    const c = await this.client();
    const out: { dir: string; freeBytes: number }[] = [];
    for (const dir of dirs) out.push({ dir, freeBytes: Number((await folderSpace(c, dir)).available) });
    return out;
  }

  /**
   * Whether each file exists on the host, and its size (bytes it takes there). libvirt tells no
   * device or inode numbers: those are 0.
   */
  async statFiles(paths: string[]): Promise<FileIdentity[]> {
    const c = await this.client();
    const out: FileIdentity[] = [];
    for (const p of paths) {
      const st = await statFile(c, p);
      out.push(
        st
          ? { path: p, exists: true, device: 0, inode: 0, size: Number(st.allocation), kind: 'file' }
          : { path: p, exists: false, device: 0, inode: 0, size: 0, kind: 'missing' },
      );
    }
    return out;
  }
}
