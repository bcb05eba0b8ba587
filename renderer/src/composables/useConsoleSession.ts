// A VM's console session: runs the console-session model (where to connect, following a move) against
// the real world — consoleInfo, the console channels, timers and the migrations store — and hands the
// view what it draws: the screen's channel (for noVNC), the serial bytes (for the terminal) and the
// status line.
import { computed, onScopeDispose, shallowRef, watch, type ShallowRef } from 'vue';
import { apiClient } from '../api/index.js';
import { errorText } from '../api/errors.js';
import { openConsoleChannel, type ConsoleChannel } from '../api/console-channel.js';
import {
  initialConsole,
  moveNote,
  statusText,
  step,
  type ConsoleCommand,
  type ConsoleInput,
  type ConsoleState,
  type ConsoleStream,
  type MoveView,
} from '../model/console-session.js';
import { useMigrationsStore } from '../stores/migrations.js';

export interface ConsoleSession {
  state: ShallowRef<ConsoleState>;
  /** The screen's channel of the current connection (a new one after every reconnect). */
  vnc: ShallowRef<ConsoleChannel | null>;
  status: Readonly<ShallowRef<string>>;
  moving: Readonly<ShallowRef<string | null>>;
  /** Looks again for a VM that was not running. */
  recheck(): void;
  /** Types bytes into the serial console (dropped while it is not connected). */
  sendSerial(data: Uint8Array): void;
  /** Where the serial bytes go: the serial log once, then the live output. */
  onSerial(fn: (data: Uint8Array | string) => void): void;
  close(): void;
}

export interface ConsoleDeps {
  open?: (kind: ConsoleStream, vm: string, host: string | null) => ConsoleChannel;
  locate?: (vm: string, host: string | null) => Promise<ConsoleInfoAnswer>;
}

type ConsoleInfoAnswer = Parameters<typeof step>[1] extends infer I
  ? I extends { type: 'info'; info: infer V }
    ? V
    : never
  : never;

const defaultLocate = (vm: string, host: string | null): Promise<ConsoleInfoAnswer> =>
  apiClient().call('consoleInfo', host ? { name: vm, host } : { name: vm });

export function useConsoleSession(vm: string, host: string | null, deps: ConsoleDeps = {}): ConsoleSession {
  const open = deps.open ?? openConsoleChannel;
  const locate = deps.locate ?? defaultLocate;
  const migrations = useMigrationsStore();

  const first = initialConsole(vm, host);
  const state = shallowRef<ConsoleState>(first.state);
  const vnc = shallowRef<ConsoleChannel | null>(null);
  let serial: ConsoleChannel | null = null;
  let serialSink: ((data: Uint8Array | string) => void) | null = null;
  const pendingSerial: (Uint8Array | string)[] = [];
  let timer: ReturnType<typeof setTimeout> | null = null;
  let closed = false;

  const writeSerial = (data: Uint8Array | string): void => {
    if (serialSink) serialSink(data);
    else pendingSerial.push(data);
  };

  const dispatch = (input: ConsoleInput): void => {
    if (closed) return;
    const r = step(state.value, input);
    state.value = r.state;
    for (const c of r.commands) run(c);
  };

  const drop = (ch: ConsoleChannel | null): void => {
    if (!ch) return;
    ch.onmessage = null;
    if (ch.readyState === 0 || ch.readyState === 1) ch.close(1000, 'console closed');
  };

  const disconnect = (): void => {
    drop(serial);
    serial = null;
    drop(vnc.value);
    vnc.value = null;
  };

  function watchChannel(ch: ConsoleChannel, stream: ConsoleStream, gen: number): void {
    ch.addEventListener('open', () => dispatch({ type: 'opened', stream, gen }));
    ch.addEventListener('close', (ev) => {
      const e = ev as CloseEvent;
      dispatch({ type: 'closed', stream, gen, code: e.code, reason: e.reason });
    });
  }

  function run(c: ConsoleCommand): void {
    switch (c.type) {
      case 'locate': {
        const gen = state.value.gen;
        locate(vm, c.host).then(
          (info) => {
            if (state.value.gen === gen) dispatch({ type: 'info', info });
          },
          (err: unknown) => {
            const code = (err as { code?: string } | null)?.code;
            dispatch({ type: 'info-failed', message: errorText(err), ...(code ? { code } : {}) });
          },
        );
        return;
      }
      case 'connect': {
        disconnect();
        if (c.streams.includes('serial')) {
          const ch = open('serial', vm, c.host);
          serial = ch;
          watchChannel(ch, 'serial', c.gen);
          ch.addEventListener('message', (ev) => {
            const data = (ev as MessageEvent).data as unknown;
            if (typeof data === 'string') writeSerial(data);
            else if (
              data instanceof ArrayBuffer ||
              Object.prototype.toString.call(data) === '[object ArrayBuffer]'
            ) {
              writeSerial(new Uint8Array(data as ArrayBuffer));
            }
          });
        }
        if (c.streams.includes('vnc')) {
          const ch = open('vnc', vm, c.host);
          watchChannel(ch, 'vnc', c.gen);
          vnc.value = ch;
        }
        return;
      }
      case 'disconnect':
        disconnect();
        return;
      case 'show-log':
        if (c.log) writeSerial(c.log);
        return;
      case 'retry-in':
        if (timer) clearTimeout(timer);
        timer = setTimeout(() => {
          timer = null;
          dispatch({ type: 'retry' });
        }, c.ms);
        return;
    }
  }

  // The VM's move: the active one, and once it is over the same one with its outcome (to follow it).
  const seen = new Set<string>();
  const move = computed<MoveView | null>(() => {
    const active = migrations.active.find((m) => m.vm === vm && m.kind === 'live');
    if (active) {
      return { id: active.id, to: active.to, status: active.status, phase: active.phase, kind: active.kind };
    }
    for (const id of [...seen].reverse()) {
      const m = migrations.moves[id];
      if (m) return { id: m.id, to: m.to, status: m.status, phase: m.phase, kind: m.kind };
    }
    return null;
  });
  watch(
    () => {
      const m = move.value;
      return m ? `${m.id}|${m.to}|${m.status}|${m.phase}` : '';
    },
    () => {
      const m = move.value;
      if (m && (m.status === 'running' || m.status === 'queued')) seen.add(m.id);
      dispatch({ type: 'move', move: m });
    },
    { immediate: true },
  );

  for (const c of first.commands) run(c);

  const close = (): void => {
    if (timer) clearTimeout(timer);
    closed = true;
    disconnect();
  };
  onScopeDispose(close);

  return {
    state,
    vnc,
    status: computed(() => statusText(state.value)),
    moving: computed(() => moveNote(state.value.move)),
    recheck: () => dispatch({ type: 'recheck' }),
    sendSerial(data) {
      if (serial && serial.readyState === 1) serial.send(data);
    },
    onSerial(fn) {
      serialSink = fn;
      for (const d of pendingSerial.splice(0)) fn(d);
    },
    close,
  };
}
