// The destination side of a move (libvirt's Prepare / Finish): a paused skeleton QEMU listening for the
// migration stream (and, shared-nothing, exporting its new disks over NBD), committed by Finish or
// removed by an abort. Its configuration stays incoming.json until Finish, so it never shows as a VM.
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { z } from 'zod';
import { FerryError, VmConfigSchema } from '../../api/index.js';
import { qemuArgv } from '../../qemu/argv.js';
import { capabilityList } from '../../qemu/migration.js';
import { RELAY_PROGRAM } from '../../qemu/relay.js';
import { connectWhenReady, isQemuAlive, killQemu } from '../../qemu/process.js';
import type { QmpClient } from '../../qemu/qmp.js';
import { execFileAsync, findQemuImg } from '../../qemu/system.js';
import type { IncomingRequest, NbdTarget, StorageHandle } from '../driver.js';
import { createExclusive, ensureDir, ensureSocketDir, readJson, writeJsonAtomic } from '../store.js';
import { eventMs, newRuntime, type LocalContext } from './context.js';

/**
 * glibc malloc settings for a skeleton that receives disks over NBD. QEMU 7.2's NBD server allocates a
 * fresh buffer for every write request (the mirror sends 2 MiB ones) and frees it after the write;
 * glibc serves an aligned block that large with mmap, so every request maps new pages, faults and
 * zeroes all of them and unmaps them again, on the main-loop thread that also reads every byte off the
 * socket: the one thread the whole copy waits on. Keeping blocks up to 4 MiB on the heap (and not
 * trimming it back below 64 MiB) reuses the same pages: measured on a 1 GiB disk, that thread's CPU
 * time fell from ~820 to ~330 ms and the copy's wall time by about a quarter. It stays with the
 * process, which becomes the VM: at most 64 MiB of freed heap are kept.
 */
const NBD_MALLOC_TUNABLES = 'glibc.malloc.mmap_threshold=4194304:glibc.malloc.trim_threshold=67108864';

export class MigrationDestination {
  constructor(private readonly ctx: LocalContext) {}

  /** The new disks of a shared-nothing move, noted as they are made so an abort removes only those. */
  private newDisksPath(name: string): string {
    return path.join(this.ctx.vmDir(name), 'incoming-disks.json');
  }

  async prepareIncoming(req: IncomingRequest): Promise<{ uri: string; nbd: NbdTarget | null }> {
    const vm = VmConfigSchema.parse(req.config);
    if (await this.ctx.hasVm(vm.name)) {
      throw new FerryError('duplicate-vm', `a VM named "${vm.name}" already exists on host ${this.ctx.name}`);
    }
    const facts = await this.ctx.facts();
    await this.ctx.removeVmState(vm.name); // leftovers of an earlier, failed attempt
    await ensureDir(this.ctx.vmDir(vm.name));
    await writeJsonAtomic(this.ctx.incomingConfigPath(vm.name), vm);
    const newDisks = req.newDisks ?? [];
    if (newDisks.length > 0) {
      const qemuImg = findQemuImg(facts.qemuBinary);
      const made: string[] = [];
      try {
        for (const d of newDisks) {
          await ensureDir(path.dirname(d.path));
          // Made exclusively first (refused if anything is there, a dangling link too), then noted,
          // so an abort removes a half-made file, and never someone else's; then qemu-img fills it.
          await createExclusive(d.path);
          made.push(d.path);
          await writeJsonAtomic(this.newDisksPath(vm.name), made);
          await execFileAsync(qemuImg, ['create', '-q', '-f', d.format, d.path, String(d.sizeBytes)]);
        }
      } catch (err) {
        await this.abortIncoming(vm.name);
        throw err;
      }
    }
    const paths = this.ctx.runtimePaths(vm);
    await ensureSocketDir(this.ctx.record.stateDir);
    for (const sock of this.ctx.socketsOf(paths)) await fs.promises.rm(sock, { force: true });
    const log = this.ctx.qemuLog(vm.name);
    const argv = qemuArgv(vm, paths, { accel: facts.accel, incoming: true, paused: true, prealloc: true });
    const pid = await this.ctx.spawnQemu(
      facts.qemuBinary,
      argv,
      log,
      newDisks.length > 0 ? { GLIBC_TUNABLES: NBD_MALLOC_TUNABLES } : undefined,
    );
    await writeJsonAtomic(
      this.ctx.runtimePath(vm.name),
      newRuntime(pid, paths, facts.accel, {
        id: req.migrationId,
        role: 'destination',
        peer: '',
        ownerPid: process.pid,
        wasRunning: false,
      }),
    );
    try {
      const first = await connectWhenReady(paths.qmpSocket, pid, log, 60_000); // -mem-prealloc takes a while
      await first.close();
      const s = await this.ctx.openSession(vm.name, paths.qmpSocket);
      await s.qmp.execute('migrate-set-capabilities', { capabilities: capabilityList(req.capabilities) });
      if (Object.keys(req.parameters).length > 0)
        await s.qmp.execute('migrate-set-parameters', req.parameters);
      // Listen only on this host's migration address; port 0 lets the kernel pick a free port.
      const addr = this.ctx.record.migrationAddress;
      const host = addr.includes(':') ? `[${addr}]` : addr;
      await s.qmp.execute('migrate-incoming', { uri: `${req.scheme}:${host}:0` });
      const q = await s.qmp.execute<{ 'socket-address'?: { port: string }[] }>('query-migrate');
      const port = q['socket-address']?.[0]?.port;
      if (!port)
        throw new FerryError(
          'migration-failed',
          `QEMU on ${this.ctx.name} did not report its migration port`,
        );
      // Multifd: the source connects through a relay that never passes on the destination's reset.
      // The relay is a Node process; inside the packaged desktop app there is no Node to run it (the
      // Electron binary's run-as-node fuse is off), so there the pre-flight's broken-migration check
      // is the guard instead.
      const relay = req.capabilities['multifd'] && !process.versions['electron'];
      const listen = relay ? await this.startRelay(vm.name, addr, port) : port;
      const nbd =
        newDisks.length > 0
          ? await this.exportDisks(
              s.qmp,
              newDisks.map((d) => d.id),
            )
          : null;
      return { uri: `${req.scheme}:${host}:${listen}`, nbd };
    } catch (err) {
      await this.abortIncoming(vm.name).catch(() => undefined);
      throw err;
    }
  }

  private relayPortFile(name: string): string {
    return path.join(this.ctx.vmDir(name), 'relay.port');
  }

  /** Starts the relay (qemu/relay.ts) in front of QEMU's migration port; returns the relay's port. */
  private async startRelay(name: string, addr: string, qemuPort: string): Promise<string> {
    const portFile = this.relayPortFile(name);
    await fs.promises.rm(portFile, { force: true });
    const argv = ['-e', RELAY_PROGRAM, addr, addr, qemuPort, portFile];
    const pid = await this.ctx.spawnQemu(
      process.execPath,
      argv,
      path.join(this.ctx.vmDir(name), 'relay.log'),
    );
    const rt = await this.ctx.runtime(name);
    if (rt) await writeJsonAtomic(this.ctx.runtimePath(name), { ...rt, relayPid: pid });
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      const port = await fs.promises.readFile(portFile, 'utf8').catch(() => '');
      if (port) return port.trim();
      if (!isQemuAlive(pid, portFile)) break;
      await sleep(20);
    }
    throw new FerryError('migration-failed', `the migration relay on ${this.ctx.name} did not start`);
  }

  /** Whether the skeleton QEMU of an incoming move still runs (a relay hides its end from the source). */
  async incomingAlive(name: string): Promise<boolean> {
    const rt = await this.ctx.runtime(name);
    return !!rt && isQemuAlive(rt.pid, rt.qmpSocket);
  }

  /**
   * Writable NBD exports of the skeleton's new disks, on the migration address only, on a port from
   * this host's range (QEMU 7.2 does not report a port it picked itself).
   */
  private async exportDisks(qmp: QmpClient, ids: string[]): Promise<NbdTarget> {
    const { record } = this.ctx;
    const host = record.migrationAddress;
    let port = 0;
    for (let p = record.portBase + 1; p < record.portBase + 100 && !port; p++) {
      try {
        // 7.2 wants the legacy address form {type, data}.
        await qmp.execute('nbd-server-start', { addr: { type: 'inet', data: { host, port: String(p) } } });
        port = p;
      } catch (err) {
        if (!/in use|already/i.test((err as Error).message)) throw err;
      }
    }
    if (!port)
      throw new FerryError(
        'migration-failed',
        `no free NBD port on ${this.ctx.name} in ${record.portBase + 1}-${record.portBase + 99}`,
      );
    for (const id of ids) {
      await qmp.execute('block-export-add', {
        type: 'nbd',
        id: `ferry-export-${id}`,
        'node-name': id,
        name: id,
        writable: true,
      });
    }
    return { host, port, exports: ids.map((id) => ({ id, name: id })) };
  }

  /**
   * Post-copy link recovery on the destination: once its side of the migration is paused too (it is
   * paused here when it has not noticed the loss yet), listens again with migrate-recover on this
   * host's migration address and returns the URI the source resumes to.
   */
  async recoverIncoming(name: string): Promise<string> {
    const s = this.ctx.session(name);
    const status = async (): Promise<string> =>
      (await s.qmp.execute<{ status?: string }>('query-migrate')).status ?? 'none';
    // A source that paused on a working link has closed the stream: the destination notices at once.
    // Over a cut link it never does (nothing arrives), so it is not waited for long.
    const deadline = Date.now() + 1000;
    let st = await status();
    while (st !== 'postcopy-paused' && Date.now() < deadline) {
      await sleep(50);
      st = await status();
    }
    if (st === 'postcopy-active') {
      await s.qmp.execute('migrate-pause');
      while (st !== 'postcopy-paused' && Date.now() < deadline + 5000) {
        await sleep(50);
        st = await status();
      }
    }
    if (st !== 'postcopy-paused')
      throw new FerryError('migration-failed', `the destination's post-copy is ${st}, not paused`);
    const addr = this.ctx.record.migrationAddress;
    const host = addr.includes(':') ? `[${addr}]` : addr;
    await s.qmp.execute('migrate-recover', { uri: `tcp:${host}:0` });
    // The new listener is the first of the incoming addresses.
    const q = await s.qmp.execute<{ 'socket-address'?: { port: string }[] }>('query-migrate');
    const port = q['socket-address']?.[0]?.port;
    if (!port)
      throw new FerryError('migration-failed', `QEMU on ${this.ctx.name} did not report its recovery port`);
    return `tcp:${host}:${port}`;
  }

  async incomingRunState(name: string): Promise<string> {
    return (await this.ctx.session(name).qmp.execute<{ status: string }>('query-status')).status;
  }

  async storageHandle(name: string): Promise<StorageHandle> {
    const s = this.ctx.session(name);
    const blocks =
      await s.qmp.execute<{ inserted?: { 'node-name'?: string; file: string; ro: boolean } }[]>(
        'query-block',
      );
    const vm = VmConfigSchema.parse(await readJson(this.ctx.incomingConfigPath(name), VmConfigSchema));
    const disks = vm.disks.map((d) => {
      const b = blocks.find((x) => x.inserted?.['node-name'] === d.id);
      return {
        id: d.id,
        file: b?.inserted?.file ?? '',
        attached: !!b?.inserted,
        writable: !!b && !b.inserted?.ro,
      };
    });
    const runState = (await s.qmp.execute<{ status: string }>('query-status')).status;
    return { disks, runState };
  }

  async finishIncoming(name: string): Promise<{ resumedAt: number }> {
    const s = this.ctx.session(name);
    // The source has let go of the NBD exports (its mirror nodes are deleted): close them.
    if (fs.existsSync(this.newDisksPath(name))) await s.qmp.execute('nbd-server-stop').catch(() => undefined);
    // Commit, then run. Until the marker is cleared below, an abort still removes all of it.
    await fs.promises.rename(this.ctx.incomingConfigPath(name), this.ctx.configPath(name));
    const resumed = s.qmp.waitEvent('RESUME', () => true, 10_000);
    await s.qmp.execute('cont');
    const ev = await resumed;
    const st = await s.qmp.execute<{ status: string }>('query-status');
    if (st.status !== 'running')
      throw new FerryError('migration-failed', `VM "${name}" on ${this.ctx.name} is ${st.status} after cont`);
    await fs.promises.rm(this.newDisksPath(name), { force: true });
    await this.ctx.setMigrationMarker(name, null);
    return { resumedAt: eventMs(ev) };
  }

  async announce(name: string): Promise<void> {
    // RARP / gratuitous announcements so switches learn the VM's MACs behind this host (QEMU's defaults).
    await this.ctx
      .session(name)
      .qmp.execute('announce-self', { initial: 50, max: 550, rounds: 5, step: 100 });
    await this.ctx.closeSession(name);
  }

  async abortIncoming(name: string): Promise<void> {
    await this.ctx.closeSession(name);
    const rt = await this.ctx.runtime(name);
    if (rt?.migration?.role === 'destination' && isQemuAlive(rt.pid, rt.qmpSocket))
      await this.ctx.settleSourceOf(name, rt.migration.id);
    if (rt) await killQemu(rt.pid, rt.qmpSocket);
    if (rt?.relayPid) await killQemu(rt.relayPid, this.relayPortFile(name)).catch(() => undefined);
    if (rt) for (const sock of this.ctx.socketsOf(rt)) await fs.promises.rm(sock, { force: true });
    // Uncommitted, or committed by a Finish that never completed (the marker is still set).
    if (!(await this.ctx.hasVm(name)) || rt?.migration?.role === 'destination') {
      // Partial copies of a shared-nothing move: never leave them behind.
      const made = await readJson(this.newDisksPath(name), z.array(z.string())).catch(() => null);
      for (const f of made ?? []) {
        await fs.promises.rm(f, { force: true });
        await fs.promises.rmdir(path.dirname(f)).catch(() => undefined);
      }
      await fs.promises.rm(this.newDisksPath(name), { force: true });
      await this.ctx.removeVmState(name);
    }
  }
}
