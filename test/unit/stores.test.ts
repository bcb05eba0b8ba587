// @vitest-environment jsdom
// The console's Pinia stores against a fake ApiClient: what the main window and the progress view
// read from them as the engine answers and its events arrive.
import { createPinia, setActivePinia } from 'pinia';
import { isReactive } from 'vue';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  FerryError,
  type ApiClient,
  type HostSummary,
  type MethodName,
  type MigrationEvent,
  type MigrationRecord,
  type Sample,
  type ServerEvent,
  type Summary,
  type VmSummary,
} from '../../engine/api/index.js';
import { setApiClient } from '../../renderer/src/api/index.js';
import { useInventoryStore } from '../../renderer/src/stores/inventory.js';
import { useMigrationsStore } from '../../renderer/src/stores/migrations.js';
import { DARK_CLASS, initialTheme, THEME_KEY, useUiStore } from '../../renderer/src/stores/ui.js';

type Handler = (input: never) => unknown;

class FakeApi implements ApiClient {
  readonly calls: { method: MethodName; input: unknown }[] = [];
  readonly handlers: Partial<Record<MethodName, Handler>> = {};
  private readonly listeners = new Set<(e: ServerEvent) => void>();

  call = (async (method: MethodName, input: unknown) => {
    this.calls.push({ method, input });
    const h = this.handlers[method];
    if (!h) throw new FerryError('internal', `no fake for ${method}`);
    return h(input as never);
  }) as ApiClient['call'];

  subscribe(l: (e: ServerEvent) => void): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }

  count(method: MethodName): number {
    return this.calls.filter((c) => c.method === method).length;
  }
}

function host(name: string, vmCount = 0): HostSummary {
  return {
    name,
    kind: 'lab',
    stateDir: `/tmp/${name}`,
    migrationAddress: '127.0.0.1',
    portBase: 40000,
    vmDir: '/tmp/lab/shared',
    netns: null,
    uri: null,
    lab: true,
    sshKey: null,
    vmCount,
    runningCount: vmCount,
    connected: true,
    connectionError: null,
    warning: null,
  };
}

function vm(name: string, hostName: string, state: VmSummary['state'] = 'running'): VmSummary {
  return {
    name,
    uuid: '6f1c1a52-0c8e-4d1c-9a57-1d2f3b4c5d6e',
    host: hostName,
    state,
    memoryMiB: 512,
    cpus: 1,
    machineType: 'pc-q35-7.2',
    pid: 123,
    startedAt: '2026-01-01T00:00:00.000Z',
    reason: null,
  };
}

function sample(at: number, pass: number, phase = 2): Sample {
  return {
    at,
    phase,
    pass,
    bytesSent: at * 1000,
    remainingBytes: 64 * 1048576 - at * 1000,
    totalBytes: 512 * 1048576,
    dirtyBytesPerSec: 4 * 1048576,
    throughputMiBs: 20,
    expectedDowntimeMs: 120,
    throttlePct: 0,
    downtimeLimitMs: 300,
  };
}

const OPTIONS = {
  performance: 'compression',
  channels: 4,
  bandwidthMiBs: 20,
  downtimeMs: 300,
  downtimeCeilingMs: 2000,
  convergence: 'raise-downtime',
  compression: 'zstd',
} as const;

function summary(id: string, status: Summary['status'] = 'completed'): Summary {
  return {
    type: 'summary',
    id,
    status,
    reason: status === 'completed' ? null : 'cancelled by the administrator',
    vm: 'demo',
    from: 'lab1',
    to: 'lab2',
    kind: 'live',
    options: OPTIONS,
    totalMs: 6000,
    downtimeMs: 40,
    qemuDowntimeMs: 30,
    bytes: 70 * 1048576,
    passes: 3,
    storageCopyMs: null,
    phases: [1, 2, 3, 4, 5, 6].map((phase, i) => ({
      phase,
      name: (['setup', 'memory', 'modified-pages', 'storage-handle', 'online', 'network-cleanup'] as const)[
        i
      ]!,
      ms: status === 'completed' ? phase * 100 : phase <= 2 ? phase * 100 : null,
    })),
    warnings: [],
  };
}

/** The events of a move up to phase 2, pass 3, as the engine sends them. */
function eventsUpToPass3(id: string): MigrationEvent[] {
  return [
    { type: 'started', id, at: 100, vm: 'demo', from: 'lab1', to: 'lab2', kind: 'live', options: OPTIONS },
    { type: 'phase', id, at: 101, phase: 1, name: 'setup', state: 'started', ms: null },
    { type: 'phase', id, at: 1300, phase: 1, name: 'setup', state: 'completed', ms: 1199 },
    { type: 'phase', id, at: 1300, phase: 2, name: 'memory', state: 'started', ms: null },
    { type: 'sample', id, at: 1550, sample: sample(1550, 1) },
    { type: 'sample', id, at: 1800, sample: sample(1800, 2) },
    { type: 'sample', id, at: 2050, sample: sample(2050, 3) },
  ];
}

let api: FakeApi;

beforeEach(() => {
  setActivePinia(createPinia());
  api = new FakeApi();
  api.handlers.setupStatus = () => ({
    qemuInstalled: true,
    qemuVersion: '7.2.22',
    installHint: null,
    hostCount: 2,
    labUp: true,
  });
  api.handlers.listHosts = () => [host('lab1', 1), host('lab2')];
  api.handlers.listVms = () => [vm('demo', 'lab1'), vm('other', 'lab2', 'stopped')];
  api.handlers.listMigrations = () => [];
  api.handlers.queue = () => [];
  setApiClient(api);
});

afterEach(() => {
  setApiClient(null);
  localStorage.clear();
  document.documentElement.className = '';
});

describe('inventory store', () => {
  it('loads hosts and VMs, selects the first host and shows its VMs', async () => {
    const inv = useInventoryStore();
    await inv.refresh();
    expect(inv.loaded).toBe(true);
    expect(inv.hosts.map((h) => h.name)).toEqual(['lab1', 'lab2']);
    expect(inv.selectedHost).toBe('lab1');
    expect(inv.hostVms.map((v) => v.name)).toEqual(['demo']);
    inv.selectHost('lab2');
    expect(inv.hostVms.map((v) => v.name)).toEqual(['other']);
  });

  it('forgets a selected VM once it has moved off the shown host', async () => {
    const inv = useInventoryStore();
    await inv.refresh();
    inv.selectVm('demo');
    expect(inv.currentVm?.name).toBe('demo');
    api.handlers.listVms = () => [vm('demo', 'lab2')];
    await inv.refresh();
    expect(inv.selectedHost).toBe('lab1');
    expect(inv.currentVm).toBeNull();
  });

  it('coalesces refreshes: one more load after the running one, however many were asked for', async () => {
    const inv = useInventoryStore();
    await Promise.all([inv.refresh(), inv.refresh(), inv.refresh(), inv.refresh()]);
    expect(api.count('listVms')).toBe(2);
  });

  it('runs a VM action, marking the VM busy meanwhile, then reads the inventory again', async () => {
    const inv = useInventoryStore();
    await inv.refresh();
    let release!: () => void;
    api.handlers.vmAction = () => new Promise((r) => (release = () => r(vm('other', 'lab2'))));
    const done = inv.vmAction('other', 'start');
    await vi.waitFor(() => expect(api.count('vmAction')).toBe(1));
    expect(inv.busy).toEqual({ other: 'start' });
    release();
    await done;
    expect(inv.busy).toEqual({});
    expect(api.calls.find((c) => c.method === 'vmAction')?.input).toEqual({ name: 'other', action: 'start' });
    expect(api.count('listVms')).toBe(2);
  });

  it('keeps what it showed and reports the error when the engine fails', async () => {
    const inv = useInventoryStore();
    await inv.refresh();
    api.handlers.listVms = () => {
      throw new FerryError('state-corrupt', 'inventory.json is not valid JSON');
    };
    await inv.refresh();
    expect(inv.error).toBe('inventory.json is not valid JSON');
    expect(inv.vms.map((v) => v.name)).toEqual(['demo', 'other']);
  });
});

describe('migrations store', () => {
  it('follows a move through its events: phases, passes, samples and the VM status', () => {
    const store = useMigrationsStore();
    for (const e of eventsUpToPass3('m-1')) store.applyMigrationEvent(e);
    const m = store.moves['m-1']!;
    expect(m.phases.map((p) => p.state)).toEqual([
      'done',
      'running',
      'pending',
      'pending',
      'pending',
      'pending',
    ]);
    expect(m.phases[0]!.ms).toBe(1199);
    expect(m.sampleCount).toBe(3);
    expect(m.pass).toBe(3);
    expect(store.running.map((x) => x.id)).toEqual(['m-1']);
    expect(store.moveStatusFor('demo')).toEqual({
      state: 'running',
      to: 'lab2',
      phase: 2,
      pass: 3,
      queuePosition: null,
      kind: 'live',
      copiedPct: null,
    });
  });

  it('keeps samples out of Vue reactivity (charts copy them) and ignores repeated events', () => {
    const store = useMigrationsStore();
    const events = eventsUpToPass3('m-1');
    for (const e of [...events, ...events]) store.applyMigrationEvent(e);
    const m = store.moves['m-1']!;
    expect(isReactive(m.samples)).toBe(false);
    expect(m.samples.map((s) => s.at)).toEqual([1550, 1800, 2050]);
    expect(m.phases.filter((p) => p.state === 'done')).toHaveLength(1);
  });

  it('tells listeners when a move ends, once, and reloads the history', async () => {
    const store = useMigrationsStore();
    const finished: string[] = [];
    store.onFinished((s) => finished.push(`${s.id}:${s.status}`));
    for (const e of eventsUpToPass3('m-1')) store.applyMigrationEvent(e);
    const end = { ...summary('m-1'), at: 6000 };
    store.applyMigrationEvent(end);
    store.applyMigrationEvent(end);
    expect(finished).toEqual(['m-1:completed']);
    const m = store.moves['m-1']!;
    expect(m.status).toBe('completed');
    expect(m.phases.map((p) => p.state)).toEqual(['done', 'done', 'done', 'done', 'done', 'done']);
    expect(m.phases.map((p) => p.ms)).toEqual([100, 200, 300, 400, 500, 600]);
    expect(store.moveStatusFor('demo')).toBeNull();
    await vi.waitFor(() => expect(api.count('listMigrations')).toBeGreaterThan(0));
  });

  it('marks where a cancelled move stopped', () => {
    const store = useMigrationsStore();
    for (const e of eventsUpToPass3('m-1')) store.applyMigrationEvent(e);
    store.applyMigrationEvent({ ...summary('m-1', 'cancelled'), at: 2100 });
    const m = store.moves['m-1']!;
    expect(m.status).toBe('cancelled');
    expect(m.reason).toBe('cancelled by the administrator');
    expect(m.phases.map((p) => p.state)).toEqual([
      'done',
      'failed',
      'pending',
      'pending',
      'pending',
      'pending',
    ]);
  });

  it('joining a move half-way fetches its record and merges the samples it missed', async () => {
    const store = useMigrationsStore();
    const rec: MigrationRecord = {
      id: 'm-2',
      vm: 'demo',
      from: 'lab1',
      to: 'lab2',
      kind: 'live',
      request: { vm: 'demo', to: 'lab2', kind: 'live', includeStorage: false, keepSource: false },
      status: 'running',
      reason: null,
      requestedAt: '2026-01-01T00:00:00.000Z',
      startedAt: '2026-01-01T00:00:00.100Z',
      endedAt: null,
      phase: 2,
      pass: 1,
      options: OPTIONS,
      preflight: { errors: [], warnings: [] },
      phases: [
        { phase: 1, name: 'setup', startedAt: 101, endedAt: 1300 },
        { phase: 2, name: 'memory', startedAt: 1300, endedAt: null },
        { phase: 3, name: 'modified-pages', startedAt: null, endedAt: null },
        { phase: 4, name: 'storage-handle', startedAt: null, endedAt: null },
        { phase: 5, name: 'online', startedAt: null, endedAt: null },
        { phase: 6, name: 'network-cleanup', startedAt: null, endedAt: null },
      ],
      samples: [sample(1550, 1), sample(1800, 2)],
      events: [],
      summary: null,
    };
    let release!: () => void;
    api.handlers.migration = () => new Promise((r) => (release = () => r(rec)));
    store.applyMigrationEvent({ type: 'sample', id: 'm-2', at: 2050, sample: sample(2050, 3) });
    await vi.waitFor(() => expect(api.count('migration')).toBe(1));
    store.applyMigrationEvent({ type: 'sample', id: 'm-2', at: 2300, sample: sample(2300, 3) });
    release();
    await vi.waitFor(() => expect(store.moves['m-2']!.hydrated).toBe(true));
    const m = store.moves['m-2']!;
    expect(m.samples.map((s) => s.at)).toEqual([1550, 1800, 2050, 2300]);
    expect(m.vm).toBe('demo');
    expect(m.phases[0]!.ms).toBe(1199);
    expect(m.phases[1]!.state).toBe('running');
    expect(store.moveStatusFor('demo')).toMatchObject({ phase: 2, pass: 3 });
  });

  it('starts a move through the API and shows moves queued by another process', async () => {
    const store = useMigrationsStore();
    api.handlers.startMove = () => ({ id: 'm-3' });
    expect(await store.startMove({ vm: 'demo', to: 'lab2' })).toBe('m-3');
    expect(api.calls.find((c) => c.method === 'startMove')?.input).toEqual({ vm: 'demo', to: 'lab2' });
    api.handlers.queue = () => [
      {
        id: 'm-9',
        vm: 'other',
        from: 'lab2',
        to: 'lab1',
        kind: 'live',
        state: 'queued',
        position: 1,
        phase: 0,
      },
    ];
    await store.refresh();
    expect(store.queued.map((m) => m.id)).toEqual(['m-9']);
    expect(store.moveStatusFor('other')).toMatchObject({ state: 'queued', queuePosition: 1 });
  });
});

describe('ui store', () => {
  it('starts from the remembered theme, else the system preference', () => {
    expect(initialTheme({ getItem: () => 'dark' }, false)).toBe('dark');
    expect(initialTheme({ getItem: () => null }, true)).toBe('dark');
    expect(initialTheme({ getItem: () => 'nonsense' }, false)).toBe('light');
  });

  it('toggles light and dark, on the page and in localStorage', async () => {
    localStorage.setItem(THEME_KEY, 'light');
    const ui = useUiStore();
    expect(ui.theme).toBe('light');
    expect(document.documentElement.classList.contains(DARK_CLASS)).toBe(false);
    ui.toggleTheme();
    await vi.waitFor(() => expect(localStorage.getItem(THEME_KEY)).toBe('dark'));
    expect(document.documentElement.classList.contains(DARK_CLASS)).toBe(true);
  });

  it('opens one dialog target at a time per kind', () => {
    const ui = useUiStore();
    ui.openWizard('demo');
    ui.openSettings('lab1');
    ui.openProgress('m-1');
    expect([ui.wizardVm, ui.settingsHost, ui.progressId]).toEqual(['demo', 'lab1', 'm-1']);
    ui.closeWizard();
    expect(ui.wizardVm).toBeNull();
  });
});
