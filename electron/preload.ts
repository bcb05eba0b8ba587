// Sandboxed preload: bundled to CommonJS and may only require a tiny subset of modules
// (electron's contextBridge/ipcRenderer, events, timers, url). Keep it that way: it imports
// nothing but electron and the channel names (types are erased).
import { contextBridge, ipcRenderer } from 'electron';

import type { ApiClient, ServerEvent } from '../engine/api/index.js';
import type { FerryBridge, IpcReply } from './bridge.js';
import { CALL_CHANNEL, EVENT_CHANNEL, SUBSCRIBE_CHANNEL } from './channels.js';

const listeners = new Set<(e: ServerEvent) => void>();
let subscribed = false;

ipcRenderer.on(EVENT_CHANNEL, (_event, e: ServerEvent) => {
  for (const listener of listeners) listener(e);
});

const call = async (method: string, input: unknown): Promise<unknown> => {
  const reply = (await ipcRenderer.invoke(CALL_CHANNEL, { method, input })) as IpcReply;
  if (reply.ok) return reply.result;
  // A plain { code, message, hint }: contextBridge copies plain objects whole, but an Error only with its message.
  throw reply.error;
};

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
});

contextBridge.exposeInMainWorld('ferry', bridge);
