/// <reference lib="dom" />
// A VM console's byte stream (the serial port, or the screen's raw RFB) as a WebSocket-like channel:
// a real WebSocket to `ferry web` in web mode (token-checked like the API's), an IPC-backed object of the
// same shape in the desktop app. noVNC's RFB takes either as its channel (it needs binaryType,
// readyState, protocol, send, close and the four on… handlers); the console's own code listens for
// `open` and `close` (with the close code) through addEventListener.
import { consoleToken } from './index.js';
import { consoleHref, type ConsoleStream } from '../model/console-session.js';

export interface ConsoleChannel {
  binaryType: string;
  readonly protocol: string;
  readonly readyState: number;
  onopen: ((ev: Event) => void) | null;
  onmessage: ((ev: MessageEvent) => void) | null;
  onclose: ((ev: CloseEvent) => void) | null;
  onerror: ((ev: Event) => void) | null;
  send(data: ArrayBuffer | ArrayBufferView | string): void;
  close(code?: number, reason?: string): void;
  addEventListener(type: 'open' | 'message' | 'close' | 'error', fn: (ev: Event) => void): void;
  removeEventListener(type: 'open' | 'message' | 'close' | 'error', fn: (ev: Event) => void): void;
}

/** The preload's console bridge (electron/preload.ts; CONSOLE-PROTOCOL.md). */
export interface ConsoleBridge {
  open(kind: ConsoleStream, vm: string, host?: string): Promise<string>;
  send(id: string, data: Uint8Array): void;
  close(id: string): void;
  onData(cb: (id: string, data: Uint8Array) => void): () => void;
  onClose(cb: (id: string, code: number, reason: string) => void): () => void;
}

export interface DesktopConsoleApi {
  console?: ConsoleBridge;
  openConsoleWindow?: (vm: string, host?: string) => Promise<void>;
}

/** The close code an IPC open refused with, by the error's code (the same as the WebSocket's). */
const REFUSAL_CODES: Record<string, number> = {
  'bad-input': 4400,
  unauthorized: 4401,
  forbidden: 4401,
  'unknown-vm': 4404,
  'unknown-host': 4404,
  'not-supported': 4405,
  'no-display': 4409,
  'vm-gone': 4410,
  'vm-not-running': 4412,
  'console-busy': 4423,
  'rate-limited': 4429,
};

const CONNECTING = 0;
const OPEN = 1;
const CLOSING = 2;
const CLOSED = 3;

/**
 * The desktop's channel: bytes over IPC, with a WebSocket's states and events. Its properties are the
 * instance's own (noVNC checks that they exist on the object or its prototype).
 */
export class IpcConsoleChannel extends EventTarget implements ConsoleChannel {
  binaryType = 'arraybuffer';
  protocol = '';
  readyState = CONNECTING;
  onopen: ((ev: Event) => void) | null = null;
  onmessage: ((ev: MessageEvent) => void) | null = null;
  onclose: ((ev: CloseEvent) => void) | null = null;
  onerror: ((ev: Event) => void) | null = null;
  private id: string | null = null;
  private readonly unsubscribe: (() => void)[] = [];

  constructor(
    private readonly bridge: ConsoleBridge,
    kind: ConsoleStream,
    vm: string,
    host: string | null,
  ) {
    super();
    // Bytes that arrive before open() has answered (their id not known yet) wait for it.
    const early = new Map<string, Uint8Array[]>();
    const earlyClose = new Map<string, { code: number; reason: string }>();
    this.unsubscribe.push(
      bridge.onData((id, data) => {
        if (id === this.id) this.deliver(data);
        else if (this.id === null && this.readyState === CONNECTING) {
          const list = early.get(id) ?? [];
          if (list.length < 256) list.push(data);
          early.set(id, list);
        }
      }),
      bridge.onClose((id, code, reason) => {
        if (id === this.id) this.finish(code, reason);
        else if (this.id === null) earlyClose.set(id, { code, reason });
      }),
    );
    bridge.open(kind, vm, host ?? undefined).then(
      (id) => {
        if (this.readyState !== CONNECTING) {
          bridge.close(id); // closed before it opened
          return;
        }
        this.id = id;
        this.readyState = OPEN;
        this.emit(new Event('open'), this.onopen);
        for (const data of early.get(id) ?? []) this.deliver(data);
        early.clear();
        const closed = earlyClose.get(id);
        if (closed) this.finish(closed.code, closed.reason);
      },
      (err: unknown) => {
        const e = (err ?? {}) as { code?: string; message?: string };
        const code = (e.code && REFUSAL_CODES[e.code]) || 4500;
        this.emit(new Event('error'), this.onerror);
        this.finish(code, e.message ?? 'the console could not be opened');
      },
    );
  }

  send(data: ArrayBuffer | ArrayBufferView | string): void {
    if (this.readyState !== OPEN || this.id === null) return;
    const bytes =
      typeof data === 'string'
        ? new TextEncoder().encode(data)
        : data instanceof ArrayBuffer
          ? new Uint8Array(data)
          : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    // A copy: noVNC reuses its send buffer.
    this.bridge.send(this.id, bytes.slice());
  }

  close(code = 1000, reason = 'closed'): void {
    if (this.readyState === CLOSED || this.readyState === CLOSING) return;
    const id = this.id;
    this.readyState = CLOSING;
    if (id !== null) this.bridge.close(id);
    this.finish(code, reason);
  }

  private deliver(data: Uint8Array): void {
    if (this.readyState !== OPEN) return;
    const copy = data.slice().buffer;
    this.emit(new MessageEvent('message', { data: copy }), this.onmessage);
  }

  private finish(code: number, reason: string): void {
    if (this.readyState === CLOSED) return;
    this.readyState = CLOSED;
    for (const u of this.unsubscribe.splice(0)) u();
    this.emit(new CloseEvent('close', { code, reason, wasClean: code === 1000 }), this.onclose);
  }

  private emit<E extends Event>(ev: E, handler: ((ev: E) => void) | null): void {
    handler?.call(this, ev);
    this.dispatchEvent(ev);
  }
}

/** ws://host/api/console/KIND?vm=…&host=…&token=… for the page's own origin. */
export function consoleSocketUrl(
  location: Pick<Location, 'protocol' | 'host'>,
  kind: ConsoleStream,
  vm: string,
  host: string | null,
  token: string,
): string {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const q = new URLSearchParams({ vm });
  if (host) q.set('host', host);
  q.set('token', token);
  return `${scheme}//${location.host}/api/console/${kind}?${q.toString()}`;
}

function desktopApi(win: Window): DesktopConsoleApi | null {
  return (win.ferry as DesktopConsoleApi | undefined) ?? null;
}

/** Opens a console stream of `vm` (on `host`, or wherever it runs) over this window's transport. */
export function openConsoleChannel(
  kind: ConsoleStream,
  vm: string,
  host: string | null,
  win: Window = window,
): ConsoleChannel {
  const bridge = desktopApi(win)?.console;
  if (bridge) return new IpcConsoleChannel(bridge, kind, vm, host);
  const ws = new WebSocket(consoleSocketUrl(win.location, kind, vm, host, consoleToken()));
  ws.binaryType = 'arraybuffer';
  return ws as unknown as ConsoleChannel;
}

/**
 * Opens `vm`'s console in a window of its own (desktop) or a new tab (web mode). The tab is opened with
 * an opener (no `noopener`): the browser then copies this tab's sessionStorage, where the access token
 * is, so the console tab is inside the same authenticated session without the token in its address.
 */
export function openConsole(vm: string, host: string | null, win: Window = window): void {
  const desktop = desktopApi(win)?.openConsoleWindow;
  if (desktop) {
    void desktop(vm, host ?? undefined);
    return;
  }
  win.open(consoleHref(vm, host), `ferry-console-${vm}`);
}
