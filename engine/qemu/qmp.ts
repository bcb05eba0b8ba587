// A QMP (QEMU Machine Protocol) client over a unix socket.
// QMP is line-delimited JSON: a greeting, then `qmp_capabilities`, then commands matched to replies by
// `id`, interleaved with asynchronous events. See QEMU's docs/interop/qmp-spec.
import { EventEmitter } from 'node:events';
import net from 'node:net';
import { FerryError } from '../api/index.js';

export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  timestamp: { seconds: number; microseconds: number };
}

export interface QmpGreeting {
  version: { qemu: { major: number; minor: number; micro: number }; package: string };
  capabilities: string[];
}

/** QEMU answered the command with an error object. */
export class QmpCommandError extends FerryError {
  constructor(
    readonly command: string,
    readonly errorClass: string,
    readonly desc: string,
  ) {
    super('qmp-error', `QEMU refused ${command}: ${desc}`);
  }
}

interface Pending {
  command: string;
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

export interface QmpConnectOptions {
  /** Give up connecting (and negotiating) after this long. */
  timeoutMs?: number;
  /** Default per-command timeout. */
  commandTimeoutMs?: number;
}

type Listener = (ev: QmpEvent) => void;

export class QmpClient {
  private readonly events = new EventEmitter();
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private buffer = '';
  private closed = false;
  private closeReason: Error | null = null;
  greeting: QmpGreeting | null = null;

  private constructor(
    private readonly socket: net.Socket,
    readonly path: string,
    private readonly commandTimeoutMs: number,
  ) {
    // Events may fan out to many waiters (one per phase watcher); no leak warning for that.
    this.events.setMaxListeners(100);
  }

  /** Connects, reads the greeting and leaves the negotiation mode so commands can be sent. */
  static async connect(path: string, opts: QmpConnectOptions = {}): Promise<QmpClient> {
    const timeoutMs = opts.timeoutMs ?? 5000;
    const socket = net.createConnection({ path });
    const client = new QmpClient(socket, path, opts.commandTimeoutMs ?? 30_000);
    try {
      await withTimeout(
        (async () => {
          await new Promise<void>((resolve, reject) => {
            socket.once('connect', resolve);
            socket.once('error', reject);
          });
          client.attach();
          client.greeting = await client.waitGreeting();
          await client.execute('qmp_capabilities');
        })(),
        timeoutMs,
        () => new FerryError('qmp-timeout', `no QMP greeting from ${path} within ${timeoutMs} ms`),
      );
    } catch (err) {
      socket.destroy();
      if (err instanceof FerryError) throw err;
      throw new FerryError('qmp-disconnected', `cannot connect to QMP at ${path}: ${(err as Error).message}`);
    }
    return client;
  }

  private greetingWaiter: ((g: QmpGreeting) => void) | null = null;
  private waitGreeting(): Promise<QmpGreeting> {
    return new Promise((resolve, reject) => {
      this.greetingWaiter = resolve;
      this.socket.once('close', () => reject(new Error('connection closed before the greeting')));
    });
  }

  private attach(): void {
    this.socket.setEncoding('utf8');
    this.socket.on('data', (chunk: string) => this.onData(chunk));
    this.socket.on('error', (err) => this.shutdown(err));
    this.socket.on('close', () =>
      this.shutdown(new FerryError('qmp-disconnected', `QMP connection to ${this.path} was lost`)),
    );
  }

  private onData(chunk: string): void {
    this.buffer += chunk;
    let nl: number;
    while ((nl = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, nl).trim();
      this.buffer = this.buffer.slice(nl + 1);
      if (line) this.onMessage(line);
    }
  }

  private onMessage(line: string): void {
    let msg: Record<string, unknown>;
    try {
      msg = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return; // QEMU only sends JSON; ignore a torn line rather than kill the session
    }
    if ('QMP' in msg) {
      this.greetingWaiter?.(msg.QMP as QmpGreeting);
      this.greetingWaiter = null;
      return;
    }
    if ('event' in msg) {
      const ev: QmpEvent = {
        event: String(msg.event),
        data: (msg.data as Record<string, unknown>) ?? {},
        timestamp: msg.timestamp as QmpEvent['timestamp'],
      };
      this.events.emit(ev.event, ev);
      this.events.emit('*', ev);
      return;
    }
    const id = typeof msg.id === 'number' ? msg.id : NaN;
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    clearTimeout(p.timer);
    if ('error' in msg) {
      const e = msg.error as { class?: string; desc?: string };
      p.reject(new QmpCommandError(p.command, e.class ?? 'GenericError', e.desc ?? 'unknown error'));
    } else {
      p.resolve(msg.return);
    }
  }

  /** Sends one command and resolves with its `return` value. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs?: number): Promise<T> {
    if (this.closed) {
      return Promise.reject(
        this.closeReason ?? new FerryError('qmp-disconnected', `QMP connection to ${this.path} is closed`),
      );
    }
    const id = this.nextId++;
    const limit = timeoutMs ?? this.commandTimeoutMs;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new FerryError('qmp-timeout', `QEMU did not answer ${command} within ${limit} ms`));
      }, limit);
      this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      const msg = args === undefined ? { execute: command, id } : { execute: command, arguments: args, id };
      this.socket.write(JSON.stringify(msg) + '\n');
    });
  }

  /** Runs a human-monitor (HMP) command line and returns its text output. */
  hmp(commandLine: string): Promise<string> {
    return this.execute<string>('human-monitor-command', { 'command-line': commandLine });
  }

  on(event: string, listener: Listener): () => void {
    this.events.on(event, listener);
    return () => this.events.off(event, listener);
  }

  /** Resolves with the next event of that name that matches; rejects on timeout or lost connection. */
  waitEvent(
    event: string,
    match: (ev: QmpEvent) => boolean = () => true,
    timeoutMs = 30_000,
  ): Promise<QmpEvent> {
    if (this.closed) return Promise.reject(this.closeReason ?? new FerryError('qmp-disconnected', 'closed'));
    return new Promise((resolve, reject) => {
      const cleanup = (): void => {
        clearTimeout(timer);
        this.events.off(event, onEvent);
        this.events.off('__closed', onClose);
      };
      const onEvent = (ev: QmpEvent): void => {
        if (!match(ev)) return;
        cleanup();
        resolve(ev);
      };
      const onClose = (err: Error): void => {
        cleanup();
        reject(err);
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new FerryError('qmp-timeout', `no ${event} event within ${timeoutMs} ms`));
      }, timeoutMs);
      this.events.on(event, onEvent);
      this.events.on('__closed', onClose);
    });
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Fires once when the connection ends, with the reason. */
  onClose(listener: (err: Error) => void): void {
    if (this.closed) listener(this.closeReason!);
    else this.events.once('__closed', listener);
  }

  private shutdown(reason: Error): void {
    if (this.closed) return;
    this.closed = true;
    this.closeReason =
      reason instanceof FerryError
        ? reason
        : new FerryError('qmp-disconnected', `QMP connection to ${this.path} was lost (${reason.message})`);
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(
        new FerryError(
          'qmp-disconnected',
          `QMP connection lost while waiting for ${p.command} (${this.path})`,
        ),
      );
    }
    this.pending.clear();
    this.events.emit('__closed', this.closeReason);
    this.socket.destroy();
  }

  /** Closes the connection; pending commands fail with qmp-disconnected. QEMU keeps running. */
  close(): Promise<void> {
    if (this.closed) return Promise.resolve();
    return new Promise((resolve) => {
      this.socket.once('close', () => resolve());
      this.socket.end();
      this.shutdown(new FerryError('qmp-disconnected', `QMP connection to ${this.path} was closed`));
    });
  }
}

async function withTimeout<T>(p: Promise<T>, ms: number, onTimeout: () => Error): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(onTimeout()), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
