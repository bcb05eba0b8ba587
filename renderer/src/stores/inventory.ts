// Hosts and VMs as the main window shows them, the selection, and the VM actions. Refreshed when the
// engine says the inventory changed, after every action, and every few seconds for changes made by
// other Ferry processes (the CLI) that send no events here.
import { defineStore } from 'pinia';
import { computed, ref } from 'vue';
import type {
  HostRecord,
  HostSummary,
  Input,
  SetupStatus,
  VmAction,
  VmSummary,
} from '../../../engine/api/index.js';
import { apiClient } from '../api/index.js';
import { errorText } from '../api/errors.js';

/** Coalesces: a run asked for while one is going triggers exactly one more afterwards. */
function coalesced(run: () => Promise<void>): () => Promise<void> {
  let inFlight: Promise<void> | null = null;
  let again = false;
  return () => {
    if (inFlight) {
      again = true;
      return inFlight;
    }
    inFlight = (async () => {
      try {
        do {
          again = false;
          await run();
        } while (again);
      } finally {
        inFlight = null;
      }
    })();
    return inFlight;
  };
}

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
  /** Hosts whose connection is being opened again (Reconnect). */
  const reconnecting = ref<Record<string, true>>({});

  const hostVms = computed(() => vms.value.filter((v) => v.host === selectedHost.value));
  const currentHost = computed(() => hosts.value.find((h) => h.name === selectedHost.value) ?? null);
  /** The selected VM, while its host is connected (a disconnected host's VMs cannot be acted on). */
  const currentVm = computed(() =>
    currentHost.value?.connected === false
      ? null
      : (vms.value.find((v) => v.name === selectedVm.value) ?? null),
  );

  async function loadHosts(): Promise<void> {
    const h = await apiClient().call('listHosts', {});
    hosts.value = h;
    loaded.value = true;
    const names = h.map((x) => x.name);
    if (!names.includes(selectedHost.value ?? '')) selectedHost.value = names[0] ?? null;
  }

  async function loadVms(): Promise<void> {
    const v = await apiClient().call('listVms', {});
    vms.value = v;
    // A selected VM that moved away stays selected only while it is on the shown host.
    const sel = selectedVm.value;
    if (sel && !v.some((x) => x.name === sel && x.host === selectedHost.value)) selectedVm.value = null;
  }

  async function loadSetup(): Promise<void> {
    setup.value = await apiClient().call('setupStatus', {});
  }

  // Each list is read and coalesced on its own: while the VMs of a server that just went away take
  // long to answer (or fail), the host list keeps being read and shows that host as disconnected.
  const refreshHosts = coalesced(loadHosts);
  const refreshVms = coalesced(loadVms);
  const refreshSetup = coalesced(loadSetup);

  /** Reads hosts, VMs and the setup status again; keeps what it showed and reports the first error. */
  async function refresh(): Promise<void> {
    const results = await Promise.allSettled([refreshSetup(), refreshHosts(), refreshVms()]);
    const failed = results.find((r) => r.status === 'rejected');
    error.value = failed ? errorText(failed.reason) : null;
  }

  function selectHost(name: string | null): void {
    if (selectedHost.value !== name) selectedVm.value = null;
    selectedHost.value = name;
  }

  function selectVm(name: string | null): void {
    selectedVm.value = name;
  }

  /** Runs a VM action; throws (for a toast) after refreshing, so the table shows the truth either way. */
  async function vmAction(name: string, action: VmAction, host?: string): Promise<void> {
    busy.value = { ...busy.value, [name]: action };
    try {
      await apiClient().call('vmAction', host === undefined ? { name, action } : { name, action, host });
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

  /** "Connect to Server…": adds the libvirt host and shows it. Errors (an unknown host key…) are thrown. */
  async function addLibvirtHost(input: Input<'addLibvirtHost'>): Promise<HostRecord> {
    const rec = await hostOperation(`Connecting to ${input.name}…`, () =>
      apiClient().call('addLibvirtHost', input),
    );
    selectHost(rec.name);
    return rec;
  }

  /** Opens a host's connection again; the host list shows the outcome, errors are thrown for a toast. */
  async function reconnectHost(host: string): Promise<HostSummary> {
    reconnecting.value = { ...reconnecting.value, [host]: true };
    try {
      return await apiClient().call('reconnectHost', { host });
    } finally {
      const { [host]: _done, ...rest } = reconnecting.value;
      reconnecting.value = rest;
      await refresh();
    }
  }

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
    reconnecting,
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
    addLibvirtHost,
    reconnectHost,
  };
});
