/// <reference lib="dom" />
// The web mode's ApiClient: one WebSocket to `ferry web`, requests matched to answers by id, server
// events fanned out to subscribers. It reconnects by itself, except when the server refused the token.
import {
  WsResponseSchema,
  type ApiClient,
  type Input,
  type MethodName,
  type Output,
  type ServerEvent,
} from '../../../engine/api/index.js';
import { ApiCallError, fromApiError } from './errors.js';
import { checkOutput } from './validate.js';

/** Mirrors engine/web/server.ts: the server closes with this code when the token is missing or wrong. */
export const CLOSE_UNAUTHORIZED = 4401;
/** Mirrors engine/web/server.ts: this browser already holds as many connections as the server allows. */
export const CLOSE_TOO_MANY = 4429;

export type ConnectionState = 'connecting' | 'open' | 'reconnecting' | 'unauthorized' | 'closed';

export interface ConnectionSource {
  readonly state: ConnectionState;
  onStateChange(fn: (state: ConnectionState) => void): () => void;
}

export interface WsApiClient extends ApiClient, ConnectionSource {
  close(): void;
}

/** The subset of the browser's WebSocket this client uses (Node tests pass the `ws` package's). */
interface SocketLike {
  readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}
export type SocketFactory = (url: string) => SocketLike;

export interface WsClientOptions {
  url: string;
  socket?: SocketFactory;
  /** First reconnect delay; doubles up to maxReconnectMs. */
  reconnectMs?: number;
  maxReconnectMs?: number;
}

const OPEN = 1;

/** Where this tab keeps the access token once it has left the address bar. */
export const TOKEN_KEY = 'ferry-token';

/**
 * The access token, moved out of the address bar as the page loads: read once from `?token=` (the
 * address `ferry web` prints), kept in this tab's sessionStorage only (gone with the tab), and the URL
 * replaced without it, so it stays out of the history, bookmarks, screenshots and shared screens. A
 * reload finds it in sessionStorage.
 */
export function takeToken(win: {
  location: Pick<Location, 'href'>;
  history: Pick<History, 'replaceState' | 'state'>;
  sessionStorage: Pick<Storage, 'getItem' | 'setItem'>;
}): string {
  const url = new URL(win.location.href);
  const given = url.searchParams.get('token');
  if (given !== null) {
    try {
      win.sessionStorage.setItem(TOKEN_KEY, given);
    } catch {
      // Storage disabled: the token lives in this page only; a reload needs the printed address again.
    }
    url.searchParams.delete('token');
    win.history.replaceState(win.history.state, '', `${url.pathname}${url.search}${url.hash}`);
    return given;
  }
  try {
    return win.sessionStorage.getItem(TOKEN_KEY) ?? '';
  } catch {
    return '';
  }
}

/** ws://host/api/ws?token=… for the page's own origin, with the token (by default from the page's URL). */
export function wsUrlFor(location: Pick<Location, 'protocol' | 'host' | 'search'>, token?: string): string {
  token ??= new URLSearchParams(location.search).get('token') ?? '';
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}/api/ws?token=${encodeURIComponent(token)}`;
}

export function createWsClient(opts: WsClientOptions): WsApiClient {
  const factory: SocketFactory = opts.socket ?? ((url) => new WebSocket(url) as unknown as SocketLike);
  const baseDelay = opts.reconnectMs ?? 500;
  const maxDelay = opts.maxReconnectMs ?? 5000;
  const listeners = new Set<(e: ServerEvent) => void>();
  const stateListeners = new Set<(s: ConnectionState) => void>();
  const pending = new Map<
    number,
    { method: MethodName; resolve: (v: unknown) => void; reject: (e: Error) => void }
  >();
  /** Requests made before the socket opened, sent on open. */
  let outbox: string[] = [];
  let nextId = 1;
  let state: ConnectionState = 'connecting';
  let socket: SocketLike | null = null;
  let delay = baseDelay;
  let timer: ReturnType<typeof setTimeout> | null = null;
  let stopped = false;

  const setState = (s: ConnectionState): void => {
    if (s === state) return;
    state = s;
    for (const fn of stateListeners) fn(s);
  };

  const failPending = (err: ApiCallError): void => {
    for (const p of pending.values()) p.reject(err);
    pending.clear();
    outbox = [];
  };

  const onFrame = (data: unknown): void => {
    let raw: unknown;
    try {
      raw = JSON.parse(String(data));
    } catch {
      return;
    }
    const frame = WsResponseSchema.safeParse(raw);
    if (!frame.success) return;
    const f = frame.data;
    if ('event' in f) {
      for (const fn of listeners) fn(f.event);
      return;
    }
    const p = pending.get(f.id);
    if (!p) return;
    pending.delete(f.id);
    if (f.ok) {
      try {
        p.resolve(checkOutput(p.method, f.result));
      } catch (err) {
        p.reject(err as Error);
      }
    } else p.reject(fromApiError(f.error));
  };

  const connect = (): void => {
    const ws = factory(opts.url);
    socket = ws;
    ws.onopen = () => {
      delay = baseDelay;
      setState('open');
      for (const frame of outbox) ws.send(frame);
      outbox = [];
    };
    ws.onmessage = (ev) => onFrame(ev.data);
    ws.onerror = () => undefined; // a close always follows; it carries what happened
    ws.onclose = (ev) => {
      if (socket !== ws) return;
      socket = null;
      if (ev.code === CLOSE_UNAUTHORIZED) {
        stopped = true;
        failPending(
          new ApiCallError(
            'unauthorized',
            'The access token is missing or wrong',
            'open the URL that "ferry web" printed',
          ),
        );
        setState('unauthorized');
        return;
      }
      failPending(
        ev.code === CLOSE_TOO_MANY
          ? new ApiCallError(
              'rate-limited',
              'Too many Ferry console tabs or windows are open on this computer',
              'close one; this one connects when there is room',
            )
          : new ApiCallError(
              'disconnected',
              'The connection to Ferry was lost',
              'Ferry reconnects by itself; try again',
            ),
      );
      if (stopped) {
        setState('closed');
        return;
      }
      setState('reconnecting');
      timer = setTimeout(() => {
        timer = null;
        if (!stopped) connect();
      }, delay);
      delay = Math.min(delay * 2, maxDelay);
    };
  };
  connect();

  return {
    get state() {
      return state;
    },
    onStateChange(fn) {
      stateListeners.add(fn);
      return () => stateListeners.delete(fn);
    },
    call<M extends MethodName>(method: M, input: Input<M>): Promise<Output<M>> {
      if (stopped) {
        return Promise.reject(
          state === 'unauthorized'
            ? new ApiCallError(
                'unauthorized',
                'The access token is missing or wrong',
                'open the URL that "ferry web" printed',
              )
            : new ApiCallError('disconnected', 'The connection to Ferry is closed'),
        );
      }
      const id = nextId++;
      const frame = JSON.stringify({ id, method, input: input ?? {} });
      return new Promise<Output<M>>((resolve, reject) => {
        pending.set(id, { method, resolve: resolve as (v: unknown) => void, reject });
        if (socket && socket.readyState === OPEN) socket.send(frame);
        else outbox.push(frame);
      });
    },
    subscribe(fn) {
      listeners.add(fn);
      return () => listeners.delete(fn);
    },
    close() {
      stopped = true;
      if (timer) clearTimeout(timer);
      const ws = socket;
      socket = null;
      failPending(new ApiCallError('disconnected', 'The connection to Ferry is closed'));
      setState('closed');
      ws?.close(1000, 'client closed');
    },
  };
}
