// "Connect…" in the desktop app: the console streams over IPC (electron/console-ipc.ts) and the
// preload's window.ferry.console, against a mocked `electron`. Only the app's own top-level page may
// open, feed or close a stream, every message is checked (zod), a stream's bytes go only to the page
// that opened it, and its streams close with it.
import type { IpcMain } from 'electron';
import { beforeEach, describe, expect, it, vi } from 'vitest';
import { FerryError } from '../../engine/api/index.js';
import { ConsoleStream } from '../../engine/service/console.js';
import { bindConsole, consoleHash, type ConsoleEngine } from '../../electron/console-ipc.js';
import {
  CONSOLE_CLOSE_CHANNEL,
  CONSOLE_DATA_CHANNEL,
  CONSOLE_END_CHANNEL,
  CONSOLE_OPEN_CHANNEL,
  CONSOLE_SEND_CHANNEL,
  CONSOLE_WINDOW_CHANNEL,
} from '../../electron/channels.js';
import { isAppUrl } from '../../electron/window.js';

const APP = 'file:///opt/ferry/out/renderer/index.html';
const isApp = (url: string): boolean => isAppUrl(url, APP);

const fakes = vi.hoisted(() => {
  type Fn = (...args: unknown[]) => unknown;
  const exposed = new Map<string, unknown>();
  const rendererHandlers = new Map<string, Fn>();
  const ipcRenderer = {
    invoke: vi.fn(),
    send: vi.fn(),
    on: vi.fn((channel: string, fn: Fn) => rendererHandlers.set(channel, fn)),
  };
  const contextBridge = { exposeInMainWorld: vi.fn((key: string, api: unknown) => exposed.set(key, api)) };
  return { exposed, rendererHandlers, ipcRenderer, contextBridge };
});
vi.mock('electron', () => ({ contextBridge: fakes.contextBridge, ipcRenderer: fakes.ipcRenderer }));

type Handler = (event: unknown, ...args: unknown[]) => unknown;
class FakeIpcMain {
  readonly handlers = new Map<string, Handler>();
  readonly listeners = new Map<string, Handler>();
  handle(channel: string, fn: Handler): void {
    this.handlers.set(channel, fn);
  }
  on(channel: string, fn: Handler): this {
    this.listeners.set(channel, fn);
    return this;
  }
  removeHandler(channel: string): void {
    this.handlers.delete(channel);
  }
  removeListener(channel: string): this {
    this.listeners.delete(channel);
    return this;
  }
}

class FakeContents {
  readonly mainFrame = { url: APP };
  readonly sent: unknown[][] = [];
  destroyed = false;
  url = APP;
  private readonly handlers = new Map<string, (() => void)[]>();
  send(...args: unknown[]): void {
    this.sent.push(args);
  }
  getURL(): string {
    return this.url;
  }
  isDestroyed(): boolean {
    return this.destroyed;
  }
  on(event: string, fn: () => void): this {
    this.handlers.set(event, [...(this.handlers.get(event) ?? []), fn]);
    return this;
  }
  once(event: string, fn: () => void): this {
    return this.on(event, fn);
  }
  emit(event: string): void {
    for (const fn of this.handlers.get(event) ?? []) fn();
  }
}

/** A console stream whose other end the test plays (the VM's QEMU). */
function fakeStream(): { stream: ConsoleStream; written: Buffer[]; closed: () => boolean } {
  const written: Buffer[] = [];
  let closed = false;
  const stream = new ConsoleStream('web1', 'lab1', 'serial', {
    write: (b) => written.push(b),
    close: () => (closed = true),
  });
  return { stream, written, closed: () => closed };
}

const from = (c: FakeContents, frame: { url: string } | null = c.mainFrame) => ({
  sender: c,
  senderFrame: frame,
});

let ipc: FakeIpcMain;
let streams: ReturnType<typeof fakeStream>[];
let engine: ConsoleEngine & { openConsole: ReturnType<typeof vi.fn> };
let windows: [string, string | undefined][];
let unbind: () => void;

beforeEach(() => {
  ipc = new FakeIpcMain();
  streams = [];
  engine = {
    openConsole: vi.fn(async (req: { vm: string; kind: string }) => {
      if (req.vm === 'flat') throw new FerryError('no-display', 'VM "flat" has no display');
      const s = fakeStream();
      streams.push(s);
      return s.stream;
    }),
  };
  windows = [];
  unbind = bindConsole(ipc as unknown as IpcMain, engine, isApp, (vm, host) => windows.push([vm, host]));
});

const openIn = (c: FakeContents, payload: unknown, frame?: { url: string } | null) =>
  ipc.handlers.get(CONSOLE_OPEN_CHANNEL)!(
    frame === undefined ? from(c) : from(c, frame),
    payload,
  ) as Promise<{
    ok: boolean;
    result?: string;
    error?: { code: string };
  }>;

describe('console streams over IPC', () => {
  it("opens a stream for the app's page, passes bytes both ways, and closes it on request", async () => {
    const page = new FakeContents();
    const r = await openIn(page, { kind: 'serial', vm: 'web1', host: 'lab1' });
    expect(r).toMatchObject({ ok: true, result: expect.stringMatching(/^[0-9a-f-]{36}$/) });
    expect(engine.openConsole).toHaveBeenCalledWith({ kind: 'serial', vm: 'web1', host: 'lab1' });
    const id = r.result!;
    const s = streams[0]!;
    s.stream.push(Buffer.from('FERRY-GUEST hb\n'));
    expect(page.sent).toEqual([[CONSOLE_DATA_CHANNEL, id, new Uint8Array(Buffer.from('FERRY-GUEST hb\n'))]]);
    ipc.listeners.get(CONSOLE_SEND_CHANNEL)!(from(page), { id, data: new Uint8Array([0x71]) });
    expect(s.written).toEqual([Buffer.from('q')]);
    ipc.listeners.get(CONSOLE_CLOSE_CHANNEL)!(from(page), { id });
    expect(s.closed()).toBe(true);
    expect(page.sent).toHaveLength(1); // no end message for a stream the page closed itself
  });

  it('tells the page when the VM went away (4410 vm-gone)', async () => {
    const page = new FakeContents();
    const { result: id } = await openIn(page, { kind: 'vnc', vm: 'web1' });
    streams[0]!.stream.finish({ code: 'vm-gone', message: 'VM "web1" is no longer running on lab1' });
    expect(page.sent).toEqual([[CONSOLE_END_CHANNEL, id, 4410, 'vm-gone']]);
  });

  it('refuses other pages, frames and malformed requests before the engine sees them', async () => {
    const stranger = new FakeContents();
    stranger.mainFrame.url = 'https://evil.example/';
    expect(await openIn(stranger, { kind: 'serial', vm: 'web1' })).toMatchObject({
      ok: false,
      error: { code: 'forbidden' },
    });
    expect(await openIn(new FakeContents(), { kind: 'serial', vm: 'web1' }, { url: APP })).toMatchObject({
      error: { code: 'forbidden' },
    });
    for (const bad of [
      { kind: 'shell', vm: 'web1' },
      { kind: 'serial', vm: '../x' },
      { kind: 'serial', vm: 'web1', host: 'lab1', extra: 1 },
      'serial',
    ])
      expect(await openIn(new FakeContents(), bad)).toMatchObject({
        ok: false,
        error: { code: 'bad-input' },
      });
    expect(engine.openConsole).not.toHaveBeenCalled();
  });

  it("returns the engine's refusal in the contract shape", async () => {
    expect(await openIn(new FakeContents(), { kind: 'vnc', vm: 'flat' })).toEqual({
      ok: false,
      error: { code: 'no-display', message: 'VM "flat" has no display' },
    });
  });

  it("ignores writes and closes from another page, and bad payloads; a page's streams close with it", async () => {
    const page = new FakeContents();
    const other = new FakeContents();
    const { result: id } = await openIn(page, { kind: 'serial', vm: 'web1' });
    const s = streams[0]!;
    const send = ipc.listeners.get(CONSOLE_SEND_CHANNEL)!;
    send(from(other), { id, data: new Uint8Array([1]) });
    send(from(page), { id, data: 'text' });
    send(from(page), { id: 'not-a-uuid', data: new Uint8Array([1]) });
    send(from(page, null), { id, data: new Uint8Array([1]) });
    ipc.listeners.get(CONSOLE_CLOSE_CHANNEL)!(from(other), { id });
    expect(s.written).toEqual([]);
    expect(s.closed()).toBe(false);
    // Another page never receives this stream's bytes.
    s.stream.push(Buffer.from('x'));
    expect(other.sent).toEqual([]);
    page.destroyed = true;
    page.emit('destroyed');
    expect(s.closed()).toBe(true);
  });

  it('closes the streams of a page that loads anew', async () => {
    const page = new FakeContents();
    await openIn(page, { kind: 'serial', vm: 'web1' });
    page.emit('did-navigate');
    expect(streams[0]!.closed()).toBe(true);
  });

  it('opens a console window for a checked VM name, from the app only; unbinds cleanly', async () => {
    const win = ipc.handlers.get(CONSOLE_WINDOW_CHANNEL)!;
    expect(await win(from(new FakeContents()), { vm: 'web1', host: 'lab2' })).toEqual({
      ok: true,
      result: null,
    });
    expect(await win(from(new FakeContents()), { vm: 'a b/../c' })).toMatchObject({ ok: false });
    const stranger = new FakeContents();
    stranger.mainFrame.url = 'https://evil.example/';
    expect(await win(from(stranger), { vm: 'web1' })).toMatchObject({ error: { code: 'forbidden' } });
    expect(windows).toEqual([['web1', 'lab2']]);
    expect(consoleHash('web1', 'lab2')).toBe('console=web1&host=lab2');
    expect(consoleHash('a&b')).toBe('console=a%26b');
    const page = new FakeContents();
    await openIn(page, { kind: 'serial', vm: 'web1' });
    unbind();
    expect(streams.at(-1)!.closed()).toBe(true);
    expect(ipc.handlers.size + ipc.listeners.size).toBe(0);
  });
});

describe('preload: window.ferry.console', () => {
  type Bridge = {
    console: {
      open: (kind: string, vm: string, host?: string) => Promise<string>;
      send: (id: string, d: Uint8Array) => void;
      close: (id: string) => void;
      onData: (cb: (id: string, d: Uint8Array) => void) => () => void;
      onClose: (cb: (id: string, code: number, reason: string) => void) => () => void;
    };
    openConsoleWindow: (vm: string, host?: string) => Promise<void>;
  };

  it('opens, sends, closes and delivers through the console channels', async () => {
    vi.resetModules();
    fakes.exposed.clear();
    vi.clearAllMocks();
    await import('../../electron/preload.js');
    const bridge = fakes.exposed.get('ferry') as Bridge;
    expect(Object.isFrozen(bridge.console)).toBe(true);
    fakes.ipcRenderer.invoke.mockResolvedValueOnce({ ok: true, result: 'id-1' });
    expect(await bridge.console.open('vnc', 'web1')).toBe('id-1');
    expect(fakes.ipcRenderer.invoke).toHaveBeenLastCalledWith(CONSOLE_OPEN_CHANNEL, {
      kind: 'vnc',
      vm: 'web1',
    });
    fakes.ipcRenderer.invoke.mockResolvedValueOnce({
      ok: false,
      error: { code: 'no-display', message: 'm' },
    });
    await expect(bridge.console.open('vnc', 'flat', 'lab1')).rejects.toEqual({
      code: 'no-display',
      message: 'm',
    });
    bridge.console.send('id-1', new Uint8Array([1, 2]));
    bridge.console.close('id-1');
    expect(fakes.ipcRenderer.send.mock.calls).toEqual([
      [CONSOLE_SEND_CHANNEL, { id: 'id-1', data: new Uint8Array([1, 2]) }],
      [CONSOLE_CLOSE_CHANNEL, { id: 'id-1' }],
    ]);
    const got: unknown[] = [];
    const off = bridge.console.onData((id, d) => got.push([id, d]));
    bridge.console.onClose((id, code, reason) => got.push([id, code, reason]));
    fakes.rendererHandlers.get(CONSOLE_DATA_CHANNEL)!({}, 'id-1', new Uint8Array([9]));
    fakes.rendererHandlers.get(CONSOLE_END_CHANNEL)!({}, 'id-1', 4410, 'vm-gone');
    off();
    fakes.rendererHandlers.get(CONSOLE_DATA_CHANNEL)!({}, 'id-1', new Uint8Array([8]));
    expect(got).toEqual([
      ['id-1', new Uint8Array([9])],
      ['id-1', 4410, 'vm-gone'],
    ]);
    fakes.ipcRenderer.invoke.mockResolvedValueOnce({ ok: true, result: null });
    await bridge.openConsoleWindow('web1', 'lab2');
    expect(fakes.ipcRenderer.invoke).toHaveBeenLastCalledWith(CONSOLE_WINDOW_CHANNEL, {
      vm: 'web1',
      host: 'lab2',
    });
  });
});
