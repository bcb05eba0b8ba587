// A pure-TypeScript client for libvirt's remote RPC protocol (what virsh speaks to libvirtd), over a
// unix socket, TCP, TLS or an SSH channel. It never loads libvirt.so nor runs virsh.
// Like QmpClient: a map of pending calls keyed by serial, every pending call failed when the connection
// goes, events through an emitter. Keepalive follows libvirt's own client (answer PINGs, PING when idle,
// give up after N silent intervals), because a daemon that sees no PONGs drops us and cancels migrations.
import { EventEmitter } from 'node:events';
import { Duplex } from 'node:stream';
import { FerryError } from '../api/errors.js';
import {
  AuthType,
  type DomainRef,
  decodeEvent,
  decodeRemoteError,
  encodePacket,
  Feature,
  FramingError,
  KEEPALIVE_PROC_PING,
  KEEPALIVE_PROC_PONG,
  KEEPALIVE_PROGRAM,
  KEEPALIVE_PROTOCOL_VERSION,
  type LibvirtEvent,
  MessageStatus,
  MessageType,
  type NodeInfo,
  type Packet,
  PacketDecoder,
  printable,
  Proc,
  readDomain,
  readNodeInfo,
  readPool,
  readVol,
  REMOTE_PROGRAM,
  REMOTE_PROTOCOL_VERSION,
  type RemoteError,
  type StoragePoolRef,
  type StorageVolRef,
  writeDomain,
  writePool,
  writeVol,
} from './protocol.js';
import { driverUri, type LibvirtUri, openTransport, parseLibvirtUri, type Transport } from './transport.js';
import { type TypedParam, XdrError, XdrReader, XdrWriter } from './xdr.js';

/** FERRY_TRACE=libvirt: every call's procedure number and round trip on stderr (what LIBVIRT_DEBUG is to virsh). */
const TRACE = /(^|,)libvirt(,|$)/.test(process.env.FERRY_TRACE ?? '');
const procName = (proc: number): string =>
  Object.entries(Proc).find(([, n]) => n === proc)?.[0] ?? `call ${proc}`;

export type {
  DomainRef,
  LibvirtEvent,
  NodeInfo,
  RemoteError,
  StoragePoolRef,
  StorageVolRef,
} from './protocol.js';
export { paramNumber, paramValue, paramValues, type TypedParam, type TypedParamType } from './xdr.js';

/** An error reply from libvirtd, with libvirt's own error number, domain and text. */
export class LibvirtError extends FerryError {
  readonly libvirtCode: number;
  readonly libvirtDomain: number;
  readonly libvirtMessage: string;
  constructor(
    readonly remote: RemoteError,
    readonly proc: number,
  ) {
    const text = remote.message ?? `unknown libvirt error`;
    super('libvirt-error', `libvirt: ${text} (code ${remote.code})`);
    this.libvirtCode = remote.code;
    this.libvirtDomain = remote.domain;
    this.libvirtMessage = text;
  }
}

export interface LibvirtConnectOptions {
  uri: string;
  /** SSH private key file (overrides the URI's keyfile). */
  sshKey?: string | null;
  /** Trust this (unknown) SSH host key fingerprint, `SHA256:…`, and record it in known_hosts. */
  acceptHostKey?: string | null;
  /** For the whole connect: transport, login and the opening calls. Default 10 s. */
  timeoutMs?: number;
  /** Send a keepalive PING after this long without hearing from the server. Default 5000. */
  keepaliveIntervalMs?: number;
  /** Declare the connection lost after this many intervals without a byte from the server. Default 3. */
  keepaliveCount?: number;
}

export interface LibvirtFeatures {
  migrationV3: boolean;
  migrationParams: boolean;
  changeProtection: boolean;
}

export interface DomainInfo {
  state: number;
  maxMemKiB: bigint;
  memoryKiB: bigint;
  nrVirtCpu: number;
  cpuTimeNs: bigint;
}

export interface BlockJobInfo {
  found: boolean;
  type: number;
  bandwidth: bigint;
  cur: bigint;
  end: bigint;
}

export interface StorageVolInfo {
  type: number;
  capacity: bigint;
  allocation: bigint;
}

/** virStoragePoolInfo: state (StoragePoolState) and sizes in bytes. */
export interface StoragePoolInfo {
  state: number;
  capacity: bigint;
  allocation: bigint;
  available: bigint;
}

/** virDomainBlockInfo, in bytes: capacity is the disk's virtual size. */
export interface DomainBlockInfo {
  allocation: bigint;
  capacity: bigint;
  physical: bigint;
}

type Encode = (w: XdrWriter) => void;
type Decode<T> = (r: XdrReader) => T;

interface Pending {
  proc: number;
  resolve: (payload: Buffer) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout | null;
}

// List limits from remote_protocol.x.
const DOMAIN_LIST_MAX = 16384;
const POOL_LIST_MAX = 4096;
const AUTH_TYPE_LIST_MAX = 20;
const MIGRATE_PARAM_LIST_MAX = 64;
const JOB_STATS_MAX = 64;
const BLOCK_COPY_PARAMETERS_MAX = 16;
/** Events for a callback id we have not seen returned yet (see registerDomainEvent). */
const EVENT_BUFFER_MAX = 256;

const writeParams = (w: XdrWriter, params: readonly TypedParam[]): void => {
  w.typedParams(params, MIGRATE_PARAM_LIST_MAX);
};
const optStr = (w: XdrWriter, s: string | null | undefined): void => {
  w.optional(s, (x, v) => x.string(v));
};

export class LibvirtClient {
  readonly uri: LibvirtUri;
  /** The host, for messages ("localhost" for the local socket). */
  readonly host: string;
  features: LibvirtFeatures = { migrationV3: false, migrationParams: false, changeProtection: false };

  private readonly emitter = new EventEmitter();
  private readonly pending = new Map<number, Pending>();
  /** Open streams (consoles), by the serial of the call that opened them. */
  private readonly streams = new Map<number, Duplex>();
  private readonly decoder = new PacketDecoder();
  private nextSerial = 1;
  private isClosed = false;
  /** Until the first reply, a dying stream means "no libvirtd there", not "connection lost". */
  private sawReply = false;
  private losing = false;
  private lastRx = Date.now();
  private lastPing = 0;
  private keepaliveTimer: NodeJS.Timeout | null = null;
  private readonly knownCallbacks = new Set<number>();
  private readonly registering = new Set<Promise<unknown>>();
  private eventBuffer: LibvirtEvent[] = [];

  private constructor(
    private readonly transport: Transport,
    uri: LibvirtUri,
    private readonly keepaliveIntervalMs: number,
    private readonly keepaliveCount: number,
  ) {
    this.uri = uri;
    this.host = uri.host ?? 'localhost';
    this.emitter.setMaxListeners(100);
    const s = transport.stream;
    s.on('data', (chunk: Buffer) => this.onData(chunk));
    s.on('error', (err: Error) => this.lost(err.message));
    s.on('end', () => this.lost('the server closed the connection'));
    s.on('close', () => this.lost('the connection was closed'));
    // The TLS transport pauses the stream after reading libvirtd's first byte; flow from here on.
    s.resume();
  }

  get closed(): boolean {
    return this.isClosed;
  }

  static async connect(opts: LibvirtConnectOptions): Promise<LibvirtClient> {
    const uri = parseLibvirtUri(opts.uri);
    const timeoutMs = opts.timeoutMs ?? 10_000;
    const deadline = Date.now() + timeoutMs;
    const transport = await openTransport(uri, {
      sshKey: opts.sshKey ?? null,
      acceptHostKey: opts.acceptHostKey ?? null,
      timeoutMs,
    });
    const client = new LibvirtClient(
      transport,
      uri,
      opts.keepaliveIntervalMs ?? 5000,
      opts.keepaliveCount ?? 3,
    );
    const left = (): number => Math.max(1, deadline - Date.now());
    try {
      await client.handshake(left, timeoutMs);
    } catch (err) {
      client.shutdown(null, false);
      throw err;
    }
    return client;
  }

  /** AUTH_LIST, keepalive, CONNECT_OPEN and the migration features (libvirt's doRemoteOpen order). */
  private async handshake(left: () => number, timeoutMs: number): Promise<void> {
    const timed = <T>(proc: number, enc: Encode | null, dec: Decode<T>): Promise<T> =>
      this.callWithTimeout(proc, enc, dec, left(), () =>
        this.uri.transport === 'unix'
          ? new FerryError(
              'libvirt-missing',
              `libvirtd on ${this.host} did not answer within ${timeoutMs} ms`,
            )
          : new FerryError(
              'host-unreachable',
              `timed out after ${timeoutMs} ms waiting for libvirtd on ${this.uri.host}:${this.uri.port} to answer`,
            ),
      );

    const auth = await timed(Proc.AUTH_LIST, null, (r) => r.array(AUTH_TYPE_LIST_MAX, (x) => x.enum()));
    if (auth.length && !auth.includes(AuthType.NONE)) {
      if (auth.includes(AuthType.POLKIT)) {
        const complete = await timed(Proc.AUTH_POLKIT, null, (r) => r.int());
        if (!complete)
          throw new FerryError('auth-failed', `polkit did not authorize access to libvirtd on ${this.host}`);
      } else {
        throw new FerryError(
          'auth-failed',
          `libvirtd on ${this.host} requires SASL authentication, which Ferry does not support`,
          'Use qemu+ssh:// (or TLS client certificates with auth_tls="none"), or set auth_tcp="none" for a lab.',
        );
      }
    }
    const keepalive = await timed(
      Proc.CONNECT_SUPPORTS_FEATURE,
      (w) => w.int(Feature.PROGRAM_KEEPALIVE),
      (r) => r.int(),
    );
    await timed(
      Proc.CONNECT_OPEN,
      (w) => {
        optStr(w, driverUri(this.uri));
        w.uint(0);
      },
      () => undefined,
    );
    const feature = (n: number): Promise<boolean> =>
      timed(
        Proc.CONNECT_SUPPORTS_FEATURE,
        (w) => w.int(n),
        (r) => r.int() !== 0,
      );
    // Sent together: the daemon answers each by its serial, and every command waits for this.
    const [migrationV3, migrationParams, changeProtection] = await Promise.all([
      feature(Feature.MIGRATION_V3),
      feature(Feature.MIGRATION_PARAMS),
      feature(Feature.MIGRATE_CHANGE_PROTECTION),
    ]);
    this.features = { migrationV3, migrationParams, changeProtection };
    if (keepalive) this.startKeepalive();
  }

  // --- events --------------------------------------------------------------------------------

  on(event: 'event', fn: (e: LibvirtEvent) => void): this;
  on(event: 'close', fn: (err: Error | null) => void): this;
  on(event: 'event' | 'close', fn: (arg: never) => void): this {
    this.emitter.on(event, fn as (...a: unknown[]) => void);
    return this;
  }

  off(event: 'event' | 'close', fn: (arg: never) => void): this {
    this.emitter.off(event, fn as (...a: unknown[]) => void);
    return this;
  }

  once(event: 'event', fn: (e: LibvirtEvent) => void): this;
  once(event: 'close', fn: (err: Error | null) => void): this;
  once(event: 'event' | 'close', fn: (arg: never) => void): this {
    this.emitter.once(event, fn as (...a: unknown[]) => void);
    return this;
  }

  // --- wire ----------------------------------------------------------------------------------

  private onData(chunk: Buffer): void {
    if (this.isClosed) return;
    this.lastRx = Date.now();
    let packets: Packet[];
    try {
      packets = this.decoder.push(chunk);
    } catch (err) {
      const stderr = this.transport.stderr();
      this.lost((err as Error).message + (stderr ? `; the remote side said: ${stderr}` : ''));
      return;
    }
    for (const p of packets) {
      try {
        this.onPacket(p);
      } catch (err) {
        // A packet we cannot decode means we disagree with the server about the protocol.
        this.lost(`bad packet from the server (proc ${p.proc}): ${(err as Error).message}`);
        return;
      }
    }
  }

  private onPacket(p: Packet): void {
    if (p.prog === KEEPALIVE_PROGRAM) {
      if (p.proc === KEEPALIVE_PROC_PING)
        this.send(KEEPALIVE_PROGRAM, KEEPALIVE_PROC_PONG, MessageType.MESSAGE, 0);
      return; // a PONG only refreshes lastRx
    }
    if (p.prog !== REMOTE_PROGRAM) return;
    if (p.type === MessageType.REPLY || p.type === MessageType.REPLY_WITH_FDS) {
      const pending = this.pending.get(p.serial);
      if (!pending) return;
      this.sawReply = true;
      this.pending.delete(p.serial);
      if (pending.timer) clearTimeout(pending.timer);
      if (p.status === MessageStatus.OK) pending.resolve(p.payload);
      else pending.reject(new LibvirtError(decodeRemoteError(p.payload), p.proc));
      return;
    }
    if (p.type === MessageType.MESSAGE) {
      this.dispatchEvent(decodeEvent(p.proc, p.payload));
      return;
    }
    if (p.type === MessageType.STREAM) this.onStreamPacket(p);
  }

  /** Data for a stream; an empty CONTINUE or an OK is its end, an ERROR its failure. */
  private onStreamPacket(p: Packet): void {
    const s = this.streams.get(p.serial);
    if (!s) return;
    if (p.status === MessageStatus.CONTINUE && p.payload.length > 0) {
      s.push(p.payload);
    } else if (p.status === MessageStatus.ERROR) {
      this.streams.delete(p.serial);
      s.destroy(new LibvirtError(decodeRemoteError(p.payload), p.proc));
    } else {
      s.push(null);
    }
  }

  private dispatchEvent(e: LibvirtEvent): void {
    if (e.callbackID === null || this.knownCallbacks.has(e.callbackID)) {
      this.emitter.emit('event', e);
    } else if (this.registering.size > 0) {
      // REGISTER_ANY's reply and its first event can arrive in one read: keep the event until the id is known.
      this.eventBuffer.push(e);
      if (this.eventBuffer.length > EVENT_BUFFER_MAX) this.eventBuffer.shift();
    } else {
      this.emitter.emit('event', e);
    }
  }

  private flushEvents(): void {
    const keep: LibvirtEvent[] = [];
    for (const e of this.eventBuffer) {
      if (e.callbackID !== null && this.knownCallbacks.has(e.callbackID)) this.emitter.emit('event', e);
      else if (this.registering.size > 0) keep.push(e);
    }
    this.eventBuffer = keep;
  }

  private send(
    prog: number,
    proc: number,
    type: number,
    serial: number,
    payload?: Buffer,
    status: number = MessageStatus.OK,
  ): void {
    const vers = prog === KEEPALIVE_PROGRAM ? KEEPALIVE_PROTOCOL_VERSION : REMOTE_PROTOCOL_VERSION;
    this.transport.stream.write(encodePacket({ prog, vers, proc, type, serial, status }, payload));
  }

  private startKeepalive(): void {
    const interval = this.keepaliveIntervalMs;
    if (interval <= 0) return;
    const tick = Math.max(25, Math.floor(interval / 4));
    this.keepaliveTimer = setInterval(() => {
      const idle = Date.now() - this.lastRx;
      if (idle >= interval * this.keepaliveCount) {
        this.lost(`no answer from ${this.host} for ${Math.round(idle / 1000)} s (keepalive)`);
      } else if (idle >= interval && Date.now() - this.lastPing >= interval) {
        this.lastPing = Date.now();
        this.send(KEEPALIVE_PROGRAM, KEEPALIVE_PROC_PING, MessageType.MESSAGE, 0);
      }
    }, tick);
    this.keepaliveTimer.unref();
  }

  /** The stream died: every pending call fails at once, and `close` is emitted with the reason. */
  private lost(reason: string, settled = false): void {
    if (this.isClosed || this.losing) return;
    if (!this.sawReply && !settled && this.uri.transport === 'ssh') {
      // What the remote shell printed (e.g. "nc: not found") can trail the channel's EOF a little.
      this.losing = true;
      setTimeout(() => {
        this.losing = false;
        this.lost(reason, true);
      }, 150);
      return;
    }
    const stderr = this.transport.stderr();
    // virt-ssh-helper or nc could not open the daemon's socket: libvirt is there, its daemon is not.
    const noDaemon =
      /libvirt-sock/.test(stderr) && /No such file|Connection refused|cannot connect/i.test(stderr);
    const err = this.sawReply
      ? new FerryError('host-disconnected', `lost the connection to ${this.host}: ${reason}`)
      : new FerryError(
          'libvirt-missing',
          (noDaemon
            ? `libvirtd is not running on ${this.host} (nothing listens on its socket): ${reason}`
            : `no libvirt RPC answer from ${this.host}: ${reason}`) +
            (stderr && !reason.includes(stderr) ? `; the remote side said: ${stderr}` : ''),
          this.uri.transport === 'ssh'
            ? `Install libvirt on ${this.host} (virt-ssh-helper or nc must be on the PATH of the SSH user) and make sure libvirtd runs.`
            : undefined,
        );
    this.shutdown(err, true);
  }

  private shutdown(err: FerryError | null, emit: boolean): void {
    if (this.isClosed) return;
    this.isClosed = true;
    if (this.keepaliveTimer) clearInterval(this.keepaliveTimer);
    const failure = err ?? new FerryError('host-disconnected', `the connection to ${this.host} was closed`);
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const p of pending) {
      if (p.timer) clearTimeout(p.timer);
      p.reject(failure);
    }
    const streams = [...this.streams.values()];
    this.streams.clear();
    for (const s of streams) s.destroy(failure);
    this.transport.close();
    if (emit) this.emitter.emit('close', err);
  }

  // --- calls ---------------------------------------------------------------------------------

  /** Calls a REMOTE procedure; `decodeRet` reads the reply (it must consume it all). */
  call<T = void>(proc: number, encodeArgs?: Encode | null, decodeRet?: Decode<T> | null): Promise<T> {
    return this.callWithTimeout(proc, encodeArgs ?? null, decodeRet ?? null, 0, null);
  }

  private callWithTimeout<T>(
    proc: number,
    encodeArgs: Encode | null,
    decodeRet: Decode<T> | null,
    timeoutMs: number,
    onTimeout: (() => FerryError) | null,
    serial: number = this.takeSerial(),
  ): Promise<T> {
    if (this.isClosed) {
      return Promise.reject(new FerryError('host-disconnected', `the connection to ${this.host} is closed`));
    }
    let payload: Buffer | undefined;
    if (encodeArgs) {
      const w = new XdrWriter();
      try {
        encodeArgs(w);
      } catch (err) {
        return Promise.reject(
          err instanceof XdrError
            ? new FerryError('bad-input', `cannot encode libvirt call ${proc}: ${err.message}`)
            : err,
        );
      }
      payload = w.toBuffer();
    }
    if (TRACE) {
      const t0 = performance.now();
      const line = (how: string): void => {
        process.stderr.write(
          `[libvirt ${this.host}] ${procName(proc)} ${how} in ${(performance.now() - t0).toFixed(1)} ms (at ${Date.now()})\n`,
        );
      };
      const inner = this.untraced<T>(proc, payload, decodeRet, timeoutMs, onTimeout, serial);
      inner.then(
        () => line('answered'),
        () => line('failed'),
      );
      return inner;
    }
    return this.untraced(proc, payload, decodeRet, timeoutMs, onTimeout, serial);
  }

  private untraced<T>(
    proc: number,
    payload: Buffer | undefined,
    decodeRet: Decode<T> | null,
    timeoutMs: number,
    onTimeout: (() => FerryError) | null,
    serial: number,
  ): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const timer =
        timeoutMs > 0 && onTimeout
          ? setTimeout(() => {
              this.pending.delete(serial);
              const e = onTimeout();
              reject(e);
              // The answer may still come later; a connection whose opening timed out is useless anyway.
              this.shutdown(e, true);
            }, timeoutMs)
          : null;
      this.pending.set(serial, {
        proc,
        timer,
        reject,
        resolve: (buf) => {
          try {
            const r = new XdrReader(buf);
            const value = decodeRet ? decodeRet(r) : (undefined as T);
            r.end();
            resolve(value);
          } catch (err) {
            reject(
              new FerryError(
                'libvirt-error',
                `cannot decode libvirt's reply to call ${proc}: ${(err as Error).message} (${printable(buf.subarray(0, 32))})`,
              ),
            );
          }
        },
      });
      try {
        this.send(REMOTE_PROGRAM, proc, MessageType.CALL, serial, payload);
      } catch (err) {
        this.pending.delete(serial);
        if (timer) clearTimeout(timer);
        reject(err instanceof XdrError ? new FerryError('bad-input', err.message) : (err as Error));
      }
    });
  }

  private takeSerial(): number {
    const serial = this.nextSerial;
    this.nextSerial = (this.nextSerial + 1) >>> 0 || 1;
    return serial;
  }

  /**
   * A call that opens a stream (a domain's console): once its reply comes, bytes flow both ways as STREAM
   * packets carrying the call's serial. Ending the returned stream finishes it (an empty OK), destroying
   * it aborts it (an empty ERROR); the daemon's end comes as the stream's end.
   */
  async openStream(proc: number, encodeArgs: Encode): Promise<Duplex> {
    const serial = this.takeSerial();
    // Still in the map while the daemon has not ended or failed it: only then is a finish or an abort sent.
    const finish = (status: number): void => {
      if (this.streams.delete(serial) && !this.isClosed)
        this.send(REMOTE_PROGRAM, proc, MessageType.STREAM, serial, undefined, status);
    };
    const stream = new Duplex({
      read: () => undefined, // the daemon pushes; a console's trickle needs no flow control
      write: (chunk: Buffer, _enc, done) => {
        if (!this.streams.has(serial) || this.isClosed)
          return done(new FerryError('host-disconnected', 'the console is closed'));
        // Well under libvirt's 256 KiB stream packet limit.
        for (let i = 0; i < chunk.length; i += 65536) {
          this.send(
            REMOTE_PROGRAM,
            proc,
            MessageType.STREAM,
            serial,
            chunk.subarray(i, i + 65536),
            MessageStatus.CONTINUE,
          );
        }
        done();
      },
      final: (done) => {
        finish(MessageStatus.OK);
        done();
      },
      destroy: (err, done) => {
        finish(MessageStatus.ERROR);
        done(err);
      },
    });
    // Registered before the call goes out: data can follow the reply in the same read.
    this.streams.set(serial, stream);
    try {
      await this.callWithTimeout(proc, encodeArgs, null, 0, null, serial);
    } catch (err) {
      this.streams.delete(serial);
      stream.destroy();
      throw err;
    }
    return stream;
  }

  /** SSH connections only: a forwarded channel from the server (see Transport.forward); null otherwise. */
  forward(to: { host: string; port: number } | { socket: string }): Promise<Duplex> | null {
    return this.transport.forward ? this.transport.forward(to) : null;
  }

  /** CONNECT_CLOSE, then the stream is torn down; pending calls fail with 'host-disconnected'. */
  async close(): Promise<void> {
    if (this.isClosed) return;
    const done = this.call(Proc.CONNECT_CLOSE).catch(() => undefined);
    const t = new Promise<void>((r) => setTimeout(r, 2000).unref());
    await Promise.race([done, t]);
    this.shutdown(null, true);
  }

  // --- host ----------------------------------------------------------------------------------

  supportsFeature(feature: number): Promise<boolean> {
    return this.call(
      Proc.CONNECT_SUPPORTS_FEATURE,
      (w) => w.int(feature),
      (r) => r.int() !== 0,
    );
  }

  getHostname(): Promise<string> {
    return this.call(Proc.CONNECT_GET_HOSTNAME, null, (r) => r.string());
  }

  /** libvirt's version, major*1e6 + minor*1e3 + micro (9.0.0 → 9000000). */
  getLibVersion(): Promise<number> {
    return this.call(Proc.CONNECT_GET_LIB_VERSION, null, (r) => Number(r.uhyper()));
  }

  /** The hypervisor's (QEMU's) version, major*1e6 + minor*1e3 + micro. */
  getVersion(): Promise<number> {
    return this.call(Proc.CONNECT_GET_VERSION, null, (r) => Number(r.uhyper()));
  }

  getCapabilities(): Promise<string> {
    return this.call(Proc.CONNECT_GET_CAPABILITIES, null, (r) => r.string());
  }

  getDomainCapabilities(a: {
    emulatorbin?: string | null;
    arch?: string | null;
    machine?: string | null;
    virttype?: string | null;
  }): Promise<string> {
    return this.call(
      Proc.CONNECT_GET_DOMAIN_CAPABILITIES,
      (w) => {
        optStr(w, a.emulatorbin);
        optStr(w, a.arch);
        optStr(w, a.machine);
        optStr(w, a.virttype);
        w.uint(0);
      },
      (r) => r.string(),
    );
  }

  nodeGetInfo(): Promise<NodeInfo> {
    return this.call(Proc.NODE_GET_INFO, null, readNodeInfo);
  }

  /** Free memory of the host in bytes. */
  nodeGetFreeMemory(): Promise<bigint> {
    return this.call(Proc.NODE_GET_FREE_MEMORY, null, (r) => r.uhyper());
  }

  // --- domains -------------------------------------------------------------------------------

  listAllDomains(flags = 0): Promise<DomainRef[]> {
    return this.call(
      Proc.CONNECT_LIST_ALL_DOMAINS,
      (w) => w.int(1).uint(flags),
      (r) => {
        const doms = r.array(DOMAIN_LIST_MAX, readDomain);
        r.uint();
        return doms;
      },
    );
  }

  lookupDomainByName(name: string): Promise<DomainRef> {
    return this.call(Proc.DOMAIN_LOOKUP_BY_NAME, (w) => w.string(name), readDomain);
  }

  lookupDomainByUuid(uuid: string): Promise<DomainRef> {
    return this.call(Proc.DOMAIN_LOOKUP_BY_UUID, (w) => w.uuid(uuid), readDomain);
  }

  domainGetInfo(dom: DomainRef): Promise<DomainInfo> {
    return this.call(
      Proc.DOMAIN_GET_INFO,
      (w) => writeDomain(w, dom),
      (r) => ({
        state: r.uchar(),
        maxMemKiB: r.uhyper(),
        memoryKiB: r.uhyper(),
        nrVirtCpu: r.uint(),
        cpuTimeNs: r.uhyper(),
      }),
    );
  }

  domainGetState(dom: DomainRef, flags = 0): Promise<{ state: number; reason: number }> {
    return this.call(
      Proc.DOMAIN_GET_STATE,
      (w) => {
        writeDomain(w, dom);
        w.uint(flags);
      },
      (r) => ({ state: r.int(), reason: r.int() }),
    );
  }

  /** The domain's console (its first serial port when `devName` is null) as a stream. */
  domainOpenConsole(dom: DomainRef, devName: string | null, flags = 0): Promise<Duplex> {
    return this.openStream(Proc.DOMAIN_OPEN_CONSOLE, (w) => {
      writeDomain(w, dom);
      optStr(w, devName);
      w.uint(flags);
    });
  }

  domainGetXmlDesc(dom: DomainRef, flags = 0): Promise<string> {
    return this.call(
      Proc.DOMAIN_GET_XML_DESC,
      (w) => domFlags(w, dom, flags),
      (r) => r.string(),
    );
  }

  domainDefineXmlFlags(xml: string, flags = 0): Promise<DomainRef> {
    return this.call(Proc.DOMAIN_DEFINE_XML_FLAGS, (w) => w.string(xml).uint(flags), readDomain);
  }

  domainCreateWithFlags(dom: DomainRef, flags = 0): Promise<DomainRef> {
    return this.call(Proc.DOMAIN_CREATE_WITH_FLAGS, (w) => domFlags(w, dom, flags), readDomain);
  }

  domainDestroyFlags(dom: DomainRef, flags = 0): Promise<void> {
    return this.call(Proc.DOMAIN_DESTROY_FLAGS, (w) => domFlags(w, dom, flags));
  }

  domainShutdownFlags(dom: DomainRef, flags = 0): Promise<void> {
    return this.call(Proc.DOMAIN_SHUTDOWN_FLAGS, (w) => domFlags(w, dom, flags));
  }

  domainSuspend(dom: DomainRef): Promise<void> {
    return this.call(Proc.DOMAIN_SUSPEND, (w) => writeDomain(w, dom));
  }

  domainResume(dom: DomainRef): Promise<void> {
    return this.call(Proc.DOMAIN_RESUME, (w) => writeDomain(w, dom));
  }

  domainUndefineFlags(dom: DomainRef, flags = 0): Promise<void> {
    return this.call(Proc.DOMAIN_UNDEFINE_FLAGS, (w) => domFlags(w, dom, flags));
  }

  /** Whether the domain has a persistent definition (false for a transient one). */
  domainIsPersistent(dom: DomainRef): Promise<boolean> {
    return this.call(
      Proc.DOMAIN_IS_PERSISTENT,
      (w) => writeDomain(w, dom),
      (r) => r.int() !== 0,
    );
  }

  // --- events --------------------------------------------------------------------------------

  /**
   * Subscribes to a domain event (DomainEventId) for one domain or all (null); returns the callback id
   * carried by the events. Events that race the reply are held back until the id is known.
   */
  async registerDomainEvent(eventId: number, dom?: DomainRef | null): Promise<number> {
    const p = this.call(
      Proc.CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY,
      (w) => {
        w.int(eventId);
        w.optional(dom ?? null, writeDomain);
      },
      (r) => r.int(),
    );
    this.registering.add(p);
    try {
      const id = await p;
      this.knownCallbacks.add(id);
      return id;
    } finally {
      this.registering.delete(p);
      // After the caller's continuation has run (it may attach a filter on the id).
      setImmediate(() => this.flushEvents());
    }
  }

  async deregisterDomainEvent(callbackId: number): Promise<void> {
    await this.call(Proc.CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY, (w) => w.int(callbackId));
    this.knownCallbacks.delete(callbackId);
  }

  // --- jobs and migration --------------------------------------------------------------------

  domainGetJobStats(dom: DomainRef, flags = 0): Promise<{ type: number; params: TypedParam[] }> {
    return this.call(
      Proc.DOMAIN_GET_JOB_STATS,
      (w) => domFlags(w, dom, flags),
      (r) => ({ type: r.int(), params: r.typedParams(JOB_STATS_MAX) }),
    );
  }

  domainAbortJob(dom: DomainRef): Promise<void> {
    return this.call(Proc.DOMAIN_ABORT_JOB, (w) => writeDomain(w, dom));
  }

  domainMigrateSetMaxDowntime(dom: DomainRef, ms: bigint | number, flags = 0): Promise<void> {
    return this.call(Proc.DOMAIN_MIGRATE_SET_MAX_DOWNTIME, (w) => {
      writeDomain(w, dom);
      w.uhyper(ms).uint(flags);
    });
  }

  domainMigrateGetMaxDowntime(dom: DomainRef, flags = 0): Promise<bigint> {
    return this.call(
      Proc.DOMAIN_MIGRATE_GET_MAX_DOWNTIME,
      (w) => domFlags(w, dom, flags),
      (r) => r.uhyper(),
    );
  }

  /** Bandwidth in MiB/s. */
  domainMigrateSetMaxSpeed(dom: DomainRef, mibs: bigint | number, flags = 0): Promise<void> {
    return this.call(Proc.DOMAIN_MIGRATE_SET_MAX_SPEED, (w) => {
      writeDomain(w, dom);
      w.uhyper(mibs).uint(flags);
    });
  }

  domainMigrateStartPostCopy(dom: DomainRef, flags = 0): Promise<void> {
    return this.call(Proc.DOMAIN_MIGRATE_START_POST_COPY, (w) => domFlags(w, dom, flags));
  }

  migrateBegin3Params(
    dom: DomainRef,
    params: TypedParam[],
    flags: number,
  ): Promise<{ cookie: Buffer; xml: string }> {
    return this.call(
      Proc.DOMAIN_MIGRATE_BEGIN3_PARAMS,
      (w) => {
        writeDomain(w, dom);
        writeParams(w, params);
        w.uint(flags);
      },
      (r) => ({ cookie: r.opaque(), xml: r.string() }),
    );
  }

  migratePrepare3Params(
    params: TypedParam[],
    cookie: Buffer,
    flags: number,
  ): Promise<{ cookie: Buffer; uriOut: string | null }> {
    return this.call(
      Proc.DOMAIN_MIGRATE_PREPARE3_PARAMS,
      (w) => {
        writeParams(w, params);
        w.opaque(cookie).uint(flags);
      },
      (r) => ({ cookie: r.opaque(), uriOut: r.optional((x) => x.string()) }),
    );
  }

  /** Blocks until QEMU has finished sending (or failed): keepalive and other calls go on meanwhile. */
  migratePerform3Params(
    dom: DomainRef,
    dconnuri: string | null,
    params: TypedParam[],
    cookie: Buffer,
    flags: number,
  ): Promise<{ cookie: Buffer }> {
    return this.call(
      Proc.DOMAIN_MIGRATE_PERFORM3_PARAMS,
      (w) => {
        writeDomain(w, dom);
        optStr(w, dconnuri);
        writeParams(w, params);
        w.opaque(cookie).uint(flags);
      },
      (r) => ({ cookie: r.opaque() }),
    );
  }

  migrateFinish3Params(
    params: TypedParam[],
    cookie: Buffer,
    flags: number,
    cancelled: boolean,
  ): Promise<{ dom: DomainRef | null; cookie: Buffer }> {
    return this.call(
      Proc.DOMAIN_MIGRATE_FINISH3_PARAMS,
      (w) => {
        writeParams(w, params);
        w.opaque(cookie)
          .uint(flags)
          .int(cancelled ? 1 : 0);
      },
      (r) => ({ dom: readDomain(r), cookie: r.opaque() }),
    );
  }

  migrateConfirm3Params(
    dom: DomainRef,
    params: TypedParam[],
    cookie: Buffer,
    flags: number,
    cancelled: boolean,
  ): Promise<void> {
    return this.call(Proc.DOMAIN_MIGRATE_CONFIRM3_PARAMS, (w) => {
      writeDomain(w, dom);
      writeParams(w, params);
      w.opaque(cookie)
        .uint(flags)
        .int(cancelled ? 1 : 0);
    });
  }

  // --- block jobs ----------------------------------------------------------------------------

  domainBlockCopy(
    dom: DomainRef,
    path: string,
    destxml: string,
    params: TypedParam[],
    flags: number,
  ): Promise<void> {
    return this.call(Proc.DOMAIN_BLOCK_COPY, (w) => {
      writeDomain(w, dom);
      w.string(path).string(destxml).typedParams(params, BLOCK_COPY_PARAMETERS_MAX).uint(flags);
    });
  }

  domainGetBlockJobInfo(dom: DomainRef, path: string, flags = 0): Promise<BlockJobInfo> {
    return this.call(
      Proc.DOMAIN_GET_BLOCK_JOB_INFO,
      (w) => {
        writeDomain(w, dom);
        w.string(path).uint(flags);
      },
      (r) => ({
        found: r.int() !== 0,
        type: r.int(),
        bandwidth: r.uhyper(),
        cur: r.uhyper(),
        end: r.uhyper(),
      }),
    );
  }

  /** Sizes of one disk (`path` is its target, e.g. "vda", or its source path). */
  domainGetBlockInfo(dom: DomainRef, path: string, flags = 0): Promise<DomainBlockInfo> {
    return this.call(
      Proc.DOMAIN_GET_BLOCK_INFO,
      (w) => {
        writeDomain(w, dom);
        w.string(path).uint(flags);
      },
      (r) => ({ allocation: r.uhyper(), capacity: r.uhyper(), physical: r.uhyper() }),
    );
  }

  domainBlockJobAbort(dom: DomainRef, path: string, flags = 0): Promise<void> {
    return this.call(Proc.DOMAIN_BLOCK_JOB_ABORT, (w) => {
      writeDomain(w, dom);
      w.string(path).uint(flags);
    });
  }

  // --- storage -------------------------------------------------------------------------------

  storagePoolLookupByTargetPath(path: string): Promise<StoragePoolRef> {
    return this.call(Proc.STORAGE_POOL_LOOKUP_BY_TARGET_PATH, (w) => w.string(path), readPool);
  }

  /** A transient pool: it exists until destroyed (or the daemon restarts). */
  storagePoolCreateXml(xml: string, flags = 0): Promise<StoragePoolRef> {
    return this.call(Proc.STORAGE_POOL_CREATE_XML, (w) => w.string(xml).uint(flags), readPool);
  }

  storagePoolLookupByName(name: string): Promise<StoragePoolRef> {
    return this.call(Proc.STORAGE_POOL_LOOKUP_BY_NAME, (w) => w.string(name), readPool);
  }

  /** Starts a defined (persistent) pool that is inactive. */
  storagePoolCreate(pool: StoragePoolRef, flags = 0): Promise<void> {
    return this.call(Proc.STORAGE_POOL_CREATE, (w) => {
      writePool(w, pool);
      w.uint(flags);
    });
  }

  storagePoolGetInfo(pool: StoragePoolRef): Promise<StoragePoolInfo> {
    return this.call(
      Proc.STORAGE_POOL_GET_INFO,
      (w) => writePool(w, pool),
      (r) => ({ state: r.uchar(), capacity: r.uhyper(), allocation: r.uhyper(), available: r.uhyper() }),
    );
  }

  storagePoolGetXmlDesc(pool: StoragePoolRef, flags = 0): Promise<string> {
    return this.call(
      Proc.STORAGE_POOL_GET_XML_DESC,
      (w) => {
        writePool(w, pool);
        w.uint(flags);
      },
      (r) => r.string(),
    );
  }

  storagePoolDestroy(pool: StoragePoolRef): Promise<void> {
    return this.call(Proc.STORAGE_POOL_DESTROY, (w) => writePool(w, pool));
  }

  storagePoolRefresh(pool: StoragePoolRef, flags = 0): Promise<void> {
    return this.call(Proc.STORAGE_POOL_REFRESH, (w) => {
      writePool(w, pool);
      w.uint(flags);
    });
  }

  listAllStoragePools(flags = 0): Promise<StoragePoolRef[]> {
    return this.call(
      Proc.CONNECT_LIST_ALL_STORAGE_POOLS,
      (w) => w.int(1).uint(flags),
      (r) => {
        const pools = r.array(POOL_LIST_MAX, readPool);
        r.uint();
        return pools;
      },
    );
  }

  storageVolLookupByName(pool: StoragePoolRef, name: string): Promise<StorageVolRef> {
    return this.call(
      Proc.STORAGE_VOL_LOOKUP_BY_NAME,
      (w) => {
        writePool(w, pool);
        w.string(name);
      },
      readVol,
    );
  }

  storageVolLookupByPath(path: string): Promise<StorageVolRef> {
    return this.call(Proc.STORAGE_VOL_LOOKUP_BY_PATH, (w) => w.string(path), readVol);
  }

  storageVolGetInfo(vol: StorageVolRef): Promise<StorageVolInfo> {
    return this.call(
      Proc.STORAGE_VOL_GET_INFO,
      (w) => writeVol(w, vol),
      (r) => ({ type: r.char(), capacity: r.uhyper(), allocation: r.uhyper() }),
    );
  }

  storageVolGetXmlDesc(vol: StorageVolRef, flags = 0): Promise<string> {
    return this.call(
      Proc.STORAGE_VOL_GET_XML_DESC,
      (w) => {
        writeVol(w, vol);
        w.uint(flags);
      },
      (r) => r.string(),
    );
  }

  /** The volume's path on the host (for a dir pool: the pool's folder + the volume's name). */
  storageVolGetPath(vol: StorageVolRef): Promise<string> {
    return this.call(
      Proc.STORAGE_VOL_GET_PATH,
      (w) => writeVol(w, vol),
      (r) => r.string(),
    );
  }

  storageVolCreateXml(pool: StoragePoolRef, xml: string, flags = 0): Promise<StorageVolRef> {
    return this.call(
      Proc.STORAGE_VOL_CREATE_XML,
      (w) => {
        writePool(w, pool);
        w.string(xml).uint(flags);
      },
      readVol,
    );
  }

  storageVolDelete(vol: StorageVolRef, flags = 0): Promise<void> {
    return this.call(Proc.STORAGE_VOL_DELETE, (w) => {
      writeVol(w, vol);
      w.uint(flags);
    });
  }
}

function domFlags(w: XdrWriter, dom: DomainRef, flags: number): void {
  writeDomain(w, dom);
  w.uint(flags);
}

/** Re-exported so callers need one import for the client and its errors. */
export { FramingError };
