// @vitest-environment jsdom
// The "Connect to Server…" dialog, the host list and a disconnected host's VM table as mounted
// components (PrimeVue, Pinia, a fake engine).
import { flushPromises, mount, type VueWrapper } from '@vue/test-utils';
import { createPinia, setActivePinia, type Pinia } from 'pinia';
import PrimeVue from 'primevue/config';
import ConfirmationService from 'primevue/confirmationservice';
import ToastService from 'primevue/toastservice';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Component, Plugin } from 'vue';
import { FerryError, type HostRecord } from '../../engine/api/index.js';
import { setApiClient } from '../../renderer/src/api/index.js';
import { useInventoryStore } from '../../renderer/src/stores/inventory.js';
import {
  fakeEngine,
  FINGERPRINT,
  record,
  summary,
  unknownHostKey,
  vm,
  type FakeApi,
} from './libvirt-fixtures.js';

import ConnectServerDialog from '../../renderer/src/components/ConnectServerDialog.vue';
import HostList from '../../renderer/src/components/HostList.vue';
import VmTable from '../../renderer/src/components/VmTable.vue';
// PrimeVue's default exports, typed for a bundler (the root tsconfig resolves them as Node does).
const UI_PLUGINS = [PrimeVue, ToastService, ConfirmationService] as unknown as Plugin[];

let api: FakeApi;
let pinia: Pinia;
let wrapper: VueWrapper | null = null;

beforeEach(() => {
  pinia = createPinia();
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

function mountIt(c: Component): VueWrapper {
  wrapper = mount(c, {
    attachTo: document.body,
    global: { plugins: [pinia, ...UI_PLUGINS] },
  });
  return wrapper;
}

/** The dialog teleports to <body>: its parts are found in the document. */
const $ = <T extends Element = HTMLElement>(sel: string): T | null => document.querySelector<T>(sel);

async function type(sel: string, value: string): Promise<void> {
  const el = $<HTMLInputElement>(sel);
  if (!el) throw new Error(`no ${sel}`);
  el.value = value;
  el.dispatchEvent(new Event('input'));
  await flushPromises();
}

async function pressEnterIn(sel: string): Promise<void> {
  // What a browser does for Enter in a form's text field: submit the form.
  $(sel)?.closest('form')?.requestSubmit();
  await flushPromises();
}

async function click(sel: string): Promise<void> {
  const el = $(sel);
  if (!el) throw new Error(`no ${sel}`);
  el.click();
  await flushPromises();
}

describe('Connect to Server…', () => {
  it('shows an unknown host key, and accepting it calls again with that fingerprint', async () => {
    let calls = 0;
    api.handlers.addLibvirtHost = (input: { acceptHostKey: string | null }) => {
      calls++;
      if (input.acceptHostKey === null) {
        throw unknownHostKey();
      }
      return record('server');
    };
    const w = mountIt(ConnectServerDialog!);
    await flushPromises();
    expect(document.activeElement?.id === 'connect-uri' || $('#connect-uri')?.hasAttribute('autofocus')).toBe(
      true,
    );
    // Every field is labelled.
    for (const id of ['connect-uri', 'connect-name', 'connect-key'])
      expect($(`label[for="${id}"]`)).not.toBeNull();

    await type('#connect-uri', 'qemu+ssh://root@server.example.com/system');
    expect($<HTMLInputElement>('#connect-name')?.value).toBe('server');
    await type('#connect-key', '/root/.ssh/lab_key');
    await pressEnterIn('#connect-uri');

    expect(calls).toBe(1);
    expect($('[data-testid="connect-server"]')?.getAttribute('data-step')).toBe('host-key');
    const step = $('[data-testid="host-key-step"]')!;
    expect(step.textContent).toContain('The authenticity of host server.example.com can’t be established');
    expect(step.textContent).toContain('ED25519 key fingerprint');
    expect(step.textContent).toContain(FINGERPRINT);
    expect(step.textContent).toContain('ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub');
    expect(w.emitted('close')).toBeUndefined();

    await click('[data-testid="host-key-accept"]');
    expect(api.inputs('addLibvirtHost')).toEqual([
      {
        name: 'server',
        uri: 'qemu+ssh://root@server.example.com/system',
        sshKey: '/root/.ssh/lab_key',
        acceptHostKey: null,
      },
      {
        name: 'server',
        uri: 'qemu+ssh://root@server.example.com/system',
        sshKey: '/root/.ssh/lab_key',
        acceptHostKey: FINGERPRINT,
      },
    ]);
    expect(w.emitted('close')).toHaveLength(1);
    expect(useInventoryStore().selectedHost).toBe('server');
  });

  it('shows a visible warning for qemu+tcp:// before connecting', async () => {
    mountIt(ConnectServerDialog!);
    await flushPromises();
    expect($('[data-testid="connect-warning"]')).toBeNull();
    await type('#connect-uri', 'qemu+tcp://10.0.0.5/system');
    const warning = $('[data-testid="connect-warning"]');
    expect(warning?.textContent).toMatch(/unauthenticated/);
    expect($<HTMLInputElement>('#connect-name')?.value).toBe('10-0-0-5');
    // No SSH key for a non-SSH transport.
    expect($<HTMLInputElement>('#connect-key')?.disabled).toBe(true);
  });

  it('shows the engine’s error under the form and stays open', async () => {
    api.handlers.addLibvirtHost = () => {
      throw new FerryError('auth-failed', 'root@server.example.com refused the key /root/.ssh/lab_key');
    };
    const w = mountIt(ConnectServerDialog!);
    await flushPromises();
    await type('#connect-uri', 'qemu+ssh://root@server.example.com/system');
    await type('#connect-name', 'kvm-a');
    await type('#connect-uri', 'qemu+ssh://root@other.example.com/system');
    expect($<HTMLInputElement>('#connect-name')?.value).toBe('kvm-a'); // typed names are kept
    await click('[data-testid="connect-submit"]');

    const alert = $('[data-testid="connect-error"]');
    expect(alert?.closest('[role="alert"]') ?? alert?.querySelector('[role="alert"]')).not.toBeNull();
    expect(alert?.textContent).toContain('root@server.example.com refused the key /root/.ssh/lab_key');
    expect($('[data-testid="connect-server"]')?.getAttribute('data-step')).toBe('form');
    expect(w.emitted('close')).toBeUndefined();
    expect($<HTMLButtonElement>('[data-testid="connect-submit"]')?.disabled).toBe(false);
  });

  it('does not call the engine without a URI or with a name already taken', async () => {
    api.handlers.addLibvirtHost = () => record('x');
    mountIt(ConnectServerDialog!);
    await useInventoryStore().refresh();
    await flushPromises();
    await pressEnterIn('#connect-uri');
    expect($('#connect-uri-error')?.textContent).toMatch(/connection URI/);
    await type('#connect-uri', 'qemu+ssh://root@10.0.0.9/system');
    await type('#connect-name', 'local');
    await pressEnterIn('#connect-uri');
    expect($('#connect-name-error')?.textContent).toMatch(/already has a host named local/);
    expect(api.inputs('addLibvirtHost')).toEqual([]);
  });

  it('shows the busy state while connecting', async () => {
    let release!: (r: HostRecord) => void;
    api.handlers.addLibvirtHost = () => new Promise<HostRecord>((r) => (release = r));
    const w = mountIt(ConnectServerDialog!);
    await flushPromises();
    await type('#connect-uri', 'qemu+ssh://root@kvm1/system');
    await pressEnterIn('#connect-uri');
    expect($<HTMLInputElement>('#connect-uri')?.disabled).toBe(true);
    expect($('[data-testid="connect-server"] [role="status"]')?.textContent).toContain('Connecting to');
    release(record('kvm1'));
    await flushPromises();
    expect(w.emitted('close')).toHaveLength(1);
  });
});

describe('the host list', () => {
  it('shows each host’s kind, whether it is connected and why not, and its warning', async () => {
    api.handlers.listHosts = () => [
      summary('local', { kind: 'local', uri: null, vmCount: 2, runningCount: 1 }),
      summary('kvm1', {
        connected: false,
        connectionError: 'the connection to 10.0.0.5 was lost (libvirtd stopped?)',
      }),
      summary('lab-libvirt1', {
        lab: true,
        uri: 'qemu+tcp://10.0.0.7/system',
        warning: 'qemu+tcp:// is unauthenticated: anyone on the network can control this host',
      }),
    ];
    mountIt(HostList!);
    await useInventoryStore().refresh();
    await flushPromises();

    const host = (n: string) => $(`[data-host="${n}"]`)!;
    const tags = (n: string) =>
      Array.from(host(n).querySelectorAll('[data-tag]')).map((t) => t.textContent?.trim());
    expect(tags('local')).toEqual(['local']);
    expect(tags('kvm1')).toEqual(['libvirt']);
    expect(tags('lab-libvirt1')).toEqual(['libvirt', 'lab']);

    expect(host('local').getAttribute('data-connected')).toBe('true');
    expect(host('local').textContent).toContain('Connected · 1/2 running');
    expect(host('kvm1').getAttribute('data-connected')).toBe('false');
    expect(host('kvm1').querySelector('.status')?.textContent?.trim()).toBe('Disconnected');
    expect(host('kvm1').textContent).toContain('the connection to 10.0.0.5 was lost');
    expect(host('kvm1').getAttribute('title')).toBe(
      'Disconnected: the connection to 10.0.0.5 was lost (libvirtd stopped?)',
    );
    // Screen readers hear the status too (the option's accessible name), not only the host's name.
    expect(host('kvm1').closest('[role="option"]')?.getAttribute('aria-label')).toBe(
      'kvm1, libvirt, Disconnected: the connection to 10.0.0.5 was lost (libvirtd stopped?)',
    );
    expect(host('lab-libvirt1').querySelector('[data-testid="host-warning"]')?.textContent).toContain(
      'qemu+tcp:// is unauthenticated',
    );
    expect(host('local').querySelector('[data-testid="host-warning"]')).toBeNull();
  });

  it('a disconnected host’s VM table says why and offers Reconnect', async () => {
    let up = false;
    api.handlers.listHosts = () => [
      summary('kvm1', up ? {} : { connected: false, connectionError: 'No route to host 10.0.0.5' }),
    ];
    api.handlers.listVms = () => (up ? [vm('web1', 'kvm1')] : []);
    api.handlers.reconnectHost = () => {
      up = true;
      return summary('kvm1');
    };
    mountIt(VmTable!);
    await useInventoryStore().refresh();
    await flushPromises();
    const empty = $('[data-testid="host-disconnected"]');
    expect(empty?.textContent).toContain('kvm1 is disconnected');
    expect(empty?.textContent).toContain('No route to host 10.0.0.5');
    await click('[data-testid="reconnect-empty"]');
    expect(api.inputs('reconnectHost')).toEqual([{ host: 'kvm1' }]);
    expect($('[data-testid="host-disconnected"]')).toBeNull();
    expect($('[data-testid="vm-table"]')?.textContent).toContain('web1');
  });
});
