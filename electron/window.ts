import type { BrowserWindowConstructorOptions, Session, WebContents } from 'electron';

/**
 * BrowserWindow options for the Ferry console. Kept pure (no Electron runtime import)
 * so the security posture is unit-testable without an Electron binary.
 */
export function secureWindowOptions(preloadPath: string): BrowserWindowConstructorOptions {
  return {
    width: 1280,
    height: 800,
    minWidth: 900,
    minHeight: 560,
    title: 'Ferry',
    // Shown on 'ready-to-show' to avoid a blank flash while the renderer boots.
    show: false,
    webPreferences: {
      preload: preloadPath,
      // The renderer is an untrusted web page: no Node, isolated preload world, OS sandbox.
      contextIsolation: true,
      sandbox: true,
      nodeIntegration: false,
      nodeIntegrationInWorker: false,
      nodeIntegrationInSubFrames: false,
      webSecurity: true,
      allowRunningInsecureContent: false,
      webviewTag: false,
    },
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
  contents.setWindowOpenHandler(() => ({ action: 'deny' }));
  contents.on('will-attach-webview', (event) => event.preventDefault());
}

/** Ferry needs no web permissions (camera, notifications, …); grant them explicitly when a feature does. */
export function denyAllPermissions(session: Session): void {
  session.setPermissionRequestHandler((_contents, _permission, callback) => callback(false));
  session.setPermissionCheckHandler(() => false);
}
