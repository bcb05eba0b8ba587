// @vitest-environment jsdom
// The console's accessibility parts that do not need a browser (issue 14): the charts' text
// alternative, the phase stepper's live region, focus returning to a dialog's opener, and the host
// list's names (label in name, no focusable element hidden from screen readers). axe-core itself runs
// on every screen in test/e2e/accessibility.test.ts.
import { flushPromises, mount, type VueWrapper } from '@vue/test-utils';
import { createPinia, setActivePinia } from 'pinia';
import PrimeVue from 'primevue/config';
import ConfirmationService from 'primevue/confirmationservice';
import ToastService from 'primevue/toastservice';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { nextTick, type Plugin } from 'vue';
import { PHASES } from '../../engine/api/index.js';
import { setApiClient } from '../../renderer/src/api/index.js';
import PhaseStepper from '../../renderer/src/components/progress/PhaseStepper.vue';
import HostList from '../../renderer/src/components/HostList.vue';
import { chartSummary, chartTable, type LineSeries } from '../../renderer/src/model/chart-data.js';
import { phaseAnnouncement, type PhaseView } from '../../renderer/src/model/live-move.js';
import { useInventoryStore } from '../../renderer/src/stores/inventory.js';
import { useUiStore } from '../../renderer/src/stores/ui.js';
import { fakeEngine, summary } from './libvirt-fixtures.js';

const UI_PLUGINS = [PrimeVue, ToastService, ConfirmationService] as unknown as Plugin[];

function phases(states: PhaseView['state'][]): PhaseView[] {
  return PHASES.map((p, i) => ({
    phase: p.phase,
    title: p.title,
    state: states[i] ?? 'pending',
    startedAt: null,
    ms: null,
  }));
}

const throughput = (n: number): LineSeries => ({
  label: 'Throughput (MiB/s)',
  color: '#000',
  data: Array.from({ length: n }, (_, i) => ({ x: i * 0.25, y: 10 + (i % 3) })),
});

describe('a chart’s text alternative', () => {
  it('sums up what it plots: samples, time span, each line’s latest and peak, the last pass', () => {
    const limit: LineSeries = {
      label: 'Bandwidth limit (8 MiB/s)',
      color: '#000',
      data: [
        { x: 0, y: 8 },
        { x: 2.25, y: 8 },
      ],
    };
    expect(
      chartSummary(
        'Throughput',
        [throughput(10), limit],
        [
          { x: 0.5, pass: 1 },
          { x: 1.75, pass: 2 },
        ],
      ),
    ).toBe(
      'Throughput: 10 samples over 2.3 s. Throughput (MiB/s): latest 10.0, peak 12.0. ' +
        'Bandwidth limit (8 MiB/s): latest 8.0, peak 8.0. Pass 2 began at 1.8 s.',
    );
    expect(chartSummary('Throughput', [throughput(0)], [])).toBe('Throughput: no samples yet.');
  });

  it('tabulates the figures: at most 20 rows over the whole move, first and latest included', () => {
    const t = chartTable([throughput(101)]);
    expect(t.columns).toEqual(['Time (s)', 'Throughput (MiB/s)']);
    expect(t.rows).toHaveLength(20);
    expect(t.rows[0]).toEqual(['0.0', '10.0']);
    expect(t.rows.at(-1)).toEqual(['25.0', '11.0']);
    expect(chartTable([throughput(3)]).rows).toHaveLength(3);
    expect(chartTable([throughput(0)]).rows).toEqual([]);
  });

  it('gives each line its value at the row’s time, or nothing before its first point', () => {
    const later: LineSeries = { label: 'Remaining (MiB)', color: '#000', data: [{ x: 0.5, y: 200 }] };
    expect(chartTable([throughput(4), later]).rows).toEqual([
      ['0.0', '10.0', ''],
      ['0.3', '11.0', ''],
      ['0.5', '12.0', '200.0'],
      ['0.8', '10.0', '200.0'],
    ]);
  });
});

describe('the phase stepper’s live region', () => {
  it('says the running phase, where a move stopped, or that all phases are done', () => {
    expect(phaseAnnouncement(phases([]))).toBe('Not started yet.');
    expect(phaseAnnouncement(phases(['done', 'running']))).toBe('Phase 2 of 6: Memory pages, in progress.');
    expect(phaseAnnouncement(phases(['done', 'failed']))).toBe('Stopped in phase 2 of 6: Memory pages.');
    expect(phaseAnnouncement(phases(['done', 'done', 'done', 'done', 'done', 'done']))).toBe(
      'All 6 phases done.',
    );
  });

  it('is polite, and changes with the phase, not with the running clock', async () => {
    const w = mount(PhaseStepper, { props: { phases: phases(['done', 'running']), elapsedMs: 1000 } });
    const region = w.get('[data-testid="phase-announcement"]');
    expect(region.attributes('aria-live')).toBe('polite');
    expect(region.text()).toBe('Phase 2 of 6: Memory pages, in progress.');
    await w.setProps({ elapsedMs: 5000 } as never);
    expect(region.text()).toBe('Phase 2 of 6: Memory pages, in progress.');
    await w.setProps({ phases: phases(['done', 'done', 'running']) } as never);
    expect(region.text()).toBe('Phase 3 of 6: Modified pages, in progress.');
    w.unmount();
  });
});

describe('focus after a dialog closes', () => {
  beforeEach(() => setActivePinia(createPinia()));
  afterEach(() => {
    document.body.innerHTML = '';
  });

  function button(attrs: Record<string, string>): HTMLButtonElement {
    const b = document.createElement('button');
    for (const [k, v] of Object.entries(attrs)) b.setAttribute(k, v);
    document.body.append(b);
    return b;
  }

  it('goes back to the control that opened it', async () => {
    const ui = useUiStore();
    const opener = button({ 'data-action': 'connect-server' });
    opener.focus();
    ui.openConnect();
    button({}).focus(); // the dialog takes the focus
    ui.closeConnect();
    await nextTick();
    expect(document.activeElement).toBe(opener);
  });

  it('waits for the last of two dialogs that hand over (the wizard’s Finish opens the progress view)', async () => {
    const ui = useUiStore();
    const opener = button({ 'data-action': 'move' });
    opener.focus();
    ui.openWizard('demo');
    const dialog = document.createElement('div');
    dialog.setAttribute('role', 'dialog');
    const finish = document.createElement('button');
    dialog.append(finish);
    document.body.append(dialog);
    finish.focus();
    finish.blur(); // Finish is disabled while the move starts: the focus falls to the page's body
    ui.closeWizard();
    ui.openProgress('m-1');
    await nextTick();
    expect(document.activeElement).toBe(document.body);
    dialog.remove();
    ui.closeProgress();
    await nextTick();
    expect(document.activeElement).toBe(opener);
  });

  it('finds the control that took the opener’s place, when the opener itself is gone', async () => {
    const ui = useUiStore();
    const opener = button({ 'data-move': 'm-1' });
    opener.focus();
    ui.openProgress('m-1');
    opener.remove();
    const twin = button({ 'data-move': 'm-1' }); // the same move, now among the past ones
    ui.closeProgress();
    await nextTick();
    expect(document.activeElement).toBe(twin);
  });
});

describe('the host list for screen readers', () => {
  let wrapper: VueWrapper | null = null;
  afterEach(() => {
    wrapper?.unmount();
    wrapper = null;
    setApiClient(null);
    document.body.innerHTML = '';
  });

  /** axe's label-content-name-mismatch compares words, ignoring case and punctuation. */
  const words = (s: string): string[] =>
    s
      .replace(/\([^()]*\)/g, ' ')
      .toLowerCase()
      .replace(/[^\p{L}\p{N}]+/gu, ' ')
      .trim()
      .split(/\s+/);

  it('names each host with the words it shows, in order, and keeps hidden focus catchers out of Tab', async () => {
    const pinia = createPinia();
    setActivePinia(pinia);
    const api = fakeEngine();
    setApiClient(api);
    api.handlers.listHosts = () => [
      summary('lab1', { kind: 'lab', vmCount: 1, runningCount: 1 }),
      summary('kvm1', { connected: false, connectionError: 'No route to host (libvirtd stopped?)' }),
      summary('lab-libvirt1', { lab: true, warning: 'qemu+tcp:// is unauthenticated' }),
    ];
    wrapper = mount(HostList, { attachTo: document.body, global: { plugins: [pinia, ...UI_PLUGINS] } });
    await useInventoryStore().refresh();
    await flushPromises();

    const options = Array.from(document.querySelectorAll<HTMLElement>('[role="option"]'));
    expect(options).toHaveLength(3);
    for (const o of options) {
      const shown = words(o.textContent ?? '').join(' ');
      expect(` ${words(o.getAttribute('aria-label') ?? '').join(' ')} `).toContain(` ${shown} `);
    }
    // The list is the one Tab stop; PrimeVue's aria-hidden catchers are not, before and after a visit.
    const list = document.querySelector<HTMLElement>('[role="listbox"]')!;
    const catchers = () =>
      Array.from(document.querySelectorAll<HTMLElement>('[data-p-hidden-focusable="true"]')).map(
        (e) => e.tabIndex,
      );
    expect(list.tabIndex).toBe(0);
    expect(catchers()).toEqual([-1, -1]);
    list.focus();
    list.dispatchEvent(new FocusEvent('focusout', { bubbles: true, relatedTarget: document.body }));
    list.blur();
    expect(catchers()).toEqual([-1, -1]);
  });
});
