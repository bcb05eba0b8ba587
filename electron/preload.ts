// Sandboxed preload: bundled to CommonJS and may only require a tiny subset of modules
// (electron's contextBridge/ipcRenderer, events, timers, url). Keep it that way: it imports
// nothing but electron and the channel names (types are erased).
import { contextBridge, ipcRenderer } from 'electron';

import type { ApiClient, ConsoleKind, ServerEvent } from '../engine/api/index.js';
import type { ConsoleBridge, FerryBridge, IpcReply } from './bridge.js';
import {
  CALL_CHANNEL,
  CONSOLE_CLOSE_CHANNEL,
  CONSOLE_DATA_CHANNEL,
  CONSOLE_END_CHANNEL,
  CONSOLE_OPEN_CHANNEL,
  CONSOLE_SEND_CHANNEL,
  CONSOLE_WINDOW_CHANNEL,
  EVENT_CHANNEL,
  SUBSCRIBE_CHANNEL,
} from './channels.js';

const listeners = new Set<(e: ServerEvent) => void>();
let subscribed = false;

ipcRenderer.on(EVENT_CHANNEL, (_event, e: ServerEvent) => {
  for (const listener of listeners) listener(e);
});

/** The reply's result, or a rejection with the plain { code, message, hint } it carries. */
const unwrap = (reply: IpcReply): unknown => {
  if (reply.ok) return reply.result;
  // A plain { code, message, hint }: contextBridge copies plain objects whole, but an Error only with its message.
  throw reply.error;
};

const call = async (method: string, input: unknown): Promise<unknown> =>
  unwrap((await ipcRenderer.invoke(CALL_CHANNEL, { method, input })) as IpcReply);

const dataListeners = new Set<(id: string, data: Uint8Array) => void>();
const closeListeners = new Set<(id: string, code: number, reason: string) => void>();

ipcRenderer.on(CONSOLE_DATA_CHANNEL, (_event, id: string, data: Uint8Array) => {
  for (const listener of dataListeners) listener(id, data);
});
ipcRenderer.on(CONSOLE_END_CHANNEL, (_event, id: string, code: number, reason: string) => {
  for (const listener of closeListeners) listener(id, code, reason);
});

const consoleBridge: ConsoleBridge = Object.freeze({
  async open(kind: ConsoleKind, vm: string, host?: string): Promise<string> {
    const input = host === undefined ? { kind, vm } : { kind, vm, host };
    return unwrap((await ipcRenderer.invoke(CONSOLE_OPEN_CHANNEL, input)) as IpcReply) as string;
  },
  send(id: string, data: Uint8Array): void {
    ipcRenderer.send(CONSOLE_SEND_CHANNEL, { id, data });
  },
  close(id: string): void {
    ipcRenderer.send(CONSOLE_CLOSE_CHANNEL, { id });
  },
  onData(listener: (id: string, data: Uint8Array) => void): () => void {
    dataListeners.add(listener);
    return () => {
      dataListeners.delete(listener);
    };
  },
  onClose(listener: (id: string, code: number, reason: string) => void): () => void {
    closeListeners.add(listener);
    return () => {
      closeListeners.delete(listener);
    };
  },
});

const bridge: FerryBridge = Object.freeze({
  call: call as ApiClient['call'],
  subscribe(listener: (e: ServerEvent) => void): () => void {
    listeners.add(listener);
    if (!subscribed) {
      subscribed = true;
      ipcRenderer.send(SUBSCRIBE_CHANNEL);
    }
    return () => {
      listeners.delete(listener);
    };
  },
  console: consoleBridge,
  async openConsoleWindow(vm: string, host?: string): Promise<void> {
    const input = host === undefined ? { vm } : { vm, host };
    unwrap((await ipcRenderer.invoke(CONSOLE_WINDOW_CHANNEL, input)) as IpcReply);
  },
});

contextBridge.exposeInMainWorld('ferry', bridge);
