// Live migration with shared storage on real QEMU, lab guest inside: every performance option there
// and back, the six phases in order, the guest's heartbeat continuing on the destination with its
// memory intact, convergence policies, cancel, and a destination that dies mid-copy.
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PHASES, type MigrationEvent, type MoveRequest, type Summary } from '../../engine/api/index.js';
import { Inventory } from '../../engine/host/inventory.js';
import { parseLabGuestSerial } from '../../engine/host/lab-guest.js';
import { MigrationManager } from '../../engine/migration/manager.js';
import { isQemuAlive } from '../../engine/qemu/process.js';
import { QmpClient } from '../../engine/qemu/qmp.js';
import { ferry, guestReport, REPO, tempHome, waitFor, waitForPasses } from '../helpers.js';

let home: string;
let inv: Inventory;
let manager: MigrationManager;

beforeAll(async () => {
  home = tempHome('live');
  inv = new Inventory(home);
  manager = new MigrationManager(inv);
  await inv.labUp(2);
});
afterAll(async () => {
  await inv.labDown().catch(() => undefined);
});

interface Move {
  id: string;
  events: MigrationEvent[];
  summary: Summary;
}

/** Runs a move and collects its events; `during` sees each event as it happens. */
async function move(
  req: MoveRequest,
  during?: (e: MigrationEvent, id: string) => void | Promise<void>,
): Promise<Move> {
  const events: MigrationEvent[] = [];
  let id = '';
  const early: MigrationEvent[] = [];
  const off = manager.subscribe((e) => {
    if (!id) early.push(e);
    else if (e.id === id) {
      events.push(e);
      void during?.(e, id);
    }
  });
  const started = await manager.start(req);
  id = started.id;
  for (const e of early) if (e.id === id) events.push(e);
  const summary = await started.done;
  off();
  return { id, events, summary };
}

function phaseOrder(events: MigrationEvent[]): string[] {
  return events.filter((e) => e.type === 'phase').map((e) => `${e.phase}:${e.state}`);
}

const ALL_PHASES = PHASES.flatMap((p) => [`${p.phase}:started`, `${p.phase}:completed`]);

async function pidOf(vm: string): Promise<number> {
  return (await (await inv.locate(vm)).vmInfo(vm)).pid!;
}

describe('live migration with shared storage', () => {
  it('moves a running lab VM there and back with each performance option, guest alive and intact', async () => {
    await inv.createVm({
      name: 'mover',
      host: 'lab1',
      memoryMiB: 512,
      disks: [{ kind: 'new', sizeGiB: 1 }],
      labGuest: { workingSetMiB: 64, dirtyRateMiBs: 50 },
    });
    await (await inv.host('lab1')).startVm('mover');
    await waitForPasses(inv, 'mover', 2);
    let here = 'lab1';
    for (const performance of ['tcp', 'compression', 'multichannel'] as const) {
      for (let leg = 0; leg < 2; leg++) {
        const to = here === 'lab1' ? 'lab2' : 'lab1';
        const before = await guestReport(inv, 'mover');
        const lastPass = before.heartbeats.at(-1)!.pass;
        const sourcePid = await pidOf('mover');
        const m = await move({ vm: 'mover', to, performance });
        expect(m.summary, m.summary.reason ?? '').toMatchObject({
          status: 'completed',
          from: here,
          to,
          vm: 'mover',
        });
        expect(m.summary.options).toMatchObject({
          performance,
          ...(performance === 'tcp' ? {} : { channels: 4 }),
        });
        if (performance === 'compression') expect(m.summary.options?.compression).toBe('zstd');
        // The six phases, in order, each with a duration.
        expect(phaseOrder(m.events)).toEqual(ALL_PHASES);
        expect(m.summary.phases.map((p) => p.name)).toEqual(PHASES.map((p) => p.name));
        for (const p of m.summary.phases) expect(p.ms).toBeGreaterThanOrEqual(0);
        expect(m.events[0]).toMatchObject({ type: 'started', vm: 'mover', from: here, to });
        expect(m.events.at(-1)).toMatchObject({ type: 'summary', status: 'completed' });
        expect(m.events.some((e) => e.type === 'sample')).toBe(true);
        expect(m.summary.bytes).toBeGreaterThan(64 * 1024 * 1024);
        expect(m.summary.downtimeMs).toBeGreaterThanOrEqual(0);
        // The source QEMU is gone, the VM runs on the destination, found there by the inventory.
        expect(isQemuAlive(sourcePid, '')).toBe(false);
        const info = await (await inv.locate('mover')).vmInfo('mover');
        expect(info).toMatchObject({ host: to, state: 'running' });
        expect(await (await inv.host(here)).hasVm('mover')).toBe(false);
        // Heartbeat continues from the source's memory (no new boot, pass numbers carry on), no mismatch.
        const after = await waitForPasses(inv, 'mover', lastPass + 2);
        expect(after.boots).toBe(0);
        expect(after.heartbeats[0]!.pass).toBeGreaterThan(lastPass);
        expect(after.mismatches).toEqual([]);
        expect(after.heartbeats.every((h) => h.errors === 0)).toBe(true);
        here = to;
      }
    }
    const history = await manager.history.list();
    expect(history.filter((r) => r.vm === 'mover' && r.status === 'completed')).toHaveLength(6);
    expect(history[0]!.samples.length).toBeGreaterThan(0);
    expect(history[0]!.phases.every((p) => p.startedAt !== null && p.endedAt !== null)).toBe(true);
  });

  it('refuses RDMA without RDMA links, and post-copy with multifd, leaving the VM alone', async () => {
    const pid = await pidOf('mover');
    const from = (await inv.locate('mover')).name;
    const to = from === 'lab1' ? 'lab2' : 'lab1';
    const rdma = await move({ vm: 'mover', to, performance: 'rdma' });
    expect(rdma.summary).toMatchObject({ status: 'refused' });
    expect(rdma.summary.reason).toMatch(/RDMA needs RDMA-capable links on both hosts/);
    const pc = await move({ vm: 'mover', to, performance: 'compression', convergence: 'postcopy' });
    expect(pc.summary.status).toBe('refused');
    expect(pc.summary.reason).toMatch(
      /postcopy convergence policy cannot be combined with Compression \(multifd\)/,
    );
    expect(await pidOf('mover')).toBe(pid);
    expect((await (await inv.locate('mover')).vmInfo('mover')).state).toBe('running');
    await (await inv.locate('mover')).stopVm('mover', { force: true, timeoutMs: 0 });
  });
});

describe('convergence', () => {
  // 48 MiB rewritten continuously through a 32 MiB/s cap needs ~1.5 s of downtime: far above 300 ms.
  beforeAll(async () => {
    await inv.createVm({
      name: 'hot',
      host: 'lab1',
      memoryMiB: 256,
      labGuest: { workingSetMiB: 48, dirtyRateMiBs: 0 },
    });
    await (await inv.host('lab1')).startVm('hot');
    await waitForPasses(inv, 'hot', 2);
  });

  it('raise-downtime: raises the target step by step until it converges', async () => {
    const m = await move({
      vm: 'hot',
      to: 'lab2',
      performance: 'tcp',
      bandwidthMiBs: 32,
      convergence: 'raise-downtime',
    });
    expect(m.summary.status, m.summary.reason ?? '').toBe('completed');
    const steps = m.events.filter((e) => e.type === 'escalation');
    expect(steps.length).toBeGreaterThan(0);
    expect(steps.every((e) => e.type === 'escalation' && e.step === 'raise-downtime')).toBe(true);
    const targets = steps.map((e) =>
      Number(/raised to (\d+) ms/.exec(e.type === 'escalation' ? e.message : '')?.[1]),
    );
    expect(targets).toEqual([...targets].sort((a, b) => a - b));
    expect(targets.every((t) => t > 300 && t <= 2000)).toBe(true);
    // Escalations happen during the memory phase, before the cut-over.
    const firstStep = m.events.findIndex((e) => e.type === 'escalation');
    const phase3 = m.events.findIndex((e) => e.type === 'phase' && e.phase === 3);
    expect(firstStep).toBeLessThan(phase3);
    expect(
      parseLabGuestSerial((await (await inv.host('lab2')).readSerial('hot', 0)).text).mismatches,
    ).toEqual([]);
  });

  it('abort: never raises anything and aborts cleanly, the VM running on the source', async () => {
    const pid = await pidOf('hot');
    const m = await move({
      vm: 'hot',
      to: 'lab1',
      performance: 'tcp',
      bandwidthMiBs: 32,
      convergence: 'abort',
    });
    expect(m.summary.status).toBe('failed');
    expect(m.summary.reason).toMatch(/^did not converge \(pass \d+: .* MiB still dirty/);
    const steps = m.events
      .filter((e) => e.type === 'escalation')
      .map((e) => (e.type === 'escalation' ? e.step : ''));
    expect(steps).toEqual(['abort']);
    expect(phaseOrder(m.events)).toEqual(['1:started', '1:completed', '2:started', '2:completed']);
    expect(await pidOf('hot')).toBe(pid);
    expect((await (await inv.host('lab2')).vmInfo('hot')).state).toBe('running');
    expect(await (await inv.host('lab1')).hasVm('hot')).toBe(false);
    const r = await waitForPasses(inv, 'hot', (await guestReport(inv, 'hot')).heartbeats.at(-1)!.pass + 2);
    expect(r.mismatches).toEqual([]);
  });
});

describe('convergence by post-copy', () => {
  it('postcopy: raises to the ceiling, then switches to post-copy and completes with the guest intact', async () => {
    const from = (await inv.locate('hot')).name;
    const to = from === 'lab1' ? 'lab2' : 'lab1';
    await (await inv.host(from)).updateSettings({ downtimeCeilingMs: 600 });
    const lastPass = (await guestReport(inv, 'hot')).heartbeats.at(-1)!.pass;
    const m = await move({ vm: 'hot', to, performance: 'tcp', bandwidthMiBs: 32, convergence: 'postcopy' });
    expect(m.summary.status, m.summary.reason ?? '').toBe('completed');
    const steps = m.events
      .filter((e) => e.type === 'escalation')
      .map((e) => (e.type === 'escalation' ? e.step : ''));
    expect(steps.at(-1)).toBe('postcopy');
    expect(steps.slice(0, -1).every((s) => s === 'raise-downtime')).toBe(true);
    expect(phaseOrder(m.events)).toEqual(ALL_PHASES);
    const after = await waitForPasses(inv, 'hot', lastPass + 3);
    expect(after.boots).toBe(0);
    expect(after.mismatches).toEqual([]);
    expect((await (await inv.host(to)).vmInfo('hot')).state).toBe('running');
  });
});

describe('cancel and failure', () => {
  // A slow move: 64 MiB rewritten continuously through 8 MiB/s stays in phase 2 until stopped.
  beforeAll(async () => {
    await (await inv.locate('hot')).stopVm('hot', { force: true, timeoutMs: 0 });
    await inv.createVm({
      name: 'slow',
      host: 'lab1',
      memoryMiB: 256,
      labGuest: { workingSetMiB: 64, dirtyRateMiBs: 0 },
    });
    await (await inv.host('lab1')).startVm('slow');
  });
  const slow: MoveRequest = {
    vm: 'slow',
    to: 'lab2',
    performance: 'tcp',
    bandwidthMiBs: 8,
    convergence: 'abort',
  };

  function destLeftovers(): string[] {
    const dir = path.join(home, 'hosts', 'lab2', 'vms', 'slow');
    return fs.existsSync(dir) ? fs.readdirSync(dir) : [];
  }

  it('cancel in phase 2: the VM keeps running on the source, nothing is left on the destination', async () => {
    const pid = await pidOf('slow');
    let asked = false;
    const m = await move(slow, async (e, id) => {
      if (!asked && e.type === 'sample' && e.sample.phase === 2 && e.sample.bytesSent > 4 * 1024 * 1024) {
        asked = true;
        // A second move of a VM that is being moved is refused by the pre-flight.
        const second = await manager.check({ vm: 'slow', to: 'lab2' });
        expect(second.errors).toContainEqual({
          code: 'vm-migrating',
          message: 'slow is already being moved',
        });
        expect(await manager.cancel(id)).toMatchObject({ accepted: true });
      }
    });
    expect(m.summary).toMatchObject({ status: 'cancelled', reason: 'cancelled by the administrator' });
    expect(phaseOrder(m.events)).toEqual(['1:started', '1:completed', '2:started', '2:completed']);
    expect(await pidOf('slow')).toBe(pid);
    expect((await (await inv.host('lab1')).vmInfo('slow')).state).toBe('running');
    expect(await (await inv.host('lab2')).hasVm('slow')).toBe(false);
    expect(destLeftovers()).toEqual([]);
    expect((await manager.history.get(m.id)).status).toBe('cancelled');
  });

  it('cancel from another process (ferry cancel) through the shared FERRY_HOME', async () => {
    let asked = false;
    const m = await move(slow, async (e, id) => {
      if (!asked && e.type === 'sample' && e.sample.bytesSent > 4 * 1024 * 1024) {
        asked = true;
        const r = await ferry(home, ['cancel', id]);
        expect(r.code, r.stderr).toBe(0);
      }
    });
    expect(m.summary.status).toBe('cancelled');
    expect((await (await inv.host('lab1')).vmInfo('slow')).state).toBe('running');
    expect(destLeftovers()).toEqual([]);
  });

  it('refuses a cancel once phase 3 is over', async () => {
    let verdict: { accepted: boolean; reason: string | null } | null = null;
    const m = await move({ vm: 'slow', to: 'lab2', performance: 'tcp' }, async (e, id) => {
      if (e.type === 'phase' && e.phase === 4 && e.state === 'started' && !verdict)
        verdict = await manager.cancel(id);
    });
    expect(m.summary.status).toBe('completed');
    expect(verdict).toMatchObject({ accepted: false });
    expect(verdict!.reason).toMatch(
      /phase 4 \(Storage handle\) has begun: the VM already runs on the destination/,
    );
    expect((await inv.locate('slow')).name).toBe('lab2');
  });

  it('destination QEMU killed mid-copy: the VM keeps running on the source and the failure is recorded', async () => {
    const pid = await pidOf('slow');
    let killed = false;
    const m = await move({ ...slow, to: 'lab1' }, async (e) => {
      if (!killed && e.type === 'sample' && e.sample.bytesSent > 4 * 1024 * 1024) {
        killed = true;
        const rt = JSON.parse(
          fs.readFileSync(path.join(home, 'hosts', 'lab1', 'vms', 'slow', 'runtime.json'), 'utf8'),
        ) as { pid: number };
        process.kill(rt.pid, 'SIGKILL');
      }
    });
    expect(killed).toBe(true);
    expect(m.summary.status).toBe('failed');
    expect(m.summary.reason).toMatch(/failed|stalled/);
    expect(await pidOf('slow')).toBe(pid);
    expect((await (await inv.host('lab2')).vmInfo('slow')).state).toBe('running');
    expect(await (await inv.host('lab1')).hasVm('slow')).toBe(false);
    expect(fs.existsSync(path.join(home, 'hosts', 'lab1', 'vms', 'slow'))).toBe(false);
    const rec = await manager.history.get(m.id);
    expect(rec).toMatchObject({ status: 'failed' });
    expect(rec.reason).toBe(m.summary.reason);
    await waitFor(
      'the guest to keep beating on the source',
      async () => (await guestReport(inv, 'slow')).heartbeats.length > 0,
    );
  });
});

describe('lab hosts on a shaped link', () => {
  // As root: two network namespaces joined through a bridge, each side shaped to 1 Gbit/s by tc.
  it('moves a VM across a 1 Gbit/s link between network namespaces (root), else refuses the link clearly', async () => {
    const linkHome = tempHome('link');
    const linked = new Inventory(linkHome);
    if (process.getuid?.() !== 0) {
      await expect(linked.labUp(2, { linkMbit: 1000 })).rejects.toThrow(
        /a shaped lab link needs Linux and root/,
      );
      return;
    }
    try {
      const hosts = await linked.labUp(2, { linkMbit: 1000 });
      expect(hosts.map((h) => h.migrationAddress)).toEqual([
        expect.stringMatching(/^10\.77\.\d+\.1$/),
        expect.stringMatching(/^10\.77\.\d+\.2$/),
      ]);
      await linked.createVm({
        name: 'linked',
        host: 'lab1',
        memoryMiB: 256,
        labGuest: { workingSetMiB: 32, dirtyRateMiBs: 20 },
      });
      await (await linked.host('lab1')).startVm('linked');
      await waitForPasses(linked, 'linked', 2);
      const m = new MigrationManager(linked);
      const logs: string[] = [];
      m.subscribe((e) => e.type === 'log' && logs.push(e.message));
      const s = await (await m.start({ vm: 'linked', to: 'lab2', performance: 'compression' })).done;
      expect(s.status, s.reason ?? '').toBe('completed');
      expect(logs.some((l) => l.startsWith(`lab2 is listening on tcp:${hosts[1]!.migrationAddress}:`))).toBe(
        true,
      );
      expect((await waitForPasses(linked, 'linked', 4)).mismatches).toEqual([]);
    } finally {
      await linked.labDown().catch(() => undefined);
    }
  });
});

/** `ferry move slow` in its own process, slowed to 8 MiB/s, printing JSON events. */
function slowCliMove(to: string): ChildProcessWithoutNullStreams {
  const args = ['move', 'slow', '--to', to, '--performance', 'tcp', '--bandwidth', '8', '--json'];
  return spawn(process.execPath, [path.join(REPO, 'bin', 'ferry.js'), ...args], {
    env: { ...process.env, FERRY_HOME: home },
  });
}

describe('stalls, Ctrl-C and the history from the CLI', () => {
  it('a frozen destination stalls the stream: detected within seconds and rolled back like a failure', async () => {
    const from = (await inv.locate('slow')).name;
    const to = from === 'lab1' ? 'lab2' : 'lab1';
    const pid = await pidOf('slow');
    let frozen = 0;
    const m = await move(
      { vm: 'slow', to, performance: 'tcp', bandwidthMiBs: 8, convergence: 'abort' },
      async (e) => {
        if (!frozen && e.type === 'sample' && e.sample.bytesSent > 2 * 1024 * 1024) {
          const rt = JSON.parse(
            fs.readFileSync(path.join(home, 'hosts', to, 'vms', 'slow', 'runtime.json'), 'utf8'),
          ) as { pid: number };
          frozen = rt.pid;
          process.kill(rt.pid, 'SIGSTOP'); // the peer stops reading: bytes sent stop growing
        }
      },
    );
    expect(frozen).toBeGreaterThan(0);
    expect(m.summary.status).toBe('failed');
    expect(m.summary.reason).toMatch(/the migration stalled: no bytes sent for \d+ s/);
    expect(isQemuAlive(frozen, '')).toBe(false); // the frozen skeleton was killed, not left behind
    expect(await pidOf('slow')).toBe(pid);
    expect((await (await inv.host(from)).vmInfo('slow')).state).toBe('running');
  });

  it('Ctrl-C on `ferry move` cancels cleanly; `ferry migrations --json` records it', async () => {
    const to = (await inv.locate('slow')).name === 'lab1' ? 'lab2' : 'lab1';
    const child = slowCliMove(to);
    let out = '';
    let sent = false;
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (!sent && out.includes('"type":"sample"') && /"bytesSent":[1-9]\d{6}/.test(out)) {
        sent = true;
        child.kill('SIGINT');
      }
    });
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    expect(sent).toBe(true);
    expect(code).toBe(1);
    const lines = out
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { type: string; status?: string; id: string; reason?: string });
    expect(lines[0]).toMatchObject({ type: 'started' });
    expect(lines.at(-1)).toMatchObject({
      type: 'summary',
      status: 'cancelled',
      reason: 'cancelled by the administrator',
    });
    expect((await (await inv.locate('slow')).vmInfo('slow')).state).toBe('running');
    const hist = JSON.parse((await ferry(home, ['migrations', '--json'])).stdout) as {
      id: string;
      status: string;
      samples?: unknown;
    }[];
    expect(hist.find((h) => h.id === lines[0]!.id)).toMatchObject({ status: 'cancelled' });
    expect(hist[0]).not.toHaveProperty('samples');
  });
});

describe('a mover that dies', () => {
  it('a move whose Ferry process is killed is rolled back by the next look: VM running on the source, no skeleton', async () => {
    const from = (await inv.locate('slow')).name;
    const to = from === 'lab1' ? 'lab2' : 'lab1';
    const pid = await pidOf('slow');
    const child = slowCliMove(to);
    let out = '';
    await new Promise<void>((resolve) => {
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if (/"bytesSent":[1-9]\d{6}/.test(out)) resolve();
      });
    });
    const skeleton = JSON.parse(
      fs.readFileSync(path.join(home, 'hosts', to, 'vms', 'slow', 'runtime.json'), 'utf8'),
    ) as { pid: number };
    child.kill('SIGKILL'); // no chance to clean up
    await new Promise((resolve) => child.once('exit', resolve));
    const list = JSON.parse((await ferry(home, ['vm', 'list', '--json'])).stdout) as {
      name: string;
      host: string;
      state: string;
      pid: number;
    }[];
    expect(list.find((v) => v.name === 'slow')).toMatchObject({ host: from, state: 'running', pid });
    expect(isQemuAlive(skeleton.pid, '')).toBe(false);
    expect(fs.existsSync(path.join(home, 'hosts', to, 'vms', 'slow'))).toBe(false);
    // The history says what happened to it.
    const hist = JSON.parse((await ferry(home, ['migrations', '--json'])).stdout) as {
      status: string;
      reason: string;
    }[];
    expect(hist[0]).toMatchObject({
      status: 'failed',
      reason: expect.stringMatching(
        /^abandoned: the Ferry process running it \(pid \d+\) ended during phase 2/,
      ),
    });
    // And it can move again.
    const again = await move({ vm: 'slow', to, performance: 'tcp' });
    expect(again.summary.status, again.summary.reason ?? '').toBe('completed');
  });
});

describe('tuning a running move', () => {
  // The slow VM of the tests above (made here when this block runs alone): 64 MiB rewritten
  // continuously, moved through an 8 MiB/s cap, so phase 2 lasts until a tune lifts the cap.
  beforeAll(async () => {
    if (await inv.locate('slow').catch(() => null)) return;
    await inv.createVm({
      name: 'slow',
      host: 'lab1',
      memoryMiB: 256,
      labGuest: { workingSetMiB: 64, dirtyRateMiBs: 0 },
    });
    await (await inv.host('lab1')).startVm('slow');
  });

  /** QEMU's own migration parameters on the source, over the VM's status monitor (not Ferry's session). */
  async function qemuParameters(host: string): Promise<{ bandwidth: number; downtime: number }> {
    const rt = JSON.parse(
      fs.readFileSync(path.join(home, 'hosts', host, 'vms', 'slow', 'runtime.json'), 'utf8'),
    ) as { statusSocket: string };
    const qmp = await QmpClient.connect(rt.statusSocket, { timeoutMs: 5000 });
    try {
      const p = await qmp.execute<{ 'max-bandwidth': number; 'downtime-limit': number }>(
        'query-migrate-parameters',
      );
      return { bandwidth: p['max-bandwidth'] / 1048576, downtime: p['downtime-limit'] };
    } finally {
      await qmp.close();
    }
  }

  it('ferry move-tune from another process: post-copy refused without the capability, then bandwidth and downtime in phase 2; refused once over', async () => {
    const from = (await inv.locate('slow')).name;
    const to = from === 'lab1' ? 'lab2' : 'lab1';
    type Step = { postcopy: Awaited<ReturnType<typeof ferry>>; tune: Awaited<ReturnType<typeof ferry>> };
    let step: (Step & { before: object; after: object }) | null = null;
    let asked = false;
    const m = await move(
      {
        vm: 'slow',
        to,
        performance: 'tcp',
        bandwidthMiBs: 8,
        downtimeMs: 300,
        convergence: 'raise-downtime',
      },
      async (e, id) => {
        if (asked || e.type !== 'sample' || e.sample.phase !== 2 || e.sample.bytesSent < 2 * 1048576) return;
        asked = true;
        const postcopy = await ferry(home, ['move-tune', id, '--postcopy']);
        const before = await qemuParameters(from);
        const tune = await ferry(home, [
          'move-tune',
          id,
          '--bandwidth',
          '1024',
          '--downtime',
          '1500',
          '--json',
        ]);
        const after = await qemuParameters(from);
        step = { postcopy, tune, before, after };
      },
    );
    expect(m.summary.status, m.summary.reason ?? '').toBe('completed');
    const s = step as (Step & { before: object; after: object }) | null;
    expect(s).not.toBeNull();
    // Post-copy: refused with the reason (exit 2), nothing changed, the move went on.
    expect(s!.postcopy.code).toBe(2);
    expect(s!.postcopy.stderr).toMatch(
      /cannot tune m-[0-9a-z-]+: post-copy is not available: the move started without QEMU's post-copy capability \(convergence policy "raise-downtime"\)/,
    );
    expect(s!.before).toEqual({ bandwidth: 8, downtime: 300 });
    // The tune: applied, answered with the settings, and visible in QEMU's parameters.
    expect(s!.tune.code, s!.tune.stderr).toBe(0);
    expect(JSON.parse(s!.tune.stdout)).toMatchObject({
      id: m.id,
      bandwidthMiBs: 1024,
      downtimeMs: 1500,
      postcopy: false,
    });
    expect(s!.after).toEqual({ bandwidth: 1024, downtime: 1500 });
    // In the event stream, once, in phase 2, before the cut-over; samples after it carry the new target.
    const tuned = m.events.filter((e) => e.type === 'tuned');
    expect(tuned).toEqual([
      expect.objectContaining({
        change: { bandwidthMiBs: 1024, downtimeMs: 1500 },
        message: 'tuned by the administrator: bandwidth limit 8 → 1024 MiB/s, downtime target 300 → 1500 ms',
      }),
    ]);
    const at = m.events.indexOf(tuned[0]!);
    const index = (phase: number): number =>
      m.events.findIndex((e) => e.type === 'phase' && e.phase === phase && e.state === 'started');
    expect(index(2)).toBeLessThan(at);
    expect(at).toBeLessThan(index(3));
    const later = m.events.slice(at).filter((e) => e.type === 'sample');
    expect(later.length).toBeGreaterThan(0);
    expect(later.every((e) => e.type === 'sample' && e.sample.downtimeLimitMs === 1500)).toBe(true);
    expect(m.events.some((e) => e.type === 'escalation' && e.at > tuned[0]!.at)).toBe(false);
    // The history keeps it, with the values.
    const rec = await manager.history.get(m.id);
    expect(rec.events.filter((e) => e.type === 'tuned')).toEqual([
      expect.objectContaining({ change: { bandwidthMiBs: 1024, downtimeMs: 1500 } }),
    ]);
    // Over: refused with the reason, from the CLI and from the API's manager.
    const late = await ferry(home, ['move-tune', m.id, '--bandwidth', '100']);
    expect(late.code).toBe(2);
    expect(late.stderr).toMatch(/cannot tune m-[0-9a-z-]+: the move is already over \(completed\)/);
    await expect(manager.tune(m.id, { downtimeMs: 100 })).rejects.toMatchObject({
      code: 'not-supported',
      message: expect.stringMatching(/the move is already over \(completed\)/),
    });
    expect((await (await inv.host(to)).vmInfo('slow')).state).toBe('running');
  });

  it('switches to post-copy on request where the move started with the capability (the API in-process)', async () => {
    const from = (await inv.locate('slow')).name;
    const to = from === 'lab1' ? 'lab2' : 'lab1';
    const lastPass = (await guestReport(inv, 'slow')).heartbeats.at(-1)?.pass ?? 0;
    let answer: Promise<unknown> | null = null;
    const m = await move(
      { vm: 'slow', to, performance: 'tcp', bandwidthMiBs: 8, convergence: 'postcopy' },
      (e, id) => {
        if (!answer && e.type === 'sample' && e.sample.phase === 2 && e.sample.bytesSent >= 2 * 1048576)
          answer = manager.tune(id, { postcopy: true }).catch((err: unknown) => err);
      },
    );
    expect(m.summary.status, m.summary.reason ?? '').toBe('completed');
    expect(await answer).toMatchObject({ id: m.id, postcopy: true, bandwidthMiBs: 8 });
    const steps = m.events
      .filter(
        (e) => e.type === 'tuned' || e.type === 'escalation' || (e.type === 'phase' && e.state === 'started'),
      )
      .map((e) =>
        e.type === 'tuned' ? `tuned:${e.message}` : e.type === 'phase' ? `phase ${e.phase}` : e.type,
      );
    expect(steps).toEqual([
      'phase 1',
      'phase 2',
      'tuned:tuned by the administrator: switching to post-copy',
      'phase 3',
      'phase 4',
      'phase 5',
      'phase 6',
    ]);
    const after = await waitForPasses(inv, 'slow', lastPass + 2);
    expect(after.mismatches).toEqual([]);
    expect((await (await inv.host(to)).vmInfo('slow')).state).toBe('running');
  });
});
