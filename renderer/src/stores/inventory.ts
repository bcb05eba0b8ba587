// Hosts and VMs as the main window shows them, the selection, and the VM actions. Refreshed when the
// engine says the inventory changed, after every action, and every few seconds for changes made by
// other Ferry processes (the CLI) that send no events here.
import { defineStore } from 'pinia';
import { computed, ref } from 'vue';
import type { HostSummary, SetupStatus, VmAction, VmSummary } from '../../../engine/api/index.js';
import { apiClient } from '../api/index.js';
import { errorText } from '../api/errors.js';

export const useInventoryStore = defineStore('inventory', () => {
  const setup = ref<SetupStatus | null>(null);
  const hosts = ref<HostSummary[]>([]);
  const vms = ref<VmSummary[]>([]);
  const selectedHost = ref<string | null>(null);
  const selectedVm = ref<string | null>(null);
  const loaded = ref(false);
  const error = ref<string | null>(null);
  /** VM name → the action running on it, so its buttons can wait. */
  const busy = ref<Record<string, VmAction>>({});
  /** A host-level operation in progress (lab up, add host, …), with what it is doing. */
  const working = ref<string | null>(null);

  const hostVms = computed(() => vms.value.filter((v) => v.host === selectedHost.value));
  const currentVm = computed(() => vms.value.find((v) => v.name === selectedVm.value) ?? null);
  const currentHost = computed(() => hosts.value.find((h) => h.name === selectedHost.value) ?? null);

  let inFlight: Promise<void> | null = null;
  let again = false;

  async function load(): Promise<void> {
    const api = apiClient();
    const [s, h, v] = await Promise.all([
      api.call('setupStatus', {}),
      api.call('listHosts', {}),
      api.call('listVms', {}),
    ]);
    setup.value = s;
    hosts.value = h;
    vms.value = v;
    loaded.value = true;
    error.value = null;
    if (!h.some((x) => x.name === selectedHost.value)) selectedHost.value = h[0]?.name ?? null;
    // A selected VM that moved away stays selected only while it is on the shown host.
    if (selectedVm.value && !v.some((x) => x.name === selectedVm.value && x.host === selectedHost.value)) {
      selectedVm.value = null;
    }
  }

  /** Coalesces: a refresh asked for while one runs triggers exactly one more afterwards. */
  function refresh(): Promise<void> {
    if (inFlight) {
      again = true;
      return inFlight;
    }
    inFlight = (async () => {
      try {
        do {
          again = false;
          await load();
        } while (again);
      } catch (err) {
        error.value = errorText(err);
      } finally {
        inFlight = null;
      }
    })();
    return inFlight;
  }

  function selectHost(name: string | null): void {
    if (selectedHost.value !== name) selectedVm.value = null;
    selectedHost.value = name;
  }

  function selectVm(name: string | null): void {
    selectedVm.value = name;
  }

  /** Runs a VM action; throws (for a toast) after refreshing, so the table shows the truth either way. */
  async function vmAction(name: string, action: VmAction): Promise<void> {
    busy.value = { ...busy.value, [name]: action };
    try {
      await apiClient().call('vmAction', { name, action });
    } finally {
      const { [name]: _done, ...rest } = busy.value;
      busy.value = rest;
      await refresh();
    }
  }

  async function hostOperation<T>(what: string, run: () => Promise<T>): Promise<T> {
    working.value = what;
    try {
      return await run();
    } finally {
      working.value = null;
      await refresh();
    }
  }

  const addLocalHost = (name = 'local') =>
    hostOperation('Adding this computer…', () => apiClient().call('addLocalHost', { name }));
  const removeHost = (host: string) =>
    hostOperation(`Removing ${host}…`, () => apiClient().call('removeHost', { host }));
  const labUp = (withVm = true) =>
    hostOperation('Creating the lab…', () => apiClient().call('labUp', { hosts: 2, withVm }));
  const labDown = () => hostOperation('Removing the lab…', () => apiClient().call('labDown', {}));

  return {
    setup,
    hosts,
    vms,
    selectedHost,
    selectedVm,
    loaded,
    error,
    busy,
    working,
    hostVms,
    currentVm,
    currentHost,
    refresh,
    selectHost,
    selectVm,
    vmAction,
    addLocalHost,
    removeHost,
    labUp,
    labDown,
  };
});
