// A VM's consoles on Ferry's own hosts: the serial port (QEMU's socket chardev, which also logs to
// serial.log) and the screen (QEMU's VNC server on a unix socket). Both sockets lie in the host's
// private socket folder; only this process reaches them, and it hands the bytes to its authenticated
// channels (the web mode's token-checked WebSocket, the desktop app's IPC).
//
// QEMU's serial socket takes one client at a time (a second one waits unserved until the first
// leaves), so every viewer of a VM's serial port in this process shares one connection (fan-out). One
// held by another process (a second `ferry web`) is refused clearly (`console-busy`). QEMU's VNC server
// takes several clients itself: each viewer gets its own connection.
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { FerryError, type ConsoleKind } from '../../api/index.js';
import { vmDisplay } from '../../qemu/argv.js';
import { isQemuAlive } from '../../qemu/process.js';
import { QmpClient } from '../../qemu/qmp.js';
import { isRunning, type LocalContext, type Runtime } from './context.js';

/** How a console stream ended: closed by its viewer, the VM's QEMU went away, or something failed. */
export interface ConsoleEnd {
  code: 'closed' | 'vm-gone' | 'error';
  message: string;
}

/**
 * One viewer's console: the bytes of the serial port or of the RFB protocol, both ways. Emits `data`
 * (Buffer) and, exactly once, `end` (ConsoleEnd).
 */
export class ConsoleStream extends EventEmitter {
  private endedWith: ConsoleEnd | null = null;

  constructor(
    readonly vm: string,
    readonly host: string,
    readonly kind: ConsoleKind,
    private readonly io: {
      write(data: Buffer): void;
      close(): void;
      pause?(): void;
      resume?(): void;
    },
  ) {
    super();
  }

  get ended(): ConsoleEnd | null {
    return this.endedWith;
  }

  write(data: Uint8Array): void {
    if (!this.endedWith && data.length > 0) this.io.write(Buffer.from(data));
  }

  /** Stop reading for a while (a slow viewer); the serial port never stops (the guest would wait). */
  pause(): void {
    this.io.pause?.();
  }

  resume(): void {
    this.io.resume?.();
  }

  /** The viewer is done. */
  close(): void {
    if (this.endedWith) return;
    this.finish({ code: 'closed', message: 'closed' });
    this.io.close();
  }

  /** @internal */
  push(chunk: Buffer): void {
    if (!this.endedWith) this.emit('data', chunk);
  }

  /** @internal */
  finish(end: ConsoleEnd): void {
    if (this.endedWith) return;
    this.endedWith = end;
    this.emit('end', end);
    this.removeAllListeners('data');
  }

  override on(event: 'data', listener: (chunk: Buffer) => void): this;
  override on(event: 'end', listener: (end: ConsoleEnd) => void): this;
  override on(event: string, listener: (arg: never) => void): this {
    return super.on(event, listener as (arg: unknown) => void);
  }
}

/** A VM's running QEMU and its console sockets. */
interface Target {
  ctx: LocalContext;
  vm: string;
  rt: Runtime;
}

async function target(ctx: LocalContext, vm: string): Promise<Target> {
  await ctx.vmConfig(vm); // unknown-vm
  const rt = await ctx.runtime(vm);
  if (!isRunning(rt))
    throw new FerryError('vm-not-running', `VM "${vm}" is not running on ${ctx.name}: start it to connect`);
  return { ctx, vm, rt };
}

/**
 * Whether the end of a connection was the VM's QEMU going away (stopped, or moved: the source's QEMU
 * quits after the switch-over). QEMU closes its sockets as it exits; give it a moment to be gone.
 */
async function qemuGone(t: Target): Promise<boolean> {
  const deadline = Date.now() + 3000;
  for (;;) {
    if (!isQemuAlive(t.rt.pid, t.rt.qmpSocket)) return true;
    const cur = await t.ctx.runtime(t.vm).catch(() => null);
    if (!cur || cur.pid !== t.rt.pid || cur.stopRequested) return true;
    if (Date.now() > deadline) return false;
    await sleep(100);
  }
}

function goneMessage(t: Target): string {
  return `VM "${t.vm}" is no longer running on ${t.ctx.name} (it stopped or moved)`;
}

function connect(socket: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(socket);
    s.once('connect', () => {
      s.off('error', reject);
      resolve(s);
    });
    s.once('error', reject);
  });
}

async function connectOrExplain(t: Target, socket: string, what: string): Promise<net.Socket> {
  try {
    return await connect(socket);
  } catch (err) {
    if (await qemuGone({ ...t })) throw new FerryError('vm-not-running', goneMessage(t));
    throw new FerryError(
      'qemu-failed',
      `cannot reach the ${what} of "${t.vm}" on ${t.ctx.name}: ${(err as Error).message}`,
    );
  }
}

// ---- the screen --------------------------------------------------------------------------------

function noDisplay(vm: string): FerryError {
  return new FerryError(
    'no-display',
    `VM "${vm}" has no display: it was created without a screen (its serial console works)`,
  );
}

async function openVnc(t: Target): Promise<ConsoleStream> {
  if (!t.rt.vncSocket) {
    throw new FerryError(
      'no-display',
      `VM "${t.vm}" was started without its screen server: turn it off and start it again to see its screen`,
    );
  }
  const sock = await connectOrExplain(t, t.rt.vncSocket, 'screen (VNC)');
  sock.setNoDelay?.(true);
  let closing = false;
  const stream = new ConsoleStream(t.vm, t.ctx.name, 'vnc', {
    write: (b) => sock.write(b),
    close: () => {
      closing = true;
      sock.destroy();
    },
    pause: () => sock.pause(),
    resume: () => sock.resume(),
  });
  sock.on('data', (b: Buffer) => stream.push(b));
  sock.on('error', () => undefined); // 'close' follows
  sock.on('close', () => {
    if (closing) return;
    void qemuGone(t).then((gone) =>
      stream.finish(
        gone
          ? { code: 'vm-gone', message: goneMessage(t) }
          : { code: 'closed', message: `QEMU closed the screen connection of "${t.vm}"` },
      ),
    );
  });
  return stream;
}

// ---- the serial port: one connection per VM in this process, shared by its viewers ---------------

/** How long an unwatched serial connection stays open (a reloaded page reconnects within it). */
const SERIAL_LINGER_MS = 2000;
/** The most a viewer that does not keep up may have waiting; beyond it its output is dropped. */
export const SERIAL_VIEWER_BUFFER = 1024 * 1024;

class SerialHub {
  private readonly viewers = new Set<ConsoleStream>();
  private lingering: NodeJS.Timeout | null = null;
  private closed = false;

  constructor(
    private readonly key: string,
    private readonly t: Target,
    private readonly sock: net.Socket,
  ) {
    sock.on('data', (b: Buffer) => {
      for (const v of this.viewers) v.push(b);
    });
    sock.on('error', () => undefined);
    sock.on('close', () => {
      if (this.closed) return;
      this.closed = true;
      hubs.delete(this.key);
      void qemuGone(t).then((gone) => {
        const end: ConsoleEnd = gone
          ? { code: 'vm-gone', message: goneMessage(t) }
          : { code: 'closed', message: `QEMU closed the serial connection of "${t.vm}"` };
        for (const v of this.viewers) v.finish(end);
        this.viewers.clear();
      });
    });
  }

  get isClosed(): boolean {
    return this.closed;
  }

  attach(): ConsoleStream {
    if (this.lingering) clearTimeout(this.lingering);
    this.lingering = null;
    const stream: ConsoleStream = new ConsoleStream(this.t.vm, this.t.ctx.name, 'serial', {
      write: (b) => this.sock.write(b),
      close: () => this.detach(stream),
    });
    this.viewers.add(stream);
    return stream;
  }

  private detach(stream: ConsoleStream): void {
    this.viewers.delete(stream);
    if (this.viewers.size > 0 || this.closed) return;
    this.lingering = setTimeout(() => {
      if (this.viewers.size > 0 || this.closed) return;
      this.closed = true;
      hubs.delete(this.key);
      this.sock.destroy();
    }, SERIAL_LINGER_MS);
    this.lingering.unref();
  }
}

const hubs = new Map<string, Promise<SerialHub>>();

/** Whether another client (another Ferry process) holds the VM's serial socket, by QEMU's own account. */
async function serialHeldElsewhere(t: Target): Promise<boolean> {
  const qmp = await QmpClient.connect(t.rt.statusSocket, { timeoutMs: 3000 }).catch(() => null);
  if (!qmp) return false; // cannot tell: connect, as a client would
  try {
    const devs = await qmp.execute<{ label: string; filename: string }[]>('query-chardev');
    const serial = devs.find((d) => d.label === 'serial0');
    return !!serial && !serial.filename.startsWith('disconnected:');
  } catch {
    return false;
  } finally {
    await qmp.close();
  }
}

async function connectSerial(key: string, t: Target, socket: string): Promise<SerialHub> {
  // QEMU may take a moment to notice that a connection this process just closed is gone.
  for (let i = 0; (await serialHeldElsewhere(t)) && i < 5; i++) {
    if (i === 4) {
      throw new FerryError(
        'console-busy',
        `the serial console of "${t.vm}" on ${t.ctx.name} is open in another program (QEMU's serial port takes one client)`,
        'close the serial console in the other Ferry window or `ferry web`, or read the log: ferry vm serial ' +
          t.vm,
      );
    }
    await sleep(250);
  }
  return new SerialHub(key, t, await connectOrExplain(t, socket, 'serial console'));
}

async function openSerial(t: Target): Promise<ConsoleStream> {
  const socket = t.rt.serialSocket;
  if (!socket || !fs.existsSync(socket)) {
    throw new FerryError(
      'not-supported',
      `VM "${t.vm}" was started before Ferry could connect to serial ports: its serial port only writes to its log; turn it off and start it again (or move it) to type into it`,
    );
  }
  const key = `${socket}#${t.rt.pid}`;
  for (;;) {
    let pending = hubs.get(key);
    if (!pending) {
      pending = connectSerial(key, t, socket);
      hubs.set(key, pending);
      pending.catch(() => hubs.delete(key));
    }
    const hub = await pending;
    if (!hub.isClosed) return hub.attach();
    if (hubs.get(key) === pending) hubs.delete(key);
  }
}

/** Opens a viewer's console of a VM running on this host. */
export async function openLocalConsole(
  ctx: LocalContext,
  vm: string,
  kind: ConsoleKind,
): Promise<ConsoleStream> {
  // A VM without a display says so whether it runs or not.
  if (kind === 'vnc' && vmDisplay(await ctx.vmConfig(vm)) === 'none') throw noDisplay(vm);
  const t = await target(ctx, vm);
  return kind === 'vnc' ? openVnc(t) : openSerial(t);
}

/** The last `max` bytes of the VM's serial log (from a line start when cut), '' when there is none. */
export async function serialLogTail(ctx: LocalContext, vm: string, max = 64 * 1024): Promise<string> {
  const file = ctx.runtimePaths(await ctx.vmConfig(vm)).serialLog;
  let fh: fs.promises.FileHandle;
  try {
    fh = await fs.promises.open(file, 'r');
  } catch {
    return '';
  }
  try {
    const { size } = await fh.stat();
    const start = Math.max(0, size - max);
    const buf = Buffer.alloc(size - start);
    const { bytesRead } = await fh.read(buf, 0, buf.length, start);
    let text = buf.subarray(0, bytesRead);
    if (start > 0) {
      const nl = text.indexOf(0x0a);
      if (nl >= 0) text = text.subarray(nl + 1);
    }
    return text.toString('utf8');
  } finally {
    await fh.close();
  }
}
