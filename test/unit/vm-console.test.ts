// @vitest-environment jsdom
// A VM's console (issue 12) apart from the browser: the session model that decides where to connect and
// follows the VM across a move, the composable that runs it against fake channels, and the IPC channel
// the desktop hands noVNC.
import { createPinia, setActivePinia } from 'pinia';
import { effectScope } from 'vue';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { MigrationEvent } from '../../engine/api/index.js';
import {
  consoleSocketUrl,
  IpcConsoleChannel,
  type ConsoleBridge,
  type ConsoleChannel,
} from '../../renderer/src/api/console-channel.js';
import { useConsoleSession } from '../../renderer/src/composables/useConsoleSession.js';
import {
  CONSOLE_CLOSE,
  consoleHref,
  consoleTarget,
  FOLLOW_ATTEMPTS,
  initialConsole,
  moveNote,
  statusText,
  step,
  type ConsoleInfoView,
  type ConsoleInput,
  type ConsoleState,
  type StepResult,
} from '../../renderer/src/model/console-session.js';
import { useMigrationsStore } from '../../renderer/src/stores/migrations.js';

const INFO: ConsoleInfoView = {
  host: 'lab1',
  vm: 'demo',
  running: true,
  display: 'vga',
  serial: true,
  serialLog: 'boot\nready\n',
};

/** Runs inputs one after the other from the start, returning every step's result. */
function run(inputs: ConsoleInput[], host: string | null = null): StepResult[] {
  const out: StepResult[] = [initialConsole('demo', host)];
  for (const i of inputs) out.push(step(out.at(-1)!.state, i));
  return out;
}
const last = (r: StepResult[]): StepResult => r.at(-1)!;
const connected = (gen: number): ConsoleInput[] => [
  { type: 'opened', stream: 'serial', gen },
  { type: 'opened', stream: 'vnc', gen },
];

describe('console session model', () => {
  it('locates the VM, shows its serial log once and opens the serial console and the screen', () => {
    const r = run([{ type: 'info', info: INFO }, ...connected(1)]);
    expect(r[0]!.commands).toEqual([{ type: 'locate', host: null }]);
    expect(r[1]!.commands).toEqual([
      { type: 'show-log', log: 'boot\nready\n' },
      { type: 'connect', host: 'lab1', gen: 1, streams: ['serial', 'vnc'] },
    ]);
    expect(last(r).state.phase).toBe('live');
    expect(statusText(last(r).state)).toBe('Connected to demo on lab1');
    // A second answer (a later locate) does not write the log again.
    expect(step(last(r).state, { type: 'info', info: INFO }).commands).not.toContainEqual(
      expect.objectContaining({ type: 'show-log' }),
    );
  });

  it('a VM without a display: serial only, with the reason', () => {
    const r = run([{ type: 'info', info: { ...INFO, display: 'none', reason: 'created before consoles' } }]);
    expect(r[1]!.commands.at(-1)).toEqual({ type: 'connect', host: 'lab1', gen: 1, streams: ['serial'] });
    expect(last(r).state.display).toBe(false);
    expect(last(r).state.displayReason).toBe('created before consoles');
  });

  it('a VM that is off: its log, read-only, nothing opened', () => {
    const r = run([{ type: 'info', info: { ...INFO, running: false, reason: 'demo is stopped' } }]);
    expect(r[1]!.commands).toEqual([{ type: 'show-log', log: 'boot\nready\n' }, { type: 'disconnect' }]);
    expect(last(r).state.phase).toBe('offline');
    expect(statusText(last(r).state)).toBe('demo is not running — serial log (read-only)');
    // Nothing retries an offline console, until the user asks to look again (it may have been started).
    expect(step(last(r).state, { type: 'retry' }).commands).toEqual([]);
    const again = step(last(r).state, { type: 'recheck' });
    expect(again.commands).toEqual([{ type: 'locate', host: null }]);
    const started = step(again.state, { type: 'info', info: INFO });
    expect(started.commands).toEqual([{ type: 'connect', host: 'lab1', gen: 1, streams: ['serial', 'vnc'] }]);
  });

  it('shows the move and follows it to the destination at phase 5, once', () => {
    const moving = (phase: number, status = 'running') => ({
      type: 'move' as const,
      move: { id: 'm1', to: 'lab2', status, phase, kind: 'live' },
    });
    const r = run([{ type: 'info', info: INFO }, ...connected(1), moving(2), moving(3), moving(4)]);
    expect(r.slice(3).flatMap((x) => x.commands)).toEqual([]); // still on the source
    expect(statusText(last(r).state)).toBe('Moving to lab2 — phase 4');
    const online = step(last(r).state, moving(5));
    expect(online.commands).toEqual([{ type: 'connect', host: 'lab2', gen: 2, streams: ['serial', 'vnc'] }]);
    expect(online.state.phase).toBe('following');
    // The old sockets close with vm-gone: stale, ignored.
    const stale = step(online.state, {
      type: 'closed',
      stream: 'vnc',
      gen: 1,
      code: 4410,
      reason: 'vm-gone',
    });
    expect(stale.commands).toEqual([]);
    // Phase 6 and the summary do not reconnect again.
    const s6 = step(stale.state, moving(6));
    const done = step(s6.state, moving(6, 'completed'));
    expect([...s6.commands, ...done.commands]).toEqual([]);
    const back = step(step(done.state, connected(2)[0]!).state, connected(2)[1]!);
    expect(back.state.phase).toBe('live');
    expect(back.state.host).toBe('lab2');
    expect(statusText(back.state)).toBe('Connected to demo on lab2');
  });

  it('follows on the socket closing with vm-gone when the move event has not come yet', () => {
    const r = run([
      { type: 'info', info: INFO },
      ...connected(1),
      { type: 'move', move: { id: 'm1', to: 'lab2', status: 'running', phase: 4 } },
      { type: 'closed', stream: 'serial', gen: 1, code: CONSOLE_CLOSE.vmGone, reason: 'vm-gone' },
    ]);
    expect(last(r).commands).toEqual([{ type: 'connect', host: 'lab2', gen: 2, streams: ['serial', 'vnc'] }]);
    // The screen's close of the same pair changes nothing.
    expect(
      step(last(r).state, { type: 'closed', stream: 'vnc', gen: 1, code: 4410, reason: '' }).commands,
    ).toEqual([]);
  });

  it('knocks again while the destination is not ready yet, then asks where the VM is', () => {
    let s: ConsoleState = last(
      run([
        { type: 'info', info: INFO },
        ...connected(1),
        { type: 'move', move: { id: 'm1', to: 'lab2', status: 'running', phase: 5 } },
      ]),
    ).state;
    expect(s.host).toBe('lab2');
    let r = step(s, { type: 'closed', stream: 'serial', gen: 2, code: CONSOLE_CLOSE.notFound, reason: '' });
    // The screen's socket is still trying: wait for it.
    expect(r.commands).toEqual([]);
    r = step(r.state, { type: 'closed', stream: 'vnc', gen: 2, code: CONSOLE_CLOSE.notFound, reason: '' });
    expect(r.commands).toEqual([{ type: 'retry-in', ms: 500 }]);
    r = step(r.state, { type: 'retry' });
    expect(r.commands).toEqual([{ type: 'connect', host: 'lab2', gen: 3, streams: ['serial', 'vnc'] }]);
    s = r.state;
    // Still not there after many tries: ask consoleInfo.
    for (let i = 0; i < FOLLOW_ATTEMPTS; i++) {
      r = step(s, { type: 'closed', stream: 'serial', gen: s.gen, code: 4404, reason: '' });
      r = step(r.state, { type: 'closed', stream: 'vnc', gen: s.gen, code: 4404, reason: '' });
      if (r.commands[0]?.type === 'locate') break;
      r = step(r.state, { type: 'retry' });
      s = r.state;
    }
    expect(r.commands).toEqual([{ type: 'locate', host: null }]);
  });

  it('a VM stopped under the console: asks where it is, then shows its log read-only', () => {
    const r = run([
      { type: 'info', info: INFO },
      ...connected(1),
      { type: 'closed', stream: 'serial', gen: 1, code: 4410, reason: 'vm-gone' },
      { type: 'closed', stream: 'vnc', gen: 1, code: 4410, reason: 'vm-gone' },
    ]);
    expect(last(r).commands).toEqual([{ type: 'locate', host: null }]);
    const off = step(last(r).state, { type: 'info', info: { ...INFO, running: false } });
    expect(off.state.phase).toBe('offline');
    expect(off.commands).toEqual([{ type: 'disconnect' }]);
  });

  it('a move the console did not hear of: vm-gone, then consoleInfo finds it on the other host', () => {
    const r = run([
      { type: 'info', info: INFO },
      ...connected(1),
      { type: 'closed', stream: 'vnc', gen: 1, code: 4410, reason: '' },
      { type: 'closed', stream: 'serial', gen: 1, code: 4410, reason: '' },
      { type: 'info', info: { ...INFO, host: 'lab2' } },
    ]);
    expect(last(r).commands).toEqual([{ type: 'connect', host: 'lab2', gen: 2, streams: ['serial', 'vnc'] }]);
  });

  it('refused without a valid token: says so and stops', () => {
    const r = run([
      { type: 'info', info: INFO },
      { type: 'closed', stream: 'vnc', gen: 1, code: CONSOLE_CLOSE.unauthorized, reason: '' },
    ]);
    expect(last(r).state.phase).toBe('refused');
    expect(last(r).commands).toEqual([{ type: 'disconnect' }]);
    expect(statusText(last(r).state)).toMatch(/access token/);
    expect(step(last(r).state, { type: 'retry' }).commands).toEqual([]);
    expect(
      step(last(r).state, { type: 'move', move: { id: 'm', to: 'lab2', status: 'running', phase: 5 } })
        .commands,
    ).toEqual([]);
  });

  it('no-display on the screen socket: the serial console goes on', () => {
    const r = run([
      { type: 'info', info: INFO },
      { type: 'opened', stream: 'serial', gen: 1 },
      { type: 'closed', stream: 'vnc', gen: 1, code: CONSOLE_CLOSE.noDisplay, reason: 'demo has no display' },
    ]);
    expect(last(r).commands).toEqual([]);
    expect(last(r).state.display).toBe(false);
    expect(last(r).state.displayReason).toBe('demo has no display');
    expect(last(r).state.phase).toBe('live');
  });

  it('a console the host does not support, or a serial port held elsewhere: says why, no retries', () => {
    const r = run([
      { type: 'info', info: INFO },
      { type: 'opened', stream: 'vnc', gen: 1 },
      { type: 'closed', stream: 'serial', gen: 1, code: CONSOLE_CLOSE.busy, reason: 'held by ferry web' },
    ]);
    expect(last(r).commands).toEqual([]);
    expect(last(r).state.serialNote).toBe('held by ferry web');
    expect(last(r).state.phase).toBe('live');
    const unsupported = step(last(r).state, {
      type: 'closed',
      stream: 'vnc',
      gen: 1,
      code: CONSOLE_CLOSE.notSupported,
      reason: 'a libvirt host',
    });
    expect(unsupported.commands).toEqual([]);
    expect(unsupported.state.displayReason).toBe('a libvirt host');
  });

  it('a dropped connection is retried with a backoff', () => {
    const r = run([
      { type: 'info', info: INFO },
      ...connected(1),
      { type: 'closed', stream: 'serial', gen: 1, code: 1006, reason: '' },
      { type: 'closed', stream: 'vnc', gen: 1, code: 1006, reason: '' },
    ]);
    expect(last(r).commands).toEqual([{ type: 'retry-in', ms: 500 }]);
    expect(statusText(last(r).state)).toBe('Connection lost; reconnecting…');
    const again = step(last(r).state, { type: 'retry' });
    expect(again.commands).toEqual([{ type: 'connect', host: 'lab1', gen: 2, streams: ['serial', 'vnc'] }]);
  });

  it("a storage move does not take the console anywhere; the move's note shows only live moves", () => {
    const r = run([
      { type: 'info', info: INFO },
      { type: 'move', move: { id: 's', to: 'lab1', status: 'running', phase: 0, kind: 'storage' } },
    ]);
    expect(last(r).commands).toEqual([]);
    expect(moveNote({ id: 's', to: 'lab1', status: 'running', phase: 0, kind: 'storage' })).toBeNull();
    expect(moveNote({ id: 'q', to: 'lab2', status: 'queued', phase: 0 })).toBe('Waiting to move to lab2');
    expect(moveNote({ id: 'r', to: 'lab2', status: 'running', phase: 3 })).toBe('Moving to lab2 — phase 3');
    expect(moveNote({ id: 'r', to: 'lab2', status: 'completed', phase: 6 })).toBeNull();
  });

  it('reads and writes the console address', () => {
    expect(consoleHref('demo', 'lab1')).toBe('./#console=demo&host=lab1');
    expect(consoleHref('a b&c', null)).toBe('./#console=a+b%26c');
    expect(consoleTarget({ hash: '#console=a+b%26c', search: '' })).toEqual({ vm: 'a b&c', host: null });
    expect(consoleTarget({ hash: '', search: '?console=demo&host=lab2' })).toEqual({
      vm: 'demo',
      host: 'lab2',
    });
    expect(consoleTarget({ hash: '', search: '' })).toBeNull();
    expect(consoleSocketUrl({ protocol: 'https:', host: 'h:1' }, 'vnc', 'demo', 'lab2', 't/k')).toBe(
      'wss://h:1/api/console/vnc?vm=demo&host=lab2&token=t%2Fk',
    );
  });
});

// ── The composable, against fake channels and the real migrations store ────────────────────────────

class FakeChannel extends EventTarget implements ConsoleChannel {
  binaryType = 'arraybuffer';
  protocol = '';
  readyState = 0;
  onopen = null;
  onmessage = null;
  onclose = null;
  onerror = null;
  sent: Uint8Array[] = [];
  constructor(
    readonly kind: string,
    readonly host: string | null,
  ) {
    super();
  }
  send(d: ArrayBuffer | ArrayBufferView | string): void {
    this.sent.push(d as Uint8Array);
  }
  close(code = 1000): void {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.dispatchEvent(new CloseEvent('close', { code }));
  }
  open(): void {
    this.readyState = 1;
    this.dispatchEvent(new Event('open'));
  }
  gone(code: number): void {
    this.readyState = 3;
    this.dispatchEvent(new CloseEvent('close', { code }));
  }
  data(s: string): void {
    this.dispatchEvent(new MessageEvent('message', { data: new TextEncoder().encode(s).buffer }));
  }
}

describe('useConsoleSession', () => {
  beforeEach(() => {
    setActivePinia(createPinia());
    vi.useFakeTimers();
  });
  afterEach(() => vi.useRealTimers());

  const event = (e: Record<string, unknown>): MigrationEvent =>
    ({ id: 'm1', at: 0, ...e }) as unknown as MigrationEvent;

  /** A console session whose channels are fakes, kept in `channels` in the order it opened them. */
  function consoleOf(
    host: string | null,
    locate: (vm: string, host?: string | null) => Promise<typeof INFO>,
  ) {
    const channels: FakeChannel[] = [];
    const scope = effectScope();
    const session = scope.run(() =>
      useConsoleSession('demo', host, {
        open: (kind, _vm, at) => {
          const ch = new FakeChannel(kind, at);
          channels.push(ch);
          return ch;
        },
        locate,
      }),
    )!;
    return { channels, scope, session };
  }

  /** demo starts moving lab1 → lab2: the store gets the events as main.ts feeds them. */
  function moveStarts(): ReturnType<typeof useMigrationsStore> {
    const migrations = useMigrationsStore();
    migrations.refresh = async () => undefined;
    migrations.applyMigrationEvent(
      event({ type: 'started', vm: 'demo', from: 'lab1', to: 'lab2', kind: 'live', options: null }),
    );
    return migrations;
  }

  it('streams the log then the live serial output, sends typed bytes, and follows a move without a click', async () => {
    const { channels, scope, session } = consoleOf('lab1', async () => INFO);
    const out: string[] = [];
    session.onSerial((d) => out.push(typeof d === 'string' ? d : new TextDecoder().decode(d)));
    await vi.runAllTimersAsync();
    expect(channels.map((c) => `${c.kind}@${c.host}`)).toEqual(['serial@lab1', 'vnc@lab1']);
    expect(session.vnc.value).toBe(channels[1]);
    channels.forEach((c) => c.open());
    channels[0]!.data('login: ');
    expect(out.join('')).toBe('boot\nready\nlogin: ');
    session.sendSerial(new Uint8Array([120]));
    expect(channels[0]!.sent).toEqual([new Uint8Array([120])]);
    expect(session.status.value).toBe('Connected to demo on lab1');

    // A move: the store gets its events as main.ts feeds them.
    const migrations = moveStarts();
    migrations.applyMigrationEvent(event({ type: 'phase', phase: 3, state: 'started' }));
    await vi.runAllTimersAsync();
    expect(session.moving.value).toBe('Moving to lab2 — phase 3');
    expect(session.status.value).toBe('Moving to lab2 — phase 3');
    expect(channels).toHaveLength(2);

    migrations.applyMigrationEvent(event({ type: 'phase', phase: 5, state: 'started' }));
    await vi.runAllTimersAsync();
    expect(channels.map((c) => `${c.kind}@${c.host}`)).toEqual([
      'serial@lab1',
      'vnc@lab1',
      'serial@lab2',
      'vnc@lab2',
    ]);
    // The source's sockets were closed by the console itself, and the screen has the new channel.
    expect(channels[0]!.readyState).toBe(3);
    expect(session.vnc.value).toBe(channels[3]);
    channels[2]!.open();
    channels[3]!.open();
    channels[2]!.data('still here');
    expect(out.join('')).toContain('still here');
    expect(session.state.value.host).toBe('lab2');
    scope.stop();
    expect(channels[2]!.readyState).toBe(3);
  });

  it('reconnects to the destination when the screen socket closes with vm-gone first', async () => {
    const { channels, scope, session } = consoleOf(null, async (_vm, host) => ({
      ...INFO,
      host: host ?? 'lab1',
    }));
    await vi.runAllTimersAsync();
    channels.forEach((c) => c.open());
    const migrations = moveStarts();
    migrations.applyMigrationEvent(event({ type: 'phase', phase: 4, state: 'started' }));
    await vi.runAllTimersAsync();
    channels[1]!.gone(4410);
    channels[0]!.gone(4410);
    await vi.runAllTimersAsync();
    expect(channels.slice(2).map((c) => `${c.kind}@${c.host}`)).toEqual(['serial@lab2', 'vnc@lab2']);
    expect(session.state.value.phase).toBe('following');
    scope.stop();
  });
});

// ── The desktop's IPC channel ──────────────────────────────────────────────────────────────────────

describe('IpcConsoleChannel', () => {
  function fakeBridge(open: () => Promise<string>) {
    const data = new Set<(id: string, d: Uint8Array) => void>();
    const closes = new Set<(id: string, code: number, reason: string) => void>();
    const bridge: ConsoleBridge & { sent: [string, Uint8Array][]; closed: string[] } = {
      sent: [],
      closed: [],
      open,
      send: (id, d) => bridge.sent.push([id, d]),
      close: (id) => bridge.closed.push(id),
      onData: (cb) => (data.add(cb), () => data.delete(cb)),
      onClose: (cb) => (closes.add(cb), () => closes.delete(cb)),
    };
    return {
      bridge,
      data: (id: string, s: string) => data.forEach((cb) => cb(id, new TextEncoder().encode(s))),
      close: (id: string, code: number) => closes.forEach((cb) => cb(id, code, 'vm-gone')),
      listeners: () => data.size + closes.size,
    };
  }

  it('behaves like a WebSocket noVNC can attach to', async () => {
    const f = fakeBridge(async () => 'c1');
    const ch = new IpcConsoleChannel(f.bridge, 'vnc', 'demo', 'lab1');
    // What noVNC's Websock.attach checks for.
    const props = [...Object.keys(ch), ...Object.getOwnPropertyNames(Object.getPrototypeOf(ch))];
    for (const p of [
      'send',
      'close',
      'binaryType',
      'onerror',
      'onmessage',
      'onopen',
      'protocol',
      'readyState',
    ]) {
      expect(props).toContain(p);
    }
    const seen: string[] = [];
    ch.onopen = () => seen.push('open');
    ch.onmessage = (e) => seen.push(new TextDecoder().decode(e.data as ArrayBuffer));
    ch.addEventListener('close', (e) => seen.push(`close ${(e as CloseEvent).code}`));
    f.data('c1', 'early'); // before open() answered: kept
    expect(ch.readyState).toBe(0);
    await Promise.resolve();
    await Promise.resolve();
    expect(ch.readyState).toBe(1);
    f.data('c1', 'RFB 003.008\n');
    f.data('other', 'not mine');
    ch.send(new Uint8Array([1, 2, 3]));
    expect(f.bridge.sent).toEqual([['c1', new Uint8Array([1, 2, 3])]]);
    f.close('c1', 4410);
    expect(seen).toEqual(['open', 'early', 'RFB 003.008\n', 'close 4410']);
    expect(ch.readyState).toBe(3);
    expect(f.listeners()).toBe(0);
  });

  it('a refused open closes with the same code as the WebSocket would', async () => {
    const f = fakeBridge(() => Promise.reject({ code: 'no-display', message: 'demo has no display' }));
    const ch = new IpcConsoleChannel(f.bridge, 'vnc', 'demo', null);
    const closed = new Promise<CloseEvent>((resolve) =>
      ch.addEventListener('close', (e) => resolve(e as CloseEvent)),
    );
    const e = await closed;
    expect([e.code, e.reason]).toEqual([4409, 'demo has no display']);
  });

  it('closing before open answered closes the stream once it has an id', async () => {
    const f = fakeBridge(async () => 'c2');
    const ch = new IpcConsoleChannel(f.bridge, 'serial', 'demo', null);
    ch.close();
    await Promise.resolve();
    await Promise.resolve();
    expect(f.bridge.closed).toEqual(['c2']);
    expect(ch.readyState).toBe(3);
  });
});
