// After a failed or cancelled move the VM stays movable (issue 13), on real QEMU: for each performance
// option and each way a move can fail in phase 2 (the destination's QEMU killed, the link to it cut,
// the move cancelled, the Ferry process running it killed), the same running VM then moves to the same
// destination with its memory intact. A multifd source whose peer's reset reaches it can hang in QEMU
// 7.2 (qemu/migration.ts, isBroken; Ferry's relay keeps that reset away): forced here by killing the
// relay too, the pre-flight then refuses the next move with the reason and the way out, and the VM
// keeps running. One lab, one small VM, reused by every case: the first move is slowed so the fault
// lands in phase 2, the second runs at full speed. And after the switch-over (issue 11): a post-copy move
// whose link is cut for real pauses, and resumes on a new connection once the link is back.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MigrationEvent, MoveRequest, PerformanceOption, Summary } from '../../engine/api/index.js';
import { Inventory } from '../../engine/host/inventory.js';
import { planLink } from '../../engine/host/lab-link.js';
import { MigrationManager } from '../../engine/migration/manager.js';
import { brokenMigrationMessage } from '../../engine/qemu/migration.js';
import { isQemuAlive } from '../../engine/qemu/process.js';
import { execFileAsync } from '../../engine/qemu/system.js';
import { ferry, guestReport, REPO, tempHome, waitFor, waitForPasses } from '../helpers.js';

const ROOT = process.platform === 'linux' && process.getuid?.() === 0;
const VM = 'fa';

let home: string;
let inv: Inventory;
let manager: MigrationManager;

beforeAll(async () => {
  home = tempHome('after-failure');
  inv = new Inventory(home);
  manager = new MigrationManager(inv);
  // As root the hosts are joined by a real link (network namespaces), so it can be cut.
  await inv.labUp(2, ROOT ? { linkMbit: 2000 } : {});
  await inv.createVm({
    name: VM,
    host: 'lab1',
    memoryMiB: 256,
    labGuest: { workingSetMiB: 16, dirtyRateMiBs: 0 },
  });
  await (await inv.host('lab1')).startVm(VM);
  await waitForPasses(inv, VM, 1);
});
afterAll(async () => {
  if (ROOT) for (const h of planLink(home, 2).hosts) await setLink(h.vethOut, 'up').catch(() => undefined);
  await inv.labDown().catch(() => undefined);
});

function setLink(dev: string, state: 'up' | 'down'): Promise<unknown> {
  return execFileAsync('ip', ['link', 'set', dev, state]);
}

/** The egress rate of a lab host's end of the link (its tc token bucket, as lab-link.ts sets it up). */
function shapeLink(h: { netns: string; vethIn: string }, mbit: number): Promise<unknown> {
  return execFileAsync('ip', [
    ...['netns', 'exec', h.netns, 'tc', 'qdisc', 'change', 'dev', h.vethIn, 'root'],
    ...['tbf', 'rate', `${mbit}mbit`, 'burst', '256kb', 'latency', '50ms'],
  ]);
}

const phaseOrder = (events: { type: string; phase?: number; state?: string }[]): string[] =>
  events.filter((e) => e.type === 'phase').map((e) => `${e.phase}:${e.state}`);
const ALL_PHASES = [1, 2, 3, 4, 5, 6].flatMap((p) => [`${p}:started`, `${p}:completed`]);
const ROLLED_BACK_IN_2 = ['1:started', '1:completed', '2:started', '2:completed'];

async function where(): Promise<{ from: string; to: string; pid: number }> {
  const host = await inv.locate(VM);
  const to = host.name === 'lab1' ? 'lab2' : 'lab1';
  return { from: host.name, to, pid: (await host.vmInfo(VM)).pid! };
}

/** The destination skeleton's QEMU of the move under way (its runtime record on that host). */
function skeletonPid(to: string): number {
  const file = path.join(home, 'hosts', to, 'vms', VM, 'runtime.json');
  return (JSON.parse(fs.readFileSync(file, 'utf8')) as { pid: number }).pid;
}

/** A first move slowed to 8 MiB/s; `fault` runs once, as soon as memory flows in phase 2. */
async function failingMove(
  req: MoveRequest,
  fault: (id: string) => Promise<void>,
): Promise<{ events: MigrationEvent[]; summary: Summary }> {
  const events: MigrationEvent[] = [];
  let id = '';
  let fired = false;
  const off = manager.subscribe((e) => {
    if (id && e.id !== id) return;
    events.push(e);
    if (!fired && e.type === 'sample' && e.sample.phase === 2 && e.sample.bytesSent > 2 * 1024 * 1024) {
      fired = true;
      void fault(e.id);
    }
  });
  const started = await manager.start({ ...req, bandwidthMiBs: 8, convergence: 'abort' });
  id = started.id;
  const summary = await started.done;
  off();
  expect(fired).toBe(true);
  return { events: events.filter((e) => e.id === id), summary };
}

/** `ferry move` in its own process, SIGKILLed once memory flows; then "the next look" (`ferry vm list`). */
async function moverKilled(from: string, to: string, performance: PerformanceOption): Promise<void> {
  const args = ['move', VM, '--to', to, '--performance', performance, '--bandwidth', '8', '--json'];
  const child = spawn(process.execPath, [path.join(REPO, 'bin', 'ferry.js'), ...args], {
    env: { ...process.env, FERRY_HOME: home },
  });
  let out = '';
  await new Promise<void>((resolve, reject) => {
    child.once('exit', () => reject(new Error(`the mover ended before phase 2: ${out}`)));
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (/"type":"sample"[^\n]*"phase":2[^\n]*"bytesSent":[1-9]\d{6}/.test(out)) resolve();
    });
  });
  // The mover saves its record beside printing events; kill it once the saved record says phase 2,
  // or "during phase N" would race the save, not describe the move.
  const id = /"id":"(m-[^"]+)"/.exec(out)![1]!;
  await waitFor(
    'the mover to save phase 2',
    async () =>
      (
        JSON.parse(await fs.promises.readFile(path.join(home, 'migrations', `${id}.json`), 'utf8')) as {
          phase: number;
        }
      ).phase === 2,
    10_000,
    20,
  );
  const skeleton = skeletonPid(to);
  child.removeAllListeners('exit');
  child.kill('SIGKILL');
  await new Promise((resolve) => child.once('exit', resolve));
  const list = JSON.parse((await ferry(home, ['vm', 'list', '--json'])).stdout) as {
    name: string;
    host: string;
    state: string;
  }[];
  expect(list.find((v) => v.name === VM)).toMatchObject({ host: from, state: 'running' });
  expect(isQemuAlive(skeleton, '')).toBe(false);
  const hist = JSON.parse((await ferry(home, ['migrations', '--json'])).stdout) as {
    status: string;
    reason: string;
  }[];
  expect(hist[0]).toMatchObject({
    status: 'failed',
    reason: expect.stringMatching(/^abandoned: .* phase 2/),
  });
}

type Fault = 'destination QEMU killed' | 'link cut' | 'cancelled' | 'mover killed';
const FAULTS: Fault[] = ['destination QEMU killed', 'link cut', 'cancelled', 'mover killed'];
const OPTIONS: PerformanceOption[] = ['tcp', 'compression', 'multichannel'];

/** What each cell did, printed at the end: recovers, or refused by the pre-flight. */
const outcomes: string[] = [];
afterAll(() => console.log(`move after failure:\n  ${outcomes.join('\n  ')}`));

describe.each(OPTIONS)('%s', (performance) => {
  // Cutting a link needs network namespaces (root); the other cases run anywhere.
  for (const fault of FAULTS)
    it.skipIf(fault === 'link cut' && !ROOT)(`${fault} in phase 2, then the same move again`, async () => {
      const { from, to, pid } = await where();
      const req: MoveRequest = { vm: VM, to, performance };

      if (fault === 'mover killed') {
        await moverKilled(from, to, performance);
      } else {
        const dev = ROOT ? planLink(home, 2).hosts[to === 'lab1' ? 0 : 1]!.vethOut : '';
        const first = await failingMove(req, async (id) => {
          if (fault === 'destination QEMU killed') process.kill(skeletonPid(to), 'SIGKILL');
          else if (fault === 'link cut') await setLink(dev, 'down');
          else expect(await manager.cancel(id)).toMatchObject({ accepted: true });
        });
        if (fault === 'link cut') await setLink(dev, 'up');
        expect(phaseOrder(first.events)).toEqual(ROLLED_BACK_IN_2);
        expect(first.summary.status).toBe(fault === 'cancelled' ? 'cancelled' : 'failed');
        expect(first.summary.warnings).toEqual([]); // the source took the VM back cleanly
        if (fault === 'link cut')
          expect(first.summary.reason).toMatch(/^the migration stalled: no bytes sent/);
        if (fault === 'destination QEMU killed')
          expect(first.summary.reason).toMatch(
            /^(QEMU reports the migration failed|the destination failed: lab\d.s QEMU for fa ended during the move)/,
          );
      }
      // Rolled back: the same QEMU runs the VM on the source, nothing of it on the destination.
      expect(await where()).toEqual({ from, to, pid });
      expect((await (await inv.host(from)).vmInfo(VM)).state).toBe('running');
      expect(await (await inv.host(to)).hasVm(VM)).toBe(false);

      // The source QEMU is ready again: the pre-flight passes, and the move completes.
      const report = await manager.check(req);
      expect(report.errors).toEqual([]);
      const before = (await guestReport(inv, VM)).heartbeats.at(-1)?.pass ?? 0;
      const events: MigrationEvent[] = [];
      const off = manager.subscribe((e) => events.push(e));
      const second = await (await manager.start(req)).done;
      off();
      expect(second.status, second.reason ?? '').toBe('completed');
      expect(phaseOrder(events.filter((e) => e.id === second.id))).toEqual(ALL_PHASES);
      expect((await inv.locate(VM)).name).toBe(to);
      const after = await waitForPasses(inv, VM, before + 2);
      expect(after.mismatches).toEqual([]);
      expect(after.heartbeats.every((h) => h.errors === 0)).toBe(true);
      outcomes.push(`${performance} / ${fault}: recovers`);
    });
});

describe('a destination QEMU killed during setup', () => {
  // Behind the multifd relay the source can finish sending into a dead destination (a mostly untouched
  // guest is quick to send, even at 8 MiB/s) before Ferry notices: it must be taken back (resumed), not
  // left paused as "already switched over".
  it.each(['compression', 'multichannel'] as const)(
    '%s: the VM keeps running on the source',
    async (performance) => {
      const { from, to, pid } = await where();
      const runtime = path.join(home, 'hosts', to, 'vms', VM, 'runtime.json');
      let id = '';
      let killed = false;
      const off = manager.subscribe((e) => {
        if (id && e.id !== id) return;
        if (e.type === 'phase' && e.phase === 1 && e.state === 'started')
          // The skeleton's QEMU, as soon as it has a process.
          void waitFor(
            'the destination skeleton',
            async () => fs.existsSync(runtime) && skeletonPid(to),
            30_000,
            20,
          ).then((skeleton) => {
            process.kill(skeleton, 'SIGKILL');
            killed = true;
          });
      });
      const started = await manager.start({ vm: VM, to, performance, bandwidthMiBs: 8 });
      id = started.id;
      const s = await started.done;
      off();
      expect(killed).toBe(true);
      expect(s.status).toBe('failed');
      expect(s.warnings).toEqual([]);
      expect(await where()).toEqual({ from, to, pid });
      expect((await (await inv.host(from)).vmInfo(VM)).state).toBe('running');
      expect(await (await inv.host(to)).hasVm(VM)).toBe(false);
      const before = (await guestReport(inv, VM)).heartbeats.at(-1)?.pass ?? 0;
      const after = await waitForPasses(inv, VM, before + 2);
      expect(after.mismatches).toEqual([]);
      expect((await manager.check({ vm: VM, to, performance })).errors).toEqual([]);
    },
  );
});

describe('a source QEMU that cannot recover', () => {
  // Killing the relay with the destination passes the reset on to a multifd source: QEMU 7.2 then
  // often hangs for good (qemu/migration.ts, isBroken); it is a race inside QEMU, so up to five tries.
  // The pre-flight must say so before the next move, and a restart is the way out.
  it('the pre-flight refuses the next move with the way out; the VM keeps running; a restart makes it movable', async () => {
    for (let attempt = 1; ; attempt++) {
      const { from, to, pid } = await where();
      const req: MoveRequest = { vm: VM, to, performance: 'multichannel', channels: 8 };
      const first = await failingMove(req, async () => {
        const rt = JSON.parse(
          fs.readFileSync(path.join(home, 'hosts', to, 'vms', VM, 'runtime.json'), 'utf8'),
        ) as { pid: number; relayPid: number };
        process.kill(rt.relayPid, 'SIGKILL');
        process.kill(rt.pid, 'SIGKILL');
      });
      expect(phaseOrder(first.events)).toEqual(ROLLED_BACK_IN_2);
      expect(first.summary.status).toBe('failed');
      expect(await where()).toEqual({ from, to, pid });
      const report = await manager.check(req);
      if (report.errors.length === 0) {
        // QEMU won the race this time: the VM is as movable as before; try again, at most five times.
        if (attempt < 5) continue;
        const second = await (await manager.start(req)).done;
        expect(second.status, second.reason ?? '').toBe('completed');
        outcomes.push('multichannel / destination and relay killed: recovers (QEMU did not hang in 5 tries)');
        return;
      }
      outcomes.push(
        `multichannel / destination and relay killed: refused by the pre-flight (try ${attempt})`,
      );
      expect(first.summary.warnings).toContainEqual(
        expect.stringContaining(`the source did not take the VM back cleanly: ${brokenMigrationMessage(VM)}`),
      );
      expect(report.errors).toEqual([{ code: 'migration-broken', message: brokenMigrationMessage(VM) }]);
      const second = await (await manager.start(req)).done;
      expect(second).toMatchObject({ status: 'refused', reason: brokenMigrationMessage(VM) });
      expect(await where()).toEqual({ from, to, pid });
      expect((await (await inv.host(from)).vmInfo(VM)).state).toBe('running');
      const beats = (await guestReport(inv, VM)).heartbeats.length;
      await waitFor(
        'the guest to keep beating',
        async () => (await guestReport(inv, VM)).heartbeats.length > beats,
      );
      // The way out the message offers: a restart, after which the VM moves again.
      const host = await inv.host(from);
      await host.stopVm(VM, { force: true, timeoutMs: 0 });
      await host.startVm(VM);
      await waitForPasses(inv, VM, 1);
      expect((await manager.check(req)).errors).toEqual([]);
      const third = await (await manager.start(req)).done;
      expect(third.status, third.reason ?? '').toBe('completed');
      expect((await waitForPasses(inv, VM, 2)).mismatches).toEqual([]);
      return;
    }
  });
});

describe('post-copy that loses its link', () => {
  // A real cut needs the lab's network namespaces (root; CI runs as root).
  it.skipIf(!ROOT)(
    'tcp: the link cut after the switch-over and back: post-copy pauses, resumes on a new connection, guest intact',
    async () => {
      const { from, to, pid } = await where();
      const link = planLink(home, 2).hosts;
      const src = link[from === 'lab1' ? 0 : 1]!;
      const dst = link[to === 'lab1' ? 0 : 1]!;
      const source = await inv.host(from);
      const { downtimeCeilingMs } = await source.settings();
      // Pre-copy cannot converge to 50 ms over 16 MiB/s with the guest rewriting 16 MiB (post-copy after
      // a few passes); once post-copy starts the link drops to 2 MiB/s, so it still runs when it is cut.
      await source.updateSettings({ downtimeCeilingMs: 50 });
      await shapeLink(src, 128);
      const before = (await guestReport(inv, VM)).heartbeats.at(-1)?.pass ?? 0;
      const events: MigrationEvent[] = [];
      const steps: Promise<unknown>[] = [];
      let id = '';
      let summary: Summary;
      const off = manager.subscribe((e) => {
        if (id && e.id !== id) return;
        events.push(e);
        if (e.type === 'escalation' && e.step === 'postcopy') steps.push(shapeLink(src, 16));
        // The destination runs the VM, pages still flow: cut the link for real.
        if (e.type === 'log' && e.message.startsWith(`${VM} runs on ${to}`))
          steps.push(setLink(dst.vethOut, 'down'));
        // Still down when Ferry has noticed and paused post-copy: back a few seconds later, full speed.
        if (e.type === 'log' && e.message.startsWith('post-copy lost its link'))
          steps.push(
            sleep(5000)
              .then(() => setLink(dst.vethOut, 'up'))
              .then(() => shapeLink(src, 2000)),
          );
      });
      try {
        const started = await manager.start({
          vm: VM,
          to,
          performance: 'tcp',
          convergence: 'postcopy',
          downtimeMs: 50,
        });
        id = started.id;
        summary = await started.done;
      } finally {
        off();
        await Promise.allSettled(steps);
        await setLink(dst.vethOut, 'up');
        await shapeLink(src, 2000);
        await source.updateSettings({ downtimeCeilingMs });
      }
      const mine = events.filter((e) => e.id === id);
      expect(summary.status, summary.reason ?? '').toBe('completed');
      expect(phaseOrder(mine)).toEqual(ALL_PHASES);
      // In order: post-copy, the cut noticed (post-copy paused), resumed once the link is back.
      const story = mine
        .filter(
          (e) =>
            (e.type === 'escalation' && e.step === 'postcopy') ||
            (e.type === 'log' && e.message.startsWith('post-copy ')),
        )
        .map((e) => (e.type === 'escalation' ? 'postcopy' : e.type === 'log' ? e.message : ''));
      expect(story).toEqual([
        'postcopy',
        expect.stringMatching(/^post-copy lost its link \(its stream stopped\); pausing it/),
        expect.stringMatching(
          new RegExp(`^post-copy resumed on a new connection to ${to} \\(attempt \\d+\\)$`),
        ),
      ]);
      expect(summary.warnings).toEqual([
        expect.stringMatching(/^post-copy lost its link and resumed on a new connection/),
      ]);
      // The source's QEMU is gone; the VM runs on the destination only.
      expect(isQemuAlive(pid, '')).toBe(false);
      expect((await inv.locate(VM)).name).toBe(to);
      expect(await source.hasVm(VM)).toBe(false);
      expect((await (await inv.host(to)).vmInfo(VM)).state).toBe('running');
      const after = await waitForPasses(inv, VM, before + 3);
      expect(after.mismatches).toEqual([]);
      expect(after.heartbeats.every((h) => h.errors === 0)).toBe(true);
      outcomes.push('tcp / post-copy, link cut after the switch-over: resumed on a new connection');
    },
  );
});
