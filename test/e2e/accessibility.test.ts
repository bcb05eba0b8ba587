// The console against WCAG 2.1 AA (issue 14), in Debian's Chromium against `ferry web`: axe-core's WCAG
// 2.0/2.1 A and AA rules on every screen — first run, the main window, Connect to Server…, a Turn Off…
// confirmation, each host settings page, each Move wizard page, the progress view running, finished (with
// its notification) and failed — in the light and the dark theme, with no exceptions. Besides axe: the
// charts' text alternative, the phase stepper's polite live region, focus returning to what opened a
// dialog, and every action reachable at 200 % zoom of a 1024×768 window. One `ferry web`, one browser and
// one lab with a small VM serve the whole file.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Page } from 'playwright-core';
import { ferry, REPO, tempHome, waitFor } from '../helpers.js';
import {
  axeViolations,
  describeViolations,
  openBrowser,
  SCREENSHOTS,
  setTheme,
  startWeb,
  type Browser,
  type WebProcess,
} from './support.js';

let home: string;
let web: WebProcess;
let browser: Browser;
let page: Page;

async function cli(args: string[]): Promise<string> {
  const r = await ferry(home, args);
  if (r.code !== 0) throw new Error(`ferry ${args.join(' ')} failed (${r.code}): ${r.stderr}`);
  return r.stdout;
}

async function vmHost(name: string): Promise<string> {
  const vms = JSON.parse(await cli(['vm', 'list', '--json'])) as { name: string; host: string }[];
  const host = vms.find((v) => v.name === name)?.host;
  if (!host) throw new Error(`${name} is on no host`);
  return host;
}

/**
 * Runs axe on the screen as it is, in the light and then the dark theme. A violation fails the test
 * (softly: every screen is still checked, and the report names them all with their rules and elements).
 */
async function checkScreen(screen: string): Promise<void> {
  for (const theme of ['light', 'dark'] as const) {
    await setTheme(page, theme);
    const violations = await axeViolations(page);
    expect.soft(violations, describeViolations(`${screen} (${theme} theme)`, violations)).toEqual([]);
  }
  await setTheme(page, 'light');
}

async function shot(name: string): Promise<void> {
  fs.mkdirSync(SCREENSHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SCREENSHOTS, `a11y-${name}.png`) });
}

/** 'there' when the keyboard focus is on an element matching the selector, else where it is instead. */
const focusOn = (selector: string): Promise<string> =>
  page.evaluate((sel) => {
    const a = document.activeElement;
    return a?.matches(sel) ? 'there' : (a?.outerHTML.slice(0, 200) ?? 'nowhere');
  }, selector);

const wizard = () => page.locator('[data-testid="move-wizard"]');

async function wizardPage(name: string): Promise<void> {
  await expect.poll(() => wizard().getAttribute('data-page')).toBe(name);
}

/** A chart's accessible name, whether it points at its table of figures, and that table's rows. */
function chartText(testId: string): Promise<{ label: string; describedBy: string; rows: string[][] }> {
  return page.evaluate((id) => {
    const canvas = document.querySelector(`[data-testid="${id}"] canvas`);
    const table = document.querySelector(`[data-testid="${id}-table"]`);
    return {
      label: canvas?.getAttribute('aria-label') ?? '',
      describedBy: canvas?.getAttribute('aria-describedby') === table?.id ? 'table' : 'other',
      rows: Array.from(table?.querySelectorAll('tbody tr') ?? []).map((tr) =>
        Array.from(tr.children).map((c) => c.textContent?.trim() ?? ''),
      ),
    };
  }, testId);
}

const announcement = (): Promise<string> =>
  page
    .locator('[data-testid="phase-announcement"]')
    .textContent()
    .then((t) => (t ?? '').trim());

const moveStatus = (): Promise<string | null> =>
  page.evaluate(() => document.querySelector('.progress')?.getAttribute('data-status') ?? null);

/** The controls (by selector) that are off screen or covered by something else, once scrolled to. */
function reachable(selector: string): Promise<string[]> {
  return page.evaluate((sel) => {
    const lost: string[] = [];
    for (const el of Array.from(document.querySelectorAll<HTMLElement>(sel))) {
      el.scrollIntoView({ block: 'center', inline: 'center' });
      const r = el.getBoundingClientRect();
      const x = r.left + r.width / 2;
      const y = r.top + r.height / 2;
      const inside = r.width > 0 && r.height > 0 && x >= 0 && y >= 0 && x <= innerWidth && y <= innerHeight;
      const hit = inside ? document.elementFromPoint(x, y) : null;
      if (!hit || !(el === hit || el.contains(hit))) {
        lost.push(el.getAttribute('data-action') ?? el.textContent?.trim() ?? el.tagName);
      }
    }
    return lost;
  }, selector);
}

/** Reflow: nothing makes the page scroll sideways. */
function noSideways(): Promise<boolean> {
  return page.evaluate(() => document.documentElement.scrollWidth <= innerWidth + 1);
}

beforeAll(async () => {
  home = tempHome('e2e-a11y');
  web = await startWeb(home);
  browser = await openBrowser(web.url);
  page = browser.page;
  // No transitions to wait for before axe reads colours (the console honours reduced motion).
  await page.emulateMedia({ reducedMotion: 'reduce' });
}, 60_000);

afterAll(async () => {
  await browser?.close();
  await web?.stop();
  if (home) await ferry(home, ['lab', 'down']);
}, 60_000);

describe('the console meets WCAG 2.1 AA (axe-core) in the light and the dark theme', () => {
  it('is tested with the strict CSP `ferry web` serves', async () => {
    const r = await fetch(web.url);
    const csp = r.headers.get('content-security-policy') ?? '';
    expect(csp).toMatch(/script-src 'self';/);
    expect(csp).not.toMatch(/unsafe-eval|script-src[^;]*unsafe-inline/);
  });

  it('first run', async () => {
    await page.locator('[data-testid="first-run"]').waitFor();
    await checkScreen('first run');
    await shot('first-run');
    // At 200 % zoom of a 1024×768 window (512×384 CSS pixels) its three ways in are all there.
    await page.setViewportSize({ width: 512, height: 384 });
    expect(await reachable('[data-testid="first-run"] button')).toEqual([]);
    expect(await noSideways()).toBe(true);
    await page.evaluate(() => window.scrollTo(0, 0));
    await shot('zoom200-first-run');
    await page.setViewportSize({ width: 1360, height: 850 });

    // The lab the other screens use: two hosts and a small lab-guest VM. About 45 MiB cross the link per
    // move: at 8 MiB/s its memory phase lasts about five seconds, time to check the running view.
    await cli(['lab', 'up', '--hosts', '2']);
    await cli([
      'vm',
      'create',
      'demo',
      '--host',
      'lab1',
      '--memory',
      '256',
      '--lab-guest',
      '--working-set',
      '40',
      '--dirty-rate',
      '1',
    ]);
    await cli(['host', 'settings', 'lab1', '--set', 'bandwidthMiBs=8']);
    await cli(['host', 'settings', 'lab2', '--set', 'bandwidthMiBs=8']);
    await cli(['vm', 'start', 'demo']);
    await page.reload();
    await page.locator('[data-host="lab1"]').waitFor();
    expect(browser.errors).toEqual([]);
  });

  it('main window and Connect to Server…; focus returns to the control that opened the dialog', async () => {
    await page.locator('[data-host="lab1"]').click();
    await page.locator('[data-testid="vm-table"] .vm-name', { hasText: 'demo' }).waitFor();
    await checkScreen('main window, a host selected');
    await page.locator('[data-testid="vm-table"] .vm-name', { hasText: 'demo' }).click();
    await page.locator('[data-action="move"]').waitFor();
    await checkScreen('main window, a VM selected');
    await shot('main');
    await setTheme(page, 'dark');
    await shot('main-dark');
    await setTheme(page, 'light');

    // Opened with the keyboard, closed with Escape: the focus is back on "Connect to Server…".
    await page.locator('[data-action="connect-server"]').focus();
    await page.keyboard.press('Enter');
    const dialog = page.locator('[data-testid="connect-server"]');
    await dialog.waitFor();
    await expect.poll(() => focusOn('#connect-uri')).toBe('there');
    await checkScreen('Connect to Server…');
    await page.keyboard.press('Escape');
    await dialog.waitFor({ state: 'detached' });
    await expect.poll(() => focusOn('[data-action="connect-server"]')).toBe('there');

    // A confirmation (PrimeVue's ConfirmDialog), refused with Escape: the VM keeps running, and the
    // focus goes back to Turn Off….
    await page.locator('[data-action="turn-off"]').click();
    const confirm = page.locator('.p-confirmdialog');
    await confirm.waitFor();
    await checkScreen('Turn Off… confirmation');
    await page.keyboard.press('Escape');
    await confirm.waitFor({ state: 'detached' });
    await expect.poll(() => focusOn('[data-action="turn-off"]')).toBe('there');
    expect(browser.errors).toEqual([]);
  });

  it('host settings, each page; Cancel gives the focus back to Host Settings…', async () => {
    await page.locator('[data-action="host-settings"]').click();
    const dialog = page.locator('[data-testid="host-settings"]');
    await dialog.locator('#live-enabled').waitFor();
    await checkScreen('host settings: Live Migrations');
    await dialog.locator('[data-settings-page="advanced"]').click();
    await dialog.locator('#perf-tcp').waitFor({ state: 'attached' });
    await checkScreen('host settings: Advanced Features');
    await dialog.locator('[data-settings-page="storage"]').click();
    await dialog.locator('#max-storage').waitFor();
    await checkScreen('host settings: Storage Migrations');
    await dialog.getByRole('button', { name: 'Cancel' }).click();
    await dialog.waitFor({ state: 'detached' });
    await expect.poll(() => focusOn('[data-action="host-settings"]')).toBe('there');
    expect(browser.errors).toEqual([]);
  });

  it('each Move wizard page, then the progress view running and finished: charts and stepper speak', async () => {
    await page.locator('[data-action="move"]').click();
    const next = wizard().getByRole('button', { name: 'Next >' });
    await expect.poll(() => wizard().textContent()).toContain('This wizard moves demo');
    await checkScreen('Move wizard: Before You Begin');
    await next.click();
    await wizardPage('type');
    await checkScreen('Move wizard: Choose Move Type');
    await next.click();
    await wizardPage('destination');
    await wizard().locator('[data-host="lab2"]').waitFor();
    await wizard().locator('label[for="dest-lab2"]').click();
    await checkScreen('Move wizard: Specify Destination');
    await next.click();
    await wizardPage('options');
    await wizard().locator('label[for="option-one-location"]').click();
    await checkScreen('Move wizard: Choose Move Options');
    await next.click();
    await wizardPage('locations');
    await wizard().locator('#storage-path').fill('relative');
    await wizard().locator('.field-error').waitFor(); // an inline error is part of the page too
    await checkScreen('Move wizard: locations');
    await wizard().getByRole('button', { name: '< Previous' }).click();
    await wizardPage('options');
    await wizard().locator('label[for="option-shared"]').click();
    await next.click();
    await wizardPage('summary');
    await wizard().locator('[data-testid="preflight"]').waitFor();
    await checkScreen('Move wizard: Summary');
    await wizard().locator('[data-testid="wizard-finish"]').click();

    // Running: checked in the memory phase, while the charts grow.
    const said = new Set<string>();
    const listen = async (): Promise<void> => {
      said.add(await announcement());
    };
    await page.locator('[data-testid="progress-view"]').waitFor();
    expect(await page.locator('[data-testid="phase-announcement"]').getAttribute('aria-live')).toBe('polite');
    await waitFor(
      'the memory phase with a few samples',
      async () => {
        await listen();
        return (await chartText('throughput-chart')).rows.length >= 3 &&
          (await announcement()).startsWith('Phase 2')
          ? true
          : null;
      },
      30_000,
      100,
    );
    const before = await chartText('throughput-chart');
    expect(before.label).toMatch(
      /^Throughput: \d+ samples over [\d.]+ s\. Throughput \(MiB\/s\): latest [\d.]+, peak [\d.]+\./,
    );
    expect(before.describedBy).toBe('table');
    expect(before.rows[0]?.[0]).toMatch(/^\d+\.\d$/); // seconds
    expect(before.rows[0]?.[1]).toMatch(/^\d+\.\d$/); // MiB/s
    await checkScreen('progress view, running');
    expect(await moveStatus(), 'the move was over before the running view was checked').toBe('running');
    await shot('progress-running');
    // The text alternative follows the chart.
    await expect.poll(async () => (await chartText('throughput-chart')).label).not.toBe(before.label);
    const memory = await chartText('memory-chart');
    expect(memory.label).toMatch(/^Remaining and dirty memory: \d+ samples/);
    expect(memory.rows.length).toBeGreaterThan(0);

    await waitFor(
      'the move to end',
      async () => {
        await listen();
        return (await moveStatus()) === 'completed' ? true : null;
      },
      60_000,
      100,
    );
    await listen();
    // The live region said each phase as it came, not every second.
    expect(said).toContain('Phase 2 of 6: Memory pages, in progress.');
    expect(said).toContain('All 6 phases done.');
    expect(said.size).toBeLessThanOrEqual(8);
    await expect.poll(() => page.locator('.p-toast').textContent()).toContain('demo moved to lab2');
    await checkScreen('progress view, finished (with its notification)');
    await shot('progress-finished');
    const finished = await chartText('throughput-chart');
    expect(finished.rows.length).toBeGreaterThan(0);
    expect(finished.rows.length).toBeLessThanOrEqual(20);

    // The Move… button that opened the wizard went with the VM: the focus lands on the actions, not on
    // the page's body.
    await page.locator('[data-testid="progress-close"]').click();
    await page.locator('[data-testid="progress-view"]').waitFor({ state: 'detached' });
    await expect.poll(() => focusOn('[data-action]')).toBe('there');
    expect(browser.errors).toEqual([]);
  });

  it('the progress view of a failed move', async () => {
    // A move from the command line whose destination QEMU dies in the memory copy (as
    // live-migration.test.ts provokes it): it fails and the VM keeps running where it was.
    const from = await vmHost('demo');
    const to = from === 'lab1' ? 'lab2' : 'lab1';
    const child = spawn(
      process.execPath,
      [path.join(REPO, 'bin', 'ferry.js'), 'move', 'demo', '--to', to, '--json'],
      { env: { ...process.env, FERRY_HOME: home }, stdio: ['ignore', 'pipe', 'ignore'] },
    );
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
    const runtime = path.join(home, 'hosts', to, 'vms', 'demo', 'runtime.json');
    let killed = false;
    let out = '';
    child.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      const lines = out.split('\n');
      out = lines.pop() ?? '';
      for (const line of lines) {
        const e = JSON.parse(line) as { type: string; sample?: { bytesSent: number } };
        if (!killed && e.type === 'sample' && (e.sample?.bytesSent ?? 0) > 2 * 1024 * 1024) {
          killed = true;
          const rt = JSON.parse(fs.readFileSync(runtime, 'utf8')) as { pid: number };
          process.kill(rt.pid, 'SIGKILL');
        }
      }
    });
    expect(await exited).toBe(1);
    expect(killed).toBe(true);
    const [failed] = JSON.parse(await cli(['migrations', '--json'])) as { id: string; status: string }[];
    expect(failed?.status).toBe('failed');
    const vms = JSON.parse(await cli(['vm', 'list', '--json'])) as {
      name: string;
      host: string;
      state: string;
    }[];
    expect(vms.find((v) => v.name === 'demo')).toMatchObject({ host: from, state: 'running' });

    await page.reload();
    const past = page.locator(`[data-move="${failed!.id}"][data-group="past"]`);
    await past.click();
    await expect.poll(moveStatus).toBe('failed');
    await expect.poll(announcement).toBe('Stopped in phase 2 of 6: Memory pages.');
    await page.locator('.progress .reason').waitFor();
    await checkScreen('progress view, failed');
    await shot('progress-failed');
    await page.keyboard.press('Escape');
    await page.locator('[data-testid="progress-view"]').waitFor({ state: 'detached' });
    await expect.poll(() => focusOn(`[data-move="${failed!.id}"]`)).toBe('there');
    expect(browser.errors).toEqual([]);
  });

  it('keeps every action within reach at 1024×768 and at 200 % zoom of it', async () => {
    await page.locator(`[data-host="${await vmHost('demo')}"]`).click();
    await page.locator('[data-testid="vm-table"] .vm-name', { hasText: 'demo' }).click();
    await page.locator('[data-action="move"]').waitFor();

    // 200 % zoom of a 1024×768 window is a 512×384 CSS-pixel viewport: the same layout (device pixels
    // aside) as the browser's zoom gives.
    for (const [name, size] of [
      ['1024x768', { width: 1024, height: 768 }],
      ['zoom200', { width: 512, height: 384 }],
    ] as const) {
      await page.setViewportSize(size);
      expect(await noSideways(), `${name}: the page scrolls sideways`).toBe(true);
      expect(await reachable('[data-action], [data-testid="theme-toggle"], [data-host]'), name).toEqual([]);
      await page.evaluate(() => window.scrollTo(0, 0));
      await shot(`${name}-main`);

      await page.locator('[data-action="move"]').click();
      await expect.poll(() => wizard().textContent()).toContain('This wizard moves demo');
      expect(await reachable('[data-testid="move-wizard"] .p-dialog-footer button'), name).toEqual([]);
      await shot(`${name}-wizard`);
      await wizard().getByRole('button', { name: 'Next >' }).click();
      await wizardPage('type');
      expect(
        await reachable(
          '[data-testid="move-wizard"] .p-dialog-footer button, label[for="move-type-storage"]',
        ),
        name,
      ).toEqual([]);
      await page.keyboard.press('Escape');
      await wizard().waitFor({ state: 'detached' });

      await page.locator('[data-action="host-settings"]').click();
      const settings = page.locator('[data-testid="host-settings"]');
      await settings.locator('#live-enabled').waitFor();
      expect(
        await reachable(
          '[data-testid="host-settings"] [data-settings-page], [data-testid="host-settings"] .p-dialog-footer button',
        ),
        name,
      ).toEqual([]);
      await shot(`${name}-settings`);
      await page.keyboard.press('Escape');
      await settings.waitFor({ state: 'detached' });

      await page.locator('[data-move][data-group="past"]').first().click();
      await page.locator('[data-testid="progress-close"]').waitFor();
      expect(await reachable('[data-testid="progress-view"] .p-dialog-footer button'), name).toEqual([]);
      await shot(`${name}-progress`);
      await page.keyboard.press('Escape');
      await page.locator('[data-testid="progress-view"]').waitFor({ state: 'detached' });
    }
    await page.setViewportSize({ width: 1360, height: 850 });
    expect(browser.errors).toEqual([]);
  });
});
