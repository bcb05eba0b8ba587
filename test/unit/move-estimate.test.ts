// @vitest-environment jsdom
// The estimate before Finish in the Move wizard: the model's words for it (renderer/src/model/
// move-wizard.ts) and the Summary page showing it, with what would make a move converge.
import { flushPromises, mount, type VueWrapper } from '@vue/test-utils';
import { createPinia, setActivePinia } from 'pinia';
import PrimeVue from 'primevue/config';
import { afterEach, describe, expect, it } from 'vitest';
import { ref, type Plugin } from 'vue';
import type { HostSettings, MoveEstimate, PreflightReport } from '../../engine/api/index.js';
import { estimateMove } from '../../engine/migration/estimate.js';
import { WIZARD, type WizardContext } from '../../renderer/src/components/wizard/context.js';
import SummaryPage from '../../renderer/src/components/wizard/SummaryPage.vue';
import { estimateShort, estimateView, initialState } from '../../renderer/src/model/move-wizard.js';

const MiB = 1024 * 1024;
const UI_PLUGINS = [PrimeVue] as unknown as Plugin[];

function estimate(dirtyMiBs: number, bandwidthMiBs: number | null): MoveEstimate {
  return estimateMove({
    options: {
      performance: 'tcp',
      channels: 4,
      bandwidthMiBs,
      downtimeMs: 300,
      downtimeCeilingMs: 2000,
      convergence: 'raise-downtime',
      compression: null,
    },
    memoryBytes: 128 * MiB,
    dirtyBytesPerSec: dirtyMiBs * MiB,
    dirtyRateWindowS: 1,
    zeroPageRatio: 0.5,
    compressionRatio: 1,
    linkBytesPerSec: null,
    diskBytes: 0,
    costs: { overheadMs: 1200, switchoverMs: 40, from: 'history' },
  });
}
const report = (e: MoveEstimate | null, note?: string): PreflightReport => ({
  errors: [],
  warnings: [],
  estimate: e,
  ...(note ? { estimateNote: note } : {}),
});

describe('the estimate in the wizard model', () => {
  it('a move that converges: expected total, downtime, data, and what was measured', () => {
    const v = estimateView(report(estimate(4, null)))!;
    expect(v.converges).toBe(true);
    expect(v.headline).toMatch(/^Expected: about [\d.]+ s in all, the VM paused for about \d+ ms\.$/);
    const row = (label: string) => v.rows.find((r) => r.label === label)?.value;
    expect(row('Expected total time')).toMatch(/s$/);
    expect(row('Expected downtime')).toMatch(/ms$/);
    expect(row('Data to send')).toMatch(/MiB/);
    expect(row('Converges')).toBe('Yes');
    expect(row('Measured')).toMatch(
      /the VM dirties 4\.0 MiB\/s, link .* \(loopback, no link between the hosts\)/,
    );
    expect(v.help).toEqual([]);
    expect(estimateShort(report(estimate(4, null)))).toMatch(
      /^Estimate: about [\d.]+ s, \d+ ms of downtime$/,
    );
  });

  it('a move that will not converge says what would make it', () => {
    const v = estimateView(report(estimate(40, 8)))!;
    expect(v.converges).toBe(false);
    expect(v.headline).toMatch(
      /^The move will not converge with these settings: the guest dirties 40\.0 MiB\/s/,
    );
    expect(v.help.some((h) => /--bandwidth \d+/.test(h))).toBe(true);
    expect(v.help.some((h) => /post-copy/.test(h))).toBe(true);
    expect(estimateShort(report(estimate(40, 8)))).toBe('Estimate: will not converge with these settings');
  });

  it('no estimate: nothing to show (the note says why)', () => {
    expect(estimateView(report(null, 'no estimate for libvirt hosts yet'))).toBeNull();
    expect(estimateView({ errors: [], warnings: [] })).toBeNull();
    expect(estimateView(null)).toBeNull();
  });
});

describe('the Summary page shows the estimate', () => {
  let wrapper: VueWrapper | null = null;
  afterEach(() => {
    wrapper?.unmount();
    wrapper = null;
  });

  async function summaryWith(r: PreflightReport): Promise<HTMLElement> {
    const pinia = createPinia();
    setActivePinia(pinia);
    const state = { ...initialState('web', 'lab1', []), destination: 'lab2' };
    const ctx: WizardContext = {
      state,
      verdicts: ref(null),
      verdictError: ref(null),
      report: ref(r),
      reportError: ref(null),
      checking: ref(false),
      sourceSettings: ref<HostSettings | null>(null),
      recheckDestinations: () => undefined,
    };
    wrapper = mount(SummaryPage, {
      global: { plugins: [pinia, ...UI_PLUGINS], provide: { [WIZARD as symbol]: ctx } },
    });
    await flushPromises();
    return wrapper.element as HTMLElement;
  }

  it('expected time, downtime and data when it converges', async () => {
    const el = await summaryWith(report(estimate(4, null)));
    const box = el.querySelector('[data-testid="move-estimate"]')!;
    expect(box.getAttribute('data-converges')).toBe('true');
    expect(box.querySelector('[data-row="Expected total time"]')?.textContent).toMatch(/s$/);
    expect(box.querySelector('[data-row="Expected downtime"]')?.textContent).toMatch(/ms$/);
    expect(box.querySelector('[data-row="Data to send"]')?.textContent).toMatch(/MiB/);
    expect(el.querySelector('[data-testid="estimate-help"]')).toBeNull();
  });

  it('what would help when it will not converge', async () => {
    const el = await summaryWith(report(estimate(40, 8)));
    expect(el.querySelector('[data-testid="move-estimate"]')?.getAttribute('data-converges')).toBe('false');
    const help = el.querySelector('[data-testid="estimate-help"]')!;
    expect(help.textContent).toMatch(/It would converge with:/);
    expect(help.textContent).toMatch(/--bandwidth \d+/);
    expect(help.textContent).toMatch(/a downtime target of \d+ ms/);
  });

  it("the reason when there is none (a libvirt host's move)", async () => {
    const el = await summaryWith(report(null, 'no estimate for libvirt hosts yet'));
    expect(el.querySelector('[data-testid="move-estimate"]')).toBeNull();
    expect(el.querySelector('[data-testid="estimate-note"]')?.textContent).toBe(
      'no estimate for libvirt hosts yet',
    );
  });
});
