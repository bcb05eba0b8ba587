// The console in a real browser (Debian's Chromium) against `ferry web` with two lab hosts and a
// running lab VM: the main window, the Move wizard page by page (mouse, then keyboard alone), a live
// move's phases and charts, a blocking pre-flight error, host settings changing the next move, and a
// VM's own console (Connect…: its screen and serial port, following the VM across a move).
// Every move is real (QEMU); lab1's and lab2's bandwidth is capped so a move lasts several seconds.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Page } from 'playwright-core';
import { ferry, tempHome, waitFor } from '../helpers.js';
import {
  axeViolations,
  describeViolations,
  focusIsVisible,
  openBrowser,
  screenshot,
  setTheme,
  startWeb,
  tabTo,
  type Browser,
  type WebProcess,
} from './support.js';

let home: string;
let web: WebProcess;
let browser: Browser | null = null;

interface VmJson {
  name: string;
  host: string;
  state: string;
}

interface MigrationJson {
  id: string;
  vm: string;
  from: string;
  to: string;
  status: string;
  options: { performance: string } | null;
}

async function cli(args: string[]): Promise<string> {
  const r = await ferry(home, args);
  if (r.code !== 0) throw new Error(`ferry ${args.join(' ')} failed (${r.code}): ${r.stderr}`);
  return r.stdout;
}

async function vmHost(name: string): Promise<string | undefined> {
  const vms = JSON.parse(await cli(['vm', 'list', '--json'])) as VmJson[];
  return vms.find((v) => v.name === name)?.host;
}

async function migrations(): Promise<MigrationJson[]> {
  return JSON.parse(await cli(['migrations', '--json'])) as MigrationJson[];
}

beforeAll(async () => {
  home = tempHome('e2e');
  await cli(['lab', 'up', '--hosts', '2']);
  await cli([
    'vm',
    'create',
    'demo',
    '--host',
    'lab1',
    '--lab-guest',
    '--working-set',
    '64',
    '--dirty-rate',
    '8',
    '--disk',
    '1',
  ]);
  await cli(['vm', 'start', 'demo']);
  // About 70 MiB cross the link per move: at 15 MiB/s the memory phase lasts several seconds.
  await cli(['host', 'settings', 'lab1', '--set', 'bandwidthMiBs=15']);
  await cli(['host', 'settings', 'lab2', '--set', 'bandwidthMiBs=15']);
  web = await startWeb(home);
}, 120_000);

afterEach(async () => {
  await browser?.close();
  browser = null;
});

afterAll(async () => {
  await web?.stop();
  if (home) await ferry(home, ['lab', 'down']);
}, 120_000);

async function open(): Promise<Page> {
  browser = await openBrowser(web.url);
  const page = browser.page;
  await page.locator('[data-testid="connection"]', { hasText: 'Connected' }).waitFor();
  await page.locator('[data-host="lab1"]').waitFor();
  return page;
}

/** Clicks the host the VM is on (the CLI says which), then the VM. */
async function selectVm(page: Page, name: string): Promise<void> {
  const where = await vmHost(name);
  await page.locator(`[data-host="${where}"]`).click();
  await page.locator('[data-testid="vm-table"] .vm-name', { hasText: name }).click();
  await page.locator('[data-action="move"]').waitFor();
}

const wizard = (page: Page) => page.locator('[data-testid="move-wizard"]');
const wizardPage = (page: Page) => wizard(page).getAttribute('data-page');

async function expectPage(page: Page, name: string): Promise<void> {
  await expect.poll(() => wizardPage(page)).toBe(name);
}

interface Followed {
  /** The phases the stepper showed as current, in the order seen. */
  phases: number[];
  /** The throughput chart's point count, each time it was read during phase 2. */
  points: number[];
  /** Whether Cancel was available, by the phase it was seen in (while the move ran). */
  cancel: { phase: number; enabled: boolean }[];
}

/** Follows a move in the progress view to its end: the phases as they ran and the chart's growth. */
async function followMove(page: Page, shot: string | null): Promise<Followed> {
  const view = page.locator('[data-testid="progress-view"]');
  await view.waitFor();
  const seen: Followed = { phases: [], points: [], cancel: [] };
  let shotTaken = shot === null;
  await waitFor(
    'the move to end',
    async () => {
      const state = await page.evaluate(() => {
        const current = document.querySelector('[data-testid="phase-stepper"] [aria-current="step"]');
        const canvas = document.querySelector('[data-testid="throughput-chart"] canvas');
        const cancel = document.querySelector<HTMLButtonElement>('[data-testid="cancel-move"]');
        return {
          phase: current ? Number(current.getAttribute('data-phase')) : null,
          points: Number(canvas?.getAttribute('data-points') ?? 0),
          status: document.querySelector('.progress')?.getAttribute('data-status') ?? null,
          cancelEnabled: cancel ? !cancel.disabled : null,
        };
      });
      if (state.phase !== null && seen.phases.at(-1) !== state.phase) seen.phases.push(state.phase);
      if (state.status === 'running' && state.phase !== null && state.cancelEnabled !== null) {
        seen.cancel.push({ phase: state.phase, enabled: state.cancelEnabled });
      }
      if (state.status === 'running' && state.phase === 2) seen.points.push(state.points);
      if (!shotTaken && state.phase === 2 && state.points >= 8) {
        shotTaken = true;
        await screenshot(page, shot!);
      }
      return state.status !== null && state.status !== 'running' && state.status !== 'queued' ? state : null;
    },
    90_000,
    100,
  );
  // Cancel is there until phase 3 is over, and gone after.
  expect(seen.cancel.filter((c) => c.phase <= 3).every((c) => c.enabled)).toBe(true);
  expect(seen.cancel.filter((c) => c.phase > 3).every((c) => !c.enabled)).toBe(true);
  return seen;
}

async function stepperStates(page: Page): Promise<(string | null)[]> {
  return page
    .locator('[data-testid="phase-stepper"] li')
    .evaluateAll((li) => li.map((l) => l.getAttribute('data-state')));
}

describe('the console in a browser', () => {
  it('offers this computer and a one-click lab on first run', async () => {
    const empty = tempHome('e2e-first-run');
    const firstWeb = await startWeb(empty);
    try {
      browser = await openBrowser(firstWeb.url);
      const page = browser.page;
      const welcome = page.locator('[data-testid="first-run"]');
      await welcome.waitFor();
      expect(await welcome.textContent()).toContain('This computer');
      expect(await page.locator('[data-testid="add-local"]').isEnabled()).toBe(true); // QEMU is installed here
      await screenshot(page, 'first-run');
      await page.locator('[data-testid="lab-up"]').click();
      await page.locator('[data-host="lab2"]').waitFor({ timeout: 90_000 });
      const row = page.locator('[data-testid="vm-table"] tr', { hasText: 'lab-vm' });
      await expect.poll(() => row.textContent(), { timeout: 30_000 }).toMatch(/lab-vm\s*Running/);
      expect(browser.errors).toEqual([]);
    } finally {
      await browser?.close();
      browser = null;
      await firstWeb.stop();
      await ferry(empty, ['lab', 'down']);
    }
  });

  it('shows the hosts, the VM and its details, in light and dark themes', async () => {
    const page = await open();
    const row = page.locator('[data-testid="vm-table"] tr', { hasText: 'demo' });
    await expect.poll(() => row.textContent()).toMatch(/demo\s*Running\s*1\s*512 MiB\s*\d\d:\d\d:\d\d/);
    await row.click();
    await page.locator('[data-action="move"]').waitFor();
    await screenshot(page, 'main-light');

    await page.locator('[data-testid="theme-toggle"]').click();
    await expect
      .poll(() => page.evaluate(() => document.documentElement.classList.contains('ferry-dark')))
      .toBe(true);
    await screenshot(page, 'main-dark');
    // Remembered across a reload.
    await page.reload();
    await page.locator('[data-host="lab1"]').waitFor();
    expect(await page.evaluate(() => document.documentElement.classList.contains('ferry-dark'))).toBe(true);
    expect(browser!.errors).toEqual([]);
  });

  it('moves the VM with the mouse through every wizard page, live, and finds it on lab2', async () => {
    const page = await open();
    await page.locator('.vm-name', { hasText: 'demo' }).click();
    await page.locator('[data-action="move"]').click();
    const next = wizard(page).getByRole('button', { name: 'Next >' });

    await expectPage(page, 'begin');
    await expect
      .poll(() => wizard(page).textContent())
      .toContain('This wizard moves demo, which runs on lab1');
    await screenshot(page, 'wizard-1-before-you-begin');
    await next.click();

    await expectPage(page, 'type');
    expect(await wizard(page).locator('#move-type-vm').isChecked()).toBe(true);
    await screenshot(page, 'wizard-2-move-type');
    await next.click();

    await expectPage(page, 'destination');
    const lab2 = wizard(page).locator('[data-host="lab2"]');
    await lab2.waitFor();
    expect(await lab2.getAttribute('data-verdict')).not.toBe('blocked');
    expect(await wizard(page).locator('[data-host="lab1"]').count()).toBe(0); // not its own host
    await wizard(page).locator('label[for="dest-lab2"]').click();
    await screenshot(page, 'wizard-3-destination');
    await next.click();

    await expectPage(page, 'options');
    await wizard(page).locator('label[for="option-per-item"]').click();
    await screenshot(page, 'wizard-4-move-options');
    await next.click();

    await expectPage(page, 'locations');
    expect(await next.isDisabled()).toBe(true); // no folder yet
    await wizard(page).locator('#disk-path-disk0').fill('relative/path');
    await expect.poll(() => wizard(page).locator('.field-error').textContent()).toMatch(/full path/);
    await wizard(page).locator('#disk-path-disk0').fill('/srv/ferry/demo');
    await expect.poll(() => next.isDisabled()).toBe(false);
    await screenshot(page, 'wizard-5-locations');
    // This run keeps the disk where it is, on the lab's shared storage.
    await wizard(page).getByRole('button', { name: '< Previous' }).click();
    await expectPage(page, 'options');
    await wizard(page).locator('label[for="option-shared"]').click();
    await next.click();

    await expectPage(page, 'summary');
    const preflight = wizard(page).locator('[data-testid="preflight"]');
    await preflight.waitFor();
    expect(await preflight.getAttribute('data-errors')).toBe('0');
    const summary = wizard(page).locator('[data-testid="move-summary"]');
    expect(await summary.locator('[data-row="Destination host"]').textContent()).toBe('lab2');
    expect(await summary.locator('[data-row="Performance option"]').textContent()).toBe(
      'Compression (4 channels)',
    );
    expect(await summary.locator('[data-row="Storage"]').textContent()).toMatch(
      /^Move only the virtual machine/,
    );
    await screenshot(page, 'wizard-6-summary');
    const finish = wizard(page).locator('[data-testid="wizard-finish"]');
    expect(await finish.isEnabled()).toBe(true);
    await finish.click();

    // The VM table says what is happening underneath the progress view.
    const status = page.locator('[data-status-for="demo"]');
    const seenStatus = waitFor('the status column', async () => {
      const t = await status.textContent().catch(() => null);
      return t && /^Moving to lab2 — phase 2, pass \d+$/.test(t) ? t : null;
    });
    const { phases, points } = await followMove(page, 'progress-running');
    expect(await seenStatus).toMatch(/phase 2, pass/);
    expect(await page.locator('.progress').getAttribute('data-status')).toBe('completed');
    // The stepper went through the phases in order and ended with all six done.
    expect(phases).toEqual([...phases].sort((a, b) => a - b));
    expect(phases[0]).toBeLessThanOrEqual(2);
    const states = await page
      .locator('[data-testid="phase-stepper"] li')
      .evaluateAll((li) => li.map((l) => l.getAttribute('data-state')));
    expect(states).toEqual(['done', 'done', 'done', 'done', 'done', 'done']);
    // The chart gained points while the memory copy ran.
    expect(points.length).toBeGreaterThan(2);
    expect(Math.max(...points)).toBeGreaterThan(Math.min(...points));
    // The user is told, in the window (and on the desktop where notifications are allowed).
    await expect.poll(() => page.locator('.p-toast').textContent()).toContain('demo moved to lab2');
    await screenshot(page, 'progress-finished');

    await page.locator('[data-testid="progress-close"]').click();
    // The dialog is gone (not fading over the host list) before the host is chosen.
    await page.locator('[data-testid="progress-close"]').waitFor({ state: 'detached' });
    await page.locator('[data-host="lab2"]').click();
    await page.locator('[data-testid="vm-table"] .vm-name', { hasText: 'demo' }).waitFor({ timeout: 60_000 });
    expect(await vmHost('demo')).toBe('lab2');
    const [last] = await migrations();
    expect(last).toMatchObject({ vm: 'demo', from: 'lab1', to: 'lab2', status: 'completed' });

    // The past move opens from the Migrations panel with its charts from the history.
    await page.locator(`[data-move="${last!.id}"][data-group="past"]`).click();
    await expect
      .poll(() => page.locator('[data-testid="throughput-chart"]').getAttribute('data-samples'))
      .not.toBe('0');
    expect(browser!.errors).toEqual([]);
  });

  it('moves the VM back with the keyboard alone', async () => {
    const page = await open();
    // Hosts: into the list, down to lab2, select it.
    await tabTo(page, '[data-testid="host-list"] [tabindex="0"], [data-testid="host-list"] [role="listbox"]');
    expect(await focusIsVisible(page)).toBe(true);
    await page.keyboard.press('ArrowDown');
    await page.keyboard.press('Enter');
    await expect.poll(() => page.locator('#vms-title').textContent()).toContain('on lab2');
    // VMs: into the table, select the row.
    await tabTo(page, '[data-testid="vm-table"] tr[tabindex="0"]');
    await page.keyboard.press('Enter');
    await page.locator('[data-action="move"]').waitFor();
    // Actions: Move…
    await tabTo(page, '[data-action="move"]');
    expect(await focusIsVisible(page)).toBe(true);
    await page.keyboard.press('Enter');

    await expectPage(page, 'begin');
    // The wizard takes the keyboard (its Next button) once it has loaded the VM.
    await expect.poll(() => page.evaluate(() => document.activeElement?.textContent?.trim())).toBe('Next >');
    await page.keyboard.press('Enter');
    await expectPage(page, 'type');
    await expect.poll(() => page.evaluate(() => document.activeElement?.id)).toBe('move-type-vm');
    expect(await focusIsVisible(page)).toBe(true);
    await screenshot(page, 'wizard-2-move-type-keyboard');
    // Arrow keys move within a choice; back to the VM move.
    await page.keyboard.press('ArrowDown');
    expect(await page.locator('#move-type-storage').isChecked()).toBe(true);
    await page.keyboard.press('ArrowUp');
    expect(await page.locator('#move-type-vm').isChecked()).toBe(true);
    await page.keyboard.press('Enter');

    await expectPage(page, 'destination');
    await wizard(page).locator('[data-host="lab1"]').waitFor();
    // The ready host is chosen already; Space on it keeps it chosen.
    await expect.poll(() => page.evaluate(() => document.activeElement?.id)).toBe('dest-lab1');
    await page.keyboard.press('Space');
    expect(await page.locator('#dest-lab1').isChecked()).toBe(true);
    await page.keyboard.press('Enter');

    await expectPage(page, 'options');
    await expect.poll(() => page.evaluate(() => document.activeElement?.id)).toBe('option-shared');
    await page.keyboard.press('Enter');

    await expectPage(page, 'summary');
    await wizard(page).locator('[data-testid="preflight"]').waitFor();
    await expect
      .poll(() => page.evaluate(() => document.activeElement?.getAttribute('data-testid')))
      .toBe('wizard-finish');
    expect(await focusIsVisible(page)).toBe(true);
    await page.keyboard.press('Enter');

    const { phases } = await followMove(page, null);
    expect(phases).toEqual([...phases].sort((a, b) => a - b));
    expect(await page.locator('.progress').getAttribute('data-status')).toBe('completed');
    expect(await stepperStates(page)).toEqual(['done', 'done', 'done', 'done', 'done', 'done']);
    await page.keyboard.press('Escape');
    await page.locator('[data-testid="progress-view"]').waitFor({ state: 'detached' });
    expect(await vmHost('demo')).toBe('lab1');
    expect(browser!.errors).toEqual([]);
  });

  it('shows a blocking pre-flight error on the destination page and keeps Finish disabled', async () => {
    await cli(['host', 'settings', 'lab2', '--set', 'liveMigrationEnabled=false']);
    try {
      const page = await open();
      await selectVm(page, 'demo');
      await page.locator('[data-action="move"]').click();
      const next = wizard(page).getByRole('button', { name: 'Next >' });
      await next.click();
      await next.click();
      await expectPage(page, 'destination');
      const lab2 = wizard(page).locator('[data-host="lab2"]');
      await lab2.waitFor();
      expect(await lab2.getAttribute('data-verdict')).toBe('blocked');
      expect(await lab2.locator('.reasons .error').allTextContents()).toContain(
        'incoming live migrations are disabled on lab2',
      );
      await wizard(page).locator('label[for="dest-lab2"]').click();
      await screenshot(page, 'wizard-3-destination-blocked');
      await next.click();
      await next.click();
      await expectPage(page, 'summary');
      const preflight = wizard(page).locator('[data-testid="preflight"]');
      await preflight.waitFor();
      expect(Number(await preflight.getAttribute('data-errors'))).toBeGreaterThan(0);
      expect(await preflight.locator('[data-kind="error"]').first().textContent()).toContain(
        'incoming live migrations are disabled on lab2',
      );
      const finish = wizard(page).locator('[data-testid="wizard-finish"]');
      expect(await finish.isDisabled()).toBe(true);
      await screenshot(page, 'wizard-6-summary-blocked');
      // Enter does not get past it either.
      await page.locator('#wizard-title-summary').focus();
      await page.keyboard.press('Enter');
      expect(await finish.isDisabled()).toBe(true);
      expect((await migrations()).filter((m) => m.status !== 'completed')).toEqual([]);
      expect(browser!.errors).toEqual([]);
    } finally {
      await cli(['host', 'settings', 'lab2', '--set', 'liveMigrationEnabled=true']);
    }
  });

  it('changes the performance option in host settings, and the next move uses it', async () => {
    const page = await open();
    await page.locator('[data-host="lab1"]').click();
    await page.locator('[data-action="host-settings"]').click();
    const dialog = page.locator('[data-testid="host-settings"]');
    await dialog.locator('#live-enabled').waitFor();
    await screenshot(page, 'settings-1-live-migrations');
    // Inline validation: a bad subnet is marked and OK is unavailable until it is fixed.
    await dialog.locator('label[for="net-list"]').click();
    await dialog.getByLabel('Network to add').fill('10.0.0.0/33');
    await dialog.getByRole('button', { name: 'Add', exact: true }).click();
    await expect.poll(() => dialog.locator('.field-error').first().textContent()).toMatch(/prefix length/);
    expect(await dialog.locator('[data-testid="settings-ok"]').isDisabled()).toBe(true);
    await screenshot(page, 'settings-1b-live-migrations-invalid');
    await dialog.locator('label[for="net-any"]').click();
    await expect.poll(() => dialog.locator('[data-testid="settings-ok"]').isDisabled()).toBe(false);

    await dialog.locator('[data-settings-page="advanced"]').click();
    await dialog.locator('#perf-tcp').waitFor({ state: 'attached' });
    expect(await dialog.locator('#perf-compression').isChecked()).toBe(true);
    // RDMA is greyed out with the reason (no RDMA adapters here).
    expect(await dialog.locator('#perf-rdma').isDisabled()).toBe(true);
    expect(await dialog.locator('[data-performance="rdma"]').textContent()).toMatch(
      /Unavailable: lab1 has no RDMA/,
    );
    await dialog.locator('label[for="perf-tcp"]').click();
    expect(await dialog.locator('#channels').isDisabled()).toBe(true); // TCP/IP uses one connection
    await screenshot(page, 'settings-2-advanced-features');
    await dialog.locator('[data-settings-page="storage"]').click();
    await dialog.locator('#max-storage').waitFor();
    await screenshot(page, 'settings-3-storage-migrations');
    await dialog.locator('[data-testid="settings-ok"]').click();
    await dialog.waitFor({ state: 'detached' });

    const saved = JSON.parse(await cli(['host', 'settings', 'lab1', '--json'])) as {
      performance: string;
      incomingNetworks: unknown;
      bandwidthMiBs: number;
      storageRoots: string[];
    };
    expect(saved.performance).toBe('tcp');
    expect(saved.incomingNetworks).toBe('any');
    // Settings the page does not show are kept.
    expect(saved.bandwidthMiBs).toBe(15);
    expect(saved.storageRoots.length).toBeGreaterThan(0);

    await selectVm(page, 'demo');
    await page.locator('[data-action="move"]').click();
    const next = wizard(page).getByRole('button', { name: 'Next >' });
    await next.click();
    await next.click();
    await wizard(page).locator('[data-host="lab2"]').waitFor();
    await wizard(page).locator('label[for="dest-lab2"]').click();
    await next.click();
    await next.click();
    await expectPage(page, 'summary');
    await wizard(page).locator('[data-testid="preflight"]').waitFor();
    expect(await wizard(page).locator('[data-row="Performance option"]').textContent()).toBe('TCP/IP');
    await wizard(page).locator('[data-testid="wizard-finish"]').click();
    await followMove(page, null);
    expect(await page.locator('[data-testid="move-options"]').textContent()).toMatch(/^TCP\/IP ·/);

    const [latest, previous] = await migrations();
    expect(latest).toMatchObject({
      vm: 'demo',
      to: 'lab2',
      status: 'completed',
      options: { performance: 'tcp' },
    });
    expect(previous?.options?.performance).toBe('compression');
    expect(browser!.errors).toEqual([]);
  });

  it('cancels a running move during phase 2: the VM stays where it was', async () => {
    const page = await open();
    const from = await vmHost('demo');
    await selectVm(page, 'demo');
    await page.locator('[data-action="move"]').click();
    const next = wizard(page).getByRole('button', { name: 'Next >' });
    await next.click();
    await next.click();
    await expectPage(page, 'destination');
    // The destinations come with their checks (and the estimate's second of measuring): a busy machine
    // takes a while.
    await expect
      .poll(() => wizard(page).locator('input[name="destination"]:checked').count(), { timeout: 30_000 })
      .toBe(1);
    await next.click();
    await next.click();
    await wizard(page).locator('[data-testid="preflight"]').waitFor();
    await wizard(page).locator('[data-testid="wizard-finish"]').click();

    const canvas = page.locator('[data-testid="throughput-chart"] canvas');
    await expect
      .poll(async () => Number((await canvas.getAttribute('data-points')) ?? 0), { timeout: 30_000 })
      .toBeGreaterThanOrEqual(3);
    expect(
      await page.locator('[data-testid="phase-stepper"] [aria-current="step"]').getAttribute('data-phase'),
    ).toBe('2');
    await page.locator('[data-testid="cancel-move"]').click();
    await expect
      .poll(() => page.locator('.progress').getAttribute('data-status'), { timeout: 30_000 })
      .toBe('cancelled');
    expect(await page.locator('[data-testid="cancel-move"]').isDisabled()).toBe(true);
    await expect.poll(() => page.locator('.p-toast').textContent()).toContain('Move of demo cancelled');
    await screenshot(page, 'progress-cancelled');
    expect(await vmHost('demo')).toBe(from);
    const [latest] = await migrations();
    expect(latest).toMatchObject({ vm: 'demo', from, status: 'cancelled' });
    expect(browser!.errors).toEqual([]);
  });

  it("moves the VM's storage to another folder on its host, with per-disk progress", async () => {
    const host = await vmHost('demo');
    // QEMU's mirror counts a sparse disk's zeros against the rate limit: 1 GiB at 15 MiB/s would take a minute.
    await cli(['host', 'settings', host!, '--set', 'bandwidthMiBs=none']);
    const page = await open();
    const target = `${home}/lab/shared/demo-moved`;
    await selectVm(page, 'demo');
    await page.locator('[data-action="move"]').click();
    const next = wizard(page).getByRole('button', { name: 'Next >' });
    await next.click();
    await wizard(page).locator('label[for="move-type-storage"]').click();
    await next.click();
    await expectPage(page, 'destination');
    await expect.poll(() => wizard(page).textContent()).toContain(`keeps demo on ${host}`);
    await next.click();
    await expectPage(page, 'options');
    // A storage move moves files: "only the VM" is greyed out, with the reason.
    expect(await wizard(page).locator('#option-shared').isDisabled()).toBe(true);
    expect(await wizard(page).locator('.choice.disabled').textContent()).toMatch(
      /Not available: a storage move/,
    );
    await next.click();
    await expectPage(page, 'locations');
    await wizard(page).locator('#storage-path').fill(target);
    await next.click();
    await expectPage(page, 'summary');
    await wizard(page).locator('[data-testid="preflight"]').waitFor();
    expect(await wizard(page).locator('[data-row="Move type"]').textContent()).toBe(
      "Move the virtual machine's storage",
    );
    await wizard(page).locator('[data-testid="wizard-finish"]').click();

    const view = page.locator('[data-testid="progress-view"]');
    await view.waitFor();
    await expect
      .poll(() => page.locator('.progress').getAttribute('data-status'), { timeout: 60_000 })
      .toBe('completed');
    expect(await view.locator('[data-testid="phase-stepper"]').count()).toBe(0); // no memory phases
    expect(await view.locator('[data-disk="disk0"]').textContent()).toMatch(/disk0.*of 1\.00 GiB/);
    await screenshot(page, 'progress-storage');
    const info = JSON.parse(await cli(['vm', 'info', 'demo', '--json'])) as {
      host: string;
      disks: { path: string }[];
    };
    expect(info.host).toBe(host);
    expect(info.disks[0]?.path.startsWith(`${target}/`)).toBe(true);
    expect(browser!.errors).toEqual([]);
  });
});

// ── Connect…: the VM's own console (issue 12) ───────────────────────────────────────────────────────

/** The lines the console tab's terminal shows now (xterm.js's DOM renderer draws one div per row). */
function terminalText(tab: Page): Promise<string> {
  return tab.evaluate(() =>
    Array.from(document.querySelectorAll('[data-testid="console-terminal"] .xterm-rows > div'))
      .map((d) => d.textContent ?? '')
      .join('\n'),
  );
}

/** Characters the terminal has been given so far (the serial log, then the live output). */
async function written(tab: Page): Promise<number> {
  return Number(await tab.locator('[data-testid="console-terminal"]').getAttribute('data-written'));
}

/** Types a character into the serial console and waits for the lab guest's echo of it. */
async function typeAndSeeEcho(tab: Page, ch: string): Promise<void> {
  await tab.locator('[data-testid="tab-serial"]').click();
  // Typing is possible once the serial console is connected (the screen may have connected first).
  await tab.locator('[data-testid="console-terminal"][data-readonly="false"]').waitFor();
  await tab.locator('[data-testid="console-terminal"] textarea').focus();
  await tab.keyboard.type(ch);
  const hex = ch.charCodeAt(0).toString(16).padStart(2, '0');
  await expect
    .poll(() => terminalText(tab), { timeout: 15_000, interval: 100 })
    .toContain(`FERRY-GUEST key 0x${hex} ${ch}`);
}

/** Whether noVNC's canvas has drawn something other than one flat colour, with its size. */
function screenPixels(tab: Page): Promise<{ width: number; height: number; colours: number }> {
  return tab.evaluate(() => {
    const c = document.querySelector<HTMLCanvasElement>('[data-testid="console-screen"] canvas');
    if (!c || c.width === 0) return { width: 0, height: 0, colours: 0 };
    const data = c.getContext('2d')!.getImageData(0, 0, c.width, c.height).data;
    const seen = new Set<number>();
    for (let i = 0; i < data.length && seen.size < 8; i += 4 * 7) {
      seen.add((data[i]! << 16) | (data[i + 1]! << 8) | data[i + 2]!);
    }
    return { width: c.width, height: c.height, colours: seen.size };
  });
}

describe('Connect…: the VM console in its own tab', () => {
  it('streams serial, echoes a typed key, draws the screen, follows a move without a click; an off VM; no token', async () => {
    for (const h of ['lab1', 'lab2']) await cli(['host', 'settings', h, '--set', 'bandwidthMiBs=15']);
    const page = await open();
    const from = (await vmHost('demo'))!;
    const to = from === 'lab1' ? 'lab2' : 'lab1';
    await selectVm(page, 'demo');

    // A double-click on the VM, or Enter on the selected VM, opens its console too.
    const row = page.locator('[data-testid="vm-table"] tr', { hasText: 'demo' });
    for (const how of ['double-click', 'Enter'] as const) {
      const [other] = await Promise.all([
        page.waitForEvent('popup'),
        how === 'Enter' ? row.press('Enter') : row.dblclick(),
      ]);
      await other.locator('[data-testid="vm-console"][data-vm="demo"]').waitFor();
      await other.close();
      expect(await row.getAttribute('aria-selected')).toBe('true'); // still selected
    }
    // Connect… opens a tab in the same authenticated session: the token is not in its address.
    const [tab] = await Promise.all([
      page.waitForEvent('popup'),
      page.locator('[data-action="connect"]').click(),
    ]);
    // No transitions to wait for before axe reads colours (the console honours reduced motion).
    await tab.emulateMedia({ reducedMotion: 'reduce' });
    const errors: string[] = [];
    tab.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
    tab.on('console', (m) => {
      if (m.type() === 'error') errors.push(`console: ${m.text()}`);
    });
    const view = tab.locator('[data-testid="vm-console"]');
    await view.waitFor();
    expect(tab.url()).toMatch(/#console=demo&host=lab[12]$/);
    expect(tab.url()).not.toContain('token');
    expect(await tab.evaluate(() => sessionStorage.getItem('ferry-token'))).toBeTruthy();
    await expect.poll(() => view.getAttribute('data-phase'), { timeout: 20_000 }).toBe('live');
    expect(await view.getAttribute('data-host')).toBe(from);
    expect(await tab.locator('[data-testid="console-status"]').textContent()).toBe(
      `Connected to demo on ${from}`,
    );

    // The screen: noVNC connected to QEMU's VNC server and drew its frames (the guest's text screen).
    const screen = tab.locator('[data-testid="console-screen"]');
    await expect.poll(() => screen.getAttribute('data-rfb'), { timeout: 20_000 }).toBe('connected');
    await expect.poll(async () => (await screenPixels(tab)).colours, { timeout: 15_000 }).toBeGreaterThan(1);
    const fb = await screenPixels(tab);
    expect(fb.width).toBeGreaterThanOrEqual(640);
    expect(fb.height).toBeGreaterThanOrEqual(400);
    await screenshot(tab, 'vm-console-1-screen');

    // The serial console: the log first, then the guest's live output (here: its echo of a typed key).
    await tab.locator('[data-testid="tab-serial"]').click();
    await expect.poll(() => terminalText(tab)).toMatch(/FERRY-GUEST (boot|hb|clock) /);
    const before = await written(tab);
    await typeAndSeeEcho(tab, 'q');
    expect(await written(tab)).toBeGreaterThan(before);
    await screenshot(tab, 'vm-console-2-serial-before-move');

    // A move from the main window while the console is open.
    await page.bringToFront();
    await page.locator('[data-action="move"]').click();
    const next = wizard(page).getByRole('button', { name: 'Next >' });
    await next.click();
    await next.click();
    await expectPage(page, 'destination');
    await wizard(page).locator(`label[for="dest-${to}"]`).click();
    await next.click();
    await expectPage(page, 'options');
    await wizard(page).locator('label[for="option-shared"]').click();
    await next.click();
    await wizard(page).locator('[data-testid="preflight"]').waitFor();
    await wizard(page).locator('[data-testid="wizard-finish"]').click();

    // The console says the VM is moving, with the phase…
    await tab.bringToFront();
    await tab.locator('[data-testid="tab-screen"]').click();
    const moving = tab.locator('[data-testid="console-moving"]');
    const note = await waitFor(
      'the console to show the move',
      async () => {
        const t = (await moving.textContent().catch(() => null)) ?? '';
        return /Moving to lab[12] — phase [2-4]/.test(t) ? t : null;
      },
      30_000,
      100,
    );
    expect(note).toContain(`Moving to ${to} — phase`);
    expect(await tab.locator('[data-testid="console-status"]').textContent()).toMatch(
      new RegExp(`^Moving to ${to} — phase \\d$`),
    );
    await screenshot(tab, 'vm-console-3-during-move');

    // …and afterwards it is connected to the destination, screen and serial, with no click.
    await expect
      .poll(async () => `${await view.getAttribute('data-host')} ${await view.getAttribute('data-phase')}`, {
        timeout: 60_000,
      })
      .toBe(`${to} live`);
    await expect.poll(() => moving.count(), { timeout: 30_000 }).toBe(0);
    await expect.poll(() => screen.getAttribute('data-rfb'), { timeout: 20_000 }).toBe('connected');
    await expect.poll(async () => (await screenPixels(tab)).colours, { timeout: 15_000 }).toBeGreaterThan(1);
    expect(await tab.locator('[data-testid="console-status"]').textContent()).toBe(
      `Connected to demo on ${to}`,
    );
    expect(await vmHost('demo')).toBe(to);
    await screenshot(tab, 'vm-console-4-screen-after-move');
    await typeAndSeeEcho(tab, 'z');
    await screenshot(tab, 'vm-console-5-serial-after-move');

    // A console socket without the token is refused (the browser sees the close code).
    const code = await tab.evaluate(
      (vm) =>
        new Promise<number>((resolve) => {
          const ws = new WebSocket(`ws://${location.host}/api/console/serial?vm=${vm}`);
          ws.onclose = (e) => resolve(e.code);
        }),
      'demo',
    );
    expect(code).toBe(4401);
    // A console opened outside the session (an address typed into a new tab: no token) is refused.
    const stranger = await browser!.context.newPage();
    await stranger.goto(tab.url());
    await stranger.locator('[data-testid="vm-console"][data-phase="refused"]').waitFor();
    expect(await stranger.locator('[data-testid="console-refused"]').textContent()).toMatch(/access token/);
    await stranger.close();

    // A VM that is not running: its serial log, read-only, and no screen.
    await cli(['vm', 'create', 'idle', '--host', to, '--lab-guest', '--disk', '1']);
    const [off] = await Promise.all([
      tab.waitForEvent('popup'),
      tab.evaluate(() => window.open('./#console=idle', 'ferry-console-idle')),
    ]);
    const offView = off.locator('[data-testid="vm-console"][data-phase="offline"]');
    await offView.waitFor();
    expect(await off.locator('[data-testid="console-offline"]').textContent()).toMatch(
      /Below is its serial log, read-only/,
    );
    expect(await off.locator('[data-testid="tab-screen"]').isDisabled()).toBe(true);
    await off.locator('[data-testid="empty-log"]').waitFor(); // never started: nothing logged yet
    expect(await off.locator('[data-testid="console-terminal"]').getAttribute('data-readonly')).toBe('true');
    await screenshot(off, 'vm-console-7-off');
    // Started meanwhile: "Check again" connects to it (a new VM has a screen).
    await cli(['vm', 'start', 'idle']);
    await off.locator('[data-testid="console-recheck"]').click();
    await off.locator('[data-testid="vm-console"][data-phase="live"]').waitFor();
    await off.locator('[data-testid="tab-screen"]:not([disabled])').waitFor();
    // Turned off under the console: back to its log, read-only.
    await cli(['vm', 'stop', 'idle', '--force']);
    await off.locator('[data-testid="vm-console"][data-phase="offline"]').waitFor();
    await off.close();

    // Keyboard and WCAG 2.1 AA (axe) in both themes, on both tabs.
    await tab.locator('[data-testid="tab-screen"]').click();
    await tabTo(tab, '[data-testid="ctrl-alt-del"]');
    expect(await focusIsVisible(tab)).toBe(true);
    for (const which of ['screen', 'serial'] as const) {
      await tab.locator(`[data-testid="tab-${which}"]`).click();
      for (const theme of ['light', 'dark'] as const) {
        await setTheme(tab, theme);
        const violations = await axeViolations(tab);
        expect.soft(violations, describeViolations(`console ${which} (${theme})`, violations)).toEqual([]);
      }
    }
    await screenshot(tab, 'vm-console-6-serial-dark');
    expect(errors).toEqual([]);
    expect(browser!.errors).toEqual([]);
  });
});
