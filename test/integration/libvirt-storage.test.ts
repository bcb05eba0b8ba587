// Files on libvirt hosts through libvirt's storage API only (engine/host/libvirt/storage.ts), against
// the libvirt lab's real daemons: images in the shared folder and in a folder private to each machine,
// the shared-storage proof, the migration TLS check, and a storage-only move of a running domain's disk
// (block copy, pivot, abort). Every test leaves no storage pool behind. Needs Linux and root.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { FerryError } from '../../engine/api/index.js';
import { parseLabGuestSerial } from '../../engine/host/lab-guest.js';
import { startLibvirtLab, stopLibvirtLab, type LibvirtLabMachine } from '../../engine/host/libvirt/lab.js';
import {
  abortBlockCopy,
  blockCopyProgress,
  createImage,
  deleteImage,
  folderSpace,
  MIGRATION_TLS_FILES,
  migrationTlsReady,
  parseDomainDisks,
  pivotBlockCopy,
  proveSharedFolder,
  retargetDiskXml,
  startBlockCopy,
  statFile,
  withDirPool,
} from '../../engine/host/libvirt/storage.js';
import { type DomainRef, LibvirtClient } from '../../engine/libvirt/client.js';
import { DomainFlags, DomainState } from '../../engine/libvirt/protocol.js';
import { tempHome, waitFor } from '../helpers.js';
import { isRoot, labGuestDomainXml, PRIVATE, privateDir, sh, shOk, virsh } from '../libvirt-support.js';

const MiB = 1048576n;

async function refusal(p: Promise<unknown>): Promise<FerryError> {
  const err = await p.then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(FerryError);
  return err as FerryError;
}

describe.skipIf(!isRoot)('files on libvirt hosts through the storage API (root)', () => {
  let home: string;
  let lab1: LibvirtLabMachine;
  let lab2: LibvirtLabMachine;
  let c1: LibvirtClient;
  let c2: LibvirtClient;
  let shared: string;

  beforeAll(async () => {
    home = tempHome('libvirt-storage');
    [lab1, lab2] = (await startLibvirtLab({ home, count: 2 })) as [LibvirtLabMachine, LibvirtLabMachine];
    shared = lab1.sharedDir;
    // libvirt-daemon-system makes /var/lib/libvirt/images on a real host; a lab machine starts empty.
    for (const m of [lab1, lab2]) fs.mkdirSync(privateDir(m), { recursive: true, mode: 0o711 });
    c1 = await LibvirtClient.connect({ uri: lab1.uris.tcp });
    c2 = await LibvirtClient.connect({ uri: lab2.uris.tcp });
  });
  afterEach(async () => {
    // Nothing defined or running is left behind: the lab's daemons start with no pools at all.
    if (c1 && c2) {
      expect((await c1.listAllStoragePools()).map((p) => p.name)).toEqual([]);
      expect((await c2.listAllStoragePools()).map((p) => p.name)).toEqual([]);
    }
  });
  afterAll(async () => {
    await c1?.close().catch(() => undefined);
    await c2?.close().catch(() => undefined);
    if (home) await stopLibvirtLab(home).catch(() => undefined);
  });

  it('an image made through lab1 in the shared folder is seen through lab2, same size and format', async () => {
    const q = path.join(shared, 'seen.qcow2');
    const r = path.join(shared, 'seen.raw');
    await createImage(c1, q, 'qcow2', 64n * MiB);
    await createImage(c1, r, 'raw', 8n * MiB);
    try {
      const s1 = await statFile(c1, q);
      const s2 = await statFile(c2, q);
      expect(s1).toMatchObject({ capacity: 64n * MiB, format: 'qcow2' });
      expect(s2).toEqual(s1);
      expect(s2!.allocation).toBeGreaterThan(0n);
      expect(s2!.allocation).toBeLessThan(64n * MiB);
      // What the file really is, read directly on this computer.
      const info = JSON.parse(await shOk('qemu-img', ['info', '--output=json', q])) as {
        format: string;
        'virtual-size': number;
      };
      expect(info).toMatchObject({ format: 'qcow2', 'virtual-size': 64 * 1048576 });
      expect(await statFile(c2, r)).toMatchObject({ capacity: 8n * MiB, format: 'raw' });
      expect(fs.statSync(r).size).toBe(8 * 1048576);
      // Sparse: libvirt's default allocation (the whole capacity) would have written every byte.
      expect(fs.statSync(r).blocks * 512).toBeLessThan(8 * 1048576);
      expect(await statFile(c2, path.join(shared, 'no-such.qcow2'))).toBeNull();
      expect(await statFile(c2, '/no/such/folder/x.qcow2')).toBeNull();
      const space = await folderSpace(c2, shared);
      expect(space.capacity).toBeGreaterThan(0n);
      expect(space.available).toBeGreaterThan(0n);
    } finally {
      await deleteImage(c2, q);
      await deleteImage(c2, r);
    }
    expect(fs.existsSync(q) || fs.existsSync(r)).toBe(false);
  });

  it('proves the shared folder shared, and a private folder of the same path not', async () => {
    // The private folder is private indeed: a file made through lab1 is only in lab1's.
    const p = path.join(PRIVATE, 'private.raw');
    await createImage(c1, p, 'raw', MiB);
    try {
      expect(fs.existsSync(path.join(privateDir(lab1), 'private.raw'))).toBe(true);
      expect(fs.existsSync(path.join(privateDir(lab2), 'private.raw'))).toBe(false);
      expect(await statFile(c1, p)).toMatchObject({ capacity: MiB, format: 'raw' });
      expect(await statFile(c2, p)).toBeNull();
    } finally {
      await deleteImage(c1, p);
    }

    const yes = await proveSharedFolder(c1, c2, shared);
    expect(yes).toEqual({ shared: true, why: expect.stringContaining(shared) as string });
    expect(await proveSharedFolder(c2, c1, `${shared}/`)).toMatchObject({ shared: true });

    const no = await proveSharedFolder(c1, c2, PRIVATE);
    expect(no.shared).toBe(false);
    expect(no.why).toContain(`${PRIVATE} on ${c2.host} is not the folder`);

    // Only lab1 has this folder, then neither does.
    const only1 = '/var/lib/libvirt/only-on-lab1';
    fs.mkdirSync(path.join(lab1.dir, 'var', 'lib', 'libvirt', 'only-on-lab1'));
    expect(await proveSharedFolder(c1, c2, only1)).toEqual({
      shared: false,
      why: `${c2.host} has no folder ${only1}`,
    });
    expect(await proveSharedFolder(c2, c1, only1)).toEqual({
      shared: false,
      why: `${c2.host} has no folder ${only1}`,
    });

    // No marker is left anywhere.
    for (const dir of [shared, privateDir(lab1), privateDir(lab2)]) {
      expect(fs.readdirSync(dir).filter((f) => f.startsWith('.ferry-shared-'))).toEqual([]);
    }
  });

  it('createImage refuses to overwrite and needs the folder; deleteImage removes the file', async () => {
    const f = path.join(shared, 'keep.qcow2');
    await createImage(c1, f, 'qcow2', 16n * MiB);
    const before = fs.readFileSync(f);
    const err = await refusal(createImage(c2, f, 'qcow2', 32n * MiB));
    expect(err.code).toBe('bad-input');
    expect(err.message).toContain('already exists');
    expect((await refusal(createImage(c1, f, 'raw', MiB))).code).toBe('bad-input');
    expect(fs.readFileSync(f).equals(before)).toBe(true);
    expect(await statFile(c1, f)).toMatchObject({ capacity: 16n * MiB, format: 'qcow2' });

    const missing = await refusal(createImage(c1, '/no/such/folder/a.qcow2', 'qcow2', MiB));
    expect(missing.code).toBe('bad-input');
    expect(missing.message).toContain('has no folder /no/such/folder');
    expect((await refusal(createImage(c1, 'relative.qcow2', 'qcow2', MiB))).code).toBe('bad-input');
    expect((await refusal(createImage(c1, path.join(shared, 'z.qcow2'), 'qcow2', 0n))).code).toBe(
      'bad-input',
    );

    await deleteImage(c2, f);
    expect(fs.existsSync(f)).toBe(false);
    expect(await statFile(c1, f)).toBeNull();
    // Already gone, and a folder that is not there: no error.
    await deleteImage(c1, f);
    await deleteImage(c1, '/no/such/folder/a.qcow2');
  });

  it('finds the migration TLS files on the lab machines, and not in a folder without them', async () => {
    expect(await migrationTlsReady(c1)).toEqual({ ready: true, missing: [] });
    expect(await migrationTlsReady(c2, '/etc/pki/qemu/')).toEqual({ ready: true, missing: [] });
    expect(await migrationTlsReady(c1, shared)).toEqual({ ready: false, missing: [...MIGRATION_TLS_FILES] });
    expect(await migrationTlsReady(c1, '/no/such/pki')).toEqual({
      ready: false,
      missing: [...MIGRATION_TLS_FILES],
    });
    const some = path.join(shared, 'pki-some');
    fs.mkdirSync(some);
    fs.writeFileSync(path.join(some, 'ca-cert.pem'), 'x');
    fs.writeFileSync(path.join(some, 'server-key.pem'), 'x');
    expect(await migrationTlsReady(c2, some)).toEqual({
      ready: false,
      missing: ['server-cert.pem', 'client-cert.pem', 'client-key.pem'],
    });
  });

  it('uses a folder’s own pool (active or only defined) and leaves it as it was', async () => {
    // An active pool: used, refreshed, not destroyed.
    const mine = await c1.storagePoolCreateXml(
      `<pool type='dir'><name>mine</name><target><path>${shared}</path></target></pool>`,
    );
    try {
      fs.writeFileSync(path.join(shared, 'late.raw'), Buffer.alloc(4096));
      expect(await withDirPool(c1, shared, async (pool) => pool.name)).toBe('mine');
      expect(await statFile(c1, path.join(shared, 'late.raw'))).toMatchObject({ capacity: 4096n });
      expect((await c1.listAllStoragePools()).map((p) => p.name)).toEqual(['mine']);
    } finally {
      await c1.storagePoolDestroy(mine);
      fs.rmSync(path.join(shared, 'late.raw'));
    }
    // A defined, inactive pool blocks a transient one on its folder: it is started, then stopped again.
    await virsh(lab2.uris.tcp, 'pool-define-as', 'parked', 'dir', '--target', PRIVATE);
    try {
      const f = path.join(PRIVATE, 'parked.raw');
      await createImage(c2, f, 'raw', MiB);
      expect(await statFile(c2, f)).toMatchObject({ capacity: MiB });
      await deleteImage(c2, f);
      expect(fs.existsSync(path.join(privateDir(lab2), 'parked.raw'))).toBe(false);
      expect(await withDirPool(c2, PRIVATE, async (pool) => pool.name)).toBe('parked');
      const state = await virsh(lab2.uris.tcp, 'pool-info', 'parked');
      expect(state).toMatch(/State:\s+inactive/);
    } finally {
      await virsh(lab2.uris.tcp, 'pool-undefine', 'parked');
    }
    // Calls at once on one folder share one transient pool; all of them are gone after.
    const names = await Promise.all(
      Array.from({ length: 6 }, () => withDirPool(c1, shared, async (pool) => pool.name)),
    );
    expect(new Set(names).size).toBe(1);
    expect(names[0]).toMatch(/^ferry-[0-9a-f]{8}$/);
  });

  it('rewrites a disk of a domain definition to a new file (file, block and backed disks)', () => {
    const xml = `<domain type='kvm'>
  <name>d</name>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='/a/b&amp;c.qcow2'/>
      <backingStore type='file'>
        <format type='qcow2'/>
        <source file='/a/base.qcow2'/>
        <backingStore type='file'>
          <format type='raw'/>
          <source file='/a/base0.raw'/>
          <backingStore/>
        </backingStore>
      </backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw'/>
      <source dev='/dev/vg/lv'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
  </devices>
</domain>
`;
    const a = retargetDiskXml(xml, 'vda', "/new/it's.qcow2", 'qcow2')!;
    expect(parseDomainDisks(a)).toEqual([
      { target: 'vda', type: 'file', source: "/new/it's.qcow2", format: 'qcow2', mirror: null },
      { target: 'vdb', type: 'block', source: '/dev/vg/lv', format: 'raw', mirror: null },
    ]);
    expect(a).not.toContain('backingStore');
    expect(a).toContain("cache='none'");
    const b = retargetDiskXml(xml, 'vdb', '/new/b.qcow2', 'qcow2')!;
    expect(parseDomainDisks(b)[1]).toEqual({
      target: 'vdb',
      type: 'file',
      source: '/new/b.qcow2',
      format: 'qcow2',
      mirror: null,
    });
    expect(b).not.toContain("dev='/dev/vg/lv'");
    expect(parseDomainDisks(b)[0]!.source).toBe('/a/b&c.qcow2');
    expect(retargetDiskXml(xml, 'vdz', '/x', 'raw')).toBeNull();
  });

  describe('a storage-only move of a running domain’s disk', () => {
    let dom: DomainRef;
    let serial: string;
    let src: string;
    const name = `stor-${crypto.randomBytes(3).toString('hex')}`;

    const beats = (): number => parseLabGuestSerial(fs.readFileSync(serial, 'utf8')).heartbeats.length;
    const moreBeats = async (than: number): Promise<void> => {
      await waitFor(`more heartbeats than ${than}`, async () => beats() > than, 60_000);
    };
    const running = async (): Promise<number> => (await c1.domainGetState(dom)).state;
    const disk = async (flags = 0) =>
      parseDomainDisks(await c1.domainGetXmlDesc(dom, flags)).find((d) => d.target === 'vda')!;

    beforeAll(async () => {
      src = path.join(shared, `${name}-src.qcow2`);
      serial = path.join(shared, `${name}.serial.log`);
      // Data in the disk (the lab guest never writes it): random blocks at a few offsets.
      const raw = path.join(shared, `${name}.raw`);
      const fd = fs.openSync(raw, 'w');
      fs.ftruncateSync(fd, 64 * 1048576);
      for (const at of [0, 10, 37, 63])
        fs.writeSync(fd, crypto.randomBytes(1048576), 0, 1048576, at * 1048576);
      fs.closeSync(fd);
      await shOk('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, src]);
      fs.rmSync(raw);
      const xml = labGuestDomainXml(name, serial, { memoryMiB: 64, disk: { file: src, format: 'qcow2' } });
      dom = await c1.domainCreateWithFlags(await c1.domainDefineXmlFlags(xml));
      await moreBeats(0);
    });
    afterAll(async () => {
      if (!dom) return;
      await c1.domainDestroyFlags(dom).catch(() => undefined);
      await c1.domainUndefineFlags(dom).catch(() => undefined);
    });

    it('abortBlockCopy leaves the domain on its old disk and removes the new file', async () => {
      const dst = path.join(shared, `${name}-aborted.qcow2`);
      const n = beats();
      await startBlockCopy(c1, dom, { target: 'vda', format: 'qcow2' }, dst, 1);
      expect(await statFile(c1, dst)).toMatchObject({ capacity: 64n * MiB, format: 'qcow2' });
      expect((await disk()).mirror).toMatchObject({ file: dst });
      const p = await blockCopyProgress(c1, dom, 'vda');
      expect(p).not.toBeNull();
      expect(p!.total).toBeGreaterThan(0);
      // The same file twice is refused, and leaves the running copy alone.
      expect(
        (await refusal(startBlockCopy(c1, dom, { target: 'vda', format: 'qcow2' }, dst, null))).code,
      ).toBe('bad-input');
      await abortBlockCopy(c1, dom, 'vda');
      expect(await blockCopyProgress(c1, dom, 'vda')).toBeNull();
      expect(await disk()).toMatchObject({ source: src, mirror: null });
      expect((await disk(DomainFlags.XML_INACTIVE)).source).toBe(src);
      expect(await statFile(c1, dst)).toBeNull();
      expect(fs.existsSync(dst)).toBe(false);
      expect(await running()).toBe(DomainState.RUNNING);
      await moreBeats(n);
      // Nothing to abort any more: no error.
      await abortBlockCopy(c1, dom, 'vda');

      // A destination the caller made already: checked (size and format), used, removed on abort.
      const wrong = path.join(shared, `${name}-wrong.qcow2`);
      await createImage(c1, wrong, 'qcow2', 32n * MiB);
      const opts = { destExists: true };
      const err = await refusal(
        startBlockCopy(c1, dom, { target: 'vda', format: 'qcow2' }, wrong, null, opts),
      );
      expect(err.message).toContain(`needs qcow2 of ${64n * MiB} bytes`);
      expect(await statFile(c1, wrong)).not.toBeNull();
      await deleteImage(c1, wrong);
      await createImage(c1, dst, 'qcow2', 64n * MiB);
      await startBlockCopy(c1, dom, { target: 'vda', format: 'qcow2' }, dst, 1, opts);
      expect((await disk()).mirror).toMatchObject({ file: dst });
      await abortBlockCopy(c1, dom, 'vda');
      expect(await disk()).toMatchObject({ source: src, mirror: null });
      expect(fs.existsSync(dst)).toBe(false);
      expect(await running()).toBe(DomainState.RUNNING);
    });

    it('copies, reaches ready, pivots; live and saved definitions name the copy; the guest kept running', async () => {
      const dst = path.join(shared, `${name}-moved.qcow2`);
      const n = beats();
      await startBlockCopy(c1, dom, { target: 'vda', format: 'qcow2' }, dst, null);
      const states = new Set<number>();
      const ready = await waitFor('the copy to be ready', async () => {
        states.add(await running());
        const p = await blockCopyProgress(c1, dom, 'vda');
        return p?.ready ? p : null;
      });
      expect(ready.copied).toBe(ready.total);
      expect(ready.total).toBeGreaterThan(0);
      expect((await disk()).mirror).toMatchObject({ file: dst, ready: true });
      await pivotBlockCopy(c1, dom, 'vda');
      states.add(await running());
      expect([...states]).toEqual([DomainState.RUNNING]);
      expect(await blockCopyProgress(c1, dom, 'vda')).toBeNull();
      expect(await disk()).toMatchObject({ source: dst, format: 'qcow2', mirror: null });
      expect(await disk(DomainFlags.XML_INACTIVE)).toMatchObject({ source: dst, format: 'qcow2' });
      await moreBeats(n);
      expect(parseLabGuestSerial(fs.readFileSync(serial, 'utf8')).mismatches).toEqual([]);

      // Stopped: the copy holds exactly what the old disk held, and a new start uses the copy.
      await c1.domainDestroyFlags(dom);
      const cmp = await sh('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', src, dst]);
      expect(cmp.stdout).toContain('Images are identical');
      dom = await c1.domainCreateWithFlags(dom);
      expect((await disk()).source).toBe(dst);
      expect(await running()).toBe(DomainState.RUNNING);
    });
  });
});
