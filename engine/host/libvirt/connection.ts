// One libvirt connection per host, kept open for as long as the process lives (the console) or the
// command runs (the CLI), as virt-manager keeps one per server. A dropped connection is remembered with
// its reason, so the host reads "disconnected: …" at once; the next use retries, at most every few
// seconds, so a server that is down costs a list refresh one quick failure, not a hang.
import { FerryError, isFerryError } from '../../api/errors.js';
import type { HostRecord } from '../../api/model.js';
import { LibvirtClient } from '../../libvirt/client.js';

/** Keepalive: a PING every 2 s, the link given up after 3 silent intervals (a pulled cable: ~6 s). */
const KEEPALIVE_MS = 2000;
const KEEPALIVE_COUNT = 3;
/** How soon after a failed attempt a host is tried again. */
const RETRY_MS = 3000;
const CONNECT_TIMEOUT_MS = 10_000;

export interface ConnectionStatus {
  connected: boolean;
  error: string | null;
}

type Listener = (host: string) => void;

export class LibvirtConnection {
  private client: LibvirtClient | null = null;
  private connecting: Promise<LibvirtClient> | null = null;
  private lastError: FerryError | null = null;
  private lastAttempt = 0;
  private readonly listeners = new Set<Listener>();

  constructor(
    readonly host: string,
    readonly uri: string,
    readonly sshKey: string | null,
  ) {}

  /** Calls `fn` when the connection opens, drops, or the host's domains change. */
  onChange(fn: Listener): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  private changed(): void {
    for (const l of this.listeners) l(this.host);
  }

  status(): ConnectionStatus {
    if (this.client && !this.client.closed) return { connected: true, error: null };
    return { connected: false, error: this.lastError?.message ?? null };
  }

  /** The open client, connecting (or reconnecting) first when needed. */
  async get(): Promise<LibvirtClient> {
    if (this.client && !this.client.closed) return this.client;
    if (this.connecting) return this.connecting;
    if (this.lastError && Date.now() - this.lastAttempt < RETRY_MS) throw this.lastError;
    this.connecting = this.open();
    try {
      return await this.connecting;
    } finally {
      this.connecting = null;
    }
  }

  private async open(): Promise<LibvirtClient> {
    this.lastAttempt = Date.now();
    try {
      const client = await LibvirtClient.connect({
        uri: this.uri,
        sshKey: this.sshKey,
        timeoutMs: CONNECT_TIMEOUT_MS,
        keepaliveIntervalMs: KEEPALIVE_MS,
        keepaliveCount: KEEPALIVE_COUNT,
      });
      client.on('close', (err: Error | null) => {
        if (this.client !== client) return;
        this.client = null;
        this.lastAttempt = Date.now();
        this.lastError = new FerryError(
          'host-disconnected',
          err ? err.message : `the connection to ${this.host} was closed`,
        );
        this.changed();
      });
      // Any domain's lifecycle change (started, paused, stopped — by Ferry, virsh or the guest) tells
      // clients to refresh: one callback for all domains.
      client.on('event', (e: { kind: string }) => {
        if (e.kind === 'lifecycle') this.changed();
      });
      await client.registerDomainEvent(0, null).catch(() => undefined);
      this.client = client;
      this.lastError = null;
      this.changed();
      return client;
    } catch (err) {
      this.lastError = isFerryError(err)
        ? err
        : new FerryError('host-unreachable', `cannot reach ${this.host}: ${(err as Error).message}`);
      this.changed();
      throw this.lastError;
    }
  }

  /** Drops the connection (if any) and opens a new one now. */
  async reconnect(): Promise<LibvirtClient> {
    await this.close();
    this.lastError = null;
    return this.get();
  }

  async close(): Promise<void> {
    const c = this.client;
    this.client = null;
    if (c && !c.closed) await c.close().catch(() => undefined);
  }
}

const pool = new Map<string, LibvirtConnection>();
const poolListeners = new Set<Listener>();

/** The process-wide connection for a libvirt host record (same name and URI → same connection). */
export function libvirtConnection(rec: Pick<HostRecord, 'name' | 'uri' | 'sshKey'>): LibvirtConnection {
  if (!rec.uri) throw new FerryError('internal', `host ${rec.name} has no libvirt URI`);
  const key = `${rec.name}\n${rec.uri}\n${rec.sshKey ?? ''}`;
  let c = pool.get(key);
  if (!c) {
    c = new LibvirtConnection(rec.name, rec.uri, rec.sshKey);
    c.onChange((h) => poolListeners.forEach((l) => l(h)));
    pool.set(key, c);
  }
  return c;
}

/** Tells `fn` whenever any libvirt host connects, drops or reports a domain change. */
export function onLibvirtChange(fn: Listener): () => void {
  poolListeners.add(fn);
  return () => poolListeners.delete(fn);
}

/** Closes a host's connections (host removed) or all of them (a CLI command ending, shutdown). */
export async function closeLibvirtConnections(host?: string): Promise<void> {
  // All at once: each close is a round trip to its daemon, and a command waits for the last one.
  const closing: Promise<void>[] = [];
  for (const [key, c] of [...pool]) {
    if (host !== undefined && c.host !== host) continue;
    pool.delete(key);
    closing.push(c.close());
  }
  await Promise.all(closing);
}
