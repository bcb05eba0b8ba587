// Shared-nothing migration (R3), storage-only moves (R4), the per-host limits and queue (R5) and host
// drain, on real QEMU with the lab guest. Disk writes are injected from the host side while the disks
// are being copied (qemu-io through QEMU's human monitor).
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MigrationEvent, MoveRequest, Summary } from '../../engine/api/index.js';
import { Inventory } from '../../engine/host/inventory.js';
import { MigrationManager } from '../../engine/migration/manager.js';
import { QmpClient } from '../../engine/qemu/qmp.js';
import { ferry, guestReport, tempHome, waitForPasses } from '../helpers.js';

let home: string;
let inv: Inventory;
let manager: MigrationManager;

beforeAll(async () => {
  home = tempHome('storage');
  inv = new Inventory(home);
  manager = new MigrationManager(inv);
  await inv.labUp(2);
});
afterAll(async () => {
  await inv.labDown().catch(() => undefined);
});

const lab = (...p: string[]): string => path.join(home, 'lab', ...p);

/** Creates a running lab VM whose 1 GiB disk holds 256 MiB of pattern 0x11, on lab1's own storage. */
async function vmWithData(name: string, host = 'lab1'): Promise<string> {
  const dir = lab(host, name);
  await inv.createVm({
    name,
    host,
    memoryMiB: 256,
    storagePath: dir,
    disks: [{ kind: 'new', sizeGiB: 1 }],
    labGuest: { workingSetMiB: 16, dirtyRateMiBs: 20 },
  });
  const disk = path.join(dir, 'disk0.qcow2');
  execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 256M', disk]);
  await (await inv.host(host)).startVm(name);
  await waitForPasses(inv, name, 2);
  return disk;
}

/** A write into the running VM's disk through the status monitor (the move holds the other one). */
async function inject(
  vm: string,
  host: string,
  pattern: number,
  offset: string,
  length: string,
): Promise<void> {
  const rt = JSON.parse(
    fs.readFileSync(path.join(home, 'hosts', host, 'vms', vm, 'runtime.json'), 'utf8'),
  ) as { statusSocket: string };
  const qmp = await QmpClient.connect(rt.statusSocket);
  try {
    // The device's block backend by its qdev path; qemu-io prints its report on QEMU's own stdout.
    const out = await qmp.hmp(
      `qemu-io -d /machine/peripheral/disk0-dev/virtio-backend "write -P 0x${pattern.toString(16)} ${offset} ${length}"`,
    );
    expect(out).not.toMatch(/error/i);
  } finally {
    await qmp.close();
  }
}

function holds(file: string, pattern: number, offset: string, length: string): boolean {
  const out = execFileSync(
    'qemu-io',
    ['-U', '-r', '-f', 'qcow2', '-c', `read -P 0x${pattern.toString(16)} ${offset} ${length}`, file],
    { encoding: 'utf8' },
  );
  return !/Pattern verification failed/.test(out) && /read \d+\/\d+ bytes/.test(out);
}

async function move(
  req: MoveRequest,
  during?: (e: MigrationEvent) => void | Promise<void>,
): Promise<{ events: MigrationEvent[]; summary: Summary }> {
  const events: MigrationEvent[] = [];
  let id = '';
  const pending: Promise<void>[] = [];
  const off = manager.subscribe((e) => {
    if (id && e.id !== id) return;
    events.push(e);
    const p = during?.(e);
    if (p) pending.push(p);
  });
  const started = await manager.start(req);
  id = started.id;
  const summary = await started.done;
  off();
  await Promise.all(pending);
  return { events: events.filter((e) => e.id === id), summary };
}

describe('shared-nothing live migration (R3)', () => {
  it('copies the disks while the VM runs and writes land on both; destination identical at switchover', async () => {
    const src = await vmWithData('sn');
    const lastPass = (await guestReport(inv, 'sn')).heartbeats.at(-1)!.pass;
    let injectedDuringCopy = false;
    let injectedInPhase2 = false;
    const m = await move(
      {
        vm: 'sn',
        to: 'lab2',
        includeStorage: true,
        keepSource: true,
        performance: 'tcp',
        bandwidthMiBs: 160,
      },
      async (e) => {
        if (e.type === 'storage-copy' && !injectedDuringCopy && e.disks[0]!.copied < e.disks[0]!.total) {
          injectedDuringCopy = true;
          await inject('sn', 'lab1', 0x5a, '0', '1M');
          await inject('sn', 'lab1', 0x5b, '700M', '256k');
          // Zeroes over data: the NBD target turns them into a zero write (detect-zeroes).
          await inject('sn', 'lab1', 0x00, '220M', '1M');
        }
        if (e.type === 'phase' && e.phase === 2 && e.state === 'started' && !injectedInPhase2) {
          injectedInPhase2 = true;
          await inject('sn', 'lab1', 0x6b, '2M', '64k');
        }
      },
    );
    expect(m.summary.status, m.summary.reason ?? '').toBe('completed');
    expect(injectedDuringCopy && injectedInPhase2).toBe(true);
    // The copy stage sits between phase 1 and phase 2, with per-disk progress.
    const kinds = m.events.map((e) => (e.type === 'phase' ? `${e.phase}:${e.state}` : e.type));
    const copyAt = kinds.indexOf('storage-copy');
    expect(copyAt).toBeGreaterThan(kinds.indexOf('1:completed'));
    expect(copyAt).toBeLessThan(kinds.indexOf('2:started'));
    const copies = m.events.filter((e) => e.type === 'storage-copy');
    const lastCopy = copies.at(-1)!;
    expect(lastCopy.type === 'storage-copy' && lastCopy.disks).toEqual([
      { id: 'disk0', copied: expect.any(Number), total: expect.any(Number) },
    ]);
    if (lastCopy.type === 'storage-copy') expect(lastCopy.disks[0]!.copied).toBe(lastCopy.disks[0]!.total);
    expect(m.summary.storageCopyMs).toBeGreaterThan(0);

    const dst = lab('lab2', 'sn', 'disk0.qcow2');
    const info = await (await inv.locate('sn')).vmInfo('sn');
    expect(info).toMatchObject({ host: 'lab2', state: 'running' });
    expect(info.disks[0]!.path).toBe(dst);
    // Byte-identical to the source's last state (the source kept its file: --keep-source).
    expect(execFileSync('qemu-img', ['compare', '-U', src, dst], { encoding: 'utf8' })).toMatch(
      /Images are identical/,
    );
    expect(holds(dst, 0x5a, '0', '1M')).toBe(true);
    expect(holds(dst, 0x5b, '700M', '256k')).toBe(true);
    expect(holds(dst, 0x6b, '2M', '64k')).toBe(true);
    expect(holds(dst, 0x11, '4M', '200M')).toBe(true);
    expect(holds(dst, 0x00, '220M', '1M')).toBe(true);
    expect(holds(dst, 0x11, '221M', '35M')).toBe(true);
    const after = await waitForPasses(inv, 'sn', lastPass + 2);
    expect(after.boots).toBe(0);
    expect(after.mismatches).toEqual([]);
    fs.rmSync(src); // what --keep-source kept
  });

  it("deletes the source's files after success unless asked to keep them", async () => {
    const m = await move({ vm: 'sn', to: 'lab1', includeStorage: true, performance: 'compression' });
    expect(m.summary.status, m.summary.reason ?? '').toBe('completed');
    expect(fs.existsSync(lab('lab2', 'sn'))).toBe(false);
    expect(fs.existsSync(lab('lab1', 'sn', 'disk0.qcow2'))).toBe(true);
    expect(holds(lab('lab1', 'sn', 'disk0.qcow2'), 0x5a, '0', '1M')).toBe(true);
  });

  it('refuses a destination without room before starting', async () => {
    await inv.createVm({
      name: 'huge',
      host: 'lab1',
      memoryMiB: 64,
      storagePath: lab('lab1', 'huge'),
      disks: [{ kind: 'new', sizeGiB: 60 * 1024 }],
    });
    await (await inv.host('lab1')).startVm('huge');
    const pid = (await (await inv.host('lab1')).vmInfo('huge')).pid;
    const m = await move({ vm: 'huge', to: 'lab2', includeStorage: true });
    expect(m.summary.status).toBe('refused');
    expect(m.summary.reason).toMatch(/on lab2 has [\d.]+ GiB free; the disks going there need 61440\.0 GiB/);
    expect(m.events.map((e) => e.type)).toEqual(['summary']);
    expect((await (await inv.host('lab1')).vmInfo('huge')).pid).toBe(pid);
    expect(fs.existsSync(lab('lab2', 'huge'))).toBe(false);
    await (await inv.host('lab1')).stopVm('huge', { force: true, timeoutMs: 0 });
    await inv.deleteVm('huge');
  });

  it('refuses relative paths and paths outside the storage roots', async () => {
    const rel = await ferry(home, [
      'move',
      'sn',
      '--to',
      'lab2',
      '--include-storage',
      '--storage-path',
      'vms/here',
      '--check',
    ]);
    expect(rel.code).toBe(2);
    expect(rel.stdout).toMatch(/relative-path: vms\/here is a relative path/);
    const out = await ferry(home, [
      'move',
      'sn',
      '--to',
      'lab2',
      '--include-storage',
      '--disk-path',
      'disk0=/var/tmp',
      '--check',
    ]);
    expect(out.code).toBe(2);
    expect(out.stdout).toMatch(/path-outside-roots: \/var\/tmp is outside lab2's storage roots/);
    const bad = await ferry(home, ['move', 'sn', '--to', 'lab2', '--storage-path', '/x']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/apply to --include-storage only/);
  });

  it('a failure during the disk copy leaves the VM on the source, disk intact, no partial files', async () => {
    const disk = await vmWithData('sf');
    const pid = (await (await inv.host('lab1')).vmInfo('sf')).pid;
    let killed = false;
    const m = await move(
      { vm: 'sf', to: 'lab2', includeStorage: true, performance: 'tcp', bandwidthMiBs: 32 },
      (e) => {
        if (e.type === 'storage-copy' && !killed && e.disks[0]!.copied > 0) {
          killed = true;
          const rt = JSON.parse(
            fs.readFileSync(path.join(home, 'hosts', 'lab2', 'vms', 'sf', 'runtime.json'), 'utf8'),
          ) as { pid: number };
          process.kill(rt.pid, 'SIGKILL');
        }
      },
    );
    expect(killed).toBe(true);
    expect(m.summary.status).toBe('failed');
    expect(m.summary.reason).toMatch(/copying disk0 failed/);
    expect(m.summary.warnings).toEqual([]);
    const info = await (await inv.host('lab1')).vmInfo('sf');
    expect(info).toMatchObject({ state: 'running', pid });
    expect(info.disks[0]!.path).toBe(disk);
    expect(execFileSync('qemu-img', ['check', '-U', disk], { encoding: 'utf8' })).toMatch(
      /No errors were found/,
    );
    expect(holds(disk, 0x11, '0', '256M')).toBe(true);
    expect(fs.existsSync(lab('lab2', 'sf'))).toBe(false);
    expect(fs.existsSync(path.join(home, 'hosts', 'lab2', 'vms', 'sf'))).toBe(false);
    // Still movable afterwards.
    const again = await move({ vm: 'sf', to: 'lab2', includeStorage: true });
    expect(again.summary.status, again.summary.reason ?? '').toBe('completed');
    expect(fs.existsSync(disk)).toBe(false);
  });
});

describe('storage-only move (R4)', () => {
  it("moves a running VM's disk to another folder, with writes during the copy, never pausing it", async () => {
    const old = await vmWithData('so');
    const lastPass = (await guestReport(inv, 'so')).heartbeats.at(-1)!.pass;
    let injected = false;
    const m = await move(
      { vm: 'so', kind: 'storage', storagePath: lab('lab1', 'moved'), bandwidthMiBs: 160 },
      async (e) => {
        if (e.type === 'storage-copy' && !injected && e.disks[0]!.copied < e.disks[0]!.total) {
          injected = true;
          await inject('so', 'lab1', 0x7c, '100M', '1M');
        }
      },
    );
    expect(m.summary, m.summary.reason ?? '').toMatchObject({
      status: 'completed',
      kind: 'storage',
      downtimeMs: 0,
      warnings: [],
    });
    expect(injected).toBe(true);
    expect(m.events.some((e) => e.type === 'storage-copy')).toBe(true);
    expect(m.events.some((e) => e.type === 'phase')).toBe(false);
    const next = lab('lab1', 'moved', 'disk0.qcow2');
    const info = await (await inv.host('lab1')).vmInfo('so');
    expect(info.disks[0]!.path).toBe(next);
    expect(info.state).toBe('running');
    expect(fs.existsSync(old)).toBe(false);
    expect(holds(next, 0x7c, '100M', '1M')).toBe(true);
    expect(holds(next, 0x11, '0', '100M')).toBe(true);
    // The guest ran through the pivot: passes continue, memory intact, and it keeps writing to the new file.
    const after = await waitForPasses(inv, 'so', lastPass + 3);
    expect(after.mismatches).toEqual([]);
    await inject('so', 'lab1', 0x3d, '300M', '64k');
    expect(holds(next, 0x3d, '300M', '64k')).toBe(true);
  });
});

describe('storage-only move, cancelled', () => {
  it('cancelling the copy keeps the VM on its old disk and removes the new file', async () => {
    const disk = (await (await inv.host('lab1')).vmInfo('so')).disks[0]!.path;
    let asked = false;
    const m = await move(
      { vm: 'so', kind: 'storage', storagePath: lab('lab1', 'never'), bandwidthMiBs: 16 },
      async (e) => {
        if (e.type === 'storage-copy' && !asked) {
          asked = true;
          expect(await manager.cancel(e.id)).toMatchObject({ accepted: true });
        }
      },
    );
    expect(m.summary).toMatchObject({ status: 'cancelled', kind: 'storage' });
    const info = await (await inv.host('lab1')).vmInfo('so');
    expect(info).toMatchObject({ state: 'running' });
    expect(info.disks[0]!.path).toBe(disk);
    expect(fs.existsSync(lab('lab1', 'never'))).toBe(false);
    await inject('so', 'lab1', 0x4e, '10M', '64k');
    expect(holds(disk, 0x4e, '10M', '64k')).toBe(true);
  });
});

describe('concurrent moves within per-host limits (R5)', () => {
  it('runs five moves with limits of 2: never more than 2 per host, queue positions reported, all complete', async () => {
    for (const h of ['lab1', 'lab2']) await (await inv.host(h)).updateSettings({ maxLiveMigrations: 2 });
    const names = ['q1', 'q2', 'q3', 'q4', 'q5'];
    for (const n of names) {
      await inv.createVm({
        name: n,
        host: 'lab1',
        memoryMiB: 128,
        labGuest: { workingSetMiB: 16, dirtyRateMiBs: 40 },
      });
      await (await inv.host('lab1')).startVm(n);
    }
    const log: MigrationEvent[] = [];
    const off = manager.subscribe((e) => log.push(e));
    const started = await Promise.all(
      names.map((vm) => manager.start({ vm, to: 'lab2', performance: 'tcp', bandwidthMiBs: 48 })),
    );
    const queueSeen = JSON.parse((await ferry(home, ['queue', '--json'])).stdout) as {
      state: string;
      position: number;
    }[];
    const summaries = await Promise.all(started.map((s) => s.done));
    off();
    expect(summaries.map((s) => s.status)).toEqual(names.map(() => 'completed'));
    // From the event log: a move is active from its `started` to its `summary`.
    let active = 0;
    let peak = 0;
    for (const e of log) {
      if (e.type === 'started') peak = Math.max(peak, ++active);
      if (e.type === 'summary') active--;
    }
    expect(peak).toBe(2);
    const queued = log.filter((e) => e.type === 'queued');
    expect(queued.length).toBeGreaterThanOrEqual(3);
    expect(queued.map((e) => (e.type === 'queued' ? e.position : 0))).toContain(3);
    expect(queueSeen.filter((q) => q.state === 'running').length).toBeLessThanOrEqual(2);
    for (const n of names) expect((await inv.locate(n)).name).toBe('lab2');
  });

  it('queues storage-only moves past the simultaneous storage migrations limit', async () => {
    await (await inv.host('lab1')).updateSettings({ maxStorageMigrations: 1 });
    for (const n of ['st1', 'st2']) {
      await inv.createVm({
        name: n,
        host: 'lab1',
        memoryMiB: 64,
        storagePath: lab('lab1', n),
        disks: [{ kind: 'new', sizeGiB: 1 }],
      });
      await (await inv.host('lab1')).startVm(n);
    }
    const log: MigrationEvent[] = [];
    const off = manager.subscribe((e) => log.push(e));
    const started = await Promise.all(
      ['st1', 'st2'].map((vm) =>
        manager.start({ vm, kind: 'storage', storagePath: lab('lab1', `${vm}-moved`), bandwidthMiBs: 256 }),
      ),
    );
    const summaries = await Promise.all(started.map((s) => s.done));
    off();
    expect(summaries.map((s) => s.status)).toEqual(['completed', 'completed']);
    let active = 0;
    let peak = 0;
    for (const e of log) {
      if (e.type === 'started') peak = Math.max(peak, ++active);
      if (e.type === 'summary') active--;
    }
    expect(peak).toBe(1);
    expect(log.filter((e) => e.type === 'queued').map((e) => (e.type === 'queued' ? e.position : 0))).toEqual(
      [1],
    );
    for (const n of ['st1', 'st2']) {
      await (await inv.host('lab1')).stopVm(n, { force: true, timeoutMs: 0 });
      await inv.deleteVm(n);
    }
    await (await inv.host('lab1')).updateSettings({ maxStorageMigrations: 2 });
  });

  it('holds the limits across Ferry processes (three shells at once, limit 1)', async () => {
    for (const h of ['lab1', 'lab2']) await (await inv.host(h)).updateSettings({ maxLiveMigrations: 1 });
    const runs = await Promise.all(
      // Slowed to a few seconds each, so all three shells are up before the first move ends (an idle
      // machine otherwise finishes one before another's Node has started).
      ['q1', 'q2', 'q3'].map((vm) =>
        ferry(home, [
          'move',
          vm,
          '--to',
          'lab1',
          '--performance',
          'tcp',
          '--bandwidth',
          '16',
          '--downtime',
          '2000',
          '--json',
        ]),
      ),
    );
    const events = runs.map((r) =>
      r.stdout
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as { type: string; status?: string; position?: number }),
    );
    for (const ev of events) expect(ev.at(-1)).toMatchObject({ type: 'summary', status: 'completed' });
    // Only one could start at once: the other two waited in the queue, one of them behind the other.
    const waited = events.filter((ev) => ev.some((e) => e.type === 'queued'));
    expect(waited).toHaveLength(2);
    expect(
      events
        .flat()
        .filter((e) => e.type === 'queued')
        .map((e) => e.position),
    ).toContain(2);
    for (const h of ['lab1', 'lab2']) await (await inv.host(h)).updateSettings({ maxLiveMigrations: 2 });
  });
});

describe('host drain', () => {
  it('refuses without a destination choice and prints a plan with --plan', async () => {
    const none = await ferry(home, ['host', 'drain', 'lab1']);
    expect(none.code).toBe(2);
    expect(none.stderr).toMatch(/choose where the VMs go: --to HOST or --auto/);
    const plan = await ferry(home, ['host', 'drain', 'lab1', '--auto', '--plan', '--json']);
    expect(plan.code, plan.stderr).toBe(0);
    const p = JSON.parse(plan.stdout) as { plan: { vm: string; to: string; mode: string }[] };
    const running = (await (await inv.host('lab1')).listVms()).filter((v) => v.state === 'running');
    expect(running.length).toBeGreaterThanOrEqual(3);
    expect(p.plan.map((i) => i.vm).sort()).toEqual(running.map((v) => v.name).sort());
    expect(p.plan.every((i) => i.to === 'lab2')).toBe(true);
    // VMs on shared storage move alone; the one whose disk is on lab1's own storage moves with it.
    expect(p.plan.find((i) => i.vm === 'so')?.mode).toBe('with-storage');
    expect(p.plan.find((i) => i.vm === 'q1')?.mode).toBe('shared');
    // --plan moved nothing.
    expect((await (await inv.host('lab1')).listVms()).filter((v) => v.state === 'running')).toHaveLength(
      running.length,
    );
  });

  it('drains a host with running VMs: it ends empty and they all run elsewhere', async () => {
    const before = (await (await inv.host('lab1')).listVms())
      .filter((v) => v.state === 'running')
      .map((v) => v.name);
    expect(before.length).toBeGreaterThanOrEqual(3);
    const r = await ferry(home, ['host', 'drain', 'lab1', '--to', 'lab2']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/lab1 is drained/);
    expect((await (await inv.host('lab1')).listVms()).filter((v) => v.state !== 'stopped')).toEqual([]);
    for (const n of before)
      expect(await (await inv.host('lab2')).vmInfo(n)).toMatchObject({ state: 'running', host: 'lab2' });
    for (const n of before) expect((await guestReport(inv, n)).mismatches).toEqual([]);
  });
});
