// The lab guest: boots under the available accelerator, checks its memory every pass, paces itself to
// the dirty rate it was given, and reports corruption loudly. It is what later proves "kept running,
// memory intact" for every migration. It also measures how long its own clock stood still (a pause, a
// move) against the host's clock, which is how a move's downtime is seen from inside the guest.
import { execFileSync, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Inventory } from '../../engine/host/inventory.js';
import {
  labGuestHealthy,
  maxGapAfter,
  parseLabGuestSerial,
  type LabGuestReport,
} from '../../engine/host/lab-guest.js';
import { labGuestImage } from '../../engine/host/store.js';
import { MigrationManager } from '../../engine/migration/manager.js';
import type { MigrationEvent } from '../../engine/api/index.js';
import { guestReport, REPO, tempHome, waitFor, waitForPasses } from '../helpers.js';

let home: string;
let inv: Inventory;

beforeAll(async () => {
  home = tempHome('guest');
  inv = new Inventory(home);
  await inv.labUp(2); // the second host only for the move at the end of the clock test
});
afterAll(async () => {
  await inv.labDown().catch(() => undefined);
});

describe('lab guest', () => {
  it('reports a clean memory self-check over at least 20 passes, paced by its dirty rate', async () => {
    const facts = await (await inv.host('lab1')).facts();
    // 8 MiB at 80 MiB/s: one pass every 100 ms of guest time.
    await inv.createVm({
      name: 'g',
      host: 'lab1',
      memoryMiB: 128,
      labGuest: { workingSetMiB: 8, dirtyRateMiBs: 80 },
    });
    await (await inv.host('lab1')).startVm('g');
    const report = await waitForPasses(inv, 'g', 20);
    expect(report.boots).toBe(1);
    expect(labGuestHealthy(report)).toBe(true);
    expect(report.heartbeats.every((h) => h.errors === 0)).toBe(true);
    // Passes are numbered without gaps in the order printed, and paced by the guest's own clock.
    const passes = report.heartbeats.map((h) => h.pass);
    expect(passes).toEqual([...passes].sort((a, b) => a - b));
    for (const h of report.heartbeats) expect(h.ms).toBeGreaterThanOrEqual(h.pass * 100 - 1);
    const serial = fs.readFileSync((await inv.locate('g').then((h) => h.vmInfo('g'))).serialLogPath, 'utf8');
    expect(serial).toMatch(/^FERRY-GUEST boot ws=8 rate=80 mem=128\n/);
    expect(['tcg', 'kvm']).toContain(facts.accel);
    await (await inv.host('lab1')).stopVm('g', { force: true, timeoutMs: 0 });
  });

  it('reports a page that was not what the previous pass wrote, and a write its memory lost', async () => {
    // The guest's self-test hooks: it skips writing page 3 on pass 5, which pass 6 must catch; and at the
    // start of pass 3 its CPU's copy of the tick count (DR0) moves on without memory, as when a move
    // delivers a page older than the CPU state: the next tick finds both memory copies one behind.
    const dir = tempHome('guest-corrupt');
    const log = path.join(dir, 'serial.log');
    const qemu = spawn(
      'qemu-system-x86_64',
      [
        '-accel',
        'tcg',
        '-machine',
        'q35',
        '-m',
        '64',
        '-nodefaults',
        '-no-user-config',
        '-display',
        'none',
        '-kernel',
        labGuestImage(),
        '-append',
        'ws=4 rate=40 corrupt=5 stale=3',
        '-serial',
        `file:${log}`,
      ],
      { stdio: 'ignore' },
    );
    try {
      const report = await waitFor('the mismatch report', async () => {
        const r = parseLabGuestSerial(fs.existsSync(log) ? fs.readFileSync(log, 'utf8') : '');
        return (r.heartbeats.at(-1)?.pass ?? 0) >= 8 ? r : null;
      });
      expect(report.mismatches).toEqual([
        'FERRY-GUEST MISMATCH pass=6 page=3 want=0x00000005 got=0x00000004',
      ]);
      expect(report.heartbeats.filter((h) => h.pass < 6).every((h) => h.errors === 0)).toBe(true);
      expect(report.heartbeats.filter((h) => h.pass >= 6).every((h) => h.errors === 1)).toBe(true);
      expect(labGuestHealthy(report)).toBe(false);
      expect(report.stale).toHaveLength(1);
      expect(report.stale[0]).toMatchObject({ lost: 2 });
      expect(report.stale[0]!.pass).toBeGreaterThanOrEqual(3);
      expect(report.faults).toEqual([]);
    } finally {
      qemu.kill('SIGKILL');
    }
  });

  it('reads heartbeats with and without the clock line after them (older images print none)', () => {
    const old = [
      'FERRY-GUEST boot ws=8 rate=80 mem=128',
      'FERRY-GUEST hb pass=1 ms=100 errors=0',
      'FERRY-GUEST hb pass=2 ms=200 errors=0',
      '',
    ].join('\n');
    expect(parseLabGuestSerial(old)).toEqual({
      boots: 1,
      heartbeats: [
        { pass: 1, ms: 100, errors: 0 },
        { pass: 2, ms: 200, errors: 0 },
      ],
      mismatches: [],
      faults: [],
      stale: [],
      maxGapMs: null,
    });
    const now = parseLabGuestSerial(
      `${old}FERRY-GUEST clock pass=2 gap=1\nFERRY-GUEST hb pass=5 ms=500 errors=0\nFERRY-GUEST clock pass=5 gap=1503\n` +
        'FERRY-GUEST hb pass=8 ms=800 errors=0\nFERRY-GUEST clock pass=8 gap=0\n',
    );
    expect(now.heartbeats.map((h) => h.gapMs)).toEqual([undefined, 1, 1503, 0]);
    expect(now.maxGapMs).toBe(1503);
    expect(maxGapAfter(now, 2)).toBe(1503);
    expect(maxGapAfter(now, 5)).toBe(0);
    expect(maxGapAfter(now, 8)).toBeNull();
    expect(labGuestHealthy(now)).toBe(true);
  });

  it('sees in its own clock how long it stood still: a pause of known length, then a move', async () => {
    // A gap is measured against the RTC, which follows the host's clock while the VM is stopped; the guest
    // reports it once the RTC has changed second twice after it ended. PAUSE_MS is long enough to stand
    // out from anything else a busy machine does to the guest; SLACK_MS is how late a busy host may
    // deliver the timer tick at which the guest notices a change of second (it then sees that much less).
    const PAUSE_MS = 1500;
    const SLACK_MS = 50;
    await inv.createVm({
      name: 'clk',
      host: 'lab1',
      memoryMiB: 128,
      labGuest: { workingSetMiB: 8, dirtyRateMiBs: 80 },
    });
    const lab1 = await inv.host('lab1');
    await lab1.startVm('clk');
    const withGaps = (r: LabGuestReport): number[] => r.heartbeats.flatMap((h) => h.gapMs ?? []);
    // Some seconds of running: clock lines after heartbeats, none with a gap anywhere near a pause's.
    const before = await waitFor('four clock lines', async () => {
      const r = await guestReport(inv, 'clk');
      return withGaps(r).length >= 4 ? r : null;
    });
    const passAtPause = before.heartbeats.at(-1)!.pass;

    await lab1.pauseVm('clk');
    const t0 = performance.now();
    await sleep(PAUSE_MS);
    const pausedMs = Math.floor(performance.now() - t0); // the VM was stopped at least this long
    await lab1.resumeVm('clk');
    const paused = await gapSettled('clk', Date.now());
    const big = paused.heartbeats.filter((h) => (h.gapMs ?? 0) >= PAUSE_MS / 2);
    console.log(
      `lab guest, paused ${pausedMs} ms: it saw a gap of ${big.map((h) => h.gapMs).join(', ')} ms; ` +
        `the others: ${withGaps(paused)
          .filter((g) => g < PAUSE_MS / 2)
          .join(' ')}`,
    );
    // Exactly one heartbeat reports it, after the pause, at least as long as the pause; every other gap,
    // before it and after it, is far shorter.
    expect(big).toHaveLength(1);
    expect(big[0]!.pass).toBeGreaterThan(passAtPause);
    expect(big[0]!.gapMs).toBeGreaterThanOrEqual(pausedMs - SLACK_MS);
    expect(paused.maxGapMs).toBe(big[0]!.gapMs);
    expect(withGaps(before).every((g) => g < PAUSE_MS / 2)).toBe(true);
    expect(labGuestHealthy(paused)).toBe(true);

    // A live move: the guest sees the move's blackout in its own clock, beside the figures Ferry and QEMU
    // give for it (printed, not compared: they are a few ms to tens of ms).
    const passBeforeMove = (await guestReport(inv, 'clk')).heartbeats.at(-1)!.pass;
    const manager = new MigrationManager(inv);
    const events: MigrationEvent[] = [];
    const off = manager.subscribe((e) => events.push(e));
    const s = await (await manager.start({ vm: 'clk', to: 'lab2' })).done;
    off();
    expect(s.status, s.reason ?? '').toBe('completed');
    // Each step of the cut-over has its own figure; the proof that the guest lives on the destination is
    // reported beside the phases: after phase 6, with its own figure, outside the total.
    expect(s.cutover?.map((c) => c.step)).toEqual([
      'migrate-continue',
      'final copy',
      'state loaded, disks checked',
      'resume',
      'announce',
      'source statistics',
      'source off',
    ]);
    expect(s.cutover!.every((c) => c.ms >= 0)).toBe(true);
    expect(s.guestAliveMs).toBeGreaterThanOrEqual(0);
    const order = events.map((e) =>
      e.type === 'phase'
        ? `${e.phase}:${e.state}`
        : e.type === 'log' && /^heartbeat on lab2/.test(e.message)
          ? 'alive'
          : null,
    );
    expect(order.filter((x) => x !== null).slice(-3)).toEqual(['6:started', '6:completed', 'alive']);
    const moved = await gapSettled('clk', Date.now());
    const seen = maxGapAfter(moved, passBeforeMove);
    console.log(
      `lab guest, moved lab1 → lab2: the guest saw ${seen} ms; Ferry: guest paused ${s.downtimeMs} ms, ` +
        `QEMU downtime ${s.qemuDowntimeMs} ms`,
    );
    expect(seen).not.toBeNull();
    expect(labGuestHealthy(moved)).toBe(true);
    await (await inv.locate('clk')).stopVm('clk', { force: true, timeoutMs: 0 });
  });

  it('is built from the committed source: nasm gives the committed image byte for byte', () => {
    const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-guest-')), 'guest.bin');
    execFileSync('nasm', ['-f', 'bin', '-o', out, path.join(REPO, 'assets', 'lab-guest', 'guest.asm')]);
    const sha = (f: string): string => crypto.createHash('sha256').update(fs.readFileSync(f)).digest('hex');
    expect(sha(out)).toBe(sha(labGuestImage()));
    fs.rmSync(path.dirname(out), { recursive: true });
  });
});

/**
 * The guest's report once it has printed a heartbeat more than 2.5 s after `since` (host time): by then
 * it has reported any gap in its clock that ended before `since` (it does so one to two seconds after).
 */
async function gapSettled(vm: string, since: number): Promise<LabGuestReport> {
  await sleep(Math.max(0, since + 2500 - Date.now()));
  const seen = (await guestReport(inv, vm)).heartbeats.at(-1)?.pass ?? 0;
  return waitFor('a heartbeat after the gap was measured', async () => {
    const r = await guestReport(inv, vm);
    return r.heartbeats.some((h) => h.pass > seen && h.gapMs !== undefined) ? r : null;
  });
}
