// Disks on this host: the source's mirror into the destination's NBD exports (shared-nothing; the
// exports are made in migration-destination.ts), storage-only moves to other files, free space, and the
// file checks by which the pre-flight tells shared storage from local.
import fs from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { FerryError, VmConfigSchema, type VmConfig } from '../../api/index.js';
import {
  cancelMirrors,
  currentNode,
  deleteNodes,
  diskJobs,
  mirrorJobId,
  startMirrors,
  waitJobsGone,
} from '../../qemu/block.js';
import { diskFreeBytes, execFileAsync, findQemuImg } from '../../qemu/system.js';
import type { DiskJob, FileIdentity, NbdTarget, StorageMoveResult } from '../driver.js';
import { createExclusive, ensureDir, readJson, writeJsonAtomic } from '../store.js';
import { isRunning, refuseWhileMigrating, type LocalContext } from './context.js';

/** A storage-only move in progress, kept beside the VM so an abort knows what it made. */
const StoragePlanSchema = z.object({
  targets: z.array(z.object({ id: z.string(), path: z.string(), made: z.boolean(), node: z.string() })),
});
type StoragePlan = z.infer<typeof StoragePlanSchema>;

export class Disks {
  constructor(private readonly ctx: LocalContext) {}

  private async diskIds(name: string): Promise<string[]> {
    return (await this.ctx.vmConfig(name)).disks.map((d) => d.id);
  }

  // ---- shared-nothing: mirror into the destination (source side) --------------------------------

  async startDiskMirror(name: string, target: NbdTarget, speedMiBs: number | null): Promise<void> {
    const { qmp } = this.ctx.session(name);
    for (const e of target.exports) {
      await qmp.execute('blockdev-add', {
        driver: 'nbd',
        'node-name': `${e.id}-nbd`,
        server: { type: 'inet', host: target.host, port: String(target.port) },
        export: e.name,
        // Zeroes cross as NBD WRITE_ZEROES (no payload) instead of data, as `qemu-img convert` skips
        // them: detect-zeroes turns an all-zero write (the mirror's or, in write-blocking mode, the
        // guest's) into a zero write, and discard=unmap lets the mirror zero the whole target once at
        // the start and then copy only the source's allocated areas. The target reads the same bytes.
        // A 1 GiB disk of written zeroes: 0.43 instead of 1.35 CPU-seconds of QEMU, 324 KiB on the
        // destination.
        discard: 'unmap',
        'detect-zeroes': 'unmap',
      });
    }
    await startMirrors(
      qmp,
      target.exports.map((e) => e.id),
      (id) => `${id}-nbd`,
      speedMiBs,
    );
  }

  async diskJobs(name: string): Promise<DiskJob[]> {
    return diskJobs(this.ctx.session(name).qmp, await this.diskIds(name));
  }

  async finishDiskMirror(name: string): Promise<void> {
    const { qmp } = this.ctx.session(name);
    const ids = await this.diskIds(name);
    // Every mirror must still be in sync: one that failed after READY would leave a stale copy.
    const jobs = await diskJobs(qmp, ids);
    const bad = jobs.find((j) => !j.ready || j.error || j.status !== 'ready');
    if (bad)
      throw new FerryError(
        'migration-failed',
        `the copy of ${bad.id} is not in sync (${bad.error ?? bad.status})`,
      );
    await cancelMirrors(qmp, ids, false);
    // The destination can close its exports only after the source dropped its NBD clients.
    await deleteNodes(
      qmp,
      ids.map((id) => `${id}-nbd`),
    );
  }

  async abortDiskMirror(name: string): Promise<void> {
    const s = await this.ctx.sessionForCleanup(name);
    const ids = await this.diskIds(name);
    await cancelMirrors(s.qmp, ids, true).catch(() => undefined);
    await deleteNodes(
      s.qmp,
      ids.map((id) => `${id}-nbd`),
    );
  }

  // ---- storage-only move on this host ----------------------------------------------------------

  private storageMovePath(name: string): string {
    return path.join(this.ctx.vmDir(name), 'storage-move.json');
  }

  async startStorageMove(
    name: string,
    targets: { id: string; path: string }[],
    speedMiBs: number | null,
  ): Promise<void> {
    await this.ctx.withVmLock(name, async () => {
      const vm = await this.ctx.vmConfig(name);
      const rt = await this.ctx.runtime(name);
      if (!isRunning(rt)) {
        throw new FerryError('vm-not-running', `VM "${name}" is not running on ${this.ctx.name}`);
      }
      refuseWhileMigrating(name, rt);
      const qemuImg = findQemuImg(await this.ctx.qemuBinary());
      const session = await this.ctx.openSession(name, rt.qmpSocket);
      await writeJsonAtomic(this.ctx.runtimePath(name), {
        ...rt,
        migration: {
          id: `storage-${Date.now()}`,
          role: 'source',
          peer: this.ctx.name,
          ownerPid: process.pid,
          wasRunning: true,
        },
      });
      // Only files this move made are ever removed by an abort: `made` is recorded as each is created.
      const plan: StoragePlan = { targets: targets.map((t) => ({ ...t, made: false, node: '' })) };
      try {
        for (const t of plan.targets) {
          const disk = vm.disks.find((d) => d.id === t.id)!;
          await ensureDir(path.dirname(t.path));
          // Made exclusively (never through a link, never over anything already there), and only then
          // counted as this move's own; qemu-img then writes into that very file.
          await createExclusive(t.path);
          t.made = true;
          await writeJsonAtomic(this.storageMovePath(name), plan);
          // The copy has the disk's own format (qcow2 or raw on Ferry's own hosts).
          await execFileAsync(qemuImg, ['create', '-q', '-f', disk.format, t.path, String(disk.sizeBytes)]);
          const stamp = Date.now().toString(36);
          t.node = `${t.id}-n${stamp}`;
          await writeJsonAtomic(this.storageMovePath(name), plan);
          await session.qmp.execute('blockdev-add', {
            driver: 'file',
            'node-name': `${t.id}-f${stamp}`,
            filename: t.path,
            'auto-read-only': true,
            discard: 'unmap',
          });
          await session.qmp.execute('blockdev-add', {
            driver: disk.format,
            'node-name': t.node,
            file: `${t.id}-f${stamp}`,
          });
        }
        await startMirrors(
          session.qmp,
          plan.targets.map((t) => t.id),
          (id) => plan.targets.find((t) => t.id === id)!.node,
          speedMiBs,
        );
      } catch (err) {
        await this.abortStorageMove(name);
        throw err;
      }
    });
  }

  async storageMoveJobs(name: string): Promise<DiskJob[]> {
    const plan = await readJson(this.storageMovePath(name), StoragePlanSchema);
    return diskJobs(
      this.ctx.session(name).qmp,
      (plan?.targets ?? []).map((t) => t.id),
    );
  }

  async completeStorageMove(name: string): Promise<StorageMoveResult> {
    const s = this.ctx.session(name);
    const plan = await readJson(this.storageMovePath(name), StoragePlanSchema);
    if (!plan) throw new FerryError('migration-failed', `no storage move of "${name}" in progress`);
    const ids = plan.targets.map((t) => t.id);
    const vm = await this.ctx.vmConfig(name);
    // The nodes the devices use now (format node, then the file node under it) go once pivoted.
    const named =
      await s.qmp.execute<{ 'node-name': string; drv: string; file: string }[]>('query-named-block-nodes');
    const oldNodes: string[] = [];
    for (const id of ids) {
      const node = await currentNode(s.qmp, id);
      const file = named.find((n) => n['node-name'] === node)?.file;
      const fileNode = named.find((n) => n.drv === 'file' && n.file === file && n['node-name'] !== node);
      oldNodes.push(node, ...(fileNode ? [fileNode['node-name']] : []));
    }
    // Pivot: the device switches to the copy without pausing the guest.
    for (const id of ids)
      await s.qmp.execute('block-job-complete', { device: mirrorJobId(id) }).catch(() => undefined);
    await waitJobsGone(s.qmp, ids).catch(() => undefined);
    // Record at once every disk that now runs on its copy: those copies are the VM's disks from here on.
    const pivoted: string[] = [];
    for (const t of plan.targets) if ((await currentNode(s.qmp, t.id)) === t.node) pivoted.push(t.id);
    const moved = plan.targets
      .filter((t) => pivoted.includes(t.id))
      .map((t) => ({ id: t.id, from: vm.disks.find((d) => d.id === t.id)!.path, to: t.path }));
    const next: VmConfig = {
      ...vm,
      disks: vm.disks.map((d) => {
        const m = moved.find((x) => x.id === d.id);
        return m ? { ...d, path: m.to, owned: true } : d;
      }),
    };
    await writeJsonAtomic(this.ctx.configPath(name), VmConfigSchema.parse(next));
    const stuck = ids.filter((id) => !pivoted.includes(id));
    if (stuck.length > 0)
      throw new FerryError('migration-failed', `${stuck.join(', ')} did not switch to the new file`);
    // The old nodes are unused now; delete format nodes before their file nodes.
    await deleteNodes(s.qmp, oldNodes);
    for (const m of moved) {
      await fs.promises.rm(m.from, { force: true });
      await fs.promises.rmdir(path.dirname(m.from)).catch(() => undefined);
    }
    const pauses = s.stops;
    await fs.promises.rm(this.storageMovePath(name), { force: true });
    await this.ctx.setMigrationMarker(name, null);
    await this.ctx.closeSession(name);
    return { disks: moved, pauses };
  }

  async abortStorageMove(name: string): Promise<void> {
    const all = await readJson(this.storageMovePath(name), StoragePlanSchema).catch(() => null);
    // A disk that already pivoted onto its copy keeps it (the configuration says so): never delete that.
    const inUse = new Set((await this.ctx.vmConfig(name)).disks.map((d) => d.path));
    const plan = all ? { targets: all.targets.filter((t) => !inUse.has(t.path)) } : null;
    const s = this.ctx.openSessionOf(name);
    if (s && plan) {
      const ids = plan.targets.map((t) => t.id);
      await cancelMirrors(s.qmp, ids, true).catch(() => undefined);
      // The copies' own nodes: format node first, then the file node under it.
      const made = plan.targets.filter((t) => t.node);
      await deleteNodes(s.qmp, [
        ...made.map((t) => t.node),
        ...made.map((t) => t.node.replace(/-n(\w+)$/, '-f$1')),
      ]);
    }
    for (const t of (plan?.targets ?? []).filter((x) => x.made)) {
      await fs.promises.rm(t.path, { force: true });
      await fs.promises.rmdir(path.dirname(t.path)).catch(() => undefined);
    }
    await fs.promises.rm(this.storageMovePath(name), { force: true });
    await this.ctx.setMigrationMarker(name, null);
    await this.ctx.closeSession(name);
  }

  async freeSpace(dirs: string[]): Promise<{ dir: string; freeBytes: number }[]> {
    return Promise.all(
      dirs.map(async (dir) => {
        // The folder may not exist yet: measure the nearest existing parent.
        let d = path.resolve(dir);
        while (!fs.existsSync(d) && path.dirname(d) !== d) d = path.dirname(d);
        return { dir, freeBytes: await diskFreeBytes(d) };
      }),
    );
  }

  // ---- files, for the shared-storage checks ----------------------------------------------------

  /**
   * Lab hosts share one machine but model separate ones: lab/shared is their shared storage, and
   * lab/<host>/ is that host's own local storage, out of the other lab hosts' reach.
   */
  private reaches(p: string): boolean {
    const { record } = this.ctx;
    if (record.kind !== 'lab') return true;
    const rel = path.relative(path.dirname(record.vmDir), path.resolve(p));
    const top = rel.split(path.sep)[0] ?? '';
    return rel.startsWith('..') || !/^lab\d+$/.test(top) || top === this.ctx.name;
  }

  async statFiles(paths: string[]): Promise<FileIdentity[]> {
    return Promise.all(
      paths.map(async (p) => {
        if (!this.reaches(p))
          return { path: p, exists: false, device: 0, inode: 0, size: 0, kind: 'missing' } as const;
        try {
          const st = await fs.promises.stat(p);
          const kind = st.isFile()
            ? 'file'
            : st.isBlockDevice() || st.isCharacterDevice()
              ? 'device'
              : 'other';
          return { path: p, exists: true, device: st.dev, inode: st.ino, size: st.size, kind } as const;
        } catch {
          // A dangling link is not "missing": a file made at p would land wherever it points.
          const link = await fs.promises.lstat(p).catch(() => null);
          if (link)
            return {
              path: p,
              exists: true,
              device: link.dev,
              inode: link.ino,
              size: 0,
              kind: 'other',
            } as const;
          return { path: p, exists: false, device: 0, inode: 0, size: 0, kind: 'missing' } as const;
        }
      }),
    );
  }

  async writeMarker(dir: string, token: string): Promise<string> {
    const file = path.join(dir, `.ferry-probe-${token.slice(0, 12)}`);
    await fs.promises.writeFile(file, token, { mode: 0o600, flag: 'wx' });
    return file;
  }

  async readMarker(file: string): Promise<string | null> {
    if (!this.reaches(file)) return null;
    return fs.promises.readFile(file, 'utf8').catch(() => null);
  }

  async removeFile(file: string): Promise<void> {
    await fs.promises.rm(file, { force: true });
  }
}
