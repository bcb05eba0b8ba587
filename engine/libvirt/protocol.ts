// libvirt's remote RPC protocol (libvirt 9.0): packet framing, constants and the XDR shapes of the
// procedures Ferry uses. Sources: src/rpc/virnetprotocol.x, virkeepaliveprotocol.x,
// src/remote/remote_protocol.x and include/libvirt/libvirt-domain.h.
import { type TypedParam, XdrError, XdrReader, XdrWriter } from './xdr.js';

// --- programs and packet header ---------------------------------------------------------

export const REMOTE_PROGRAM = 0x20008086;
export const REMOTE_PROTOCOL_VERSION = 1;
export const KEEPALIVE_PROGRAM = 0x6b656570;
export const KEEPALIVE_PROTOCOL_VERSION = 1;
export const KEEPALIVE_PROC_PING = 1;
export const KEEPALIVE_PROC_PONG = 2;

export const MessageType = {
  CALL: 0,
  REPLY: 1,
  MESSAGE: 2,
  STREAM: 3,
  CALL_WITH_FDS: 4,
  REPLY_WITH_FDS: 5,
  STREAM_HOLE: 6,
} as const;

export const MessageStatus = { OK: 0, ERROR: 1, CONTINUE: 2 } as const;

/** Length word + 6 header words. */
export const HEADER_SIZE = 28;
/** VIR_NET_MESSAGE_MAX (32 MiB since libvirt 3.4) plus the length word. */
export const MAX_PACKET = 33554432 + 4;

export interface PacketHeader {
  prog: number;
  vers: number;
  proc: number;
  type: number;
  serial: number;
  status: number;
}

export interface Packet extends PacketHeader {
  payload: Buffer;
}

export function encodePacket(h: PacketHeader, payload: Buffer = Buffer.alloc(0)): Buffer {
  const len = HEADER_SIZE + payload.length;
  if (len > MAX_PACKET)
    throw new XdrError(`message of ${len} bytes exceeds libvirt's limit of ${MAX_PACKET}`);
  const head = Buffer.alloc(HEADER_SIZE);
  head.writeUInt32BE(len, 0);
  head.writeUInt32BE(h.prog, 4);
  head.writeUInt32BE(h.vers, 8);
  head.writeInt32BE(h.proc, 12);
  head.writeInt32BE(h.type, 16);
  head.writeUInt32BE(h.serial, 20);
  head.writeInt32BE(h.status, 24);
  return Buffer.concat([head, payload]);
}

/** Thrown by PacketDecoder when the byte stream cannot be libvirt RPC. */
export class FramingError extends Error {
  override readonly name = 'FramingError';
}

/**
 * Reassembles packets from a byte stream cut at arbitrary points (TCP, SSH channel, TLS records).
 * A length word outside [28, 32 MiB + 4] means the peer is not speaking libvirt RPC (a shell banner on
 * an SSH channel, plain TCP to the TLS port, …): that is fatal to the connection.
 */
export class PacketDecoder {
  private chunks: Buffer[] = [];
  private buffered = 0;

  push(chunk: Buffer): Packet[] {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    const out: Packet[] = [];
    for (;;) {
      if (this.buffered < 4) break;
      const head = this.peek(4);
      const len = head.readUInt32BE(0);
      if (len < HEADER_SIZE || len > MAX_PACKET) {
        throw new FramingError(
          `not a libvirt RPC stream: packet length ${len} (bytes ${printable(this.peek(Math.min(this.buffered, 64)))})`,
        );
      }
      if (this.buffered < len) break;
      const buf = this.take(len);
      out.push({
        prog: buf.readUInt32BE(4),
        vers: buf.readUInt32BE(8),
        proc: buf.readInt32BE(12),
        type: buf.readInt32BE(16),
        serial: buf.readUInt32BE(20),
        status: buf.readInt32BE(24),
        payload: buf.subarray(HEADER_SIZE),
      });
    }
    return out;
  }

  /** Bytes received that do not (yet) form a whole packet. */
  get pending(): number {
    return this.buffered;
  }

  private peek(n: number): Buffer {
    const first = this.chunks[0];
    if (first && first.length >= n) return first.subarray(0, n);
    const all = Buffer.concat(this.chunks);
    this.chunks = [all];
    return all.subarray(0, n);
  }

  private take(n: number): Buffer {
    const all = this.peek(n);
    const rest = this.chunks[0]!.subarray(n);
    this.chunks = rest.length ? [rest, ...this.chunks.slice(1)] : this.chunks.slice(1);
    this.buffered -= n;
    return all;
  }
}

/** Shows what a non-RPC peer sent, for error messages. */
export function printable(b: Buffer): string {
  const text = b.toString('latin1');
  return /^[\x20-\x7e\r\n\t]*$/.test(text) ? JSON.stringify(text) : b.toString('hex');
}

// --- procedures ----------------------------------------------------------------------------

/** REMOTE_PROC_* numbers (remote_protocol.x) for the calls and events Ferry uses. */
export const Proc = {
  CONNECT_OPEN: 1,
  CONNECT_CLOSE: 2,
  CONNECT_GET_TYPE: 3,
  CONNECT_GET_VERSION: 4,
  NODE_GET_INFO: 6,
  CONNECT_GET_CAPABILITIES: 7,
  DOMAIN_CREATE_XML: 10,
  DOMAIN_GET_XML_DESC: 14,
  DOMAIN_GET_INFO: 16,
  DOMAIN_LOOKUP_BY_NAME: 23,
  DOMAIN_LOOKUP_BY_UUID: 24,
  DOMAIN_RESUME: 28,
  DOMAIN_SUSPEND: 34,
  CONNECT_GET_HOSTNAME: 59,
  CONNECT_SUPPORTS_FEATURE: 60,
  AUTH_LIST: 66,
  AUTH_POLKIT: 70,
  STORAGE_POOL_CREATE_XML: 76,
  STORAGE_POOL_CREATE: 78,
  STORAGE_POOL_DESTROY: 80,
  STORAGE_POOL_REFRESH: 83,
  STORAGE_POOL_LOOKUP_BY_NAME: 84,
  STORAGE_POOL_GET_INFO: 87,
  STORAGE_POOL_GET_XML_DESC: 88,
  STORAGE_VOL_CREATE_XML: 93,
  STORAGE_VOL_DELETE: 94,
  STORAGE_VOL_LOOKUP_BY_NAME: 95,
  STORAGE_VOL_LOOKUP_BY_PATH: 97,
  STORAGE_VOL_GET_INFO: 98,
  STORAGE_VOL_GET_XML_DESC: 99,
  STORAGE_VOL_GET_PATH: 100,
  NODE_GET_FREE_MEMORY: 102,
  DOMAIN_IS_PERSISTENT: 151,
  CONNECT_GET_LIB_VERSION: 157,
  DOMAIN_ABORT_JOB: 164,
  DOMAIN_MIGRATE_SET_MAX_DOWNTIME: 166,
  DOMAIN_GET_BLOCK_INFO: 194,
  DOMAIN_CREATE_WITH_FLAGS: 196,
  DOMAIN_MIGRATE_SET_MAX_SPEED: 207,
  DOMAIN_GET_STATE: 212,
  DOMAIN_UNDEFINE_FLAGS: 231,
  DOMAIN_DESTROY_FLAGS: 234,
  DOMAIN_BLOCK_JOB_ABORT: 237,
  DOMAIN_GET_BLOCK_JOB_INFO: 238,
  DOMAIN_SHUTDOWN_FLAGS: 258,
  CONNECT_LIST_ALL_DOMAINS: 273,
  CONNECT_LIST_ALL_STORAGE_POOLS: 281,
  DOMAIN_GET_JOB_STATS: 298,
  DOMAIN_MIGRATE_BEGIN3_PARAMS: 302,
  DOMAIN_MIGRATE_PREPARE3_PARAMS: 303,
  DOMAIN_MIGRATE_PERFORM3_PARAMS: 305,
  DOMAIN_MIGRATE_FINISH3_PARAMS: 306,
  DOMAIN_MIGRATE_CONFIRM3_PARAMS: 307,
  CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY: 316,
  CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY: 317,
  DOMAIN_EVENT_CALLBACK_LIFECYCLE: 318,
  DOMAIN_EVENT_CALLBACK_BLOCK_JOB: 325,
  DOMAIN_EVENT_BLOCK_JOB_2: 339,
  CONNECT_GET_DOMAIN_CAPABILITIES: 342,
  DOMAIN_BLOCK_COPY: 345,
  DOMAIN_DEFINE_XML_FLAGS: 350,
  DOMAIN_EVENT_CALLBACK_MIGRATION_ITERATION: 359,
  DOMAIN_EVENT_CALLBACK_JOB_COMPLETED: 363,
  DOMAIN_MIGRATE_START_POST_COPY: 364,
  DOMAIN_MIGRATE_GET_MAX_DOWNTIME: 387,
  /** `{dom; opt dev_name; flags}`: opens a stream on the domain's console (a pty serial port). */
  DOMAIN_OPEN_CONSOLE: 201,
  STORAGE_POOL_LOOKUP_BY_TARGET_PATH: 391,
} as const;

/** VIR_DRV_FEATURE_* (src/libvirt_internal.h) asked with CONNECT_SUPPORTS_FEATURE. */
export const Feature = {
  MIGRATION_V2: 5,
  MIGRATION_V3: 6,
  MIGRATE_CHANGE_PROTECTION: 7,
  FD_PASSING: 8,
  TYPED_PARAM_STRING: 9,
  PROGRAM_KEEPALIVE: 10,
  REMOTE_EVENT_CALLBACK: 12,
  MIGRATION_PARAMS: 13,
  XML_MIGRATABLE: 14,
  MIGRATION_OFFLINE: 15,
  MIGRATION_POSTCOPY: 16,
} as const;

/** remote_auth_type. */
export const AuthType = { NONE: 0, SASL: 1, POLKIT: 2 } as const;

/** virDomainMigrateFlags (libvirt 9.0). */
export const MigrateFlags = {
  LIVE: 1 << 0,
  PEER2PEER: 1 << 1,
  TUNNELLED: 1 << 2,
  PERSIST_DEST: 1 << 3,
  UNDEFINE_SOURCE: 1 << 4,
  PAUSED: 1 << 5,
  NON_SHARED_DISK: 1 << 6,
  NON_SHARED_INC: 1 << 7,
  CHANGE_PROTECTION: 1 << 8,
  UNSAFE: 1 << 9,
  OFFLINE: 1 << 10,
  COMPRESSED: 1 << 11,
  ABORT_ON_ERROR: 1 << 12,
  AUTO_CONVERGE: 1 << 13,
  RDMA_PIN_ALL: 1 << 14,
  POSTCOPY: 1 << 15,
  TLS: 1 << 16,
  PARALLEL: 1 << 17,
  NON_SHARED_SYNCHRONOUS_WRITES: 1 << 18,
  POSTCOPY_RESUME: 1 << 19,
  ZEROCOPY: 1 << 20,
} as const;

/** virDomainState. */
export const DomainState = {
  NOSTATE: 0,
  RUNNING: 1,
  BLOCKED: 2,
  PAUSED: 3,
  SHUTDOWN: 4,
  SHUTOFF: 5,
  CRASHED: 6,
  PMSUSPENDED: 7,
} as const;

/** virDomainEventID (for REGISTER_ANY). */
export const DomainEventId = {
  LIFECYCLE: 0,
  REBOOT: 1,
  RTC_CHANGE: 2,
  WATCHDOG: 3,
  IO_ERROR: 4,
  GRAPHICS: 5,
  IO_ERROR_REASON: 6,
  CONTROL_ERROR: 7,
  BLOCK_JOB: 8,
  DISK_CHANGE: 9,
  TRAY_CHANGE: 10,
  PMWAKEUP: 11,
  PMSUSPEND: 12,
  BALLOON_CHANGE: 13,
  PMSUSPEND_DISK: 14,
  DEVICE_REMOVED: 15,
  BLOCK_JOB_2: 16,
  TUNABLE: 17,
  AGENT_LIFECYCLE: 18,
  DEVICE_ADDED: 19,
  MIGRATION_ITERATION: 20,
  JOB_COMPLETED: 21,
} as const;

/** virDomainEventType (lifecycle `event`). */
export const LifecycleEvent = {
  DEFINED: 0,
  UNDEFINED: 1,
  STARTED: 2,
  SUSPENDED: 3,
  RESUMED: 4,
  STOPPED: 5,
  SHUTDOWN: 6,
  PMSUSPENDED: 7,
  CRASHED: 8,
} as const;

/** virDomainJobType (GET_JOB_STATS `type`). */
export const JobType = { NONE: 0, BOUNDED: 1, UNBOUNDED: 2, COMPLETED: 3, FAILED: 4, CANCELLED: 5 } as const;

/** virDomainBlockJobType / virConnectDomainEventBlockJobStatus. */
export const BlockJobType = { UNKNOWN: 0, PULL: 1, COPY: 2, COMMIT: 3, ACTIVE_COMMIT: 4, BACKUP: 5 } as const;
export const BlockJobStatus = { COMPLETED: 0, FAILED: 1, CANCELED: 2, READY: 3 } as const;

/** A few flag values the host driver needs. */
export const DomainFlags = {
  XML_SECURE: 1,
  XML_INACTIVE: 2,
  XML_UPDATE_CPU: 4,
  XML_MIGRATABLE: 8,
  JOB_STATS_COMPLETED: 1,
  JOB_STATS_KEEP_COMPLETED: 2,
  BLOCK_COPY_SHALLOW: 1,
  BLOCK_COPY_REUSE_EXT: 2,
  BLOCK_COPY_TRANSIENT_JOB: 4,
  BLOCK_JOB_ABORT_ASYNC: 1,
  BLOCK_JOB_ABORT_PIVOT: 2,
  UNDEFINE_MANAGED_SAVE: 1,
  UNDEFINE_SNAPSHOTS_METADATA: 2,
  UNDEFINE_NVRAM: 4,
  LIST_ACTIVE: 1,
  LIST_INACTIVE: 2,
} as const;

/** virConnectListAllStoragePoolsFlags (the first few). */
export const StoragePoolListFlags = { INACTIVE: 1, ACTIVE: 2, PERSISTENT: 4, TRANSIENT: 8 } as const;

/** virStoragePoolState (STORAGE_POOL_GET_INFO `state`). */
export const StoragePoolState = {
  INACTIVE: 0,
  BUILDING: 1,
  RUNNING: 2,
  DEGRADED: 3,
  INACCESSIBLE: 4,
} as const;

/** virErrorNumber values Ferry reacts to. */
export const ErrorNumber = {
  INTERNAL_ERROR: 1,
  OPERATION_FAILED: 9,
  SYSTEM_ERROR: 38,
  NO_DOMAIN: 42,
  OPERATION_INVALID: 55,
  OPERATION_ABORTED: 78,
  MIGRATE_FINISH_OK: 93,
  NO_STORAGE_POOL: 49,
  NO_STORAGE_VOL: 50,
  OPERATION_TIMEOUT: 68,
} as const;

// --- shapes --------------------------------------------------------------------------------

/** remote_nonnull_domain; id is -1 when the domain is not running. */
export interface DomainRef {
  name: string;
  uuid: string;
  id: number;
}

/** remote_nonnull_storage_pool. */
export interface StoragePoolRef {
  name: string;
  uuid: string;
}

/** remote_nonnull_storage_vol. */
export interface StorageVolRef {
  pool: string;
  name: string;
  key: string;
}

/** remote_nonnull_network. */
export interface NetworkRef {
  name: string;
  uuid: string;
}

/** remote_error, decoded fully (the Finish error code decides a migration's rollback). */
export interface RemoteError {
  code: number;
  domain: number;
  message: string | null;
  level: number;
  dom: DomainRef | null;
  str1: string | null;
  str2: string | null;
  str3: string | null;
  int1: number;
  int2: number;
  net: NetworkRef | null;
}

export const writeDomain = (w: XdrWriter, d: DomainRef): void => {
  w.string(d.name).uuid(d.uuid).int(d.id);
};
export const readDomain = (r: XdrReader): DomainRef => ({ name: r.string(), uuid: r.uuid(), id: r.int() });

export const writePool = (w: XdrWriter, p: StoragePoolRef): void => {
  w.string(p.name).uuid(p.uuid);
};
export const readPool = (r: XdrReader): StoragePoolRef => ({ name: r.string(), uuid: r.uuid() });

export const writeVol = (w: XdrWriter, v: StorageVolRef): void => {
  w.string(v.pool).string(v.name).string(v.key);
};
export const readVol = (r: XdrReader): StorageVolRef => ({
  pool: r.string(),
  name: r.string(),
  key: r.string(),
});

const readNetwork = (r: XdrReader): NetworkRef => ({ name: r.string(), uuid: r.uuid() });
const optString = (r: XdrReader): string | null => r.optional((x) => x.string());

export function decodeRemoteError(buf: Buffer): RemoteError {
  const r = new XdrReader(buf);
  return {
    code: r.int(),
    domain: r.int(),
    message: optString(r),
    level: r.int(),
    dom: r.optional(readDomain),
    str1: optString(r),
    str2: optString(r),
    str3: optString(r),
    int1: r.int(),
    int2: r.int(),
    net: r.optional(readNetwork),
  };
}

export function encodeRemoteError(e: RemoteError): Buffer {
  const w = new XdrWriter();
  w.int(e.code).int(e.domain);
  w.optional(e.message, (x, v) => x.string(v));
  w.int(e.level);
  w.optional(e.dom, writeDomain);
  w.optional(e.str1, (x, v) => x.string(v));
  w.optional(e.str2, (x, v) => x.string(v));
  w.optional(e.str3, (x, v) => x.string(v));
  w.int(e.int1).int(e.int2);
  w.optional(e.net, (x, n) => x.string(n.name).uuid(n.uuid));
  return w.toBuffer();
}

// --- node info -----------------------------------------------------------------------------

export interface NodeInfo {
  model: string;
  memoryKiB: bigint;
  cpus: number;
  mhz: number;
  nodes: number;
  sockets: number;
  cores: number;
  threads: number;
}

export function readNodeInfo(r: XdrReader): NodeInfo {
  // char model[32]: 32 four-byte chars, NUL-terminated.
  const chars = r.fixedArray(32, (x) => x.char());
  const end = chars.indexOf(0);
  const model = Buffer.from((end < 0 ? chars : chars.slice(0, end)).map((c) => c & 0xff)).toString('latin1');
  return {
    model,
    memoryKiB: r.uhyper(),
    cpus: r.int(),
    mhz: r.int(),
    nodes: r.int(),
    sockets: r.int(),
    cores: r.int(),
    threads: r.int(),
  };
}

// --- events --------------------------------------------------------------------------------

export type LibvirtEvent =
  | { kind: 'lifecycle'; proc: number; callbackID: number; dom: DomainRef; event: number; detail: number }
  | { kind: 'migration-iteration'; proc: number; callbackID: number; dom: DomainRef; iteration: number }
  | { kind: 'job-completed'; proc: number; callbackID: number; dom: DomainRef; params: TypedParam[] }
  | {
      kind: 'block-job';
      proc: number;
      callbackID: number;
      dom: DomainRef;
      dst: string;
      type: number;
      status: number;
    }
  | { kind: 'other'; proc: number; callbackID: number | null; payload: Buffer };

/** Decodes a MESSAGE packet of the REMOTE program into an event. */
export function decodeEvent(proc: number, payload: Buffer): LibvirtEvent {
  const r = new XdrReader(payload);
  switch (proc) {
    case Proc.DOMAIN_EVENT_CALLBACK_LIFECYCLE: {
      const callbackID = r.int();
      return { kind: 'lifecycle', proc, callbackID, dom: readDomain(r), event: r.int(), detail: r.int() };
    }
    case Proc.DOMAIN_EVENT_CALLBACK_MIGRATION_ITERATION:
      return {
        kind: 'migration-iteration',
        proc,
        callbackID: r.int(),
        dom: readDomain(r),
        iteration: r.int(),
      };
    case Proc.DOMAIN_EVENT_CALLBACK_JOB_COMPLETED:
      return {
        kind: 'job-completed',
        proc,
        callbackID: r.int(),
        dom: readDomain(r),
        params: r.typedParams(),
      };
    case Proc.DOMAIN_EVENT_BLOCK_JOB_2:
      return {
        kind: 'block-job',
        proc,
        callbackID: r.int(),
        dom: readDomain(r),
        dst: r.string(),
        type: r.int(),
        status: r.int(),
      };
    default: {
      // Every *_CALLBACK_* message starts with the callback id; peek it when there is one.
      const callbackID = payload.length >= 4 ? payload.readInt32BE(0) : null;
      return { kind: 'other', proc, callbackID, payload };
    }
  }
}
