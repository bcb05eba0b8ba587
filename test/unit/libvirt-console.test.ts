// @vitest-environment jsdom
// The console's side of libvirt hosts, against a fake ApiClient: how the "Connect to Server…" dialog
// reads a URI, its flow (an unknown SSH host key accepted on a second step, the qemu+tcp:// warning,
// errors for under the form), how hosts read in the host list, and the inventory store. The dialog and
// list as mounted components are in libvirt-console-components.test.ts.
import { createPinia, setActivePinia } from 'pinia';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { nextTick } from 'vue';
import { FerryError, type HostRecord } from '../../engine/api/index.js';
import { setApiClient } from '../../renderer/src/api/index.js';
import { useConnectServer } from '../../renderer/src/composables/useConnectServer.js';
import {
  disconnectedText,
  hostKeyFile,
  hostNameProblem,
  hostStatus,
  hostTags,
  keyTypeLabel,
  parseLibvirtUri,
  suggestHostName,
  uriWarning,
} from '../../renderer/src/model/connect-server.js';
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

let api: FakeApi;

beforeEach(() => {
  setActivePinia(createPinia());
  api = fakeEngine();
  setApiClient(api);
});

afterEach(() => setApiClient(null));

describe('libvirt URIs as the dialog reads them', () => {
  it('finds the transport and the server', () => {
    expect(parseLibvirtUri('qemu+ssh://root@server.example.com/system')).toEqual({
      driver: 'qemu',
      transport: 'ssh',
      host: 'server.example.com',
      user: 'root',
    });
    expect(parseLibvirtUri('qemu:///system')).toMatchObject({ transport: 'local', host: null });
    expect(parseLibvirtUri('qemu://kvm1/system')).toMatchObject({ transport: 'tls', host: 'kvm1' });
    expect(parseLibvirtUri('qemu+tcp://[fd00::5]:16509/system')).toMatchObject({
      transport: 'tcp',
      host: 'fd00::5',
    });
    expect(parseLibvirtUri('server.example.com')).toBeNull();
  });

  it('suggests a valid, unused host name from the URI', () => {
    expect(suggestHostName('qemu+ssh://root@Server.Example.com/system')).toBe('server');
    expect(suggestHostName('qemu+ssh://root@10.0.0.5/system')).toBe('10-0-0-5');
    expect(suggestHostName('qemu:///system')).toBe('localhost');
    expect(suggestHostName('qemu+ssh://root@kvm_1.lan/system', ['kvm-1'])).toBe('kvm-1-2');
    expect(suggestHostName('nonsense')).toBe('');
    expect(hostNameProblem('Server', [])).toMatch(/lower-case/);
    expect(hostNameProblem('kvm1', ['kvm1'])).toMatch(/already/);
    expect(hostNameProblem('kvm1', [])).toBeNull();
  });

  it('warns about qemu+tcp:// only', () => {
    expect(uriWarning('qemu+tcp://10.0.0.5/system')).toMatch(/unauthenticated/);
    expect(uriWarning('qemu+ssh://root@10.0.0.5/system')).toBeNull();
    expect(uriWarning('qemu+tls://10.0.0.5/system')).toBeNull();
  });

  it('names key types as ssh does and points at the file to compare with', () => {
    expect(keyTypeLabel('ssh-ed25519')).toBe('ED25519');
    expect(keyTypeLabel('ecdsa-sha2-nistp256')).toBe('ECDSA');
    expect(hostKeyFile('ssh-rsa')).toBe('/etc/ssh/ssh_host_rsa_key.pub');
    expect(hostKeyFile(null)).toBe('/etc/ssh/ssh_host_ed25519_key.pub');
  });
});

describe('the Connect to Server flow', () => {
  function dialog() {
    const inv = useInventoryStore();
    return useConnectServer({
      connect: (input) => inv.addLibvirtHost(input),
      takenNames: () => inv.hosts.map((h) => h.name),
    });
  }

  it('an unknown host key goes to the fingerprint step; accepting calls again with it', async () => {
    api.handlers.addLibvirtHost = (input: { acceptHostKey: string | null }) => {
      if (input.acceptHostKey === null) throw unknownHostKey();
      return record('server');
    };
    const d = dialog();
    d.form.uri = 'qemu+ssh://root@server.example.com/system';
    await nextTick();
    expect(d.form.name).toBe('server');
    d.form.sshKey = ' /root/.ssh/lab_key ';

    expect(await d.submit()).toBeNull();
    expect(d.step.value).toBe('host-key');
    expect(d.hostKey.value).toEqual({
      fingerprint: FINGERPRINT,
      keyType: 'ssh-ed25519',
      host: 'server.example.com',
    });
    expect(d.error.value).toBeNull();

    expect(await d.accept()).toMatchObject({ name: 'server' });
    const first = {
      name: 'server',
      uri: 'qemu+ssh://root@server.example.com/system',
      sshKey: '/root/.ssh/lab_key',
      acceptHostKey: null,
    };
    expect(api.inputs('addLibvirtHost')).toEqual([first, { ...first, acceptHostKey: FINGERPRINT }]);
    expect(useInventoryStore().selectedHost).toBe('server');
  });

  it('another error after accepting goes back to the form with the engine’s message', async () => {
    api.handlers.addLibvirtHost = (input: { acceptHostKey: string | null }) => {
      if (input.acceptHostKey === null) throw unknownHostKey();
      throw new FerryError('auth-failed', 'root@server.example.com refused the key');
    };
    const d = dialog();
    d.form.uri = 'qemu+ssh://root@server.example.com/system';
    await nextTick();
    await d.submit();
    await d.accept();
    expect(d.step.value).toBe('form');
    expect(d.error.value).toBe('root@server.example.com refused the key');
  });

  it('warns about qemu+tcp:// and has no SSH key for it', async () => {
    const d = dialog();
    d.form.uri = 'qemu+tcp://10.0.0.5/system';
    await nextTick();
    expect(d.warning.value).toMatch(/unauthenticated/);
    expect(d.sshKeyApplies.value).toBe(false);
    expect(d.form.name).toBe('10-0-0-5');
  });

  it('keeps a typed name, and calls nothing while the form is incomplete', async () => {
    api.handlers.addLibvirtHost = () => record('x');
    await useInventoryStore().refresh();
    const d = dialog();
    expect(await d.submit()).toBeNull();
    expect(d.uriError.value).toMatch(/connection URI/);
    d.form.uri = 'qemu+ssh://root@a.example.com/system';
    await nextTick();
    d.editName('local');
    d.form.uri = 'qemu+ssh://root@b.example.com/system';
    await nextTick();
    expect(d.form.name).toBe('local');
    expect(await d.submit()).toBeNull();
    expect(d.nameError.value).toMatch(/already has a host named local/);
    expect(api.inputs('addLibvirtHost')).toEqual([]);
  });

  it('an unknown host key without a fingerprint is shown as an error, not as a step', async () => {
    api.handlers.addLibvirtHost = () => {
      throw new FerryError('host-key-unknown', 'the host key of kvm1 is not known');
    };
    const d = dialog();
    d.form.uri = 'qemu+ssh://root@kvm1/system';
    await nextTick();
    await d.submit();
    expect(d.step.value).toBe('form');
    expect(d.error.value).toBe('the host key of kvm1 is not known');
  });
});

describe('hosts as the host list shows them', () => {
  it('tags each host with its kind, a libvirt lab machine twice', () => {
    const labels = (h: Parameters<typeof hostTags>[0]) => hostTags(h).map((t) => t.label);
    expect(labels({ kind: 'local', lab: false })).toEqual(['local']);
    expect(labels({ kind: 'lab', lab: true })).toEqual(['lab']);
    expect(labels({ kind: 'libvirt', lab: false })).toEqual(['libvirt']);
    expect(labels({ kind: 'libvirt', lab: true })).toEqual(['libvirt', 'lab']);
  });

  it('says whether a host is connected and why not', () => {
    expect(hostStatus(summary('a'))).toEqual({ connected: true, text: 'Connected', reason: null });
    const down = summary('b', { connected: false, connectionError: 'No route to host' });
    expect(hostStatus(down)).toEqual({ connected: false, text: 'Disconnected', reason: 'No route to host' });
    expect(disconnectedText(down)).toBe('Disconnected: No route to host');
    expect(disconnectedText(summary('c', { connected: false }))).toBe('Disconnected');
  });
});

describe('inventory store with libvirt hosts', () => {
  it('still shows the hosts (one disconnected) when the VMs cannot be listed', async () => {
    const inv = useInventoryStore();
    api.handlers.listHosts = () => [summary('kvm1', { connected: false, connectionError: 'gone' })];
    api.handlers.listVms = () => {
      throw new FerryError('host-disconnected', 'kvm1 is disconnected');
    };
    await inv.refresh();
    expect(inv.loaded).toBe(true);
    expect(inv.hosts.map((h) => [h.name, h.connected])).toEqual([['kvm1', false]]);
    expect(inv.error).toBe('kvm1 is disconnected');
  });

  it('keeps reading the hosts while the VMs take long to answer', async () => {
    const inv = useInventoryStore();
    let connected = true;
    api.handlers.listHosts = () => [summary('kvm1', { connected })];
    api.handlers.listVms = () => new Promise(() => undefined); // a server that stopped answering
    void inv.refresh();
    await vi.waitFor(() => expect(inv.hosts.map((h) => h.connected)).toEqual([true]));
    connected = false;
    void inv.refresh(); // the periodic refresh: the hosts are read again, the VMs wait for the first call
    await vi.waitFor(() => expect(inv.hosts.map((h) => h.connected)).toEqual([false]));
    expect(api.inputs('listHosts')).toHaveLength(2);
    expect(api.inputs('listVms')).toHaveLength(1);
  });

  it('a disconnected host’s selected VM is no longer offered for actions', async () => {
    const inv = useInventoryStore();
    let connected = true;
    api.handlers.listHosts = () => [summary('kvm1', { connected })];
    api.handlers.listVms = () => [vm('web1', 'kvm1')];
    await inv.refresh();
    inv.selectVm('web1');
    expect(inv.currentVm?.name).toBe('web1');
    connected = false;
    await inv.refresh();
    expect(inv.currentVm).toBeNull();
  });

  it('marks a host as reconnecting while its connection is opened again, then reads the hosts', async () => {
    const inv = useInventoryStore();
    let release!: () => void;
    api.handlers.reconnectHost = () => new Promise((r) => (release = () => r(summary('kvm1'))));
    const done = inv.reconnectHost('kvm1');
    await vi.waitFor(() => expect(api.inputs('reconnectHost')).toHaveLength(1));
    expect(inv.reconnecting).toEqual({ kvm1: true });
    release();
    expect((await done).connected).toBe(true);
    expect(inv.reconnecting).toEqual({});
    expect(api.inputs('listHosts')).toHaveLength(1);
  });

  it('adding a libvirt host selects it; a failure leaves the selection alone', async () => {
    const inv = useInventoryStore();
    await inv.refresh();
    api.handlers.addLibvirtHost = (): HostRecord => record('kvm1');
    api.handlers.listHosts = () => [summary('local', { kind: 'local', uri: null }), summary('kvm1')];
    await inv.addLibvirtHost({
      name: 'kvm1',
      uri: 'qemu+ssh://root@kvm1/system',
      sshKey: null,
      acceptHostKey: null,
    });
    expect(inv.selectedHost).toBe('kvm1');
    api.handlers.addLibvirtHost = () => {
      throw new FerryError('duplicate-host', 'Ferry already has a host named kvm1');
    };
    inv.selectHost('local');
    await expect(
      inv.addLibvirtHost({
        name: 'kvm1',
        uri: 'qemu+ssh://root@kvm1/system',
        sshKey: null,
        acceptHostKey: null,
      }),
    ).rejects.toMatchObject({ code: 'duplicate-host' });
    expect(inv.selectedHost).toBe('local');
    expect(inv.working).toBeNull();
  });
});
