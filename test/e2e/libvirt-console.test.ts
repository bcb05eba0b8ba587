// A libvirt server in the console, in a real browser (Debian's Chromium) against `ferry web`: a libvirt
// lab machine (its own libvirtd and sshd in network namespaces) with a lab-guest domain defined by plain
// virsh; "Connect to Server…" over qemu+ssh with the lab's key; the unknown host key's fingerprint step;
// the domain listed as Off, started from the console, running; then the daemon goes away with the lab
// and the host shows as disconnected without anyone asking. Needs root (network namespaces).
import fs from 'node:fs';
import path from 'node:path';
import type { Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startLibvirtLab, stopLibvirtLab, type LibvirtLabMachine } from '../../engine/host/libvirt/lab.js';
import { tempHome } from '../helpers.js';
import { isRoot, labGuestDomainXml, sshFingerprint, virsh } from '../libvirt-support.js';
import { openBrowser, screenshot, startWeb, type Browser, type WebProcess } from './support.js';

const HOST = 'kvm1';
const DOMAIN = 'e2e-guest';

describe.skipIf(!isRoot)('a libvirt server in the console (root)', () => {
  /** The lab's own FERRY_HOME, so the console starts empty and adds the machine as a user would. */
  let labHome: string;
  let home: string;
  /** HOME of `ferry web`: an empty ~/.ssh, so the machine's host key is unknown (and root's is untouched). */
  let userHome: string;
  let machine: LibvirtLabMachine;
  let web: WebProcess | null = null;
  let browser: Browser | null = null;
  let labUp = false;

  beforeAll(async () => {
    labHome = tempHome('e2e-libvirt-lab');
    home = tempHome('e2e-libvirt');
    userHome = tempHome('e2e-libvirt-user');
    const machines = await startLibvirtLab({ home: labHome, count: 1 });
    labUp = true;
    machine = machines[0]!;
    const serial = path.join(machine.sharedDir, `${DOMAIN}-serial.log`);
    const xml = path.join(machine.sharedDir, `${DOMAIN}.xml`);
    fs.writeFileSync(xml, labGuestDomainXml(DOMAIN, serial));
    await virsh(machine.uris.ssh, 'define', xml);
    web = await startWeb(home, { HOME: userHome });
  }, 300_000);

  afterAll(async () => {
    await browser?.close();
    await web?.stop();
    if (labUp) await stopLibvirtLab(labHome).catch(() => undefined);
  }, 120_000);

  const hostItem = (page: Page) => page.locator(`[data-host="${HOST}"]`);
  const domainRow = (page: Page) => page.locator('[data-testid="vm-table"] tr', { hasText: DOMAIN });

  it('connects over SSH after the host key is accepted, lists and starts the domain, then sees the server go', async () => {
    browser = await openBrowser(web!.url);
    const page = browser.page;
    await page.locator('[data-testid="connection"]', { hasText: 'Connected' }).waitFor();
    await page.locator('[data-testid="first-run"]').waitFor();
    await screenshot(page, 'libvirt-first-run');

    // Connect to Server… from the first run: the URI field has the focus.
    await page.locator('[data-testid="first-run-connect"]').click();
    const dialog = page.locator('[data-testid="connect-server"]');
    await dialog.waitFor();
    await expect.poll(() => page.evaluate(() => document.activeElement?.id)).toBe('connect-uri');
    await page.keyboard.type(`qemu+ssh://root@${machine.address}/system`);
    expect(await page.locator('#connect-name').inputValue()).toBe(machine.address.replace(/\./g, '-'));
    await page.locator('#connect-name').fill(HOST);
    await page.locator('#connect-key').fill(machine.sshKey);
    await screenshot(page, 'libvirt-connect-form');
    await page.locator('#connect-key').press('Enter');

    // The machine's key is not in the (empty) ~/.ssh/known_hosts: its fingerprint is shown to compare.
    const step = page.locator('[data-testid="host-key-step"]');
    await step.waitFor({ timeout: 30_000 });
    const expected = await sshFingerprint(machine.knownHosts);
    expect(expected).toMatch(/^SHA256:/);
    expect((await page.locator('[data-testid="host-key-fingerprint"]').textContent())?.trim()).toBe(expected);
    const text = (await step.textContent()) ?? '';
    expect(text).toContain(`The authenticity of host ${machine.address} can’t be established`);
    expect(text).toContain('ED25519 key fingerprint');
    expect(text).toContain('ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub');
    await screenshot(page, 'libvirt-host-key');
    await page.locator('[data-testid="host-key-accept"]').click();
    await dialog.waitFor({ state: 'detached', timeout: 30_000 });
    // Accepting recorded the key where Ferry looks for it, in the test's own HOME.
    expect(fs.readFileSync(path.join(userHome, '.ssh', 'known_hosts'), 'utf8')).toContain(machine.address);

    // The host: libvirt, connected; its domain listed as Off.
    await hostItem(page).waitFor();
    expect(await hostItem(page).getAttribute('data-kind')).toBe('libvirt');
    await expect.poll(() => hostItem(page).getAttribute('data-connected')).toBe('true');
    expect(await hostItem(page).locator('[data-tag]').allTextContents()).toEqual(['libvirt']);
    await expect.poll(() => domainRow(page).textContent(), { timeout: 30_000 }).toMatch(/Off/);
    expect(await domainRow(page).textContent()).toMatch(new RegExp(`${DOMAIN}\\s*Off\\s*1\\s*128 MiB`));
    // The host's details: its URI to copy, and what the server says about itself.
    const details = page.locator('[data-testid="host-details"]');
    await details.waitFor();
    expect(await details.textContent()).toContain(`qemu+ssh://root@${machine.address}/system`);
    await screenshot(page, 'libvirt-host-details');

    // Ferry's own settings pages work for it too, with the URI and the server's facts beside them.
    await page.locator('[data-action="host-settings"]').click();
    const settings = page.locator('[data-testid="host-settings"]');
    await settings.waitFor();
    expect(await settings.locator('[data-testid="settings-uri"]').textContent()).toContain(
      `qemu+ssh://root@${machine.address}/system`,
    );
    await expect.poll(() => settings.textContent()).toMatch(/libvirt \d+\.\d+/);
    await settings.locator('[data-settings-page="advanced"]').click();
    await expect.poll(() => settings.getAttribute('data-page')).toBe('advanced');
    await screenshot(page, 'libvirt-host-settings');
    await page.keyboard.press('Escape');
    await settings.waitFor({ state: 'detached' });

    // Start it from the console; the table follows it to Running.
    await domainRow(page).locator('.vm-name').click();
    await page.locator('[data-action="start"]').click();
    await expect
      .poll(() => domainRow(page).textContent(), { timeout: 60_000, interval: 500 })
      .toMatch(/Running/);
    await page.locator('[data-testid="vm-details"]').waitFor();
    await screenshot(page, 'libvirt-domain-running');
    await page.locator('[data-testid="theme-toggle"]').click();
    await screenshot(page, 'libvirt-domain-running-dark');

    // The server goes away (its libvirtd, sshd and QEMU with the lab): the list says so by itself.
    await stopLibvirtLab(labHome);
    labUp = false;
    const t0 = Date.now();
    await expect
      .poll(() => hostItem(page).getAttribute('data-connected'), { timeout: 15_000, interval: 250 })
      .toBe('false');
    console.log(`the console showed ${HOST} disconnected ${Date.now() - t0} ms after the lab stopped`);
    expect(await hostItem(page).locator('.status').textContent()).toContain('Disconnected');
    const empty = page.locator('[data-testid="host-disconnected"]');
    await empty.waitFor();
    expect(await page.locator('[data-testid="reconnect-empty"]').isVisible()).toBe(true);
    expect(await page.locator('[data-action="reconnect"]').isVisible()).toBe(true);
    await screenshot(page, 'libvirt-host-disconnected-dark');
    await page.locator('[data-testid="theme-toggle"]').click();
    await screenshot(page, 'libvirt-host-disconnected');

    // Reconnect tries again and says why it still cannot; the rest of the console keeps working.
    await page.locator('[data-testid="reconnect-empty"]').click();
    await page
      .locator('.p-toast-message', {
        hasText: new RegExp(`${HOST} is still disconnected|Reconnecting ${HOST} failed`),
      })
      .waitFor({ timeout: 60_000 });
    expect(await hostItem(page).getAttribute('data-connected')).toBe('false');
    expect(await page.locator('[data-action="connect-server"]').isEnabled()).toBe(true);
    await page.locator('[data-action="connect-server"]').click();
    await page.locator('[data-testid="connect-server"]').waitFor();
    await page.keyboard.press('Escape');
    await page.locator('[data-testid="connect-server"]').waitFor({ state: 'detached' });

    expect(browser.errors).toEqual([]);
  });
});
