// What the libvirt console tests share: a fake ApiClient and hosts/VMs as the engine returns them.
import {
  FerryError,
  type ApiClient,
  type HostRecord,
  type HostSummary,
  type MethodName,
  type ServerEvent,
  type SetupStatus,
  type VmSummary,
} from '../../engine/api/index.js';

type Handler = (input: never) => unknown;

export class FakeApi implements ApiClient {
  readonly calls: { method: MethodName; input: unknown }[] = [];
  readonly handlers: Partial<Record<MethodName, Handler>> = {};

  call = (async (method: MethodName, input: unknown) => {
    this.calls.push({ method, input });
    const h = this.handlers[method];
    if (!h) throw new FerryError('internal', `no fake for ${method}`);
    return h(input as never);
  }) as ApiClient['call'];

  subscribe(_l: (e: ServerEvent) => void): () => void {
    return () => undefined;
  }

  inputs(method: MethodName): unknown[] {
    return this.calls.filter((c) => c.method === method).map((c) => c.input);
  }
}

export const FINGERPRINT = 'SHA256:' + 'a'.repeat(43);

export function unknownHostKey(): FerryError {
  return new FerryError(
    'host-key-unknown',
    'The SSH host key of server.example.com is not known',
    undefined,
    {
      fingerprint: FINGERPRINT,
      keyType: 'ssh-ed25519',
      host: 'server.example.com',
    },
  );
}

export function record(name: string, over: Partial<HostRecord> = {}): HostRecord {
  return {
    name,
    kind: 'libvirt',
    stateDir: `/tmp/${name}`,
    migrationAddress: '10.0.0.5',
    portBase: 40000,
    vmDir: '/var/lib/libvirt/images',
    netns: null,
    uri: `qemu+ssh://root@${name}.example.com/system`,
    lab: false,
    sshKey: null,
    ...over,
  };
}

export function summary(name: string, over: Partial<HostSummary> = {}): HostSummary {
  return {
    ...record(name),
    vmCount: 0,
    runningCount: 0,
    connected: true,
    connectionError: null,
    warning: null,
    ...over,
  };
}

export function vm(name: string, host: string, state: VmSummary['state'] = 'running'): VmSummary {
  return {
    name,
    uuid: '6f1c1a52-0c8e-4d1c-9a57-1d2f3b4c5d6e',
    host,
    state,
    memoryMiB: 128,
    cpus: 1,
    machineType: 'pc',
    pid: null,
    startedAt: null,
    reason: null,
  };
}

/** A fake engine with this computer as its only host and no VMs. */
export function fakeEngine(): FakeApi {
  const api = new FakeApi();
  api.handlers.setupStatus = (): SetupStatus => ({
    qemuInstalled: true,
    qemuVersion: '7.2.22',
    installHint: null,
    hostCount: 1,
    labUp: false,
  });
  api.handlers.listHosts = () => [summary('local', { kind: 'local', uri: null })];
  api.handlers.listVms = () => [];
  return api;
}
