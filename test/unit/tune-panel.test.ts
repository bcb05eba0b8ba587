// @vitest-environment jsdom
// The progress view's Tune controls as a mounted component (PrimeVue, Pinia, a fake engine): a new
// bandwidth limit and downtime target sent with Enter, and Switch to post-copy disabled with its
// reason in text the button points at.
import { flushPromises, mount, type VueWrapper } from '@vue/test-utils';
import { createPinia, setActivePinia } from 'pinia';
import PrimeVue from 'primevue/config';
import InputNumber from 'primevue/inputnumber';
import ToastService from 'primevue/toastservice';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Plugin } from 'vue';
import { MigrationEventSchema, type MoveOptions } from '../../engine/api/index.js';
import { setApiClient } from '../../renderer/src/api/index.js';
import TunePanel from '../../renderer/src/components/progress/TunePanel.vue';
import { applyEvent, newMove, type LiveMove } from '../../renderer/src/model/live-move.js';
import { fakeEngine, type FakeApi } from './libvirt-fixtures.js';

const UI_PLUGINS = [PrimeVue, ToastService] as unknown as Plugin[];
const ID = 'm-20261129-120000-abcd';
const OPTIONS: MoveOptions = {
  performance: 'tcp',
  channels: 1,
  bandwidthMiBs: 8,
  downtimeMs: 300,
  downtimeCeilingMs: 2000,
  convergence: 'raise-downtime',
  compression: null,
};

let api: FakeApi;
let wrapper: VueWrapper | null = null;

function moveIn(phase: number, options: MoveOptions): LiveMove {
  const m = newMove(ID);
  const ev = (e: Record<string, unknown>) => MigrationEventSchema.parse({ id: ID, at: 0, ...e });
  applyEvent(m, ev({ type: 'started', vm: 'slow', from: 'lab1', to: 'lab2', kind: 'live', options }));
  const names = ['setup', 'memory', 'modified-pages', 'storage-handle'];
  for (let p = 1; p <= phase; p++)
    applyEvent(m, ev({ type: 'phase', phase: p, name: names[p - 1], state: 'started', ms: null }));
  return m;
}

beforeEach(() => {
  const pinia = createPinia();
  setActivePinia(pinia);
  api = fakeEngine();
  setApiClient(api);
});
afterEach(() => {
  wrapper?.unmount();
  wrapper = null;
  setApiClient(null);
  document.body.innerHTML = '';
});

function mountPanel(move: LiveMove): VueWrapper {
  wrapper = mount(TunePanel, {
    props: { move },
    attachTo: document.body,
    global: { plugins: [createPinia(), ...UI_PLUGINS] },
  });
  return wrapper;
}

describe('Tune controls', () => {
  it('sends a new bandwidth and downtime target; post-copy is disabled with the reason shown', async () => {
    api.handlers.tuneMove = (input: { id: string; bandwidthMiBs?: number; downtimeMs?: number }) => ({
      id: input.id,
      bandwidthMiBs: input.bandwidthMiBs ?? 8,
      downtimeMs: input.downtimeMs ?? 300,
      postcopy: false,
      message: 'tuned by the administrator: bandwidth limit 8 → 512 MiB/s',
    });
    const w = mountPanel(moveIn(2, OPTIONS));
    const postcopy = w.get<HTMLButtonElement>('[data-testid="tune-postcopy"]');
    expect(postcopy.element.disabled).toBe(true);
    const reason = w.get('[data-testid="tune-postcopy-reason"]');
    expect(reason.text()).toMatch(
      /^Post-copy unavailable: the move started without QEMU's post-copy capability/,
    );
    expect(postcopy.attributes('aria-describedby')).toBe(reason.attributes('id'));
    // Labelled fields, showing what the move runs with now.
    expect(w.get('label[for="tune-bandwidth"]').text()).toBe('Bandwidth limit (MiB/s)');
    expect(w.get<HTMLInputElement>('#tune-bandwidth').element.placeholder).toBe('8');
    expect(w.get<HTMLInputElement>('#tune-downtime').element.placeholder).toBe('300');
    const apply = w.get<HTMLButtonElement>('[data-testid="tune-apply"]');
    expect(apply.element.disabled).toBe(true);
    const [bw] = w.findAllComponents(InputNumber);
    bw!.vm.$emit('update:modelValue', 512);
    await flushPromises();
    expect(apply.element.disabled).toBe(false);
    await w.get('form').trigger('submit'); // Enter in a field submits the form
    await flushPromises();
    expect(api.inputs('tuneMove')).toEqual([{ id: ID, bandwidthMiBs: 512 }]);
  });

  it('enables Switch to post-copy for a move started with the capability, and greys everything out after phase 3', async () => {
    api.handlers.tuneMove = (input: { id: string }) => ({
      id: input.id,
      bandwidthMiBs: 8,
      downtimeMs: 300,
      postcopy: true,
      message: 'tuned by the administrator: switching to post-copy',
    });
    const w = mountPanel(moveIn(2, { ...OPTIONS, convergence: 'postcopy' }));
    const postcopy = w.get<HTMLButtonElement>('[data-testid="tune-postcopy"]');
    expect(postcopy.element.disabled).toBe(false);
    expect(w.find('[data-testid="tune-postcopy-reason"]').exists()).toBe(false);
    await postcopy.trigger('click');
    await flushPromises();
    expect(api.inputs('tuneMove')).toEqual([{ id: ID, postcopy: true }]);
    w.unmount();
    const after = mountPanel(moveIn(4, { ...OPTIONS, convergence: 'postcopy' }));
    expect(after.get('[data-testid="tune-unavailable"]').text()).toBe(
      'Cannot tune now: phase 3 is over: the memory copy is done and the VM runs on lab2',
    );
    expect(after.get<HTMLButtonElement>('[data-testid="tune-postcopy"]').element.disabled).toBe(true);
    expect(after.get<HTMLInputElement>('#tune-bandwidth').element.disabled).toBe(true);
  });
});
