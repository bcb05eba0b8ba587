// A move between two libvirt hosts in the console, in a real browser (Debian's Chromium) against
// `ferry web`: a libvirt lab of two machines (`ferry lab up --libvirt`, each with its own libvirtd and
// migration TLS certificates), a lab-guest VM on lab1, Encryption on the host settings pages, the
// wizard's destinations with their verdicts (a host of Ferry's own driver is blocked: mixed kinds), the
// Summary's pre-flight warnings (xbzrle on libvirt 9.0), then the live move: phases in order, a chart
// updated several times a second while Perform runs, "Encrypted (TLS)", the VM on lab2 and the move in
// the history with its charts. lab1's bandwidth is capped so the memory copy lasts a few seconds.
// Needs root (network namespaces).
import type { Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ferry, tempHome, waitFor } from '../helpers.js';
import {
  chartUpdates,
  openBrowser,
  recordChartUpdates,
  screenshot,
  startWeb,
  type Browser,
  type WebProcess,
} from './support.js';

const isRoot = process.platform === 'linux' && process.getuid?.() === 0;
const VM = 'lmv';

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
  options: { performance: string; compression: string | null; encrypted?: boolean } | null;
  summary: { phases: { phase: number; ms: number | null }[] } | null;
}

describe.skipIf(!isRoot)('a move between two libvirt hosts in the console (root)', () => {
  let home = '';
  let web: WebProcess | null = null;
  let browser: Browser | null = null;

  async function cli(args: string[]): Promise<string> {
    const r = await ferry(home, args);
    if (r.code !== 0) throw new Error(`ferry ${args.join(' ')} failed (${r.code}): ${r.stderr}`);
    return r.stdout;
  }

  async function vmHost(name: string): Promise<string | undefined> {
    const vms = JSON.parse(await cli(['vm', 'list', '--json'])) as VmJson[];
    return vms.find((v) => v.name === name)?.host;
  }

  beforeAll(async () => {
    home = tempHome('e2e-libvirt-move');
    await cli(['lab', 'up', '--libvirt', '--hosts', '2']);
    await cli([
      'vm',
      'create',
      VM,
      '--host',
      'lab1',
      '--memory',
      '256',
      '--lab-guest',
      '--working-set',
      '16',
      '--dirty-rate',
      '10',
    ]);
    await cli(['vm', 'start', VM]);
    // About 35 MB cross the link: at 10 MiB/s, Perform (phases 2 and 3) lasts three to four seconds.
    await cli(['host', 'settings', 'lab1', '--set', 'bandwidthMiBs=10']);
    await waitFor(`${VM} running`, async () => {
      const vms = JSON.parse(await cli(['vm', 'list', '--json'])) as VmJson[];
      return vms.find((v) => v.name === VM)?.state === 'running';
    });
    web = await startWeb(home);
  }, 300_000);

  afterEach(async () => {
    await browser?.close();
    browser = null;
  });

  afterAll(async () => {
    await browser?.close();
    await web?.stop();
    if (home) await ferry(home, ['lab', 'down']);
  }, 180_000);

  async function open(): Promise<Page> {
    browser = await openBrowser(web!.url);
    const page = browser.page;
    await page.locator('[data-testid="connection"]', { hasText: 'Connected' }).waitFor();
    await page.locator('[data-host="lab1"]').waitFor();
    return page;
  }

  const settingsDialog = (page: Page) => page.locator('[data-testid="host-settings"]');

  async function openAdvanced(page: Page, host: string): Promise<void> {
    await page.locator(`[data-host="${host}"]`).click();
    await page.locator('[data-action="host-settings"]').click();
    const dialog = settingsDialog(page);
    await dialog.waitFor();
    await dialog.locator('[data-settings-page="advanced"]').click();
    await dialog.locator('[data-testid="encryption-setting"]').waitFor();
  }

  it('has Encryption on a libvirt host’s Advanced Features, and says it does not apply to this computer', async () => {
    const page = await open();
    await openAdvanced(page, 'lab1');
    const dialog = settingsDialog(page);
    const setting = dialog.locator('[data-testid="encryption-setting"]');
    expect(await setting.getAttribute('data-applies')).toBe('true');
    expect((await dialog.locator('#encryption').textContent())?.trim()).toBe('Required');
    expect(await dialog.locator('#encryption-help').textContent()).toMatch(
      /migration stream — memory and disks — is encrypted with TLS.*refused/s,
    );
    await screenshot(page, 'libvirt-move-settings-encryption');
    await page.keyboard.press('Escape');
    await dialog.waitFor({ state: 'detached' });

    // lab2 only when available: the stricter setting (lab1's Required) still decides the move.
    await openAdvanced(page, 'lab2');
    await dialog.locator('#encryption').click();
    await page.locator('.p-select-overlay [role="option"]', { hasText: 'When available' }).click();
    expect((await dialog.locator('#encryption').textContent())?.trim()).toBe('When available');
    expect(await dialog.locator('#encryption-help').textContent()).toMatch(/otherwise sent unencrypted/);
    await dialog.locator('[data-testid="settings-ok"]').click();
    await dialog.waitFor({ state: 'detached' });
    const lab2 = JSON.parse(await cli(['host', 'settings', 'lab2', '--json'])) as {
      encryption: string;
      bandwidthMiBs: number | null;
    };
    expect(lab2.encryption).toBe('when-available');

    // This computer (Ferry's own driver): Encryption is greyed out, with the reason.
    await page.getByRole('button', { name: 'Add this computer' }).click();
    await page.locator('[data-host="local"]').waitFor({ timeout: 60_000 });
    await openAdvanced(page, 'local');
    const local = dialog.locator('[data-testid="encryption-setting"]');
    expect(await local.getAttribute('data-applies')).toBe('false');
    expect(await local.textContent()).toMatch(/Does not apply to Ferry's own hosts/);
    expect(await dialog.locator('.p-select').first().getAttribute('class')).toMatch(/p-disabled/);
    await screenshot(page, 'libvirt-move-settings-not-applicable');
    await page.keyboard.press('Escape');
    await dialog.waitFor({ state: 'detached' });
    expect(browser!.errors).toEqual([]);
  });

  it('moves the VM from lab1 to lab2 live: verdicts, warnings, phases, a live chart, TLS, history', async () => {
    const page = await open();
    await page.locator('[data-host="lab1"]').click();
    await page.locator('[data-testid="vm-table"] .vm-name', { hasText: VM }).click();
    await page.locator('[data-action="move"]').click();
    const wizard = page.locator('[data-testid="move-wizard"]');
    const next = wizard.getByRole('button', { name: 'Next >' });
    const onPage = (name: string) => expect.poll(() => wizard.getAttribute('data-page')).toBe(name);

    await onPage('begin');
    await next.click();
    await onPage('type');
    await next.click();

    // Specify Destination: lab2 (libvirt) is ready; this computer is blocked, with the reason.
    await onPage('destination');
    const lab2 = wizard.locator('[data-host="lab2"]');
    await lab2.waitFor({ timeout: 60_000 });
    expect(await lab2.getAttribute('data-kind')).toBe('libvirt');
    expect(await lab2.getAttribute('data-verdict')).not.toBe('blocked');
    expect(await lab2.locator('[data-tag]').allTextContents()).toEqual(['libvirt', 'lab']);
    const local = wizard.locator('[data-host="local"]');
    expect(await local.getAttribute('data-verdict')).toBe('blocked');
    expect((await local.locator('.reasons .error').allTextContents()).join('\n')).toMatch(
      /lab1 is .* and local .*: a VM moves only between hosts of the same kind/,
    );
    expect(await wizard.locator('[data-host="lab1"]').count()).toBe(0);
    await wizard.locator('label[for="dest-lab2"]').click();
    expect(await wizard.locator('#dest-lab2').isChecked()).toBe(true);
    await screenshot(page, 'libvirt-move-destination');
    await next.click();

    await onPage('options');
    await wizard.locator('label[for="option-shared"]').click();
    await next.click();

    // Summary: no blocking error; libvirt 9.0 has no multifd compression, so Compression is xbzrle.
    await onPage('summary');
    const preflight = wizard.locator('[data-testid="preflight"]');
    await preflight.waitFor({ timeout: 60_000 });
    expect(await preflight.getAttribute('data-errors')).toBe('0');
    expect((await preflight.locator('[data-kind="warning"]').allTextContents()).join('\n')).toMatch(
      /Compression uses xbzrle/,
    );
    const summary = wizard.locator('[data-testid="move-summary"]');
    expect(await summary.locator('[data-row="Destination host"]').textContent()).toBe('lab2');
    expect(await summary.locator('[data-row="Performance option"]').textContent()).toMatch(
      /^Compression: xbzrle/,
    );
    expect(await summary.locator('[data-row="Encryption"]').textContent()).toBe('Encrypted (TLS)');
    expect(await summary.locator('[data-row="Bandwidth limit"]').textContent()).toBe('10 MiB/s');
    await screenshot(page, 'libvirt-move-summary');

    await recordChartUpdates(page, 'throughput-chart');
    const finish = wizard.locator('[data-testid="wizard-finish"]');
    expect(await finish.isEnabled()).toBe(true);
    await finish.click();

    // The progress view, followed to the end: the phases as they ran.
    const view = page.locator('[data-testid="progress-view"]');
    await view.waitFor();
    const phases: number[] = [];
    let shot = false;
    await waitFor(
      'the move to end',
      async () => {
        const state = await page.evaluate(() => {
          const current = document.querySelector('[data-testid="phase-stepper"] [aria-current="step"]');
          const canvas = document.querySelector('[data-testid="throughput-chart"] canvas');
          return {
            phase: current ? Number(current.getAttribute('data-phase')) : null,
            points: Number(canvas?.getAttribute('data-points') ?? 0),
            status: document.querySelector('.progress')?.getAttribute('data-status') ?? null,
          };
        });
        if (state.phase !== null && phases.at(-1) !== state.phase) phases.push(state.phase);
        if (!shot && state.status === 'running' && (state.phase ?? 0) >= 2 && state.points >= 8) {
          shot = true;
          await screenshot(page, 'libvirt-move-progress-running');
        }
        return state.status !== null && state.status !== 'running' && state.status !== 'queued'
          ? state
          : null;
      },
      120_000,
      100,
    );
    expect(await page.locator('.progress').getAttribute('data-status')).toBe('completed');
    expect(shot).toBe(true);
    // In order, from setup or the memory copy, and all six done at the end.
    expect(phases).toEqual([...phases].sort((a, b) => a - b));
    expect(phases[0]).toBeLessThanOrEqual(2);
    expect(phases).toContain(2);
    expect(
      await page
        .locator('[data-testid="phase-stepper"] li')
        .evaluateAll((li) => li.map((l) => l.getAttribute('data-state'))),
    ).toEqual(['done', 'done', 'done', 'done', 'done', 'done']);
    expect(await page.locator('[data-figure="phase"] dd').textContent()).toBe('6 of 6');

    // The live chart: at least four updates a second while Perform ran (phases 2 and 3).
    const updates = await chartUpdates(page);
    const perform = updates.filter((u) => u.phase === 2 || u.phase === 3);
    expect(perform.length).toBeGreaterThanOrEqual(8);
    const spanS = (perform.at(-1)!.at - perform[0]!.at) / 1000;
    const rate = (perform.length - 1) / spanS;
    const [record] = JSON.parse(await cli(['migrations', '--json'])) as MigrationJson[];
    const performMs = (record?.summary?.phases ?? [])
      .filter((p) => p.phase === 2 || p.phase === 3)
      .reduce((a, p) => a + (p.ms ?? 0), 0);
    console.log(
      `chart: ${perform.length} updates during Perform over ${spanS.toFixed(2)} s (${rate.toFixed(1)}/s); ` +
        `the engine's phases 2+3 took ${performMs} ms (${((perform.length * 1000) / performMs).toFixed(1)}/s)`,
    );
    expect(rate).toBeGreaterThanOrEqual(4);
    expect(spanS).toBeGreaterThan(0); // eight or more updates over however long Perform took
    expect(updates.map((u) => u.points)).toEqual([...updates.map((u) => u.points)].sort((a, b) => a - b));

    // What it ran with: encrypted, xbzrle.
    const encryption = page.locator('[data-testid="move-encryption"]');
    expect((await encryption.textContent())?.trim()).toBe('Encrypted (TLS)');
    expect(await encryption.getAttribute('data-encrypted')).toBe('true');
    expect(await page.locator('[data-testid="move-options"]').textContent()).toMatch(
      /^Compression: xbzrle · limit 10 MiB\/s/,
    );
    expect(await page.locator('[data-testid="move-result"]').textContent()).toContain(
      `${VM} now runs on lab2`,
    );
    // The cut-over's steps each with a figure, and the guest's proof of life beside the phases.
    expect(await page.locator('[data-testid="move-cutover"]').textContent()).toMatch(
      /Cut-over:.*Finish \(resume there\) \d.*Confirm \(source off\) \d/,
    );
    expect(await page.locator('[data-testid="move-alive"]').textContent()).toMatch(
      /The guest's next heartbeat came from lab2 .* after it resumed/,
    );
    await expect.poll(() => page.locator('.p-toast').textContent()).toContain(`${VM} moved to lab2`);
    await screenshot(page, 'libvirt-move-progress-finished');

    // The VM is listed on lab2 (the console and the CLI agree).
    await page.locator('[data-testid="progress-close"]').click();
    await view.waitFor({ state: 'detached' });
    await page.locator('[data-host="lab2"]').click();
    const row = page.locator('[data-testid="vm-table"] tr', { hasText: VM });
    await expect.poll(() => row.textContent(), { timeout: 30_000 }).toMatch(new RegExp(`${VM}\\s*Running`));
    expect(await vmHost(VM)).toBe('lab2');
    expect(record).toMatchObject({
      vm: VM,
      from: 'lab1',
      to: 'lab2',
      status: 'completed',
      options: { performance: 'compression', compression: 'xbzrle', encrypted: true },
    });

    // The history: the finished move, with its charts and how it ran.
    const past = page.locator(`[data-move="${record!.id}"][data-group="past"]`);
    await past.waitFor();
    expect(await past.locator('[data-testid="past-encryption"]').textContent()).toBe(' · TLS');
    await past.click();
    await view.waitFor();
    await expect
      .poll(() => page.locator('[data-testid="throughput-chart"]').getAttribute('data-samples'))
      .not.toBe('0');
    expect(
      Number(await page.locator('[data-testid="throughput-chart"]').getAttribute('data-samples')),
    ).toBeGreaterThanOrEqual(perform.length);
    expect(
      Number(await page.locator('[data-testid="memory-chart"]').getAttribute('data-samples')),
    ).toBeGreaterThan(0);
    expect((await page.locator('[data-testid="move-encryption"]').textContent())?.trim()).toBe(
      'Encrypted (TLS)',
    );
    expect(await page.locator('.progress').getAttribute('data-status')).toBe('completed');
    await screenshot(page, 'libvirt-move-history');
    expect(browser!.errors).toEqual([]);
  });
});
