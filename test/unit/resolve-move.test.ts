// @vitest-environment jsdom
// "Resolve…" for a move whose Ferry process ended after the switch-over and that the next look left
// for the administrator (issue 11, point 4): the Migrations panel marks it, the dialog shows what each
// host had of the VM (as the engine words it), and its two ways out call the existing VM actions on
// the source's copy, turning it off only after a confirmation.
import { flushPromises, mount, type VueWrapper } from '@vue/test-utils';
import { createPinia, setActivePinia, type Pinia } from 'pinia';
import PrimeVue from 'primevue/config';
import ConfirmationService from 'primevue/confirmationservice';
import ToastService from 'primevue/toastservice';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Plugin } from 'vue';
import type { MigrationListItem, VmSummary } from '../../engine/api/index.js';
import { describeCopy, type CopyFacts } from '../../engine/host/local/recovery.js';
import { setApiClient } from '../../renderer/src/api/index.js';
import MigrationsPanel from '../../renderer/src/components/MigrationsPanel.vue';
import { copyFacts, inPostcopy, needsAdministrator } from '../../renderer/src/model/recovery.js';
import { useMigrationsStore } from '../../renderer/src/stores/migrations.js';
import { fakeEngine, vm, type FakeApi } from './libvirt-fixtures.js';

const UI_PLUGINS = [PrimeVue, ToastService, ConfirmationService] as unknown as Plugin[];

const facts = (over: Partial<CopyFacts> & { host: string }): CopyFacts => ({
  config: 'committed',
  sameVm: true,
  pid: null,
  runState: null,
  migration: null,
  ...over,
});

/** The source paused after sending its memory; the destination's QEMU alive, paused, never committed. */
const SOURCE = describeCopy(
  facts({ host: 'lab1', pid: 4242, runState: 'postmigrate', migration: 'completed' }),
  'source',
  'web01',
);
const DESTINATION = describeCopy(
  facts({ host: 'lab2', config: 'incoming', pid: 4343, runState: 'paused', migration: 'active' }),
  'destination',
  'web01',
);

function record(
  id: string,
  over: Partial<MigrationListItem> = {},
  outcome: NonNullable<MigrationListItem['recovery']>['outcome'] | null = 'needs-administrator',
): MigrationListItem {
  return {
    id,
    vm: 'web01',
    from: 'lab1',
    to: 'lab2',
    kind: 'live',
    request: { vm: 'web01', to: 'lab2', kind: 'live', includeStorage: false, keepSource: false },
    status: 'failed',
    reason: 'abandoned after the switch-over during phase 5, needs the administrator: …',
    requestedAt: '2026-11-29T09:00:00.000Z',
    startedAt: '2026-11-29T09:00:00.100Z',
    endedAt: '2026-11-29T09:00:06.000Z',
    phase: 5,
    pass: 3,
    options: null,
    preflight: null,
    phases: [],
    events: [],
    summary: null,
    ...(outcome
      ? {
          recovery: {
            outcome,
            at: '2026-11-29T09:05:00.000Z',
            source: SOURCE,
            destination: DESTINATION,
          },
        }
      : {}),
    ...over,
  };
}

let api: FakeApi;
let pinia: Pinia;
let wrapper: VueWrapper | null = null;
/** What listMigrations answers: the history as the engine's next look leaves it. */
let history: MigrationListItem[];
let vms: VmSummary[];

beforeEach(() => {
  pinia = createPinia();
  setActivePinia(pinia);
  api = fakeEngine();
  setApiClient(api);
  history = [record('m-2'), record('m-1', { vm: 'db01', status: 'completed', reason: null }, null)];
  vms = [vm('web01', 'lab1', 'paused'), vm('db01', 'lab2')];
  api.handlers.listMigrations = () => history;
  api.handlers.queue = () => [];
  api.handlers.listVms = () => vms;
  api.handlers.vmAction = (input: { name: string; action: string }) => {
    // The engine acts, and its next look marks the move resolved.
    history = [record('m-2', {}, 'resolved'), ...history.slice(1)];
    return { ...vm(input.name, 'lab1', input.action === 'resume' ? 'running' : 'stopped') };
  };
});

afterEach(() => {
  wrapper?.unmount();
  wrapper = null;
  setApiClient(null);
  document.body.innerHTML = '';
});

const $ = <T extends Element = HTMLElement>(sel: string): T | null => document.querySelector<T>(sel);
const $$ = (sel: string): HTMLElement[] => Array.from(document.querySelectorAll<HTMLElement>(sel));
const text = (sel: string): string => ($(sel)?.textContent ?? '').replace(/\s+/g, ' ').trim();

async function click(sel: string): Promise<void> {
  const el = $(sel);
  if (!el) throw new Error(`no ${sel}`);
  el.click();
  await flushPromises();
}

/** A fact row's value in one host's column. */
const fact = (side: 'source' | 'destination', key: string): string[] =>
  $$(`[data-facts="${side}"] [data-fact="${key}"]`)
    .map((r) => [
      r.querySelector('dt')?.textContent?.trim() ?? '',
      r.querySelector('dd')?.textContent?.trim() ?? '',
    ])
    .flat();

async function mountPanel(): Promise<void> {
  wrapper = mount(MigrationsPanel, {
    attachTo: document.body,
    global: { plugins: [pinia, ...UI_PLUGINS] },
  });
  await useMigrationsStore().refresh();
  await flushPromises();
}

async function openResolve(): Promise<HTMLButtonElement> {
  const opener = $<HTMLButtonElement>('[data-resolve="m-2"]')!;
  opener.focus();
  opener.click();
  await flushPromises();
  return opener;
}

describe('a move left for the administrator in the Migrations panel', () => {
  it('is marked "needs you" and offers Resolve…, named by what it shows', async () => {
    await mountPanel();
    const rows = $$('[data-group="past"]');
    expect(rows.map((r) => r.getAttribute('data-move'))).toEqual(['m-2', 'm-1']);

    const row = rows[0]!.closest('li')!;
    expect(row.querySelector('[data-testid="needs-you"]')?.textContent?.trim()).toBe('needs you');
    const resolve = row.querySelector<HTMLButtonElement>('[data-resolve="m-2"]')!;
    expect(resolve.textContent?.trim()).toBe('Resolve…');
    // The visible label is the accessible name; the move it is for describes it.
    expect(resolve.getAttribute('aria-label') ?? resolve.textContent?.trim()).toBe('Resolve…');
    const route = document.getElementById(resolve.getAttribute('aria-describedby')!);
    expect(route?.textContent).toBe('web01: lab1 → lab2');
    // Not inside the row's own button (no nested interactive controls).
    expect(resolve.closest('[data-group="past"]')).toBeNull();

    // A move that needs nothing has neither.
    const other = rows[1]!.closest('li')!;
    expect(other.querySelector('[data-testid="needs-you"]')).toBeNull();
    expect(other.querySelector('[data-resolve]')).toBeNull();
    expect($$('[data-resolve]')).toHaveLength(1);
  });

  it('shows both hosts’ facts, and "Keep it on lab1 (resume)" resumes web01 and reads the VMs and the history again', async () => {
    await mountPanel();
    const opener = await openResolve();

    const dialog = $('[data-testid="resolve-move"]')!;
    expect(dialog).not.toBeNull();
    expect(dialog.getAttribute('role')).toBe('dialog');
    expect(text('[data-testid="resolve-move"] .p-dialog-title')).toBe('Resolve the move of web01');
    expect(text('[data-testid="resolve-lead"]')).toContain('Ferry cannot tell that lab2 runs web01');

    expect(text('[data-facts="source"] h3')).toBe('lab1 (source)');
    expect(fact('source', 'vm')).toEqual(['VM', 'Paused']);
    expect(fact('source', 'qemu')).toEqual(['QEMU process', 'Alive (pid 4242)']);
    expect(fact('source', 'run-state')).toEqual(['Run state', 'Paused, its memory sent (post-migrate)']);
    expect(fact('source', 'migration')).toEqual(['Migration (outgoing)', 'Completed']);

    expect(text('[data-facts="destination"] h3')).toBe('lab2 (destination)');
    expect(fact('destination', 'vm')).toEqual(['VM', 'Paused']);
    expect(fact('destination', 'qemu')).toEqual(['QEMU process', 'Alive (pid 4343)']);
    expect(fact('destination', 'migration')).toEqual(['Migration (incoming)', 'In progress']);
    expect(fact('destination', 'configuration')).toEqual(['Configuration', 'Incoming only, not committed']);
    expect(fact('destination', 'same-vm')).toEqual(['Same VM', 'Yes (same UUID)']);
    expect($('[data-testid="resolve-blocked"]')).toBeNull();
    expect($('[data-testid="resolve-postcopy"]')).toBeNull();

    const resume = $<HTMLButtonElement>('[data-testid="resolve-resume"]')!;
    expect(resume.textContent?.trim()).toBe('Keep it on lab1 (resume)');
    expect(resume.getAttribute('aria-label')).toBe('Keep it on lab1 (resume)');
    expect(resume.disabled).toBe(false);
    expect(text('[data-testid="resolve-turn-off"]')).toBe('Turn off the copy on lab1…');

    const before = api.calls.length;
    await click('[data-testid="resolve-resume"]');
    expect(api.inputs('vmAction')).toEqual([{ name: 'web01', action: 'resume', host: 'lab1' }]);
    // Afterwards the VM list and the history are read again (the history's next look sees it resolved).
    const after = api.calls.slice(before).map((c) => c.method);
    expect(after.indexOf('vmAction')).toBe(0);
    expect(after).toContain('listVms');
    expect(after).toContain('listMigrations');

    // The dialog is gone, the move no longer needs anyone, and the focus is on its row.
    expect($('[data-testid="resolve-move"]')).toBeNull();
    expect($('[data-testid="needs-you"]')).toBeNull();
    expect(opener.isConnected).toBe(false);
    expect(document.activeElement).toBe($('[data-move="m-2"][data-group="past"]'));
  });

  it('turns the copy on lab1 off only after a confirmation that lab2’s copy is the one to keep', async () => {
    await mountPanel();
    await openResolve();
    const callsBefore = api.calls.length;

    await click('[data-testid="resolve-turn-off"]');
    // Asking is not doing.
    expect(api.inputs('vmAction')).toEqual([]);
    expect($('[data-testid="resolve-move"]')?.getAttribute('data-step')).toBe('confirm');
    const confirm = text('[data-testid="resolve-confirm"]');
    expect(confirm).toContain('Turn off the copy of web01 on lab1?');
    expect(confirm).toContain('Do this only if lab2 runs web01: the copy on lab2 must be the one to keep');
    // lab2 reported web01 paused, not running: the confirmation says so.
    expect(text('[data-testid="resolve-confirm-destination"]')).toContain('It did not report web01 running');
    expect(document.activeElement).toBe($('#resolve-confirm-title'));

    // Back: still nothing done.
    await click('[data-testid="resolve-back"]');
    expect($('[data-testid="resolve-move"]')?.getAttribute('data-step')).toBe('choose');
    expect($('[data-testid="resolve-turn-off-confirm"]')).toBeNull();
    expect(api.calls.slice(callsBefore).some((c) => c.method === 'vmAction')).toBe(false);

    await click('[data-testid="resolve-turn-off"]');
    const yes = $<HTMLButtonElement>('[data-testid="resolve-turn-off-confirm"]')!;
    expect(yes.textContent?.trim()).toBe('Turn off the copy on lab1');
    await click('[data-testid="resolve-turn-off-confirm"]');
    expect(api.inputs('vmAction')).toEqual([{ name: 'web01', action: 'turn-off', host: 'lab1' }]);
    expect($('[data-testid="resolve-move"]')).toBeNull();
  });

  it('keeps the dialog open with the error when the action fails, and Close gives the focus back', async () => {
    api.handlers.vmAction = () => {
      throw new Error('QMP: the VM is not paused');
    };
    await mountPanel();
    const opener = await openResolve();
    await click('[data-testid="resolve-resume"]');
    expect(text('[data-testid="resolve-error"]')).toContain('the VM is not paused');
    expect($('[data-testid="resolve-move"]')).not.toBeNull();

    await click('[data-testid="resolve-close"]');
    expect($('[data-testid="resolve-move"]')).toBeNull();
    expect(document.activeElement).toBe(opener);
  });

  it('acts on the copy on lab1 even while lab2 lists web01 too: the action names the source host', async () => {
    vms = [vm('web01', 'lab1', 'paused'), vm('web01', 'lab2', 'running')];
    await mountPanel();
    await openResolve();
    expect($('[data-testid="resolve-blocked"]')).toBeNull();
    await click('[data-testid="resolve-resume"]');
    expect(api.inputs('vmAction')).toEqual([{ name: 'web01', action: 'resume', host: 'lab1' }]);
  });

  it('does not act when the copy on the source is gone already', async () => {
    vms = [];
    await mountPanel();
    await openResolve();
    expect(text('[data-testid="resolve-blocked"]')).toContain('web01 is no longer listed on lab1');
    expect($<HTMLButtonElement>('[data-testid="resolve-resume"]')!.disabled).toBe(true);
  });
});

describe('each host’s facts, read from the engine’s words', () => {
  it('reads every form describeCopy writes, and keeps a sentence it cannot read as it is', () => {
    const gone = copyFacts(describeCopy(facts({ host: 'lab2', config: 'none' }), 'destination', 'web01'));
    expect(gone.presence).toBe('absent');
    expect(gone.rows.map((r) => [r.label, r.value])).toEqual([
      ['VM', 'Absent: no QEMU runs it'],
      ['QEMU process', 'Not running'],
      ['Configuration', 'None'],
    ]);
    const committed = copyFacts(describeCopy(facts({ host: 'lab2' }), 'destination', 'web01'));
    expect(committed.rows.at(-1)?.value).toBe('Committed (this host owns the VM)');
    const incoming = copyFacts(
      describeCopy(facts({ host: 'lab2', config: 'incoming' }), 'destination', 'web01'),
    );
    expect(incoming.rows.at(-1)?.value).toBe('Incoming only, not committed');

    const other = copyFacts(
      describeCopy(
        facts({ host: 'lab2', pid: 7, runState: 'running', migration: 'completed', sameVm: false }),
        'destination',
        'web01',
      ),
    );
    expect(other.presence).toBe('running');
    expect(other.rows.find((r) => r.key === 'same-vm')?.value).toBe('No: a different VM (UUID)');
    expect(other.rows.find((r) => r.key === 'configuration')?.value).toBe(
      'Committed (this host owns the VM)',
    );

    const mute = copyFacts(describeCopy(facts({ host: 'lab1', pid: 9 }), 'source', 'web01'));
    expect(mute.presence).toBe('unknown');
    expect(mute.rows.find((r) => r.key === 'run-state')?.value).toBe('Not answering its monitor');
    expect(mute.rows.find((r) => r.key === 'migration')?.value).toBe('Unknown');
    const idle = copyFacts(
      describeCopy(facts({ host: 'lab1', pid: 9, runState: 'paused', migration: 'none' }), 'source', 'web01'),
    );
    expect(idle.rows.find((r) => r.key === 'migration')?.value).toBe('None');

    const postcopy = copyFacts(
      describeCopy(
        facts({ host: 'lab1', pid: 9, runState: 'postmigrate', migration: 'postcopy-paused' }),
        'source',
        'web01',
      ),
    );
    expect(inPostcopy(postcopy)).toBe(true);
    expect(postcopy.rows.find((r) => r.key === 'migration')?.value).toBe(
      'Post-copy paused (its link was lost)',
    );

    const odd = copyFacts('lab1 says something new');
    expect(odd.rows).toEqual([]);
    expect(odd.text).toBe('lab1 says something new');
  });

  it('marks only moves waiting for the administrator', () => {
    expect(needsAdministrator(record('a'))).toBe(true);
    expect(needsAdministrator(record('a', {}, 'resolved'))).toBe(false);
    expect(needsAdministrator(record('a', {}, 'recovered'))).toBe(false);
    expect(needsAdministrator(record('a', {}, null))).toBe(false);
  });
});
