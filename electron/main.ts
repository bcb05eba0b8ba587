import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

import { app, BrowserWindow, dialog, ipcMain, screen, session } from 'electron';

import { ApiService } from '../engine/service/api-service.js';
import { confirmWithDialog } from './confirm.js';
import { bindConsole, consoleHash } from './console-ipc.js';
import { bindApi } from './ipc.js';
import {
  consoleFrameOptions,
  installNavigationGuards,
  isAppUrl,
  restrictPermissions,
  windowFrameOptions,
} from './window.js';
import { fitToDisplays, readWindowState, STATE_FILE, trackWindowState } from './window-state.js';

// Paths are relative to the bundle in out/main/ (see electron.vite.config.ts).
const PRELOAD_PATH = fileURLToPath(new URL('../preload/index.cjs', import.meta.url));
const INDEX_HTML = fileURLToPath(new URL('../renderer/index.html', import.meta.url));

type RendererTarget = { kind: 'dev'; url: string } | { kind: 'file'; file: string; url: string };

function rendererTarget(): RendererTarget {
  const devUrl = process.env['ELECTRON_RENDERER_URL'];
  // Only `electron-vite dev` sets this; a packaged app must never be pointed elsewhere by the environment.
  if (!app.isPackaged && devUrl) return { kind: 'dev', url: devUrl };
  return { kind: 'file', file: INDEX_HTML, url: pathToFileURL(INDEX_HTML).href };
}

const target = rendererTarget();
const isApp = (url: string): boolean => isAppUrl(url, target.url);

export function createMainWindow(): BrowserWindow {
  const stateFile = path.join(app.getPath('userData'), STATE_FILE);
  const state = fitToDisplays(
    readWindowState(stateFile),
    screen.getAllDisplays().map((d) => d.workArea),
  );
  // The web preferences are written out here, where the window is made, so that reviewers and
  // electronegativity (test/unit/electron-scan.test.ts) see them as they are.
  const win = new BrowserWindow({
    ...windowFrameOptions(state),
    webPreferences: {
      preload: PRELOAD_PATH,
      // The renderer is an untrusted web page: no Node, isolated preload world, OS sandbox.
      contextIsolation: true,
      sandbox: true,
      nodeIntegration: false,
      nodeIntegrationInWorker: false,
      nodeIntegrationInSubFrames: false,
      webSecurity: true,
      allowRunningInsecureContent: false,
      webviewTag: false,
      experimentalFeatures: false,
      // A middle click must not open a link in a new window (the window-open handler denies it too).
      disableBlinkFeatures: 'Auxclick',
      // The console needs no spell checker, and its dictionaries would be downloaded from Google.
      spellcheck: false,
    },
  });
  installNavigationGuards(win.webContents, target.url);
  trackWindowState(win, stateFile);
  win.once('ready-to-show', () => {
    if (state.maximized) win.maximize();
    win.show();
  });

  const loading = target.kind === 'dev' ? win.loadURL(target.url) : win.loadFile(target.file);
  loading.catch((error: unknown) => console.error(`ferry: failed to load ${target.url}:`, error));
  return win;
}

/** Console windows open now, by VM and host: "Connect…" again brings the open one to the front. */
const consoleWindows = new Map<string, BrowserWindow>();

/** "Connect…": the VM's console in a window of its own, the renderer loaded with `#console=VM&host=HOST`. */
export function createConsoleWindow(vm: string, host?: string): BrowserWindow {
  const key = `${vm}\n${host ?? ''}`;
  const open = consoleWindows.get(key);
  if (open && !open.isDestroyed()) {
    if (open.isMinimized()) open.restore();
    open.focus();
    return open;
  }
  // The same web preferences as the main window, written out again for reviewers and electronegativity.
  const win = new BrowserWindow({
    ...consoleFrameOptions(vm),
    webPreferences: {
      preload: PRELOAD_PATH,
      contextIsolation: true,
      sandbox: true,
      nodeIntegration: false,
      nodeIntegrationInWorker: false,
      nodeIntegrationInSubFrames: false,
      webSecurity: true,
      allowRunningInsecureContent: false,
      webviewTag: false,
      experimentalFeatures: false,
      disableBlinkFeatures: 'Auxclick',
      spellcheck: false,
    },
  });
  consoleWindows.set(key, win);
  win.once('closed', () => {
    if (consoleWindows.get(key) === win) consoleWindows.delete(key);
  });
  installNavigationGuards(win.webContents, target.url);
  win.once('ready-to-show', () => win.show());
  const hash = consoleHash(vm, host);
  const loading =
    target.kind === 'dev' ? win.loadURL(`${target.url}#${hash}`) : win.loadFile(target.file, { hash });
  loading.catch((error: unknown) => console.error(`ferry: failed to load the console of ${vm}:`, error));
  return win;
}

// Sandbox every renderer, including any a later feature creates.
app.enableSandbox();

app.on('window-all-closed', () => {
  // macOS apps conventionally stay alive without windows.
  if (process.platform !== 'darwin') app.quit();
});

app
  .whenReady()
  .then(() => {
    restrictPermissions(session.defaultSession, isApp);
    // The engine runs here, in the main process: the renderer reaches it only through the preload's API.
    // VMs are separate QEMU processes, so they keep running when the app quits.
    // The renderer is an API client: administrator-only settings need the user's yes in a native dialog.
    const engine = new ApiService(undefined, {
      role: 'client',
      confirmAdminChange: confirmWithDialog(dialog, () => BrowserWindow.getFocusedWindow()),
    });
    const unbind = bindApi(ipcMain, engine, isApp);
    app.on('will-quit', unbind);
    // "Connect…": the VMs' consoles, streamed to the pages that opened them.
    const unbindConsole = bindConsole(ipcMain, engine, isApp, (vm, host) => {
      createConsoleWindow(vm, host);
    });
    app.on('will-quit', unbindConsole);
    createMainWindow();
    app.on('activate', () => {
      if (BrowserWindow.getAllWindows().length === 0) createMainWindow();
    });
  })
  .catch((error: unknown) => {
    console.error('ferry: failed to start', error);
    app.exit(1);
  });
