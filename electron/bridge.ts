import type { ApiClient, ApiError } from '../engine/api/index.js';

/**
 * What the preload exposes to the renderer as `window.ferry`: exactly the API contract's client, so the
 * renderer cannot tell it from the web mode's WebSocket client.
 */
export type FerryBridge = ApiClient;

/** What `ferry:call` answers: the result, or the contract's error shape (Error objects lose fields over IPC). */
export type IpcReply = { ok: true; result: unknown } | { ok: false; error: ApiError };
