// Disks of running domains on libvirt hosts, moved through the CLI on the libvirt lab's real libvirtd
// 9.0 daemons and real QEMU (one lab of two machines for the whole file): a storage-only move to
// another folder of the same host (libvirt block copy and pivot, the domain never paused), the same
// move cancelled from another process, a shared-nothing move between the two hosts (the disk copied
// from lab1's private folder into lab2's), and its refusal for a disk both hosts already share.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { HostSummary, VmSummary } from '../../engine/api/index.js';
import { parseLabGuestSerial, type LabGuestReport } from '../../engine/host/lab-guest.js';
import { parseDomainDisks } from '../../engine/host/libvirt/storage.js';
import { libvirtLabMachines, stopLibvirtLab, type LibvirtLabMachine } from '../../engine/host/libvirt/lab.js';
import { ferry, tempHome, waitFor } from '../helpers.js';
import {
  ALL_PHASES,
  domainNames,
  isRoot,
  labGuestDomainXml,
  moveEvents,
  phaseTrail,
  PRIVATE,
  privateDir,
  sh,
  spawnFerry,
  summaryOf,
  virsh,
} from '../libvirt-support.js';

describe.skipIf(!isRoot)('moving the disks of libvirt domains (root, libvirt lab)', () => {
  let home: string;
  let lab1: LibvirtLabMachine;
  let lab2: LibvirtLabMachine;
  /** The lab's shared folder (both hosts' storage root), as `ferry host list` gives it. */
  let shared: string;
  const serialOf = (vm: string): string => path.join(shared, `${vm}.serial.log`);
  const report = (vm: string): LabGuestReport =>
    parseLabGuestSerial(fs.existsSync(serialOf(vm)) ? fs.readFileSync(serialOf(vm), 'utf8') : '');
  const lastPass = (vm: string): number => report(vm).heartbeats.at(-1)?.pass ?? 0;
  /** The guest goes on with its memory intact: passes beyond `than`, no errors, no mismatches. */
  const beatsOn = async (vm: string, than: number): Promise<LabGuestReport> => {
    const r = await waitFor(`${vm} to pass ${than} again`, async () => {
      const rep = report(vm);
      return (rep.heartbeats.at(-1)?.pass ?? 0) > than + 1 ? rep : null;
    });
    expect(r.mismatches).toEqual([]);
    expect(r.heartbeats.every((h) => h.errors === 0)).toBe(true);
    return r;
  };
  const disk = async (m: LibvirtLabMachine, vm: string, inactive = false) =>
    parseDomainDisks(await virsh(m.uris.tcp, 'dumpxml', ...(inactive ? ['--inactive'] : []), vm)).find(
      (d) => d.target === 'vda',
    )!;

  /** A qcow2 image of 64 MiB holding data (the lab guest never writes its disk), and a copy of it. */
  async function image(file: string, original: string): Promise<void> {
    const mk = await sh('qemu-img', ['create', '-q', '-f', 'qcow2', file, '64M']);
    expect(mk.code, mk.stderr).toBe(0);
    const w = await sh('qemu-io', [
      '-f',
      'qcow2',
      '-c',
      'write -P 0x5a 0 8M',
      '-c',
      'write -P 0xc3 40M 4M',
      file,
    ]);
    expect(w.code, w.stderr).toBe(0);
    fs.copyFileSync(file, original);
  }

  /** Defines and starts a lab-guest domain on lab1 with `file` (as lab1 names it) as vda. */
  async function startGuest(vm: string, file: string): Promise<void> {
    const xml = path.join(home, `${vm}.xml`);
    const serial = serialOf(vm);
    // append='on': after a move between hosts the destination's QEMU goes on at the end of the file.
    const def = labGuestDomainXml(vm, serial, { memoryMiB: 64, disk: { file, format: 'qcow2' } }).replace(
      `<source path='${serial}'/>`,
      `<source path='${serial}' append='on'/>`,
    );
    expect(def).toContain("append='on'");
    fs.writeFileSync(xml, def);
    await virsh(lab1.uris.tcp, 'define', xml);
    await virsh(lab1.uris.tcp, 'start', vm);
    await waitFor(`${vm}'s first heartbeat`, async () => report(vm).heartbeats.length > 0);
  }

  beforeAll(async () => {
    home = tempHome('libvirt-storage-move');
    const up = await ferry(home, ['lab', 'up', '--libvirt', '--hosts', '2']);
    expect(up.code, up.stderr).toBe(0);
    [lab1, lab2] = (await libvirtLabMachines(home)) as [LibvirtLabMachine, LibvirtLabMachine];
    const hosts = JSON.parse((await ferry(home, ['host', 'list', '--json'])).stdout) as (HostSummary & {
      vmDir: string;
    })[];
    shared = hosts.find((h) => h.name === 'lab1')!.vmDir;
    // libvirt-daemon-system makes /var/lib/libvirt/images on a real host; a lab machine starts without.
    for (const m of [lab1, lab2]) fs.mkdirSync(privateDir(m), { recursive: true, mode: 0o711 });
  });

  afterAll(async () => {
    if (!home) return;
    const down = await ferry(home, ['lab', 'down']);
    // Whatever happened above, nothing of the lab may stay behind.
    const rest = await stopLibvirtLab(home).catch(() => null);
    expect(down.code, down.stderr).toBe(0);
    expect(rest).toEqual({ machines: [], killed: 0 });
  });

  describe('storage-only moves on one host', () => {
    const vm = 'so';
    let old: string;
    let original: string;

    beforeAll(async () => {
      old = path.join(shared, `${vm}.qcow2`);
      original = path.join(home, `${vm}-original.qcow2`);
      await image(old, original);
      await startGuest(vm, old);
    });

    it("moves a running domain's disk to another folder without ever pausing it", async () => {
      const folder = path.join(shared, 'moved');
      fs.mkdirSync(folder);
      const next = path.join(folder, `${vm}.qcow2`);
      const r = await ferry(home, ['move-storage', vm, '--storage-path', folder, '--json']);
      const moved = lastPass(vm);
      expect(r.code, r.stderr).toBe(0);
      const events = moveEvents(r.stdout);
      // As Ferry's own storage moves: started, the copy's progress, what moved where, the summary.
      expect(events[0]).toMatchObject({ type: 'started', kind: 'storage', from: 'lab1', to: 'lab1' });
      expect(events.some((e) => e.type === 'phase')).toBe(false);
      const copies = events.filter((e) => e.type === 'storage-copy');
      expect(copies.length).toBeGreaterThan(0);
      for (const c of copies) {
        expect(c.disks).toEqual([{ id: 'vda', copied: expect.any(Number), total: 64 * 1048576 }]);
      }
      const lastCopy = copies.at(-1)!;
      expect(lastCopy.type === 'storage-copy' && lastCopy.disks[0]!.copied).toBe(64 * 1048576);
      expect(events).toContainEqual(
        expect.objectContaining({ type: 'log', level: 'info', message: `vda: ${old} → ${next}` }),
      );
      // Never paused: a pause during the move would be a warning of the summary.
      expect(summaryOf(events)).toMatchObject({
        status: 'completed',
        kind: 'storage',
        vm,
        downtimeMs: 0,
        warnings: [],
      });
      expect(events.map((e) => e.type)).toEqual([
        'started',
        ...copies.map(() => 'storage-copy'),
        'log',
        'summary',
      ]);

      // The running domain and its saved definition both name the new file; the old one is gone.
      expect(await disk(lab1, vm)).toMatchObject({ source: next, format: 'qcow2', mirror: null });
      expect(await disk(lab1, vm, true)).toMatchObject({ source: next, format: 'qcow2' });
      expect(await virsh(lab1.uris.tcp, 'domstate', vm)).toBe('running');
      expect(fs.existsSync(old)).toBe(false);
      const cmp = await sh('qemu-img', ['compare', '-U', original, next]);
      expect(cmp.stdout).toContain('Images are identical');
      const info = JSON.parse((await ferry(home, ['vm', 'info', vm, '--json'])).stdout) as {
        disks: { id: string; path: string }[];
      };
      expect(info.disks).toMatchObject([{ id: 'vda', path: next }]);
      // The guest ran through the pivot.
      const after = await beatsOn(vm, moved);
      expect(after.boots).toBe(1);
      // No storage pool is left defined (Ferry's transient pools are gone).
      expect(await virsh(lab1.uris.tcp, 'pool-list', '--all', '--name')).toBe('');
    });

    it('a cancelled storage move leaves the domain on its old disk and no new file', async () => {
      const current = path.join(shared, 'moved', `${vm}.qcow2`);
      const folder = path.join(shared, 'never');
      fs.mkdirSync(folder);
      // 1 MiB/s: the copy of the disk takes about a minute, time enough to cancel from another process.
      const move = spawnFerry(home, [
        'move-storage',
        vm,
        '--storage-path',
        folder,
        '--bandwidth',
        '1',
        '--json',
      ]);
      const copying = await waitFor('the copy to start', async () =>
        move.events().find((e) => e.type === 'storage-copy'),
      );
      // Meanwhile the domain copies into the new file.
      expect((await disk(lab1, vm)).mirror).toMatchObject({ file: path.join(folder, `${vm}.qcow2`) });
      const cancel = await ferry(home, ['cancel', copying.id]);
      expect(cancel.code, cancel.stderr).toBe(0);
      const { code, events } = await move.done;
      expect(code).toBe(1);
      expect(summaryOf(events)).toMatchObject({
        status: 'cancelled',
        kind: 'storage',
        reason: 'cancelled by the administrator',
        warnings: [],
      });
      expect(await disk(lab1, vm)).toMatchObject({ source: current, mirror: null });
      expect((await disk(lab1, vm, true)).source).toBe(current);
      expect(fs.readdirSync(folder)).toEqual([]);
      expect(fs.existsSync(current)).toBe(true);
      expect(await virsh(lab1.uris.tcp, 'domstate', vm)).toBe('running');
      expect((await beatsOn(vm, lastPass(vm))).boots).toBe(1);
    });
  });

  describe('between the two hosts', () => {
    const vm = 'sn';
    const file = path.posix.join(PRIVATE, `${vm}.qcow2`);
    let original: string;

    beforeAll(async () => {
      original = path.join(home, `${vm}-original.qcow2`);
      await image(path.join(privateDir(lab1), `${vm}.qcow2`), original);
      await startGuest(vm, file);
    });

    it("shared-nothing: copies the disk from lab1's private folder into lab2's while the domain runs", async () => {
      const r = await ferry(home, ['move', vm, '--to', 'lab2', '--include-storage', '--json']);
      expect(r.code, r.stderr).toBe(0);
      const moved = lastPass(vm);
      const events = moveEvents(r.stdout);
      expect(summaryOf(events)).toMatchObject({
        status: 'completed',
        kind: 'live',
        from: 'lab1',
        to: 'lab2',
      });
      expect(phaseTrail(events)).toBe(ALL_PHASES);
      // The disk copy comes between Setup and Memory pages, with its progress.
      const kinds = events.map((e) => (e.type === 'phase' ? `${e.phase}:${e.state}` : e.type));
      const firstCopy = kinds.indexOf('storage-copy');
      expect(firstCopy).toBeGreaterThan(kinds.indexOf('1:completed'));
      expect(firstCopy).toBeLessThan(kinds.indexOf('2:started'));
      const copies = events.filter((e) => e.type === 'storage-copy');
      for (const c of copies) {
        expect(c.disks).toEqual([{ id: 'vda', copied: expect.any(Number), total: 64 * 1048576 }]);
      }

      // The domain runs on lab2, on the same path in lab2's own folder, holding what lab1's held.
      expect(await domainNames(lab1)).not.toContain(vm);
      expect(await virsh(lab2.uris.tcp, 'domstate', vm)).toBe('running');
      expect(await disk(lab2, vm)).toMatchObject({ source: file, format: 'qcow2' });
      expect(await disk(lab2, vm, true)).toMatchObject({ source: file, format: 'qcow2' });
      const copy = path.join(privateDir(lab2), `${vm}.qcow2`);
      const cmp = await sh('qemu-img', ['compare', '-U', original, copy]);
      expect(cmp.stdout).toContain('Images are identical');
      // Without --keep-source the source's file is deleted.
      expect(fs.existsSync(path.join(privateDir(lab1), `${vm}.qcow2`))).toBe(false);
      const list = JSON.parse((await ferry(home, ['vm', 'list', '--json'])).stdout) as VmSummary[];
      expect(list.find((v) => v.name === vm)).toMatchObject({ host: 'lab2', state: 'running' });
      // The guest goes on on lab2 where it was on lab1: no new boot, its memory intact.
      expect((await beatsOn(vm, moved)).boots).toBe(1);
    });

    it('refuses to copy a disk onto itself: a disk in the shared folder is the very same file on lab2', async () => {
      const vmShared = 'sh';
      const inShared = path.join(shared, `${vmShared}.qcow2`);
      await image(inShared, path.join(home, `${vmShared}-original.qcow2`));
      await startGuest(vmShared, inShared);
      const check = await ferry(home, [
        'move',
        vmShared,
        '--to',
        'lab2',
        '--include-storage',
        '--check',
        '--json',
      ]);
      expect(check.code).toBe(2);
      const report = JSON.parse(check.stdout) as { errors: { code: string; message: string }[] };
      expect(report.errors.map((e) => e.code)).toEqual(['copy-onto-itself']);
      expect(report.errors).toContainEqual({
        code: 'copy-onto-itself',
        message: expect.stringContaining(`lab2 sees ${inShared} as the very same file`) as string,
      });
      const r = await ferry(home, ['move', vmShared, '--to', 'lab2', '--include-storage', '--json']);
      expect(r.code).toBe(2);
      const events = moveEvents(r.stdout);
      expect(events.map((e) => e.type)).toEqual(['summary']);
      expect(summaryOf(events)).toMatchObject({ status: 'refused' });
      expect(summaryOf(events).reason).toContain('as the very same file');
      expect(await virsh(lab1.uris.tcp, 'domstate', vmShared)).toBe('running');
      expect(await domainNames(lab2)).not.toContain(vmShared);
      expect((await disk(lab1, vmShared)).source).toBe(inShared);
      expect(fs.existsSync(inShared)).toBe(true);
    });
  });
});
