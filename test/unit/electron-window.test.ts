// The Electron binary cannot run in CI, so the main process is exercised against a mocked
// `electron` module: what matters here is which options and guards we hand to Electron.
import type { BrowserWindowConstructorOptions, Session, WebContents } from 'electron';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';

import {
  denyAllPermissions,
  installNavigationGuards,
  isAppUrl,
  secureWindowOptions,
} from '../../electron/window.js';

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
    readonly show = vi.fn();

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
  };
  const defaultSession = { setPermissionRequestHandler: vi.fn(), setPermissionCheckHandler: vi.fn() };

  return { FakeWebContents, FakeBrowserWindow, app, defaultSession };
});

vi.mock('electron', () => ({
  app: fakes.app,
  BrowserWindow: fakes.FakeBrowserWindow,
  session: { defaultSession: fakes.defaultSession },
}));

type FakeWebContents = InstanceType<typeof fakes.FakeWebContents>;

/** Emits `will-navigate` the way Electron does and reports whether the guard blocked it. */
function navigate(contents: FakeWebContents, url: string): boolean {
  let prevented = false;
  contents.emit('will-navigate', { url, preventDefault: () => (prevented = true) });
  return prevented;
}

const asWebContents = (fake: FakeWebContents): WebContents => fake as unknown as WebContents;

describe('secureWindowOptions', () => {
  it('locks the renderer down and wires the preload', () => {
    const { webPreferences } = secureWindowOptions('/app/out/preload/index.cjs');
    expect(webPreferences).toMatchObject({
      preload: '/app/out/preload/index.cjs',
      contextIsolation: true,
      sandbox: true,
      nodeIntegration: false,
      nodeIntegrationInWorker: false,
      nodeIntegrationInSubFrames: false,
      webSecurity: true,
      allowRunningInsecureContent: false,
      webviewTag: false,
    });
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
      webSecurity: true,
    });
    expect(win.options.webPreferences?.preload).toMatch(/[\\/]preload[\\/]index\.cjs$/);
    expect(fakes.defaultSession.setPermissionRequestHandler).toHaveBeenCalledOnce();

    expect(win.webContents.windowOpenHandler?.({ url: 'https://example.com/' })).toEqual({ action: 'deny' });
    expect(navigate(win.webContents, 'https://example.com/')).toBe(true);
    expect(navigate(win.webContents, 'http://localhost:5173/#/hosts')).toBe(false);
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
