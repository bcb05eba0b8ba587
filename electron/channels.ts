// IPC channel names shared by the main process and the preload (which may import nothing heavier).
export const CALL_CHANNEL = 'ferry:call';
export const SUBSCRIBE_CHANNEL = 'ferry:subscribe';
export const EVENT_CHANNEL = 'ferry:event';
// "Connect…": a VM's console streams (electron/console-ipc.ts) and its window.
/** invoke({ kind, vm, host? }) → IpcReply with the stream's id. */
export const CONSOLE_OPEN_CHANNEL = 'ferry:console-open';
/** send({ id, data: Uint8Array }): bytes typed into the console (serial) or the viewer's RFB. */
export const CONSOLE_SEND_CHANNEL = 'ferry:console-send';
/** send({ id }): the page is done with the stream. */
export const CONSOLE_CLOSE_CHANNEL = 'ferry:console-close';
/** main → page (id, Uint8Array): bytes from the VM. */
export const CONSOLE_DATA_CHANNEL = 'ferry:console-data';
/** main → page (id, code, reason): the stream ended (codes as the web mode's console WebSocket). */
export const CONSOLE_END_CHANNEL = 'ferry:console-end';
/** invoke({ vm, host? }) → IpcReply: a window of its own for the VM's console. */
export const CONSOLE_WINDOW_CHANNEL = 'ferry:console-window';
