// Files on a libvirt host, reached through libvirt's storage API only (Ferry never has a shell there):
// a folder is a `dir` storage pool, a file in it is a volume whose path is the folder + its name.
// A folder that already has an active pool uses that pool; otherwise a transient pool is made for the
// call and destroyed after, so nothing is left defined on the host. Calls of one Ferry process for the
// same folder of the same host share one such pool (libvirt refuses a second pool on the same target).
//
// Also here: the storage-only move of a running domain's disk (libvirt block copy, then pivot).
import crypto from 'node:crypto';
import path from 'node:path';
import { XMLParser } from 'fast-xml-parser';
import { FerryError } from '../../api/index.js';
import {
  type DomainRef,
  type LibvirtClient,
  LibvirtError,
  type StoragePoolInfo,
  type StoragePoolRef,
  type StorageVolRef,
  type TypedParam,
} from '../../libvirt/client.js';
import { DomainFlags, ErrorNumber, StoragePoolListFlags } from '../../libvirt/protocol.js';

export type { StoragePoolRef } from '../../libvirt/client.js';

/** libvirt's default migrate_tls_x509_cert_dir (qemu.conf). */
export const MIGRATION_TLS_DIR = '/etc/pki/qemu';
/** What QEMU needs there to be both the server and the client of a TLS migration (and of NBD). */
export const MIGRATION_TLS_FILES = [
  'ca-cert.pem',
  'server-cert.pem',
  'server-key.pem',
  'client-cert.pem',
  'client-key.pem',
] as const;

export type ImageFormat = 'qcow2' | 'raw';

export interface FileStat {
  /** Virtual size in bytes (for a raw file, its length). */
  capacity: bigint;
  /** Bytes the file takes on the host's disk. */
  allocation: bigint;
  /** The image format libvirt found (qcow2, raw, …), null when it gave none. */
  format: string | null;
}

// ---- XML ------------------------------------------------------------------------------------------

type Node = Record<string, unknown>;

const parser = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: '@',
  textNodeName: '#text',
  parseAttributeValue: false,
  parseTagValue: false,
  isArray: (_name, jpath) => String(jpath) === 'domain.devices.disk',
});

function obj(v: unknown): Node {
  return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Node) : {};
}
function attr(v: unknown, name: string): string | null {
  const a = obj(v)[`@${name}`];
  return typeof a === 'string' ? a : null;
}
function text(v: unknown): string | null {
  if (typeof v === 'string') return v.trim();
  const t = obj(v)['#text'];
  return typeof t === 'string' ? t.trim() : null;
}

/** Escapes text for an XML attribute or element. */
export function xmlEscape(s: string): string {
  return s
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/'/g, '&apos;')
    .replace(/"/g, '&quot;');
}

export function xmlUnescape(s: string): string {
  return s
    .replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>')
    .replace(/&apos;/g, "'")
    .replace(/&quot;/g, '"')
    .replace(/&#(\d+);/g, (_m, d: string) => String.fromCodePoint(Number(d)))
    .replace(/&#x([0-9a-f]+);/gi, (_m, h: string) => String.fromCodePoint(parseInt(h, 16)))
    .replace(/&amp;/g, '&');
}

/** One disk of a domain as its XML says it. */
export interface DomainDiskXml {
  target: string;
  type: string | null;
  /** The disk's file (or block device) path; null for network and empty disks. */
  source: string | null;
  format: string | null;
  /** A running block copy (live XML only): where to, and whether it has caught up. */
  mirror: { file: string | null; format: string | null; ready: boolean } | null;
}

export function parseDomainDisks(xml: string): DomainDiskXml[] {
  const devices = obj(obj(obj(parser.parse(xml))['domain'])['devices']);
  const disks = devices['disk'];
  return (Array.isArray(disks) ? disks : []).map((raw): DomainDiskXml => {
    const d = obj(raw);
    const src = obj(d['source']);
    const m = d['mirror'];
    return {
      target: attr(d['target'], 'dev') ?? '',
      type: attr(d, 'type'),
      source: attr(src, 'file') ?? attr(src, 'dev'),
      format: attr(d['driver'], 'type'),
      mirror:
        m === undefined
          ? null
          : {
              file: attr(m, 'file') ?? attr(obj(m)['source'], 'file') ?? attr(obj(m)['source'], 'dev'),
              format: attr(m, 'format') ?? attr(obj(m)['format'], 'type'),
              ready: attr(m, 'ready') === 'yes',
            },
    };
  });
}

/** Sets (or adds) an attribute in an element's opening tag. */
function setAttr(tag: string, name: string, value: string): string {
  const re = new RegExp(`(\\s${name}=)(['"])[\\s\\S]*?\\2`);
  const quoted = `'${xmlEscape(value)}'`;
  if (re.test(tag)) return tag.replace(re, (_m, pre: string) => `${pre}${quoted}`);
  return tag.replace(/(\s*\/?>)$/, ` ${name}=${quoted}$1`);
}

function dropAttr(tag: string, name: string): string {
  return tag.replace(new RegExp(`\\s${name}=(['"])[\\s\\S]*?\\1`), '');
}

/**
 * A domain XML whose disk `target` names `file` (a plain file of this format) instead of its old
 * source, with no stale backing chain; null when the XML has no such disk. Only file, block and
 * volume disks can be rewritten (a network disk has no file to swap).
 */
export function retargetDiskXml(xml: string, target: string, file: string, format: string): string | null {
  const diskRe = /<disk\b[^>]*>[\s\S]*?<\/disk>/g;
  let found = false;
  const out = xml.replace(diskRe, (block) => {
    const dev = /<target\b[^>]*\sdev=(['"])([\s\S]*?)\1/.exec(block);
    if (found || !dev || xmlUnescape(dev[2]!) !== target) return block;
    found = true;
    const open = /^<disk\b[^>]*>/.exec(block)![0];
    const kind = /\stype=(['"])([\s\S]*?)\1/.exec(open)?.[2] ?? 'file';
    if (!['file', 'block', 'volume'].includes(kind)) {
      throw new FerryError(
        'not-supported',
        `disk ${target} is a ${kind} disk: only file, block and volume disks can be moved to a file`,
      );
    }
    let body = block.slice(open.length);
    // The backing chain of the old image: every <backingStore> nests in the first one.
    const bsOpen = body.search(/<backingStore\b/);
    if (bsOpen >= 0) {
      const bsClose = body.lastIndexOf('</backingStore>');
      const selfClosed = /^<backingStore\b[^>]*\/>/.exec(body.slice(bsOpen));
      const end = bsClose >= 0 ? bsClose + '</backingStore>'.length : bsOpen + selfClosed![0].length;
      body = body.slice(0, bsOpen) + body.slice(end);
    }
    body = body.replace(/<mirror\b[\s\S]*?<\/mirror>|<mirror\b[^>]*\/>/, '');
    const src = /<source\b[^>]*?\/?>/.exec(body);
    if (src) {
      let tag = src[0];
      for (const a of ['dev', 'pool', 'volume', 'mode', 'index']) tag = dropAttr(tag, a);
      tag = setAttr(tag, 'file', file);
      body = body.slice(0, src.index) + tag + body.slice(src.index + src[0].length);
    } else {
      body = body.replace(/^(\s*)/, `$1<source file='${xmlEscape(file)}'/>$1`);
    }
    const drv = /<driver\b[^>]*?\/?>/.exec(body);
    if (drv) {
      body =
        body.slice(0, drv.index) + setAttr(drv[0], 'type', format) + body.slice(drv.index + drv[0].length);
    } else {
      body = body.replace(/^(\s*)/, `$1<driver name='qemu' type='${xmlEscape(format)}'/>$1`);
    }
    // Blank lines where elements were cut out.
    body = body.replace(/\n[ \t]*(?=\n)/g, '');
    return setAttr(open, 'type', 'file') + body;
  });
  return found ? out : null;
}

// ---- errors -----------------------------------------------------------------------------------------

function isLibvirt(err: unknown, code: number): boolean {
  return err instanceof LibvirtError && err.libvirtCode === code;
}

/** libvirt's words when a pool's folder does not exist (a system error with ENOENT). */
function isNoSuchFolder(err: unknown): boolean {
  return err instanceof LibvirtError && /No such file or directory|does not exist/i.test(err.libvirtMessage);
}

/** Another pool (active or only defined) already has this folder as its target. */
function isPoolConflict(err: unknown): boolean {
  return (
    err instanceof LibvirtError &&
    /conflict with pool|same target path|already exists|already (?:active|defined)/i.test(err.libvirtMessage)
  );
}

function noFolder(c: LibvirtClient, dir: string): FerryError {
  return new FerryError('bad-input', `${c.host} has no folder ${dir}`, undefined, {
    host: c.host,
    folder: dir,
  });
}

function checkAbsolute(p: string, what: string): string {
  if (typeof p !== 'string' || !path.posix.isAbsolute(p) || p.includes('\0')) {
    throw new FerryError('bad-input', `${what} must be an absolute path on the host, not "${String(p)}"`);
  }
  const norm = path.posix.normalize(p);
  return norm.length > 1 ? norm.replace(/\/+$/, '') : norm;
}

function splitFile(file: string): { dir: string; name: string } {
  const f = checkAbsolute(file, 'a file');
  const name = path.posix.basename(f);
  if (!name || f === '/') throw new FerryError('bad-input', `"${file}" names a folder, not a file`);
  return { dir: path.posix.dirname(f), name };
}

// ---- pools ------------------------------------------------------------------------------------------

interface HeldPool {
  pool: StoragePoolRef;
  /** What to undo when the last user is done: destroy a pool Ferry made or started. */
  stopAfter: boolean;
}

interface Slot {
  users: number;
  held: Promise<HeldPool>;
}

/** Per connection and folder: the pool in use by this process, so concurrent calls share it. */
const slots = new WeakMap<LibvirtClient, Map<string, Slot>>();
/** Per connection and folder: the destroy of the last pool, which a new one must wait for. */
const closings = new WeakMap<LibvirtClient, Map<string, Promise<void>>>();

function mapOf<V>(m: WeakMap<LibvirtClient, Map<string, V>>, c: LibvirtClient): Map<string, V> {
  let inner = m.get(c);
  if (!inner) {
    inner = new Map();
    m.set(c, inner);
  }
  return inner;
}

function transientPoolXml(name: string, dir: string): string {
  return (
    `<pool type='dir'><name>${xmlEscape(name)}</name>` +
    `<target><path>${xmlEscape(dir)}</path></target></pool>`
  );
}

/** An inactive, defined `dir` pool whose target is `dir` (which then blocks a transient one). */
async function findInactiveDirPool(c: LibvirtClient, dir: string): Promise<StoragePoolRef | null> {
  const pools = await c.listAllStoragePools(StoragePoolListFlags.INACTIVE);
  for (const pool of pools) {
    const xml = obj(parser.parse(await c.storagePoolGetXmlDesc(pool).catch(() => '')))['pool'];
    const target = text(obj(obj(xml)['target'])['path']);
    if (target !== null && path.posix.normalize(target).replace(/\/+$/, '') === dir) {
      if (attr(xml, 'type') !== 'dir') {
        throw new FerryError(
          'not-supported',
          `${c.host}: the folder ${dir} belongs to the inactive ${attr(xml, 'type') ?? ''} storage pool ` +
            `"${pool.name}", which Ferry does not start`,
          `start it on ${c.host} (virsh pool-start ${pool.name}) and try again`,
        );
      }
      return pool;
    }
  }
  return null;
}

async function lookupActivePool(c: LibvirtClient, dir: string): Promise<StoragePoolRef | null> {
  try {
    return await c.storagePoolLookupByTargetPath(dir);
  } catch (err) {
    if (isLibvirt(err, ErrorNumber.NO_STORAGE_POOL)) return null;
    throw err;
  }
}

async function openPool(c: LibvirtClient, dir: string): Promise<HeldPool> {
  const existing = await lookupActivePool(c, dir);
  if (existing) return { pool: existing, stopAfter: false };
  const name = `ferry-${crypto.randomBytes(4).toString('hex')}`;
  try {
    return { pool: await c.storagePoolCreateXml(transientPoolXml(name, dir)), stopAfter: true };
  } catch (err) {
    if (isNoSuchFolder(err)) throw noFolder(c, dir);
    if (!isPoolConflict(err)) throw err;
  }
  // Someone else's pool has this folder: made active meanwhile, or defined but not running.
  const raced = await lookupActivePool(c, dir);
  if (raced) return { pool: raced, stopAfter: false };
  const inactive = await findInactiveDirPool(c, dir);
  if (!inactive) {
    throw new FerryError('libvirt-error', `${c.host}: no storage pool can be made for ${dir}`);
  }
  try {
    await c.storagePoolCreate(inactive);
  } catch (err) {
    if (isNoSuchFolder(err)) throw noFolder(c, dir);
    throw err;
  }
  // Started for this call only: it goes back to inactive after, as it was.
  return { pool: inactive, stopAfter: true };
}

async function release(c: LibvirtClient, dir: string, slot: Slot): Promise<void> {
  slot.users--;
  if (slot.users > 0) return;
  const map = mapOf(slots, c);
  if (map.get(dir) === slot) map.delete(dir);
  const closing = slot.held
    .then((h) => (h.stopAfter && !c.closed ? c.storagePoolDestroy(h.pool) : undefined))
    // A pool that cannot be destroyed now is transient: it goes at the daemon's next restart at most.
    .catch(() => undefined);
  const cmap = mapOf(closings, c);
  cmap.set(dir, closing);
  await closing;
  if (cmap.get(dir) === closing) cmap.delete(dir);
}

/**
 * Runs fn with a pool whose target is `dir`: an existing pool for that folder (refreshed first), else a
 * transient `dir` pool made for the call and destroyed after (never a persistent definition left behind).
 * An existing pool that is only defined (inactive) is started for the call and stopped after.
 * A folder the host does not have is refused with 'bad-input' (details.folder).
 */
export async function withDirPool<T>(
  c: LibvirtClient,
  dir: string,
  fn: (pool: StoragePoolRef) => Promise<T>,
): Promise<T> {
  const folder = checkAbsolute(dir, 'a folder');
  const map = mapOf(slots, c);
  let slot = map.get(folder);
  if (!slot) {
    const previous = mapOf(closings, c).get(folder) ?? Promise.resolve();
    slot = { users: 0, held: previous.then(() => openPool(c, folder)) };
    // Seen as handled until a user awaits it (a failed open would otherwise be "unhandled").
    slot.held.catch(() => undefined);
    map.set(folder, slot);
  }
  slot.users++;
  try {
    const { pool } = await slot.held;
    try {
      await c.storagePoolRefresh(pool);
    } catch (err) {
      if (isNoSuchFolder(err)) throw noFolder(c, folder);
      throw err;
    }
    return await fn(pool);
  } finally {
    await release(c, folder, slot);
  }
}

async function lookupVol(
  c: LibvirtClient,
  pool: StoragePoolRef,
  name: string,
): Promise<StorageVolRef | null> {
  try {
    return await c.storageVolLookupByName(pool, name);
  } catch (err) {
    if (isLibvirt(err, ErrorNumber.NO_STORAGE_VOL)) return null;
    throw err;
  }
}

function isNoFolderError(err: unknown): boolean {
  return err instanceof FerryError && err.code === 'bad-input' && err.details?.folder !== undefined;
}

// ---- files ------------------------------------------------------------------------------------------

/** Size and kind of a file as the host sees it; null when the host has no such file. */
export async function statFile(c: LibvirtClient, file: string): Promise<FileStat | null> {
  const { dir, name } = splitFile(file);
  try {
    return await withDirPool(c, dir, async (pool) => {
      const vol = await lookupVol(c, pool, name);
      if (!vol) return null;
      const info = await c.storageVolGetInfo(vol);
      const xml = obj(parser.parse(await c.storageVolGetXmlDesc(vol)))['volume'];
      const format = attr(obj(obj(xml)['target'])['format'], 'type');
      return { capacity: info.capacity, allocation: info.allocation, format };
    });
  } catch (err) {
    if (isNoFolderError(err)) return null;
    throw err;
  }
}

function volumeXml(name: string, format: ImageFormat, capacity: bigint): string {
  // allocation 0: a sparse raw file and a qcow2 without preallocation (libvirt's default allocation
  // is the capacity, which writes out every byte of a raw file).
  return (
    `<volume><name>${xmlEscape(name)}</name>` +
    `<capacity unit='bytes'>${capacity}</capacity><allocation unit='bytes'>0</allocation>` +
    `<target><format type='${format}'/></target></volume>`
  );
}

async function createVolume(
  c: LibvirtClient,
  file: string,
  format: ImageFormat,
  capacity: bigint,
): Promise<void> {
  const { dir, name } = splitFile(file);
  await withDirPool(c, dir, async (pool) => {
    if (await lookupVol(c, pool, name)) {
      throw new FerryError('bad-input', `${file} already exists on ${c.host}; Ferry does not overwrite it`);
    }
    try {
      await c.storageVolCreateXml(pool, volumeXml(name, format, capacity));
    } catch (err) {
      if (err instanceof LibvirtError && /already|exists/i.test(err.libvirtMessage)) {
        throw new FerryError('bad-input', `${file} already exists on ${c.host}; Ferry does not overwrite it`);
      }
      throw err;
    }
  });
}

/**
 * Creates an image file on the host (qcow2 or raw, this virtual size) in an existing folder; refuses
 * (FerryError 'bad-input') to overwrite an existing file, and a folder the host does not have.
 */
export async function createImage(
  c: LibvirtClient,
  file: string,
  format: ImageFormat,
  capacityBytes: bigint,
): Promise<void> {
  if (format !== 'qcow2' && format !== 'raw') {
    throw new FerryError('bad-input', `Ferry creates qcow2 or raw images, not ${String(format)}`);
  }
  if (typeof capacityBytes !== 'bigint' || capacityBytes <= 0n) {
    throw new FerryError(
      'bad-input',
      `an image needs a positive size in bytes, not ${String(capacityBytes)}`,
    );
  }
  await createVolume(c, file, format, capacityBytes);
}

/** Deletes an image file on the host (no error when it, or its folder, is already gone). */
export async function deleteImage(c: LibvirtClient, file: string): Promise<void> {
  const { dir, name } = splitFile(file);
  try {
    await withDirPool(c, dir, async (pool) => {
      const vol = await lookupVol(c, pool, name);
      if (!vol) return;
      try {
        await c.storageVolDelete(vol);
      } catch (err) {
        if (!isLibvirt(err, ErrorNumber.NO_STORAGE_VOL)) throw err;
      }
    });
  } catch (err) {
    if (!isNoFolderError(err)) throw err;
  }
}

/** Size, use and free space of the file system holding a folder of the host, in bytes. */
export async function folderSpace(c: LibvirtClient, dir: string): Promise<StoragePoolInfo> {
  return withDirPool(c, dir, (pool) => c.storagePoolGetInfo(pool));
}

/**
 * Proof that two hosts see the very same folder (shared storage), not just the same path: a marker
 * volume made through `a` and found through `b` (and removed after).
 */
export async function proveSharedFolder(
  a: LibvirtClient,
  b: LibvirtClient,
  dir: string,
): Promise<{ shared: boolean; why: string }> {
  const folder = checkAbsolute(dir, 'a folder');
  // a's pool for the folder is held for the whole proof, so making the marker and removing it reuse it
  // instead of each making and dropping a transient pool (a few daemon round trips every time).
  try {
    return await withDirPool(a, folder, () => markAndLook(a, b, folder));
  } catch (err) {
    if (isNoFolderError(err)) return { shared: false, why: `${a.host} has no folder ${folder}` };
    throw err;
  }
}

async function markAndLook(
  a: LibvirtClient,
  b: LibvirtClient,
  folder: string,
): Promise<{ shared: boolean; why: string }> {
  const name = `.ferry-shared-${crypto.randomBytes(8).toString('hex')}`;
  const marker = path.posix.join(folder, name);
  try {
    await createVolume(a, marker, 'raw', 0n);
  } catch (err) {
    if (isNoFolderError(err)) return { shared: false, why: `${a.host} has no folder ${folder}` };
    throw err;
  }
  try {
    const seen = await withDirPool(b, folder, async (pool) => (await lookupVol(b, pool, name)) !== null);
    return seen
      ? {
          shared: true,
          why: `${folder} is shared: a marker file made through ${a.host} is seen through ${b.host}`,
        }
      : {
          shared: false,
          why:
            `${folder} on ${b.host} is not the folder of that path on ${a.host}: ` +
            `a marker file made through ${a.host} is not there`,
        };
  } catch (err) {
    if (isNoFolderError(err)) return { shared: false, why: `${b.host} has no folder ${folder}` };
    throw err;
  } finally {
    await deleteImage(a, marker).catch(() => undefined);
  }
}

/**
 * Whether a host has migration TLS files (libvirt's migrate_tls_x509_cert_dir, default /etc/pki/qemu):
 * ca-cert.pem, server-cert.pem, server-key.pem, client-cert.pem, client-key.pem.
 */
export async function migrationTlsReady(
  c: LibvirtClient,
  dir: string = MIGRATION_TLS_DIR,
): Promise<{ ready: boolean; missing: string[] }> {
  let missing: string[];
  try {
    missing = await withDirPool(c, dir, async (pool) => {
      const found = await Promise.all(MIGRATION_TLS_FILES.map((f) => lookupVol(c, pool, f)));
      return MIGRATION_TLS_FILES.filter((_f, i) => found[i] === null);
    });
  } catch (err) {
    if (!isNoFolderError(err)) throw err;
    missing = [...MIGRATION_TLS_FILES];
  }
  return { ready: missing.length === 0, missing };
}

// ---- block copy -------------------------------------------------------------------------------------

async function diskOf(
  c: LibvirtClient,
  dom: DomainRef,
  target: string,
  flags = 0,
): Promise<DomainDiskXml | null> {
  return parseDomainDisks(await c.domainGetXmlDesc(dom, flags)).find((d) => d.target === target) ?? null;
}

/**
 * Storage-only move of one disk of a running domain: libvirt block copy into a new file, then pivot
 * (pivotBlockCopy). The destination is created here (createImage, with the disk's virtual size, in
 * `disk.format`; an existing file is refused) and handed to libvirt with REUSE_EXT; a persistent domain
 * needs TRANSIENT_JOB. If libvirt refuses the copy, the new file is removed again.
 * With `destExists`, the caller made the file already (createImage, same size and format): it is
 * checked instead, and kept if libvirt refuses.
 */
export async function startBlockCopy(
  c: LibvirtClient,
  dom: DomainRef,
  disk: { target: string; format: string },
  destFile: string,
  bandwidthMiBs: number | null,
  opts: { destExists?: boolean } = {},
): Promise<void> {
  const dest = splitFile(destFile);
  const file = path.posix.join(dest.dir, dest.name);
  const format = disk.format;
  if (format !== 'qcow2' && format !== 'raw') {
    throw new FerryError('bad-input', `Ferry copies disks into qcow2 or raw files, not ${format}`);
  }
  if (bandwidthMiBs !== null && !(Number.isInteger(bandwidthMiBs) && bandwidthMiBs > 0)) {
    throw new FerryError('bad-input', `the bandwidth must be a whole number of MiB/s, not ${bandwidthMiBs}`);
  }
  const current = await diskOf(c, dom, disk.target);
  if (!current) throw new FerryError('bad-input', `${dom.name} has no disk ${disk.target}`);
  if (current.source === file) {
    throw new FerryError('bad-input', `${dom.name}'s disk ${disk.target} already is ${file}`);
  }
  const { capacity } = await c.domainGetBlockInfo(dom, disk.target);
  if (opts.destExists) {
    const st = await statFile(c, file);
    if (!st) throw new FerryError('bad-input', `${file} does not exist on ${c.host}`);
    if (st.capacity !== capacity || st.format !== format) {
      throw new FerryError(
        'bad-input',
        `${file} on ${c.host} is a ${st.format ?? 'unknown'} image of ${st.capacity} bytes; ` +
          `the copy of ${disk.target} needs ${format} of ${capacity} bytes`,
      );
    }
  } else {
    await createImage(c, file, format, capacity);
  }
  const params: TypedParam[] =
    bandwidthMiBs === null
      ? []
      : [{ field: 'bandwidth', type: 'ullong', value: BigInt(bandwidthMiBs) * 1048576n }];
  const destXml =
    `<disk type='file'><source file='${xmlEscape(file)}'/>` + `<driver type='${format}'/></disk>`;
  try {
    await c.domainBlockCopy(
      dom,
      disk.target,
      destXml,
      params,
      DomainFlags.BLOCK_COPY_REUSE_EXT | DomainFlags.BLOCK_COPY_TRANSIENT_JOB,
    );
  } catch (err) {
    if (!opts.destExists) await deleteImage(c, file).catch(() => undefined);
    throw err;
  }
}

/** How far a block copy is (bytes); ready once the copy has caught up and can pivot. Null: no job. */
export async function blockCopyProgress(
  c: LibvirtClient,
  dom: DomainRef,
  target: string,
): Promise<{ copied: number; total: number; ready: boolean } | null> {
  const info = await c.domainGetBlockJobInfo(dom, target);
  if (!info.found) return null;
  // libvirt keeps cur < end until QEMU says the mirror is ready, and makes cur == end once it is.
  return { copied: Number(info.cur), total: Number(info.end), ready: info.end > 0n && info.cur === info.end };
}

/**
 * Switches the disk to the copy (libvirt's pivot, synchronous), then makes the domain's persistent
 * definition name the new file too, so a later start uses the copy (libvirt 9.0 does that itself when
 * the definition named the old file; older versions do not).
 */
export async function pivotBlockCopy(c: LibvirtClient, dom: DomainRef, target: string): Promise<void> {
  const before = await diskOf(c, dom, target);
  if (!before) throw new FerryError('bad-input', `${dom.name} has no disk ${target}`);
  if (!before.mirror) {
    throw new FerryError('bad-input', `${dom.name}'s disk ${target} has no block copy to switch to`);
  }
  await c.domainBlockJobAbort(dom, target, DomainFlags.BLOCK_JOB_ABORT_PIVOT);
  const after = await diskOf(c, dom, target);
  const file = after?.source ?? before.mirror.file;
  const format = after?.format ?? before.mirror.format ?? 'raw';
  if (!file || file === before.source || !(await c.domainIsPersistent(dom))) return;
  const inactive = await c.domainGetXmlDesc(dom, DomainFlags.XML_INACTIVE | DomainFlags.XML_SECURE);
  const saved = parseDomainDisks(inactive).find((d) => d.target === target);
  // Rewritten only when the definition still names the disk's old file: a definition changed on
  // purpose (virsh edit, --config) to something else is left alone.
  if (!saved || saved.source === file || saved.source !== before.source) return;
  const xml = retargetDiskXml(inactive, target, file, format);
  if (xml === null) return;
  try {
    await c.domainDefineXmlFlags(xml);
  } catch (err) {
    throw new FerryError(
      'libvirt-error',
      `${dom.name} now runs on ${file}, but its saved definition still names ${before.source}: ` +
        (err as Error).message,
    );
  }
}

/**
 * Cancels a block copy: the domain stays on its old disk, and the new file is removed. Nothing to do
 * when there is no copy.
 */
export async function abortBlockCopy(c: LibvirtClient, dom: DomainRef, target: string): Promise<void> {
  const disk = await diskOf(c, dom, target);
  const file = disk?.mirror?.file ?? null;
  const info = await c.domainGetBlockJobInfo(dom, target);
  if (info.found) {
    try {
      await c.domainBlockJobAbort(dom, target, 0);
    } catch (err) {
      // Gone between the two calls: what matters is that it is not running.
      if ((await c.domainGetBlockJobInfo(dom, target)).found) throw err;
    }
  }
  const now = await diskOf(c, dom, target);
  if (file && now?.source !== file) await deleteImage(c, file);
}
