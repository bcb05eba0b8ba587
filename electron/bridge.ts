import type { ApiClient, ApiError, ConsoleKind } from '../engine/api/index.js';

/** A VM's console streams in the desktop app (electron/console-ipc.ts); see CONSOLE-PROTOCOL notes there. */
export interface ConsoleBridge {
  /** Opens the VM's serial console or screen (raw RFB); resolves to the stream's id, rejects with an ApiError. */
  open(kind: ConsoleKind, vm: string, host?: string): Promise<string>;
  /** Bytes typed into the serial console, or the VNC viewer's RFB messages. */
  send(id: string, data: Uint8Array): void;
  /** Done with the stream (onClose is not called for it). */
  close(id: string): void;
  /** Bytes from the VM, for every stream this page opened; returns a function that stops listening. */
  onData(listener: (id: string, data: Uint8Array) => void): () => void;
  /**
   * A stream ended on the engine's side: 4410 'vm-gone' (its QEMU went away: stopped, or moved — ask
   * consoleInfo again and reconnect), 1000 (QEMU closed it), 4500 (an error; reason says which).
   */
  onClose(listener: (id: string, code: number, reason: string) => void): () => void;
}

/**
 * What the preload exposes to the renderer as `window.ferry`: the API contract's client (the renderer
 * cannot tell it from the web mode's WebSocket client), plus the desktop app's console streams and
 * console windows.
 */
export type FerryBridge = ApiClient & {
  console: ConsoleBridge;
  /** A window of its own for the VM's console: the renderer loaded with `#console=VM&host=HOST`. */
  openConsoleWindow(vm: string, host?: string): Promise<void>;
};

/** What `ferry:call` answers: the result, or the contract's error shape (Error objects lose fields over IPC). */
export type IpcReply = { ok: true; result: unknown } | { ok: false; error: ApiError };
