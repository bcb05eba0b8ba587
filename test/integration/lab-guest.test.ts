// The lab guest: boots under the available accelerator, checks its memory every pass, paces itself to
// the dirty rate it was given, and reports corruption loudly. It is what later proves "kept running,
// memory intact" for every migration.
import { execFileSync, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Inventory } from '../../engine/host/inventory.js';
import { labGuestHealthy, parseLabGuestSerial } from '../../engine/host/lab-guest.js';
import { labGuestImage } from '../../engine/host/store.js';
import { REPO, tempHome, waitFor, waitForPasses } from '../helpers.js';

let home: string;
let inv: Inventory;

beforeAll(async () => {
  home = tempHome('guest');
  inv = new Inventory(home);
  await inv.labUp(1);
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

  it('reports a page that was not what the previous pass wrote', async () => {
    // The guest's self-test hook skips writing page 3 on pass 5: pass 6 must catch it.
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
        'ws=4 rate=40 corrupt=5',
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
    } finally {
      qemu.kill('SIGKILL');
    }
  });

  it('is built from the committed source: nasm gives the committed image byte for byte', () => {
    const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-guest-')), 'guest.bin');
    execFileSync('nasm', ['-f', 'bin', '-o', out, path.join(REPO, 'assets', 'lab-guest', 'guest.asm')]);
    const sha = (f: string): string => crypto.createHash('sha256').update(fs.readFileSync(f)).digest('hex');
    expect(sha(out)).toBe(sha(labGuestImage()));
    fs.rmSync(path.dirname(out), { recursive: true });
  });
});
