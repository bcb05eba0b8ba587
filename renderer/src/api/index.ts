/// <reference lib="dom" />
// Which ApiClient the console uses: the preload bridge in the desktop app, else the web mode's WebSocket.
// Stores reach it through apiClient(), so tests can install a fake.
import type { ApiClient } from '../../../engine/api/index.js';
import { alwaysOpen, bridgeClient } from './bridge-client.js';
import type { DesktopConsoleApi } from './console-channel.js';
import { createWsClient, takeToken, wsUrlFor, type ConnectionSource } from './ws-client.js';

let current: ApiClient | null = null;
/** The web mode's access token, for the console's own sockets (empty in the desktop app). */
let token = '';

export function consoleToken(): string {
  return token;
}

export function setApiClient(client: ApiClient | null): void {
  current = client;
}

export function apiClient(): ApiClient {
  if (!current) throw new Error('the API client is not set up yet');
  return current;
}

declare global {
  interface Window {
    /** Exposed by electron/preload.ts in the desktop app only. */
    ferry?: ApiClient & DesktopConsoleApi;
  }
}

export function connect(win: Window): {
  client: ApiClient;
  connection: ConnectionSource;
  mode: 'desktop' | 'web';
} {
  if (win.ferry) return { client: bridgeClient(win.ferry), connection: alwaysOpen, mode: 'desktop' };
  // The token leaves the address bar first; the socket carries it in its own URL (never shown).
  token = takeToken(win);
  const ws = createWsClient({ url: wsUrlFor(win.location, token) });
  return { client: ws, connection: ws, mode: 'web' };
}
