// The desktop app's IPC binding and preload against a mocked `electron` (its binary cannot run here):
// only the app's own top-level page may call the engine, every payload is checked against the contract,
// and the preload exposes exactly { call, subscribe }.
import type { IpcMain } from 'electron';
import { beforeEach, describe, expect, it, vi } from 'vitest';
import { FerryError, type ServerEvent } from '../../engine/api/index.js';
import { bindApi, handleCall, type ApiEngine } from '../../electron/ipc.js';
import { CALL_CHANNEL, EVENT_CHANNEL, SUBSCRIBE_CHANNEL } from '../../electron/channels.js';
import { adminChangeDialog, confirmWithDialog } from '../../electron/confirm.js';
import { isAppUrl } from '../../electron/window.js';

const APP = 'file:///opt/ferry/out/renderer/index.html';
const isApp = (url: string): boolean => isAppUrl(url, APP);

const fakes = vi.hoisted(() => {
  type Fn = (...args: unknown[]) => unknown;
  const exposed = new Map<string, unknown>();
  const rendererHandlers = new Map<string, Fn>();
  const ipcRenderer = {
    invoke: vi.fn(),
    send: vi.fn(),
    on: vi.fn((channel: string, fn: Fn) => rendererHandlers.set(channel, fn)),
  };
  const contextBridge = { exposeInMainWorld: vi.fn((key: string, api: unknown) => exposed.set(key, api)) };
  return { exposed, rendererHandlers, ipcRenderer, contextBridge };
});

vi.mock('electron', () => ({ contextBridge: fakes.contextBridge, ipcRenderer: fakes.ipcRenderer }));

class FakeIpcMain {
  readonly handlers = new Map<string, (event: unknown, ...args: unknown[]) => unknown>();
  readonly listeners = new Map<string, (event: unknown, ...args: unknown[]) => void>();
  handle(channel: string, fn: (event: unknown, ...args: unknown[]) => unknown): void {
    this.handlers.set(channel, fn);
  }
  on(channel: string, fn: (event: unknown, ...args: unknown[]) => void): this {
    this.listeners.set(channel, fn);
    return this;
  }
  removeHandler(channel: string): void {
    this.handlers.delete(channel);
  }
  removeListener(channel: string): this {
    this.listeners.delete(channel);
    return this;
  }
}

class FakeContents {
  readonly mainFrame = { url: APP };
  readonly sent: [string, unknown][] = [];
  destroyed = false;
  private readonly onDestroyed: (() => void)[] = [];
  url = APP;
  send(channel: string, payload: unknown): void {
    this.sent.push([channel, payload]);
  }
  getURL(): string {
    return this.url;
  }
  isDestroyed(): boolean {
    return this.destroyed;
  }
  once(event: string, fn: () => void): void {
    if (event === 'destroyed') this.onDestroyed.push(fn);
  }
  destroy(): void {
    this.destroyed = true;
    for (const fn of this.onDestroyed) fn();
  }
}

class FakeEngine implements ApiEngine {
  readonly calls: [string, unknown][] = [];
  private readonly listeners = new Set<(e: ServerEvent) => void>();
  async call(method: string, input: unknown): Promise<unknown> {
    this.calls.push([method, input]);
    if (method === 'vmInfo') throw new FerryError('unknown-vm', 'no VM named "ghost"', 'see: ferry vm list');
    return [];
  }
  subscribe(l: (e: ServerEvent) => void): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }
  push(e: ServerEvent): void {
    for (const l of this.listeners) l(e);
  }
}

/** An IPC event as Electron builds it for a message from `contents`, from its main frame by default. */
function eventFrom(contents: FakeContents, frame: { url: string } | null = contents.mainFrame) {
  return { sender: contents, senderFrame: frame };
}

let ipc: FakeIpcMain;
let engine: FakeEngine;
let unbind: () => void;

beforeEach(() => {
  ipc = new FakeIpcMain();
  engine = new FakeEngine();
  unbind = bindApi(ipc as unknown as IpcMain, engine, isApp);
});

async function invoke(event: unknown, payload: unknown): Promise<unknown> {
  const handler = ipc.handlers.get(CALL_CHANNEL);
  if (!handler) throw new Error('no call handler');
  return handler(event, payload);
}

describe('bindApi: the sender check', () => {
  it("runs calls from the app's own page", async () => {
    const contents = new FakeContents();
    expect(await invoke(eventFrom(contents), { method: 'listHosts', input: {} })).toEqual({
      ok: true,
      result: [],
    });
    expect(engine.calls).toEqual([['listHosts', {}]]);
  });

  it('refuses a page navigated elsewhere, a sub-frame and a vanished frame', async () => {
    const foreign = new FakeContents();
    foreign.mainFrame.url = 'https://evil.example/';
    const subframeOwner = new FakeContents();
    const refusals = await Promise.all([
      invoke(eventFrom(foreign), { method: 'listHosts', input: {} }),
      invoke(eventFrom(subframeOwner, { url: APP }), { method: 'labDown', input: {} }),
      invoke(eventFrom(new FakeContents(), null), { method: 'listHosts', input: {} }),
      invoke(eventFrom(new FakeContents(), { url: 'file:///etc/passwd' }), {
        method: 'listHosts',
        input: {},
      }),
    ]);
    for (const r of refusals) expect(r).toMatchObject({ ok: false, error: { code: 'forbidden' } });
    expect(engine.calls).toEqual([]);
  });
});

describe('bindApi: the contract check', () => {
  it.each([
    ['not an object', 'listHosts'],
    ['no method', { input: {} }],
    ['an extra key', { method: 'listHosts', input: {}, sneaky: 1 }],
    ['an unknown method', { method: 'runShell', input: { cmd: 'rm -rf /' } }],
    ['a bad input', { method: 'vmAction', input: { name: 'demo', action: 'explode' } }],
    ['an extra input key', { method: 'removeHost', input: { host: 'lab1', force: true } }],
    ['a bad host name', { method: 'hostDetails', input: { host: '../../etc' } }],
  ])('rejects %s before the engine sees it', async (_what, payload) => {
    const r = await invoke(eventFrom(new FakeContents()), payload);
    expect(r).toMatchObject({ ok: false, error: { code: 'bad-input' } });
    expect(engine.calls).toEqual([]);
  });

  it('returns engine errors in the contract shape', async () => {
    expect(await handleCall(engine, { method: 'vmInfo', input: { name: 'ghost' } })).toEqual({
      ok: false,
      error: { code: 'unknown-vm', message: 'no VM named "ghost"', hint: 'see: ferry vm list' },
    });
  });
});

describe('bindApi: events', () => {
  it('streams engine events to subscribed app pages only, while they show the app', () => {
    const subscribe = ipc.listeners.get(SUBSCRIBE_CHANNEL)!;
    const app = new FakeContents();
    const stranger = new FakeContents();
    stranger.mainFrame.url = 'https://evil.example/';
    const navigated = new FakeContents();
    subscribe(eventFrom(app));
    subscribe(eventFrom(app)); // twice: still one stream
    subscribe(eventFrom(stranger));
    subscribe(eventFrom(navigated));
    navigated.url = 'https://evil.example/';
    engine.push({ kind: 'inventory-changed' });
    expect(app.sent).toEqual([[EVENT_CHANNEL, { kind: 'inventory-changed' }]]);
    expect(stranger.sent).toEqual([]);
    expect(navigated.sent).toEqual([]);
    app.destroy();
    engine.push({ kind: 'inventory-changed' });
    expect(app.sent).toHaveLength(1);
  });

  it('unbinds cleanly', () => {
    unbind();
    expect(ipc.handlers.size).toBe(0);
    expect(ipc.listeners.size).toBe(0);
  });
});

describe('preload', () => {
  type Bridge = {
    call: (m: string, i: unknown) => Promise<unknown>;
    subscribe: (l: (e: unknown) => void) => () => void;
  };

  async function loadPreload(): Promise<Bridge> {
    vi.resetModules();
    fakes.exposed.clear();
    fakes.rendererHandlers.clear();
    vi.clearAllMocks();
    await import('../../electron/preload.js');
    return fakes.exposed.get('ferry') as Bridge;
  }

  it('exposes exactly { call, subscribe, console, openConsoleWindow } as window.ferry, frozen', async () => {
    const bridge = await loadPreload();
    expect(fakes.contextBridge.exposeInMainWorld).toHaveBeenCalledOnce();
    expect(Object.keys(bridge).sort()).toEqual(['call', 'console', 'openConsoleWindow', 'subscribe']);
    expect(Object.isFrozen(bridge)).toBe(true);
  });

  it('invokes ferry:call and unwraps the reply, rejecting with the plain error object', async () => {
    const bridge = await loadPreload();
    fakes.ipcRenderer.invoke.mockResolvedValueOnce({ ok: true, result: ['lab1'] });
    expect(await bridge.call('listHosts', {})).toEqual(['lab1']);
    expect(fakes.ipcRenderer.invoke).toHaveBeenCalledWith(CALL_CHANNEL, { method: 'listHosts', input: {} });
    fakes.ipcRenderer.invoke.mockResolvedValueOnce({
      ok: false,
      error: { code: 'bad-input', message: 'no' },
    });
    await expect(bridge.call('listHosts', { x: 1 })).rejects.toEqual({ code: 'bad-input', message: 'no' });
  });

  it('subscribes once and fans events out until each listener leaves', async () => {
    const bridge = await loadPreload();
    const a: unknown[] = [];
    const b: unknown[] = [];
    const offA = bridge.subscribe((e) => a.push(e));
    bridge.subscribe((e) => b.push(e));
    expect(fakes.ipcRenderer.send).toHaveBeenCalledTimes(1);
    expect(fakes.ipcRenderer.send).toHaveBeenCalledWith(SUBSCRIBE_CHANNEL);
    const deliver = fakes.rendererHandlers.get(EVENT_CHANNEL)!;
    deliver({}, { kind: 'inventory-changed' });
    offA();
    deliver({}, { kind: 'inventory-changed' });
    expect(a).toHaveLength(1);
    expect(b).toHaveLength(2);
  });
});

describe('the confirmation of an administrator-only change (main process dialog)', () => {
  const change = {
    host: 'lab1',
    settings: ['storageRoots' as const],
    from: { storageRoots: ['/srv/lab'] },
    to: { storageRoots: ['/'] },
  };

  it('is a native message box that names the change and defaults to Cancel', () => {
    const box = adminChangeDialog(change);
    expect(box).toMatchObject({
      type: 'warning',
      message: 'Allow the console to change storageRoots of lab1?',
      buttons: ['Cancel', 'Allow the change'],
      defaultId: 0,
      cancelId: 0,
    });
    expect(box.detail).toContain('storageRoots: /srv/lab → /');
  });

  it('allows the change only when the user chose Allow, on the focused window', async () => {
    const win = { id: 1 };
    const dialog = { showMessageBox: vi.fn() };
    const confirm = confirmWithDialog(dialog as never, () => win as never);
    dialog.showMessageBox.mockResolvedValueOnce({ response: 0, checkboxChecked: false });
    expect(await confirm(change)).toBe(false);
    dialog.showMessageBox.mockResolvedValueOnce({ response: 1, checkboxChecked: false });
    expect(await confirm(change)).toBe(true);
    expect(dialog.showMessageBox).toHaveBeenCalledWith(win, adminChangeDialog(change));
    const noWindow = confirmWithDialog(dialog as never, () => null);
    dialog.showMessageBox.mockResolvedValueOnce({ response: 1, checkboxChecked: false });
    expect(await noWindow(change)).toBe(true);
    expect(dialog.showMessageBox).toHaveBeenLastCalledWith(adminChangeDialog(change));
  });
});
