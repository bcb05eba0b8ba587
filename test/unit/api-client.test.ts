// The renderer's API clients: the web mode's WebSocket client against the real web server (with a stub
// engine), and the desktop bridge wrapper. Both check answers against the contract and give errors one shape.
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import {
  FerryError,
  type ApiClient,
  type HostSummary,
  type MethodName,
  type ServerEvent,
} from '../../engine/api/index.js';
import { startWebServer, type WebServer, type WebService } from '../../engine/web/server.js';
import { bridgeClient } from '../../renderer/src/api/bridge-client.js';
import { ApiCallError, errorText, toApiCallError } from '../../renderer/src/api/errors.js';
import {
  createWsClient,
  takeToken,
  TOKEN_KEY,
  wsUrlFor,
  type ConnectionState,
  type SocketFactory,
  type WsApiClient,
} from '../../renderer/src/api/ws-client.js';

const HOST: HostSummary = {
  name: 'lab1',
  kind: 'lab',
  stateDir: '/tmp/lab1',
  migrationAddress: '127.0.0.1',
  portBase: 40000,
  vmDir: '/tmp/lab/shared',
  netns: null,
  uri: null,
  lab: true,
  sshKey: null,
  vmCount: 1,
  runningCount: 1,
  connected: true,
  connectionError: null,
  warning: null,
};

class StubService implements WebService {
  private readonly listeners = new Set<(e: ServerEvent) => void>();
  async call(method: string): Promise<unknown> {
    switch (method) {
      case 'listHosts':
        return [HOST];
      case 'queue':
        return [{ not: 'a queue entry' }]; // drifted engine: the client must notice
      case 'removeHost':
        throw new FerryError('unknown-host', 'no host named "zz"', 'see: ferry host list');
      case 'addLibvirtHost':
        throw new FerryError('host-key-unknown', 'the host key of kvm1 is not known', undefined, {
          fingerprint: FINGERPRINT,
          keyType: 'ssh-ed25519',
        });
      default:
        return null;
    }
  }
  subscribe(l: (e: ServerEvent) => void): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }
  push(e: ServerEvent): void {
    for (const l of this.listeners) l(e);
  }
}

const FINGERPRINT = 'SHA256:' + 'b'.repeat(43);

const nodeSocket: SocketFactory = (url) => new WebSocket(url) as unknown as ReturnType<SocketFactory>;

let server: WebServer | null = null;
let client: WsApiClient | null = null;

afterEach(async () => {
  client?.close();
  client = null;
  await server?.close();
  server = null;
});

function url(s: WebServer, token = s.token): string {
  return `ws://127.0.0.1:${s.port}/api/ws?token=${token}`;
}

function waitForState(c: WsApiClient, state: ConnectionState): Promise<void> {
  if (c.state === state) return Promise.resolve();
  return new Promise((resolve) => {
    const off = c.onStateChange((s) => {
      if (s === state) {
        off();
        resolve();
      }
    });
  });
}

/** A page as `takeToken` sees it: its address bar, history and this tab's sessionStorage. */
function fakePage(href: string): {
  location: { href: string };
  history: { state: unknown; replaceState: (state: unknown, unused: string, url: string) => void };
  sessionStorage: { getItem: (k: string) => string | null; setItem: (k: string, v: string) => void };
  store: Map<string, string>;
} {
  const store = new Map<string, string>();
  const page = {
    location: { href },
    history: {
      state: null as unknown,
      replaceState: (_state: unknown, _unused: string, url: string) => {
        page.location.href = new URL(url, page.location.href).href;
      },
    },
    sessionStorage: {
      getItem: (k: string) => store.get(k) ?? null,
      setItem: (k: string, v: string) => void store.set(k, v),
    },
    store,
  };
  return page;
}

describe('the access token in the web console', () => {
  it('leaves the address bar when the page loads, kept for this tab only', () => {
    const page = fakePage('http://127.0.0.1:8080/?token=s3cr%2Bt&x=1#/hosts');
    expect(takeToken(page)).toBe('s3cr+t');
    expect(page.location.href).toBe('http://127.0.0.1:8080/?x=1#/hosts');
    expect(page.location.href).not.toContain('s3cr');
    expect(page.store.get(TOKEN_KEY)).toBe('s3cr+t');
    // A reload (no token in the URL any more) finds it in sessionStorage.
    expect(takeToken(page)).toBe('s3cr+t');
    expect(page.location.href).toBe('http://127.0.0.1:8080/?x=1#/hosts');
    // The socket still carries it, in its own URL (never shown).
    expect(wsUrlFor({ protocol: 'http:', host: '127.0.0.1:8080', search: '?x=1' }, takeToken(page))).toBe(
      'ws://127.0.0.1:8080/api/ws?token=s3cr%2Bt',
    );
  });

  it('works without storage, and without a token', () => {
    const page = fakePage('http://127.0.0.1:8080/?token=abc');
    page.sessionStorage.setItem = () => {
      throw new Error('storage disabled');
    };
    expect(takeToken(page)).toBe('abc');
    expect(page.location.href).toBe('http://127.0.0.1:8080/');
    expect(takeToken(fakePage('http://127.0.0.1:8080/'))).toBe('');
  });
});

describe('createWsClient (web mode)', () => {
  it('builds the socket URL from the page URL, token included', () => {
    expect(wsUrlFor({ protocol: 'http:', host: '127.0.0.1:8080', search: '?token=a%2Bb' })).toBe(
      'ws://127.0.0.1:8080/api/ws?token=a%2Bb',
    );
    expect(wsUrlFor({ protocol: 'https:', host: 'h:1', search: '' })).toBe('wss://h:1/api/ws?token=');
  });

  it('calls the engine and checks the answer against the contract', async () => {
    const service = new StubService();
    server = await startWebServer({ port: 0, host: '127.0.0.1', service, staticDir: '/nonexistent' });
    client = createWsClient({ url: url(server), socket: nodeSocket });
    // Calls made before the socket is open wait for it.
    expect(client.state).toBe('connecting');
    expect(await client.call('listHosts', {})).toEqual([HOST]);
    expect(client.state).toBe('open');

    const drifted = await client.call('queue', {}).catch((e: unknown) => e);
    expect(drifted).toBeInstanceOf(ApiCallError);
    expect((drifted as ApiCallError).code).toBe('bad-response');
  });

  it('rejects with the engine error: code, message and hint', async () => {
    server = await startWebServer({
      port: 0,
      host: '127.0.0.1',
      service: new StubService(),
      staticDir: '/x',
    });
    client = createWsClient({ url: url(server), socket: nodeSocket });
    const err = await client.call('removeHost', { host: 'zz' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApiCallError);
    expect(err).toMatchObject({
      code: 'unknown-host',
      message: 'no host named "zz"',
      hint: 'see: ferry host list',
    });
    expect(errorText(err)).toBe('no host named "zz" — see: ferry host list');
  });

  it('carries an error’s details (an unknown host key’s fingerprint)', async () => {
    server = await startWebServer({
      port: 0,
      host: '127.0.0.1',
      service: new StubService(),
      staticDir: '/x',
    });
    client = createWsClient({ url: url(server), socket: nodeSocket });
    const err = await client
      .call('addLibvirtHost', { name: 'kvm1', uri: 'qemu+ssh://root@kvm1/system' })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApiCallError);
    expect(err).toMatchObject({
      code: 'host-key-unknown',
      details: { fingerprint: FINGERPRINT, keyType: 'ssh-ed25519' },
    });
  });

  it('delivers server events to every subscriber until it unsubscribes', async () => {
    const service = new StubService();
    server = await startWebServer({ port: 0, host: '127.0.0.1', service, staticDir: '/x' });
    client = createWsClient({ url: url(server), socket: nodeSocket });
    await client.call('listHosts', {});
    const a: ServerEvent[] = [];
    const b: ServerEvent[] = [];
    const offA = client.subscribe((e) => a.push(e));
    client.subscribe((e) => b.push(e));
    service.push({ kind: 'inventory-changed' });
    await expect.poll(() => b.length).toBe(1);
    offA();
    service.push({ kind: 'inventory-changed' });
    await expect.poll(() => b.length).toBe(2);
    expect(a).toEqual([{ kind: 'inventory-changed' }]);
  });

  it('stops for good when the server refuses the token', async () => {
    server = await startWebServer({
      port: 0,
      host: '127.0.0.1',
      service: new StubService(),
      staticDir: '/x',
    });
    client = createWsClient({ url: url(server, 'wrong'), socket: nodeSocket, reconnectMs: 10 });
    const err = await client.call('listHosts', {}).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'unauthorized' });
    expect(client.state).toBe('unauthorized');
    expect(await client.call('listHosts', {}).catch((e: unknown) => (e as ApiCallError).code)).toBe(
      'unauthorized',
    );
  });

  it('reconnects by itself when the server comes back', async () => {
    server = await startWebServer({
      port: 0,
      host: '127.0.0.1',
      service: new StubService(),
      staticDir: '/x',
    });
    const { port, token } = server;
    client = createWsClient({ url: url(server), socket: nodeSocket, reconnectMs: 20, maxReconnectMs: 50 });
    await client.call('listHosts', {});
    const states: ConnectionState[] = [];
    client.onStateChange((s) => states.push(s));
    await server.close();
    server = null;
    await waitForState(client, 'reconnecting');
    server = await startWebServer({
      port,
      host: '127.0.0.1',
      service: new StubService(),
      staticDir: '/x',
      token,
    });
    await waitForState(client, 'open');
    expect(await client.call('listHosts', {})).toEqual([HOST]);
    expect(states[0]).toBe('reconnecting');
    expect(states.at(-1)).toBe('open');
  });
});

describe('bridgeClient (desktop)', () => {
  function fakeBridge(result: unknown, error?: unknown): ApiClient & { calls: [MethodName, unknown][] } {
    const calls: [MethodName, unknown][] = [];
    return {
      calls,
      call: ((method: MethodName, input: unknown) => {
        calls.push([method, input]);
        return error === undefined ? Promise.resolve(result) : Promise.reject(error);
      }) as ApiClient['call'],
      subscribe: () => () => undefined,
    };
  }

  it('passes calls through and checks the answers', async () => {
    const bridge = fakeBridge([HOST]);
    expect(await bridgeClient(bridge).call('listHosts', {})).toEqual([HOST]);
    expect(bridge.calls).toEqual([['listHosts', {}]]);
    await expect(bridgeClient(fakeBridge([{ name: 1 }])).call('listHosts', {})).rejects.toMatchObject({
      code: 'bad-response',
    });
  });

  it('turns the plain error objects the preload throws into ApiCallErrors', async () => {
    const err = await bridgeClient(fakeBridge(null, { code: 'vm-running', message: 'demo is running' }))
      .call('vmAction', { name: 'demo', action: 'start' })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApiCallError);
    expect(err).toMatchObject({ code: 'vm-running', message: 'demo is running' });
    expect(toApiCallError(new Error('boom'))).toMatchObject({ code: 'internal', message: 'boom' });
    // What electron/ipc.ts sends for a FerryError (its toJSON), details included.
    const unknownKey = new FerryError('host-key-unknown', 'the host key of kvm1 is not known', undefined, {
      fingerprint: FINGERPRINT,
    }).toJSON();
    const keyErr = await bridgeClient(fakeBridge(null, unknownKey))
      .call('addLibvirtHost', { name: 'kvm1', uri: 'qemu+ssh://root@kvm1/system' })
      .catch((e: unknown) => e);
    expect(keyErr).toMatchObject({ code: 'host-key-unknown', details: { fingerprint: FINGERPRINT } });
  });
});
