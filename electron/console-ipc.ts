// "Connect…" in the desktop app: a VM's console streams over IPC. The same checks as the API's calls
// (ipc.ts): every message must come from the app's own top-level page and match its schema (zod). A
// stream belongs to the page that opened it: only that page may write to or close it, only it receives
// its bytes, and its streams close when it goes away or navigates elsewhere.
import crypto from 'node:crypto';
import type { IpcMain, IpcMainEvent, IpcMainInvokeEvent, WebContents } from 'electron';
import { z } from 'zod';
import { ConsoleKindSchema, HostNameSchema, VmRefSchema } from '../engine/api/index.js';
import { badInput, toApiError, type ApiService } from '../engine/service/api-service.js';
import type { ConsoleStream } from '../engine/service/console.js';
import type { IpcReply } from './bridge.js';
import {
  CONSOLE_CLOSE_CHANNEL,
  CONSOLE_DATA_CHANNEL,
  CONSOLE_END_CHANNEL,
  CONSOLE_OPEN_CHANNEL,
  CONSOLE_SEND_CHANNEL,
  CONSOLE_WINDOW_CHANNEL,
} from './channels.js';
import { isTrustedSender } from './ipc.js';

export type ConsoleEngine = Pick<ApiService, 'openConsole'>;

/** Close codes, as the web mode's console WebSocket has them (engine/web/server.ts). */
export const CONSOLE_END_CODES = { closed: 1000, 'vm-gone': 4410, error: 4500 } as const;
/** Streams one page may hold at once. */
export const MAX_STREAMS_PER_PAGE = 16;
/** The most one send may carry (a paste, a burst of RFB input). */
export const MAX_SEND_BYTES = 1024 * 1024;

export const ConsoleOpenSchema = z
  .object({ kind: ConsoleKindSchema, vm: VmRefSchema, host: HostNameSchema.optional() })
  .strict();
export const ConsoleWindowSchema = z.object({ vm: VmRefSchema, host: HostNameSchema.optional() }).strict();
const IdSchema = z.uuid();
export const ConsoleSendSchema = z
  .object({
    id: IdSchema,
    data: z.instanceof(Uint8Array).refine((d) => d.byteLength <= MAX_SEND_BYTES, 'at most 1 MiB per send'),
  })
  .strict();
export const ConsoleCloseSchema = z.object({ id: IdSchema }).strict();

type SenderEvent = Pick<IpcMainInvokeEvent | IpcMainEvent, 'sender' | 'senderFrame'>;

const refused = (code: string, message: string): IpcReply => ({ ok: false, error: { code, message } });

/**
 * Registers the console channels; returns a function that removes them and closes every stream.
 * `openWindow` makes the VM's console window (main.ts).
 */
export function bindConsole(
  ipcMain: IpcMain,
  engine: ConsoleEngine,
  isAppUrl: (url: string) => boolean,
  openWindow: (vm: string, host?: string) => void,
): () => void {
  const streams = new Map<string, { owner: WebContents; stream: ConsoleStream }>();
  const watched = new WeakSet<WebContents>();

  const closeAllOf = (owner: WebContents): void => {
    for (const [id, s] of streams) {
      if (s.owner !== owner) continue;
      streams.delete(id);
      s.stream.close();
    }
  };
  const watch = (owner: WebContents): void => {
    if (watched.has(owner)) return;
    watched.add(owner);
    owner.once('destroyed', () => closeAllOf(owner));
    // A page that loads anew (a reload, or a document it must not be) loses its streams; a change of
    // the hash is not a new document and does not fire this.
    owner.on('did-navigate', () => closeAllOf(owner));
  };

  ipcMain.handle(CONSOLE_OPEN_CHANNEL, async (event, payload: unknown): Promise<IpcReply> => {
    if (!isTrustedSender(event, isAppUrl))
      return refused('forbidden', 'IPC from a page that is not the Ferry console');
    const req = ConsoleOpenSchema.safeParse(payload);
    if (!req.success) return { ok: false, error: badInput('console', req.error).toJSON() };
    const owner = event.sender;
    const held = [...streams.values()].filter((s) => s.owner === owner).length;
    if (held >= MAX_STREAMS_PER_PAGE)
      return refused(
        'rate-limited',
        `this window already holds ${held} consoles (at most ${MAX_STREAMS_PER_PAGE})`,
      );
    let stream: ConsoleStream;
    try {
      stream = await engine.openConsole(req.data);
    } catch (err) {
      return { ok: false, error: toApiError(err) };
    }
    if (owner.isDestroyed()) {
      stream.close();
      return refused('forbidden', 'the window closed');
    }
    const id = crypto.randomUUID();
    streams.set(id, { owner, stream });
    watch(owner);
    stream.on('data', (chunk) => {
      if (owner.isDestroyed() || !isAppUrl(owner.getURL())) return;
      owner.send(CONSOLE_DATA_CHANNEL, id, new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength));
    });
    stream.on('end', (end) => {
      const known = streams.delete(id);
      if (end.code === 'closed' && !known) return; // closed by the page itself
      if (owner.isDestroyed() || !isAppUrl(owner.getURL())) return;
      owner.send(
        CONSOLE_END_CHANNEL,
        id,
        CONSOLE_END_CODES[end.code],
        end.code === 'vm-gone' ? 'vm-gone' : end.message,
      );
    });
    return { ok: true, result: id };
  });

  const onSend = (event: IpcMainEvent, payload: unknown): void => {
    if (!isTrustedSender(event, isAppUrl)) return;
    const msg = ConsoleSendSchema.safeParse(payload);
    if (!msg.success) return;
    const s = streams.get(msg.data.id);
    if (s && s.owner === event.sender) s.stream.write(msg.data.data);
  };
  const onClose = (event: IpcMainEvent, payload: unknown): void => {
    if (!isTrustedSender(event, isAppUrl)) return;
    const msg = ConsoleCloseSchema.safeParse(payload);
    if (!msg.success) return;
    const s = streams.get(msg.data.id);
    if (!s || s.owner !== event.sender) return;
    streams.delete(msg.data.id);
    s.stream.close();
  };
  ipcMain.on(CONSOLE_SEND_CHANNEL, onSend);
  ipcMain.on(CONSOLE_CLOSE_CHANNEL, onClose);

  ipcMain.handle(CONSOLE_WINDOW_CHANNEL, (event, payload: unknown): IpcReply => {
    if (!isTrustedSender(event as SenderEvent, isAppUrl))
      return refused('forbidden', 'IPC from a page that is not the Ferry console');
    const req = ConsoleWindowSchema.safeParse(payload);
    if (!req.success) return { ok: false, error: badInput('console window', req.error).toJSON() };
    openWindow(req.data.vm, req.data.host);
    return { ok: true, result: null };
  });

  return () => {
    ipcMain.removeHandler(CONSOLE_OPEN_CHANNEL);
    ipcMain.removeHandler(CONSOLE_WINDOW_CHANNEL);
    ipcMain.removeListener(CONSOLE_SEND_CHANNEL, onSend);
    ipcMain.removeListener(CONSOLE_CLOSE_CHANNEL, onClose);
    for (const s of streams.values()) s.stream.close();
    streams.clear();
  };
}

/** The hash the renderer reads to show one VM's console: `console=VM&host=HOST`. */
export function consoleHash(vm: string, host?: string): string {
  return `console=${encodeURIComponent(vm)}${host === undefined ? '' : `&host=${encodeURIComponent(host)}`}`;
}
