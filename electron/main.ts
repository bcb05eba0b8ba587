import { fileURLToPath, pathToFileURL } from 'node:url';

import { app, BrowserWindow, session } from 'electron';

import { denyAllPermissions, installNavigationGuards, secureWindowOptions } from './window.js';

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

export function createMainWindow(): BrowserWindow {
  const target = rendererTarget();
  const win = new BrowserWindow(secureWindowOptions(PRELOAD_PATH));
  installNavigationGuards(win.webContents, target.url);
  win.once('ready-to-show', () => win.show());

  const loading = target.kind === 'dev' ? win.loadURL(target.url) : win.loadFile(target.file);
  loading.catch((error: unknown) => console.error(`ferry: failed to load ${target.url}:`, error));
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
    denyAllPermissions(session.defaultSession);
    createMainWindow();
    app.on('activate', () => {
      if (BrowserWindow.getAllWindows().length === 0) createMainWindow();
    });
  })
  .catch((error: unknown) => {
    console.error('ferry: failed to start', error);
    app.exit(1);
  });
