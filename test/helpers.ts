// Shared by the integration tests: a fresh FERRY_HOME per test file, the CLI as a new user runs it, and
// waiting on what a real guest prints.
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { inject } from 'vitest';
import { Inventory } from '../engine/host/inventory.js';
import { parseLabGuestSerial, type LabGuestReport } from '../engine/host/lab-guest.js';

export const REPO = path.resolve(import.meta.dirname, '..');
const FERRY_BIN = path.join(REPO, 'bin', 'ferry.js');

export function tempHome(label: string): string {
  const dir = path.join(inject('testRoot'), `${label}-${crypto.randomBytes(3).toString('hex')}`);
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the built CLI in a separate process, exactly as `npx ferry …` would. */
export function ferry(home: string, args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [FERRY_BIN, ...args],
      { env: { ...process.env, FERRY_HOME: home, ...env }, timeout: 120_000 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

export async function waitFor<T>(
  what: string,
  probe: () => Promise<T | null | undefined | false>,
  timeoutMs = 60_000,
  everyMs = 200,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await probe();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    await sleep(everyMs);
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
}

/** The guest's serial report for a VM, wherever it currently lives. */
export async function guestReport(inv: Inventory, vm: string): Promise<LabGuestReport> {
  const host = await inv.locate(vm);
  return parseLabGuestSerial((await host.readSerial(vm, 0)).text);
}

/** Waits until the lab guest has completed at least `passes` passes; returns its report. */
export function waitForPasses(
  inv: Inventory,
  vm: string,
  passes: number,
  timeoutMs = 90_000,
): Promise<LabGuestReport> {
  return waitFor(
    `${vm} to reach pass ${passes}`,
    async () => {
      const r = await guestReport(inv, vm);
      return (r.heartbeats.at(-1)?.pass ?? 0) >= passes ? r : null;
    },
    timeoutMs,
  );
}
