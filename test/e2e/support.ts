// What the browser tests share: `ferry web` as a child process (exactly as a user starts it), a fresh
// Chromium per test (Debian's, via playwright-core), screenshots, and small page helpers.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { REPO } from '../helpers.js';

export const CHROMIUM = process.env['FERRY_CHROMIUM'] ?? '/usr/bin/chromium';
export const SCREENSHOTS = path.join(REPO, 'test-results', 'screenshots');

const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

export interface WebProcess {
  url: string;
  child: ChildProcess;
  stop(): Promise<void>;
}

/**
 * Starts `node bin/ferry.js web --port 0` and reads the URL it prints on stdout. `env` adds to (or
 * overrides) the test's environment, e.g. a HOME of its own so nothing touches the user's ~/.ssh.
 */
export function startWeb(home: string, env: Record<string, string> = {}): Promise<WebProcess> {
  const child = spawn(process.execPath, [path.join(REPO, 'bin', 'ferry.js'), 'web', '--port', '0'], {
    env: { ...process.env, ...env, FERRY_HOME: home },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr?.on('data', (c: Buffer) => (stderr += c.toString()));
  const stop = async (): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(timer);
  };
  return new Promise((resolve, reject) => {
    let out = '';
    const fail = (why: string): void => {
      void stop();
      reject(new Error(`ferry web ${why}\n${stderr}`));
    };
    const timer = setTimeout(() => fail('printed no URL within 30 s'), 30_000);
    child.once('exit', (code) => fail(`exited with ${code} before printing its URL`));
    child.stdout?.on('data', (c: Buffer) => {
      out += c.toString();
      const line = out.split('\n')[0];
      if (out.includes('\n') && line) {
        clearTimeout(timer);
        child.removeAllListeners('exit');
        resolve({ url: line.trim(), child, stop });
      }
    });
  });
}

export interface Browser {
  context: BrowserContext;
  page: Page;
  /** Errors the page threw or logged: a test ends by asserting there were none. */
  errors: string[];
  close(): Promise<void>;
}

/** A fresh Chromium with its own throw-away profile. */
export async function openBrowser(url: string): Promise<Browser> {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1360, height: 850 },
  });
  const page = context.pages()[0] ?? (await context.newPage());
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(`console: ${m.text()}`);
  });
  await page.goto(url);
  return {
    context,
    page,
    errors,
    close: async () => {
      await context.close();
      fs.rmSync(profile, { recursive: true, force: true });
    },
  };
}

export async function screenshot(page: Page, name: string): Promise<void> {
  fs.mkdirSync(SCREENSHOTS, { recursive: true });
  // Let transitions (dialogs fade in) settle so the picture shows what a user sees.
  await page.waitForTimeout(350);
  await page.screenshot({ path: path.join(SCREENSHOTS, `${name}.png`) });
}

/** Presses Tab until the focused element matches; fails after `max` presses (keyboard only, no clicks). */
export async function tabTo(page: Page, matches: string, max = 60): Promise<void> {
  for (let i = 0; i < max; i++) {
    await page.keyboard.press('Tab');
    if (await page.evaluate((sel) => document.activeElement?.matches(sel) ?? false, matches)) return;
  }
  const where = await page.evaluate(() => document.activeElement?.outerHTML.slice(0, 200));
  throw new Error(`Tab never reached ${matches}; focus is on ${where}`);
}

/**
 * Whether the keyboard focus is visible: an outline on the focused element, or on the box PrimeVue draws
 * for a radio button or checkbox whose native input is invisible.
 */
export function focusIsVisible(page: Page): Promise<boolean> {
  return page.evaluate(() => {
    const el = document.activeElement as HTMLElement | null;
    if (!el || el === document.body) return false;
    const shows = (e: Element | null): boolean => {
      if (!e) return false;
      const s = getComputedStyle(e);
      return (s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) > 0) || s.boxShadow !== 'none';
    };
    const box =
      el.closest('.p-radiobutton, .p-checkbox')?.querySelector('.p-radiobutton-box, .p-checkbox-box') ?? null;
    return shows(el) || shows(box);
  });
}

/** One change of a chart's drawn point count, with the phase the stepper showed at that moment. */
export interface ChartUpdate {
  /** performance.now() in the page, ms. */
  at: number;
  points: number;
  phase: number | null;
}

/**
 * Records, in the page, every change of the point count a chart has drawn (the `data-points` the chart
 * plugin leaves on its canvas, as console.test.ts reads it), from now on, whether or not the chart is on
 * the page yet. Read them with `chartUpdates`.
 */
export async function recordChartUpdates(page: Page, testId: string): Promise<void> {
  await page.evaluate((id) => {
    const w = window as unknown as { __chartUpdates: ChartUpdate[]; __chartObserver?: MutationObserver };
    w.__chartObserver?.disconnect();
    w.__chartUpdates = [];
    let last: string | null = null;
    w.__chartObserver = new MutationObserver((records) => {
      for (const r of records) {
        const el = r.target as Element;
        if (!el.closest(`[data-testid="${id}"]`)) continue;
        const points = el.getAttribute('data-points') ?? '0';
        if (points === last) continue;
        last = points;
        const current = document.querySelector('[data-testid="phase-stepper"] [aria-current="step"]');
        w.__chartUpdates.push({
          at: performance.now(),
          points: Number(points),
          phase: current ? Number(current.getAttribute('data-phase')) : null,
        });
      }
    });
    w.__chartObserver.observe(document.body, {
      subtree: true,
      attributes: true,
      attributeFilter: ['data-points'],
    });
  }, testId);
}

export function chartUpdates(page: Page): Promise<ChartUpdate[]> {
  return page.evaluate(() => (window as unknown as { __chartUpdates?: ChartUpdate[] }).__chartUpdates ?? []);
}

// ── Accessibility (axe-core) ────────────────────────────────────────────────────────────────────────

/** The WCAG 2.0 and 2.1 level A and AA rules: what the console promises (issue 14). */
export const AXE_TAGS = ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'];
const AXE_SOURCE = path.join(REPO, 'node_modules', 'axe-core', 'axe.min.js');
let axeSource: string | null = null;

export interface AxeViolation {
  id: string;
  impact: string | null;
  help: string;
  nodes: { target: string; summary: string }[];
}

/**
 * Runs axe-core's WCAG 2.1 A/AA rules on the page as it is now and returns the violations.
 *
 * axe is put into the page with `page.evaluate` (the DevTools protocol's Runtime.evaluate), which the
 * page's Content-Security-Policy does not govern: the console is tested with the very CSP header `ferry
 * web` serves (script-src 'self'), no bypassCSP and no <script> tag added. After a reload it is put in
 * again.
 */
export async function axeViolations(page: Page): Promise<AxeViolation[]> {
  const loaded = await page.evaluate(() => typeof (window as { axe?: unknown }).axe === 'object');
  if (!loaded) {
    axeSource ??= fs.readFileSync(AXE_SOURCE, 'utf8');
    await page.evaluate(axeSource);
  }
  return page.evaluate(async (tags) => {
    interface AxeResult {
      violations: {
        id: string;
        impact: string | null;
        help: string;
        nodes: { target: unknown[]; failureSummary?: string }[];
      }[];
    }
    const axe = (window as unknown as { axe: { run(ctx: Document, o: object): Promise<AxeResult> } }).axe;
    const r = await axe.run(document, {
      runOnly: { type: 'tag', values: tags },
      resultTypes: ['violations'],
    });
    return r.violations.map((v) => ({
      id: v.id,
      impact: v.impact,
      help: v.help,
      nodes: v.nodes.map((n) => ({
        target: n.target.map(String).join(' '),
        summary: (n.failureSummary ?? '').replace(/\s*\n\s*/g, ' ').slice(0, 240),
      })),
    }));
  }, AXE_TAGS);
}

/** Violations as a test failure shows them: rule, impact and what it means, then each element. */
export function describeViolations(screen: string, violations: AxeViolation[]): string {
  if (violations.length === 0) return `${screen}: no violations`;
  const lines = [`${screen}: ${violations.length} rule(s) violated`];
  for (const v of violations) {
    lines.push(`  ${v.id} (${v.impact ?? '?'}): ${v.help} — ${v.nodes.length} element(s)`);
    for (const n of v.nodes.slice(0, 12)) lines.push(`    ${n.target}  ${n.summary}`);
  }
  return lines.join('\n');
}

/** Switches the console's theme through its own toggle (also while a modal dialog covers it). */
export async function setTheme(page: Page, theme: 'light' | 'dark'): Promise<void> {
  await page.evaluate((dark) => {
    if (document.documentElement.classList.contains('ferry-dark') !== dark) {
      document.querySelector<HTMLElement>('[data-testid="theme-toggle"]')?.click();
    }
  }, theme === 'dark');
  await page.waitForFunction(
    (dark) => document.documentElement.classList.contains('ferry-dark') === dark,
    theme === 'dark',
  );
  // The new colours are drawn (and any transition the page still runs has ended) a frame later.
  await page.evaluate(
    () => new Promise<void>((resolve) => requestAnimationFrame(() => requestAnimationFrame(() => resolve()))),
  );
}
