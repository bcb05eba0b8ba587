import type { BrowserWindowConstructorOptions, Session, WebContents } from 'electron';

import type { WindowState } from './window-state.js';

/**
 * The window's frame (size, position, title) for the Ferry console. Its webPreferences are written out
 * where the window is created (main.ts), so they can be read there as they are. Kept pure (no Electron
 * runtime import) so it is unit-testable without an Electron binary.
 */
export function windowFrameOptions(
  state: WindowState = { width: 1280, height: 800, maximized: false },
): Omit<BrowserWindowConstructorOptions, 'webPreferences'> {
  return {
    width: state.width,
    height: state.height,
    ...(state.x !== undefined && state.y !== undefined ? { x: state.x, y: state.y } : {}),
    minWidth: 900,
    minHeight: 560,
    title: 'Ferry',
    // Shown on 'ready-to-show' to avoid a blank flash while the renderer boots.
    show: false,
  };
}

/** The frame of a VM's console window ("Connect…"): sized for an 80x25 screen or a 1024x768 one. */
export function consoleFrameOptions(vm: string): Omit<BrowserWindowConstructorOptions, 'webPreferences'> {
  return {
    width: 1060,
    height: 860,
    minWidth: 480,
    minHeight: 360,
    title: `${vm} — Ferry`,
    show: false,
  };
}

/**
 * True if `target` is the app itself: same origin for the http(s) dev server, or the
 * very same file for the packaged `file://` build (every file:// URL has origin "null").
 */
export function isAppUrl(target: string, appUrl: string): boolean {
  let t: URL;
  let a: URL;
  try {
    t = new URL(target);
    a = new URL(appUrl);
  } catch {
    return false;
  }
  if (t.protocol !== a.protocol) return false;
  if (a.protocol === 'http:' || a.protocol === 'https:') return t.origin === a.origin;
  if (a.protocol === 'file:') return t.host === a.host && t.pathname === a.pathname;
  return false;
}

/**
 * The console is a single-page app: it never needs to navigate elsewhere or open windows.
 * Anything else (a stray link, injected content) is refused.
 */
export function installNavigationGuards(contents: WebContents, appUrl: string): void {
  contents.on('will-navigate', (event) => {
    if (!isAppUrl(event.url, appUrl)) event.preventDefault();
  });
  contents.on('will-redirect', (event) => {
    if (!isAppUrl(event.url, appUrl)) event.preventDefault();
  });
  contents.setWindowOpenHandler(() => ({ action: 'deny' }));
  contents.on('will-attach-webview', (event) => event.preventDefault());
}

/** The only web permission the console uses: notifications when a move finishes, for its own page. */
const ALLOWED_PERMISSIONS = new Set(['notifications']);

/** Denies every web permission except notifications for the app's own page. */
export function restrictPermissions(session: Session, isApp: (url: string) => boolean): void {
  session.setPermissionRequestHandler((contents, permission, callback) =>
    callback(ALLOWED_PERMISSIONS.has(permission) && isApp(contents.getURL())),
  );
  // The page's URL, not requestingOrigin: every file:// page has the same origin.
  session.setPermissionCheckHandler(
    (contents, permission) =>
      ALLOWED_PERMISSIONS.has(permission) && contents !== null && isApp(contents.getURL()),
  );
}

/** Ferry needs no web permissions besides notifications; this denies all of them (windows of other origins). */
export function denyAllPermissions(session: Session): void {
  session.setPermissionRequestHandler((_contents, _permission, callback) => callback(false));
  session.setPermissionCheckHandler(() => false);
}
