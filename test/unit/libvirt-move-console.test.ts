// @vitest-environment jsdom
// Encryption on the host settings dialog's Advanced Features page, as a mounted component (PrimeVue,
// Pinia, a fake engine): a libvirt host edits it and saves only that change; Ferry's own hosts show it
// greyed out with the reason.
import { flushPromises, mount, type VueWrapper } from '@vue/test-utils';
import { createPinia, setActivePinia, type Pinia } from 'pinia';
import PrimeVue from 'primevue/config';
import ConfirmationService from 'primevue/confirmationservice';
import ToastService from 'primevue/toastservice';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { h, type Plugin } from 'vue';
import { HostSettingsSchema, type HostFacts, type HostSettings } from '../../engine/api/index.js';
import { setApiClient } from '../../renderer/src/api/index.js';
import { useInventoryStore } from '../../renderer/src/stores/inventory.js';
import { fakeEngine, record, summary, type FakeApi } from './libvirt-fixtures.js';

import HostSettingsDialog from '../../renderer/src/components/settings/HostSettings.vue';
const UI_PLUGINS = [PrimeVue, ToastService, ConfirmationService] as unknown as Plugin[];

let api: FakeApi;
let pinia: Pinia;
let wrapper: VueWrapper | null = null;
let saved: HostSettings = HostSettingsSchema.parse({});

const FACTS = {
  name: 'kvm1',
  libvirtVersion: '9.0.0',
  qemuBinary: '/usr/bin/qemu-system-x86_64',
  qemuVersion: '7.2.22',
  accel: 'tcg',
  hardwareVirtualization: false,
  accelNote: '',
  cpuVendor: 'AMD',
  cpuModel: 'EPYC',
  cpuCount: 2,
  memTotalMiB: 8192,
  memFreeMiB: 4096,
  diskFreeBytes: 1e10,
  machineTypes: ['pc'],
  defaultMachineType: 'pc',
  cpuModels: [],
  migrationCapabilities: [],
  multifdCompression: [],
  rdma: false,
} as HostFacts;

beforeEach(() => {
  // jsdom has no matchMedia; PrimeVue's Select asks it about the screen's orientation.
  window.matchMedia ??= ((query: string) => ({
    matches: false,
    media: query,
    onchange: null,
    addEventListener: () => undefined,
    removeEventListener: () => undefined,
    addListener: () => undefined,
    removeListener: () => undefined,
    dispatchEvent: () => false,
  })) as unknown as typeof window.matchMedia;
  pinia = createPinia();
  setActivePinia(pinia);
  api = fakeEngine();
  saved = HostSettingsSchema.parse({ performance: 'tcp' });
  api.handlers.listHosts = () => [summary('kvm1'), summary('local', { kind: 'local', uri: null })];
  api.handlers.hostDetails = ({ host }: { host: string }) => ({
    record: host === 'local' ? record('local', { kind: 'local', uri: null }) : record(host),
    facts: { ...FACTS, name: host },
    settings: saved,
  });
  api.handlers.updateHostSettings = ({ patch }: { patch: HostSettings }) => (saved = patch);
  setApiClient(api);
});

afterEach(() => {
  wrapper?.unmount();
  wrapper = null;
  setApiClient(null);
  document.body.innerHTML = '';
});

async function openAdvanced(host: string): Promise<void> {
  await useInventoryStore().refresh();
  wrapper = mount(
    { render: () => h(HostSettingsDialog, { host, initialPage: 'advanced' }) },
    { attachTo: document.body, global: { plugins: [pinia, ...UI_PLUGINS] } },
  );
  await flushPromises();
}

const $ = <T extends Element = HTMLElement>(sel: string): T | null => document.querySelector<T>(sel);

describe('Encryption in the host settings', () => {
  it('a libvirt host: Required by default, explained; Off warns and saves only that change', async () => {
    await openAdvanced('kvm1');
    const setting = $('[data-testid="encryption-setting"]')!;
    expect(setting.getAttribute('data-applies')).toBe('true');
    expect($('#encryption')?.textContent?.trim()).toBe('Required');
    expect($('#encryption-help')?.textContent).toMatch(
      /migration stream — memory and disks — is encrypted with TLS.*refused/s,
    );
    expect($('#encryption')?.getAttribute('aria-disabled')).not.toBe('true');

    // Choose Off from the select's list.
    $('.p-select')!.click();
    await flushPromises();
    const off = Array.from(document.querySelectorAll<HTMLElement>('[role="option"]')).find(
      (o) => o.textContent?.trim() === 'Off',
    );
    expect(off).toBeDefined();
    // PrimeVue selects an option on mousedown (as a pointer does), before the click.
    off!.dispatchEvent(new MouseEvent('mousedown', { bubbles: true }));
    await flushPromises();
    expect($('#encryption')?.textContent?.trim()).toBe('Off');
    expect(document.body.textContent).toContain('Encryption is off: moves to and from this host send');

    $<HTMLButtonElement>('[data-testid="settings-apply"]')!.click();
    await flushPromises();
    const [input] = api.inputs('updateHostSettings') as { host: string; patch: HostSettings }[];
    expect(input?.host).toBe('kvm1');
    expect(input?.patch).toEqual({ ...HostSettingsSchema.parse({ performance: 'tcp' }), encryption: 'off' });
  });

  it('this computer: greyed out, with why it does not apply', async () => {
    await openAdvanced('local');
    const setting = $('[data-testid="encryption-setting"]')!;
    expect(setting.getAttribute('data-applies')).toBe('false');
    expect(setting.textContent).toContain(
      "Does not apply to Ferry's own hosts: they run on this computer, and their moves never cross a network.",
    );
    expect($('.p-select')?.className).toMatch(/p-disabled/);
  });
});
