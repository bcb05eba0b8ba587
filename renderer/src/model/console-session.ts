// A VM's console (screen and serial) as a small state machine: where to connect, what to tell the user,
// and how to follow the VM when a move takes it to another host. Pure: `step` takes the state and one
// thing that happened and returns the next state with the commands to run (the composable runs them:
// it calls consoleInfo, opens and closes the sockets, sets timers), so every path is unit-tested.

/** Mirrors engine/web/server.ts and CONSOLE-PROTOCOL.md: why a console socket was closed. */
export const CONSOLE_CLOSE = {
  badInput: 4400,
  unauthorized: 4401,
  notFound: 4404,
  notSupported: 4405,
  noDisplay: 4409,
  vmGone: 4410,
  notRunning: 4412,
  busy: 4423,
  tooMany: 4429,
  failed: 4500,
  serverStopping: 1001,
} as const;

export type ConsoleStream = 'serial' | 'vnc';
export const STREAMS: readonly ConsoleStream[] = ['serial', 'vnc'];

/** What consoleInfo answers (engine/api ConsoleInfo), as far as the console uses it. */
export interface ConsoleInfoView {
  host: string;
  vm: string;
  running: boolean;
  display: 'vga' | 'none' | string;
  serial: boolean;
  serialLog: string;
  reason?: string | undefined;
}

/** The VM's move, as the migrations store knows it: the active one, or the one just followed. */
export interface MoveView {
  id: string;
  to: string | null;
  status: string;
  phase: number;
  kind?: string;
}

/** After this phase (Online) the VM runs on the destination: the console goes there. */
export const ONLINE_PHASE = 5;
/** How long to keep knocking at a destination that is not ready yet, and how often. */
export const FOLLOW_RETRY_MS = 500;
export const FOLLOW_ATTEMPTS = 60;
/** A dropped connection (network, server restart) is retried with this backoff. */
export const RETRY_MS = [500, 1000, 2000, 4000, 5000];

export type LinkState = 'idle' | 'connecting' | 'open' | 'closed';

export type ConsolePhase =
  | 'locating' // asking consoleInfo where the VM is
  | 'connecting'
  | 'live' // at least one stream open
  | 'following' // a move took the VM: connecting to its destination
  | 'offline' // the VM is off or gone: its serial log, read-only
  | 'refused'; // the token was refused: nothing more to do

export interface ConsoleState {
  vm: string;
  /** The host the console is (or is being) connected to; null until located. */
  host: string | null;
  phase: ConsolePhase;
  /** Increased with every new pair of sockets: closes of older ones are stale and ignored. */
  gen: number;
  links: Record<ConsoleStream, LinkState>;
  /** Whether the VM has a screen (null: not known yet) and why not. */
  display: boolean | null;
  displayReason: string | null;
  serial: boolean;
  /** Why the serial console is not live while the screen may be (not supported, held elsewhere). */
  serialNote: string | null;
  /** The move in progress (or just followed). */
  move: MoveView | null;
  /** Moves already followed to their destination (never twice). */
  followed: string[];
  /** Why the console is read-only or was refused (offline/refused), or what went wrong last. */
  note: string | null;
  /** Failed tries in a row (backoff and giving up). */
  attempts: number;
  /** The serial log has been shown (it is written once, at the first connection), and its length. */
  logShown: boolean;
  logLength: number;
}

export type ConsoleInput =
  | { type: 'info'; info: ConsoleInfoView }
  | { type: 'info-failed'; message: string; code?: string }
  | { type: 'move'; move: MoveView | null }
  | { type: 'opened'; stream: ConsoleStream; gen: number }
  | { type: 'closed'; stream: ConsoleStream; gen: number; code: number; reason: string }
  | { type: 'retry' }
  /** The user asks to look again (a VM that was off may have been started). */
  | { type: 'recheck' };

export type ConsoleCommand =
  /** Ask consoleInfo where the VM runs (host: the hint, if any). */
  | { type: 'locate'; host: string | null }
  /** Close whatever is open and open these streams to `host`, tagged `gen`. */
  | { type: 'connect'; host: string; gen: number; streams: ConsoleStream[] }
  /** Close every stream (the VM is off, or the console gave up). */
  | { type: 'disconnect' }
  /** Write the serial log into the terminal (once). */
  | { type: 'show-log'; log: string }
  /** Feed `{ type: 'retry' }` back after this many ms. */
  | { type: 'retry-in'; ms: number };

export interface StepResult {
  state: ConsoleState;
  commands: ConsoleCommand[];
}

export function initialConsole(vm: string, host: string | null): StepResult {
  const state: ConsoleState = {
    vm,
    host,
    phase: 'locating',
    gen: 0,
    links: { serial: 'idle', vnc: 'idle' },
    display: null,
    displayReason: null,
    serial: true,
    serialNote: null,
    move: null,
    followed: [],
    note: null,
    attempts: 0,
    logShown: false,
    logLength: 0,
  };
  return { state, commands: [{ type: 'locate', host }] };
}

const isRunningMove = (m: MoveView | null): m is MoveView =>
  m !== null && (m.status === 'running' || m.status === 'queued');

/** The streams worth opening: serial always (if the VM has one), the screen when it has a display. */
function wanted(s: ConsoleState): ConsoleStream[] {
  const out: ConsoleStream[] = [];
  if (s.serial) out.push('serial');
  if (s.display !== false) out.push('vnc');
  return out;
}

function connectTo(s: ConsoleState, host: string, phase: ConsolePhase): StepResult {
  const streams = wanted(s);
  const gen = s.gen + 1;
  const links = { ...s.links };
  for (const k of ['serial', 'vnc'] as const) links[k] = streams.includes(k) ? 'connecting' : 'idle';
  return {
    state: { ...s, host, phase, gen, links, serialNote: null, note: phase === 'following' ? s.note : null },
    commands: [{ type: 'connect', host, gen, streams }],
  };
}

/** Whether this move has taken the VM to another host that the console has not followed yet. */
function destinationToFollow(s: ConsoleState, m: MoveView | null): string | null {
  if (!m || !m.to || m.to === s.host || s.followed.includes(m.id)) return null;
  if (m.kind !== undefined && m.kind !== 'live') return null; // a storage move keeps the VM on its host
  const arrived = m.status === 'completed' || (m.status === 'running' && m.phase >= ONLINE_PHASE);
  return arrived ? m.to : null;
}

function follow(s: ConsoleState, m: MoveView, to: string): StepResult {
  return connectTo({ ...s, followed: [...s.followed, m.id], attempts: 0, note: null }, to, 'following');
}

function backoff(attempts: number): number {
  return RETRY_MS[Math.min(attempts, RETRY_MS.length - 1)]!;
}

export function step(s: ConsoleState, input: ConsoleInput): StepResult {
  switch (input.type) {
    case 'info': {
      const info = input.info;
      const display = info.display !== 'none';
      const base: ConsoleState = {
        ...s,
        host: info.host,
        display,
        displayReason: display ? null : (info.reason ?? `${info.vm} has no display`),
        serial: info.serial,
        logShown: true,
        logLength: s.logShown ? s.logLength : info.serialLog.length,
      };
      const commands: ConsoleCommand[] = s.logShown ? [] : [{ type: 'show-log', log: info.serialLog }];
      if (!info.running) {
        // While a move runs the VM can be between hosts: look again shortly rather than give up.
        if (isRunningMove(s.move)) {
          return {
            state: { ...base, phase: 'following', attempts: s.attempts + 1 },
            commands: [...commands, { type: 'retry-in', ms: FOLLOW_RETRY_MS }],
          };
        }
        return {
          state: {
            ...base,
            phase: 'offline',
            links: { serial: 'idle', vnc: 'idle' },
            note: info.reason ?? `${info.vm} is not running`,
          },
          commands: [...commands, { type: 'disconnect' }],
        };
      }
      const r = connectTo({ ...base, attempts: 0 }, info.host, 'connecting');
      return { state: r.state, commands: [...commands, ...r.commands] };
    }

    case 'info-failed': {
      if (input.code === 'unauthorized') {
        return { state: { ...s, phase: 'refused', note: input.message }, commands: [{ type: 'disconnect' }] };
      }
      if (input.code === 'unknown-vm' && !isRunningMove(s.move)) {
        return {
          state: { ...s, phase: 'offline', note: input.message, links: { serial: 'idle', vnc: 'idle' } },
          commands: [{ type: 'disconnect' }],
        };
      }
      return {
        state: { ...s, note: input.message, attempts: s.attempts + 1 },
        commands: [{ type: 'retry-in', ms: backoff(s.attempts) }],
      };
    }

    case 'move': {
      const m = input.move;
      const next = { ...s, move: m };
      if (s.phase === 'refused') return { state: next, commands: [] };
      const to = destinationToFollow(next, m);
      if (to) return follow(next, m!, to);
      return { state: next, commands: [] };
    }

    case 'opened': {
      if (input.gen !== s.gen) return { state: s, commands: [] };
      return {
        state: {
          ...s,
          phase: s.phase === 'offline' || s.phase === 'refused' ? s.phase : 'live',
          links: { ...s.links, [input.stream]: 'open' },
          attempts: 0,
          note: null,
        },
        commands: [],
      };
    }

    case 'closed': {
      if (input.gen !== s.gen) return { state: s, commands: [] }; // an older socket, already replaced
      const links = { ...s.links, [input.stream]: 'closed' as LinkState };
      const closed: ConsoleState = { ...s, links };
      const { code, reason } = input;
      if (code === CONSOLE_CLOSE.unauthorized) {
        return {
          state: {
            ...closed,
            phase: 'refused',
            note: 'The console was refused: the access token is missing or wrong. Open it again from Ferry.',
          },
          commands: [{ type: 'disconnect' }],
        };
      }
      if (code === CONSOLE_CLOSE.noDisplay && input.stream === 'vnc') {
        // Only the screen is missing; the serial console goes on.
        return {
          state: {
            ...closed,
            display: false,
            displayReason: reason || `${s.vm} has no display`,
            links: { ...links, vnc: 'idle' },
          },
          commands: [],
        };
      }
      if (code === CONSOLE_CLOSE.notSupported || code === CONSOLE_CLOSE.badInput) {
        // Nothing to retry: this host (or this VM) has no such console. Say why; the other stream goes on.
        const why = reason || 'this console is not available';
        if (input.stream === 'vnc') {
          return { state: { ...closed, display: false, displayReason: why }, commands: [] };
        }
        return { state: { ...closed, serial: false, serialNote: why }, commands: [] };
      }
      if (code === CONSOLE_CLOSE.busy && input.stream === 'serial') {
        // Another Ferry process holds the serial port: the screen goes on.
        return {
          state: {
            ...closed,
            serialNote: reason || 'The serial console is in use by another Ferry process',
          },
          commands: [],
        };
      }
      if (code === CONSOLE_CLOSE.tooMany) {
        return {
          state: {
            ...closed,
            note: 'Too many Ferry tabs or windows are open on this computer; retrying.',
            attempts: s.attempts + 1,
          },
          commands: [{ type: 'retry-in', ms: backoff(s.attempts + 2) }],
        };
      }
      // The other stream (if any) is going the same way: act once, on the first close of this pair.
      const other = input.stream === 'serial' ? 'vnc' : 'serial';
      const otherAlive = links[other] === 'open' || links[other] === 'connecting';
      const gone =
        code === CONSOLE_CLOSE.vmGone || code === CONSOLE_CLOSE.notFound || code === CONSOLE_CLOSE.notRunning;
      if (gone) {
        // Moved: to the destination (a move event may not have arrived yet, or the socket noticed first).
        const m = s.move;
        if (m && m.to && m.to !== s.host && !s.followed.includes(m.id) && (m.kind ?? 'live') === 'live') {
          if (m.status === 'running' || m.status === 'completed') return follow(closed, m, m.to);
        }
        // Following a move whose destination is not ready yet: knock again shortly.
        if (s.phase === 'following' || isRunningMove(m)) {
          if (s.attempts + 1 >= FOLLOW_ATTEMPTS) {
            return {
              state: { ...closed, attempts: 0, phase: 'locating' },
              commands: [{ type: 'locate', host: null }],
            };
          }
          return {
            state: { ...closed, attempts: s.attempts + 1, phase: 'following' },
            commands: otherAlive ? [] : [{ type: 'retry-in', ms: FOLLOW_RETRY_MS }],
          };
        }
        // Stopped, or moved by someone this console did not hear of: where is it now?
        if (otherAlive) return { state: closed, commands: [] };
        return {
          state: { ...closed, phase: 'locating', note: reason || null },
          commands: [{ type: 'locate', host: null }],
        };
      }
      // A dropped connection (network, server stopping): try again with a backoff.
      if (otherAlive) return { state: closed, commands: [] };
      return {
        state: {
          ...closed,
          phase: 'connecting',
          attempts: s.attempts + 1,
          note: reason ? `Connection lost (${reason}); reconnecting…` : 'Connection lost; reconnecting…',
        },
        commands: [{ type: 'retry-in', ms: backoff(s.attempts) }],
      };
    }

    case 'recheck':
      if (s.phase !== 'offline') return { state: s, commands: [] };
      return { state: { ...s, phase: 'locating', note: null }, commands: [{ type: 'locate', host: null }] };

    case 'retry': {
      if (s.phase === 'refused' || s.phase === 'offline') return { state: s, commands: [] };
      // Following a move, or reconnecting after a drop: the same host again, while there is one.
      if (s.host && (s.phase === 'following' || s.phase === 'connecting' || s.phase === 'live')) {
        if (s.attempts >= FOLLOW_ATTEMPTS) {
          return {
            state: { ...s, attempts: 0, phase: 'locating' },
            commands: [{ type: 'locate', host: null }],
          };
        }
        // Every few tries, ask where the VM is instead (it may have been moved elsewhere, or stopped).
        if (s.phase !== 'following' && s.attempts > 0 && s.attempts % 3 === 0) {
          return { state: s, commands: [{ type: 'locate', host: null }] };
        }
        return connectTo(s, s.host, s.phase === 'following' ? 'following' : 'connecting');
      }
      return { state: { ...s, phase: 'locating' }, commands: [{ type: 'locate', host: null }] };
    }
  }
}

/** "Moving to lab2 — phase 3" while the VM's move runs (the text the console shows over the screen). */
export function moveNote(m: MoveView | null): string | null {
  if (!m || (m.kind !== undefined && m.kind !== 'live')) return null;
  if (m.status === 'queued') return `Waiting to move${m.to ? ` to ${m.to}` : ''}`;
  if (m.status !== 'running') return null;
  const to = m.to ? ` to ${m.to}` : '';
  return m.phase > 0 ? `Moving${to} — phase ${m.phase}` : `Moving${to}`;
}

/** The one line the console's status bar shows. */
export function statusText(s: ConsoleState): string {
  const moving = moveNote(s.move);
  if (s.phase === 'refused') return s.note ?? 'The console was refused';
  if (s.phase === 'offline') return `${s.vm} is not running — serial log (read-only)`;
  if (moving) return moving;
  const on = s.host ? ` on ${s.host}` : '';
  switch (s.phase) {
    case 'locating':
      return `Looking for ${s.vm}…`;
    case 'connecting':
      return s.note ?? `Connecting to ${s.vm}${on}…`;
    case 'following':
      return `Reconnecting to ${s.vm}${on}…`;
    case 'live':
      return `Connected to ${s.vm}${on}`;
  }
}

/** Where a console is asked to open, from the page's address: `#console=VM&host=HOST` (or `?console=`). */
export function consoleTarget(
  location: Pick<Location, 'hash' | 'search'>,
): { vm: string; host: string | null } | null {
  for (const part of [location.hash.replace(/^#/, ''), location.search.replace(/^\?/, '')]) {
    const p = new URLSearchParams(part);
    const vm = p.get('console');
    if (vm) return { vm, host: p.get('host') || null };
  }
  return null;
}

/** The address of a console page for `vm` (relative, so it works from file:// and any mount path). */
export function consoleHref(vm: string, host: string | null): string {
  const p = new URLSearchParams({ console: vm });
  if (host) p.set('host', host);
  return `./#${p.toString()}`;
}
