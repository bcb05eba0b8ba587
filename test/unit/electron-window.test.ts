// The Electron binary cannot run in CI, so the main process is exercised against a mocked
// `electron` module: what matters here is which options and guards we hand to Electron.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import type { BrowserWindowConstructorOptions, Session, WebContents } from 'electron';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';

import {
  denyAllPermissions,
  installNavigationGuards,
  isAppUrl,
  restrictPermissions,
  windowFrameOptions,
} from '../../electron/window.js';
import {
  DEFAULT_STATE,
  fitToDisplays,
  readWindowState,
  trackWindowState,
  writeWindowState,
  type WindowState,
} from '../../electron/window-state.js';

const fakes = vi.hoisted(() => {
  type Listener = (...args: unknown[]) => void;

  class FakeWebContents {
    readonly listeners = new Map<string, Listener[]>();
    windowOpenHandler: ((details: { url: string }) => { action: string }) | undefined;

    on(event: string, listener: Listener): this {
      this.listeners.set(event, [...(this.listeners.get(event) ?? []), listener]);
      return this;
    }

    emit(event: string, ...args: unknown[]): void {
      for (const listener of this.listeners.get(event) ?? []) listener(...args);
    }

    setWindowOpenHandler(handler: (details: { url: string }) => { action: string }): void {
      this.windowOpenHandler = handler;
    }
  }

  class FakeBrowserWindow {
    static instances: FakeBrowserWindow[] = [];
    static getAllWindows(): FakeBrowserWindow[] {
      return FakeBrowserWindow.instances;
    }

    readonly webContents = new FakeWebContents();
    readonly loadURL = vi.fn((_url: string) => Promise.resolve());
    readonly loadFile = vi.fn((_file: string) => Promise.resolve());
    readonly once = vi.fn();
    readonly on = vi.fn();
    readonly show = vi.fn();
    readonly maximize = vi.fn();
    readonly getNormalBounds = vi.fn(() => ({ x: 10, y: 20, width: 1000, height: 700 }));
    readonly isMaximized = vi.fn(() => false);
    readonly isDestroyed = vi.fn(() => false);

    constructor(readonly options: BrowserWindowConstructorOptions) {
      FakeBrowserWindow.instances.push(this);
    }
  }

  const app = {
    isPackaged: false,
    enableSandbox: vi.fn(),
    on: vi.fn(),
    quit: vi.fn(),
    exit: vi.fn(),
    whenReady: vi.fn(() => Promise.resolve()),
    getPath: vi.fn((_name: string) => '/nonexistent/ferry-user-data'),
  };
  const defaultSession = { setPermissionRequestHandler: vi.fn(), setPermissionCheckHandler: vi.fn() };
  const ipcMain = { handle: vi.fn(), on: vi.fn(), removeHandler: vi.fn(), removeListener: vi.fn() };
  const screen = { getAllDisplays: vi.fn(() => [{ workArea: { x: 0, y: 0, width: 1920, height: 1080 } }]) };
  const engine = { constructed: 0, options: [] as unknown[] };
  const dialog = { showMessageBox: vi.fn(() => Promise.resolve({ response: 0, checkboxChecked: false })) };

  return { FakeWebContents, FakeBrowserWindow, app, defaultSession, ipcMain, screen, engine, dialog };
});

vi.mock('electron', () => ({
  app: fakes.app,
  BrowserWindow: fakes.FakeBrowserWindow,
  session: { defaultSession: fakes.defaultSession },
  ipcMain: fakes.ipcMain,
  screen: fakes.screen,
  dialog: fakes.dialog,
}));

// The engine itself is not under test here: main.ts must create one and bind it to IPC.
vi.mock('../../engine/service/api-service.js', () => ({
  ApiService: class {
    constructor(_inv: unknown, options: unknown) {
      fakes.engine.constructed++;
      fakes.engine.options.push(options);
    }
    call = vi.fn();
    subscribe = vi.fn(() => () => undefined);
  },
  toApiError: (e: unknown) => ({ code: 'internal', message: String(e) }),
  badInput: (prefix: string) => ({ toJSON: () => ({ code: 'bad-input', message: prefix }) }),
}));

type FakeWebContents = InstanceType<typeof fakes.FakeWebContents>;

/** Emits `will-navigate` the way Electron does and reports whether the guard blocked it. */
function navigate(contents: FakeWebContents, url: string): boolean {
  let prevented = false;
  contents.emit('will-navigate', { url, preventDefault: () => (prevented = true) });
  return prevented;
}

const asWebContents = (fake: FakeWebContents): WebContents => fake as unknown as WebContents;

describe('windowFrameOptions', () => {
  it('gives the frame only: the web preferences are written where the window is made', () => {
    expect(windowFrameOptions()).toMatchObject({ width: 1280, height: 800, title: 'Ferry', show: false });
    expect(windowFrameOptions()).not.toHaveProperty('webPreferences');
  });
});

describe('isAppUrl', () => {
  it.each([
    ['http://localhost:5173/', 'http://localhost:5173/', true],
    ['http://localhost:5173/index.html#/hosts', 'http://localhost:5173/', true],
    ['http://localhost:5174/', 'http://localhost:5173/', false],
    ['https://localhost:5173/', 'http://localhost:5173/', false],
    ['https://example.com/', 'http://localhost:5173/', false],
    ['file:///app/out/renderer/index.html#/vm/1', 'file:///app/out/renderer/index.html', true],
    ['file:///etc/passwd', 'file:///app/out/renderer/index.html', false],
    ['file:///app/out/renderer/other.html', 'file:///app/out/renderer/index.html', false],
    ['javascript:alert(1)', 'file:///app/out/renderer/index.html', false],
    ['not a url', 'http://localhost:5173/', false],
  ])('%s against %s → %s', (target, app, expected) => {
    expect(isAppUrl(target, app)).toBe(expected);
  });
});

describe('installNavigationGuards', () => {
  let contents: FakeWebContents;

  beforeEach(() => {
    contents = new fakes.FakeWebContents();
    installNavigationGuards(asWebContents(contents), 'http://localhost:5173/');
  });

  it('lets the app navigate within itself', () => {
    expect(navigate(contents, 'http://localhost:5173/#/hosts')).toBe(false);
  });

  it('blocks navigation to any other origin', () => {
    expect(navigate(contents, 'https://evil.example/')).toBe(true);
    expect(navigate(contents, 'file:///etc/passwd')).toBe(true);
  });

  it('denies every new window', () => {
    expect(contents.windowOpenHandler?.({ url: 'https://example.com/' })).toEqual({ action: 'deny' });
    expect(contents.windowOpenHandler?.({ url: 'http://localhost:5173/' })).toEqual({ action: 'deny' });
  });

  it('refuses <webview> attachment', () => {
    const preventDefault = vi.fn();
    contents.emit('will-attach-webview', { preventDefault });
    expect(preventDefault).toHaveBeenCalledOnce();
  });
});

describe('restrictPermissions', () => {
  it('allows notifications for the app page only, and nothing else', () => {
    const session = { setPermissionRequestHandler: vi.fn(), setPermissionCheckHandler: vi.fn() };
    restrictPermissions(session as unknown as Session, (url) => isAppUrl(url, 'file:///app/index.html'));
    const request = session.setPermissionRequestHandler.mock.calls[0]?.[0] as (
      contents: { getURL(): string },
      permission: string,
      callback: (granted: boolean) => void,
    ) => void;
    const check = session.setPermissionCheckHandler.mock.calls[0]?.[0] as (
      contents: { getURL(): string } | null,
      permission: string,
    ) => boolean;
    const app = { getURL: () => 'file:///app/index.html' };
    const evil = { getURL: () => 'https://evil.example/' };
    const granted = (contents: typeof app, permission: string): boolean => {
      let answer: boolean | undefined;
      request(contents, permission, (g) => (answer = g));
      return answer === true;
    };
    expect(granted(app, 'notifications')).toBe(true);
    expect(granted(evil, 'notifications')).toBe(false);
    expect(granted(app, 'media')).toBe(false);
    expect(granted(app, 'geolocation')).toBe(false);
    expect(check(app, 'notifications')).toBe(true);
    expect(check(null, 'notifications')).toBe(false);
    expect(check(app, 'clipboard-read')).toBe(false);
  });
});

describe('denyAllPermissions', () => {
  it('denies permission requests and checks', () => {
    const session = { setPermissionRequestHandler: vi.fn(), setPermissionCheckHandler: vi.fn() };
    denyAllPermissions(session as unknown as Session);

    const requestHandler = session.setPermissionRequestHandler.mock.calls[0]?.[0] as
      ((contents: unknown, permission: string, callback: (granted: boolean) => void) => void) | undefined;
    const callback = vi.fn();
    requestHandler?.({}, 'media', callback);
    expect(callback).toHaveBeenCalledWith(false);

    const checkHandler = session.setPermissionCheckHandler.mock.calls[0]?.[0] as (() => boolean) | undefined;
    expect(checkHandler?.()).toBe(false);
  });
});

describe('electron/main.ts', () => {
  /** Imports a fresh copy of main.ts and waits for its whenReady() handler to open the window. */
  async function startMain(): Promise<InstanceType<typeof fakes.FakeBrowserWindow>> {
    vi.resetModules();
    await import('../../electron/main.js');
    await vi.waitFor(() => expect(fakes.FakeBrowserWindow.instances).toHaveLength(1));
    const [win] = fakes.FakeBrowserWindow.instances;
    if (!win) throw new Error('no window created');
    return win;
  }

  beforeEach(() => {
    fakes.FakeBrowserWindow.instances = [];
    fakes.app.isPackaged = false;
    fakes.engine.constructed = 0;
    fakes.engine.options = [];
    vi.clearAllMocks();
  });

  afterEach(() => {
    vi.unstubAllEnvs();
  });

  it('creates one sandboxed window with the CommonJS preload and installs the guards', async () => {
    vi.stubEnv('ELECTRON_RENDERER_URL', 'http://localhost:5173/');
    const win = await startMain();

    expect(fakes.app.enableSandbox).toHaveBeenCalledOnce();
    expect(win.options.webPreferences).toMatchObject({
      contextIsolation: true,
      sandbox: true,
      nodeIntegration: false,
      nodeIntegrationInWorker: false,
      nodeIntegrationInSubFrames: false,
      webSecurity: true,
      allowRunningInsecureContent: false,
      webviewTag: false,
      disableBlinkFeatures: 'Auxclick',
    });
    expect(win.options.webPreferences?.preload).toMatch(/[\\/]preload[\\/]index\.cjs$/);
    expect(fakes.defaultSession.setPermissionRequestHandler).toHaveBeenCalledOnce();
    // The engine runs in the main process, reachable only through the checked IPC handlers.
    expect(fakes.engine.constructed).toBe(1);
    // …as an API client whose administrator-only changes need the main process's own dialog.
    expect(fakes.engine.options[0]).toMatchObject({
      role: 'client',
      confirmAdminChange: expect.any(Function),
    });
    expect(fakes.ipcMain.handle).toHaveBeenCalledWith('ferry:call', expect.any(Function));
    expect(fakes.ipcMain.on).toHaveBeenCalledWith('ferry:subscribe', expect.any(Function));

    expect(win.webContents.windowOpenHandler?.({ url: 'https://example.com/' })).toEqual({ action: 'deny' });
    expect(navigate(win.webContents, 'https://example.com/')).toBe(true);
    expect(navigate(win.webContents, 'http://localhost:5173/#/hosts')).toBe(false);
  });

  it('opens a VM\'s console window ("Connect…") with the same web preferences, at #console=VM&host=HOST', async () => {
    vi.stubEnv('ELECTRON_RENDERER_URL', 'http://localhost:5173/');
    const main = await startMain();
    const handler = fakes.ipcMain.handle.mock.calls.find((c) => c[0] === 'ferry:console-window')?.[1] as (
      event: unknown,
      payload: unknown,
    ) => unknown;
    const mainFrame = { url: 'http://localhost:5173/' };
    const event = { sender: { mainFrame }, senderFrame: mainFrame };
    expect(handler(event, { vm: 'web1', host: 'lab2' })).toEqual({ ok: true, result: null });
    expect(fakes.FakeBrowserWindow.instances).toHaveLength(2);
    const win = fakes.FakeBrowserWindow.instances[1]!;
    expect(win.options.webPreferences).toEqual(main.options.webPreferences);
    expect(win.options.title).toBe('web1 — Ferry');
    expect(win.loadURL).toHaveBeenCalledWith('http://localhost:5173/#console=web1&host=lab2');
    expect(navigate(win.webContents, 'https://example.com/')).toBe(true);
    // Not for a page that is not the app.
    const evil = { url: 'https://evil.example/' };
    expect(handler({ sender: { mainFrame: evil }, senderFrame: evil }, { vm: 'x' })).toMatchObject({
      ok: false,
    });
    expect(fakes.FakeBrowserWindow.instances).toHaveLength(2);
  });

  it('loads the electron-vite dev server in development', async () => {
    vi.stubEnv('ELECTRON_RENDERER_URL', 'http://localhost:5173/');
    const win = await startMain();

    expect(win.loadURL).toHaveBeenCalledWith('http://localhost:5173/');
    expect(win.loadFile).not.toHaveBeenCalled();
  });

  it('loads the built renderer when packaged, ignoring ELECTRON_RENDERER_URL', async () => {
    fakes.app.isPackaged = true;
    vi.stubEnv('ELECTRON_RENDERER_URL', 'https://evil.example/');
    const win = await startMain();

    expect(win.loadURL).not.toHaveBeenCalled();
    const [file] = win.loadFile.mock.calls[0] ?? [];
    expect(file).toMatch(/[\\/]renderer[\\/]index\.html$/);

    // The guard is bound to that file, not to the environment's URL.
    expect(navigate(win.webContents, 'https://evil.example/')).toBe(true);
    expect(navigate(win.webContents, `file://${file?.replaceAll('\\', '/')}#/hosts`)).toBe(false);
  });

  it('quits when the last window closes, except on macOS', async () => {
    await startMain();
    const onWindowAllClosed = fakes.app.on.mock.calls.find(
      ([event]) => event === 'window-all-closed',
    )?.[1] as (() => void) | undefined;
    expect(onWindowAllClosed).toBeDefined();
    onWindowAllClosed?.();
    expect(fakes.app.quit).toHaveBeenCalledTimes(process.platform === 'darwin' ? 0 : 1);
  });
});

describe('window state', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-window-state-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('remembers size, position and maximized across starts', () => {
    const file = path.join(dir, 'window-state.json');
    expect(readWindowState(file)).toEqual(DEFAULT_STATE);
    const state: WindowState = { x: 100, y: 80, width: 1100, height: 700, maximized: true };
    writeWindowState(file, state);
    expect(readWindowState(file)).toEqual(state);
    fs.writeFileSync(file, '{"width": "huge"}');
    expect(readWindowState(file)).toEqual(DEFAULT_STATE);
  });

  it('opens the window with the remembered bounds', () => {
    const opts = windowFrameOptions({ x: 5, y: 6, width: 1000, height: 650, maximized: false });
    expect(opts).toMatchObject({ x: 5, y: 6, width: 1000, height: 650 });
    expect(windowFrameOptions()).not.toHaveProperty('x');
  });

  it('drops a position that is on no display any more, keeping the size', () => {
    const screen = [{ x: 0, y: 0, width: 1920, height: 1080 }];
    const onScreen: WindowState = { x: 1800, y: 1000, width: 800, height: 600, maximized: false };
    expect(fitToDisplays(onScreen, screen)).toEqual(onScreen);
    const gone: WindowState = { x: 2500, y: 100, width: 800, height: 600, maximized: false };
    expect(fitToDisplays(gone, screen)).toEqual({ width: 800, height: 600, maximized: false });
  });

  it('saves the normal bounds when the window moves (debounced) and when it closes', async () => {
    const handlers = new Map<string, () => void>();
    const win = {
      on: vi.fn((event: string, fn: () => void) => handlers.set(event, fn)),
      getNormalBounds: () => ({ x: 1, y: 2, width: 900, height: 600 }),
      isMaximized: () => false,
      isDestroyed: () => false,
    };
    const save = vi.fn();
    trackWindowState(win as never, '/state.json', save, 10);
    handlers.get('move')?.();
    handlers.get('resize')?.();
    expect(save).not.toHaveBeenCalled();
    await vi.waitFor(() => expect(save).toHaveBeenCalledTimes(1));
    handlers.get('close')?.();
    expect(save).toHaveBeenCalledTimes(2);
    expect(save).toHaveBeenLastCalledWith('/state.json', {
      x: 1,
      y: 2,
      width: 900,
      height: 600,
      maximized: false,
    });
  });
});
