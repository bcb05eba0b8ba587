// The engine's API over Electron IPC. Every message is checked twice before it reaches the engine: it
// must come from the app's own top-level page (not a frame, not a page navigated elsewhere), and it
// must match the contract (zod). Events go only to pages that subscribed.
import type { IpcMain, IpcMainEvent, IpcMainInvokeEvent, WebContents } from 'electron';
import { z } from 'zod';
import { api, isMethod, type ApiError, type ServerEvent } from '../engine/api/index.js';
import { badInput, toApiError, type ApiService } from '../engine/service/api-service.js';
import type { IpcReply } from './bridge.js';
import { CALL_CHANNEL, EVENT_CHANNEL, SUBSCRIBE_CHANNEL } from './channels.js';

export type ApiEngine = Pick<ApiService, 'call' | 'subscribe'>;

/** The one shape a call may have. */
export const IpcCallSchema = z.object({ method: z.string().min(1).max(64), input: z.unknown() }).strict();

type SenderEvent = Pick<IpcMainInvokeEvent | IpcMainEvent, 'sender' | 'senderFrame'>;

/** True when the message comes from the app's page in its own top-level frame. */
export function isTrustedSender(event: SenderEvent, isAppUrl: (url: string) => boolean): boolean {
  const frame = event.senderFrame;
  if (!frame) return false; // the frame navigated away or was destroyed meanwhile
  if (frame !== event.sender.mainFrame) return false;
  return isAppUrl(frame.url);
}

const refused = (code: string, message: string): IpcReply => ({ ok: false, error: { code, message } });

/** Checks and runs one call; never throws (the reply carries the error). */
export async function handleCall(engine: ApiEngine, payload: unknown): Promise<IpcReply> {
  const call = IpcCallSchema.safeParse(payload);
  if (!call.success)
    return { ok: false, error: badInput('a call is { method, input }', call.error).toJSON() };
  const { method, input } = call.data;
  if (!isMethod(method)) return refused('bad-input', `unknown API method "${method}"`);
  const parsed = api[method].input.safeParse(input ?? {});
  if (!parsed.success) return { ok: false, error: badInput(method, parsed.error).toJSON() };
  try {
    // The raw input, not parsed.data: the engine parses again itself and must see what the page sent.
    return { ok: true, result: (await engine.call(method, input ?? {})) ?? null };
  } catch (err) {
    const e: ApiError = toApiError(err);
    return { ok: false, error: e };
  }
}

/** Registers the handlers; returns a function that removes them (tests, and a clean quit). */
export function bindApi(ipcMain: IpcMain, engine: ApiEngine, isAppUrl: (url: string) => boolean): () => void {
  const subscribers = new Set<WebContents>();

  ipcMain.handle(CALL_CHANNEL, async (event, payload: unknown): Promise<IpcReply> => {
    if (!isTrustedSender(event, isAppUrl)) {
      return refused('forbidden', 'IPC from a page that is not the Ferry console');
    }
    return handleCall(engine, payload);
  });

  const onSubscribe = (event: IpcMainEvent): void => {
    if (!isTrustedSender(event, isAppUrl)) return;
    const contents = event.sender;
    if (subscribers.has(contents)) return;
    subscribers.add(contents);
    contents.once('destroyed', () => subscribers.delete(contents));
  };
  ipcMain.on(SUBSCRIBE_CHANNEL, onSubscribe);

  const unsubscribe = engine.subscribe((e: ServerEvent) => {
    for (const contents of subscribers) {
      if (contents.isDestroyed()) subscribers.delete(contents);
      // Only while the page is still the app: a navigated page must not receive the engine's events.
      else if (isAppUrl(contents.getURL())) contents.send(EVENT_CHANNEL, e);
    }
  });

  return () => {
    ipcMain.removeHandler(CALL_CHANNEL);
    ipcMain.removeListener(SUBSCRIBE_CHANNEL, onSubscribe);
    unsubscribe();
    subscribers.clear();
  };
}
