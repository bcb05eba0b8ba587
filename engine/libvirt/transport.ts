// libvirt connection URIs and the byte streams under the RPC: a unix socket, plain TCP, TLS, or an
// SSH channel running libvirt's own remote helper. Everything here follows what libvirt 9.0's client does
// (src/remote/remote_driver.c, src/rpc/virnetclient.c, virnetsocket.c, virnettlsconfig.c) so a URI that
// works with virsh works with Ferry, except that Ferry never skips host or certificate verification.
import { createHash, createHmac } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import ssh2, { type AgentAuthMethod, type ConnectConfig, type PublicKeyAuthMethod } from 'ssh2';
import { FerryError } from '../api/errors.js';

// ssh2 is CommonJS: its `utils` is only reachable through the default export.
const { Client: SshClient, utils: sshUtils } = ssh2;

// --- URIs --------------------------------------------------------------------------------------

export type LibvirtTransportKind = 'unix' | 'ssh' | 'tls' | 'tcp';

export interface LibvirtUri {
  driver: 'qemu';
  transport: LibvirtTransportKind;
  /** The user named in the URI (ssh), or null for the default. */
  user: string | null;
  /** null for the local unix socket. */
  host: string | null;
  /** The effective port (defaults filled in), null for unix. */
  port: number | null;
  path: '/system' | '/session';
  params: Record<string, string>;
  /** The URI as given. */
  raw: string;
}

export const DEFAULT_PORTS = { ssh: 22, tcp: 16509, tls: 16514 } as const;
export const DEFAULT_SYSTEM_SOCKET = '/var/run/libvirt/libvirt-sock';

/** URI parameters libvirt's remote driver understands and Ferry accepts. */
const KNOWN_PARAMS = new Set([
  'socket',
  'keyfile',
  'known_hosts',
  'known_hosts_verify',
  'sshauth',
  'pkipath',
  'no_verify',
  'name',
  'command',
  'netcat',
  'proxy',
  'mode',
  'no_tty',
]);

const TRANSPORTS: Record<string, LibvirtTransportKind> = {
  '': 'unix',
  unix: 'unix',
  ssh: 'ssh',
  libssh: 'ssh',
  libssh2: 'ssh',
  tls: 'tls',
  tcp: 'tcp',
};

const badUri = (uri: string, why: string): FerryError =>
  new FerryError(
    'bad-uri',
    `invalid libvirt URI ${JSON.stringify(uri)}: ${why}`,
    'Use qemu:///system (this machine), qemu+ssh://[user@]host[:port]/system, qemu+tls://host/system or qemu+tcp://host/system.',
  );

/** Parses a libvirt connection URI for the QEMU driver; anything Ferry cannot use is a 'bad-uri' error. */
export function parseLibvirtUri(uri: string): LibvirtUri {
  const text = uri.trim();
  const m = /^([a-z][a-z0-9+.-]*):\/\/([^/?#]*)(\/[^?#]*)?(?:\?([^#]*))?(#.*)?$/i.exec(text);
  if (!m) throw badUri(uri, 'expected driver[+transport]://[user@][host][:port]/path[?params]');
  const [, scheme = '', authority = '', rawPath = '', query, fragment] = m;
  if (fragment) throw badUri(uri, 'a fragment (#…) is not allowed');
  const [driver, transportName = '', ...extra] = scheme.toLowerCase().split('+');
  if (driver !== 'qemu') {
    throw badUri(uri, `driver ${JSON.stringify(driver)} is not supported: Ferry drives QEMU (qemu://…) only`);
  }
  if (extra.length) throw badUri(uri, `unknown transport ${JSON.stringify(scheme)}`);
  let transport = TRANSPORTS[transportName];
  if (!transport) {
    throw badUri(
      uri,
      `unknown transport ${JSON.stringify(transportName)} (use unix, ssh, libssh, libssh2, tls or tcp)`,
    );
  }

  // Authority: [user@]host[:port], host may be an [IPv6] literal.
  let user: string | null = null;
  let hostPort = authority;
  const at = authority.lastIndexOf('@');
  if (at >= 0) {
    user = safeDecode(uri, authority.slice(0, at));
    hostPort = authority.slice(at + 1);
    if (!user) throw badUri(uri, 'empty user name before @');
  }
  let host: string | null = null;
  let port: number | null = null;
  if (hostPort) {
    const hp = /^(?:\[([0-9a-f:.]+)\]|([^:[\]]+))(?::(\d*))?$/i.exec(hostPort);
    if (!hp) throw badUri(uri, `bad host ${JSON.stringify(hostPort)}`);
    host = safeDecode(uri, hp[1] ?? hp[2] ?? '');
    if (!/^[A-Za-z0-9._:-]+$/.test(host)) throw badUri(uri, `bad host name ${JSON.stringify(host)}`);
    if (hp[3] !== undefined && hp[3] !== '') {
      port = Number(hp[3]);
      if (!Number.isInteger(port) || port < 1 || port > 65535) throw badUri(uri, `bad port ${hp[3]}`);
    }
  }
  // libvirt: "qemu://host/system" (no transport, with a host) means TLS.
  if (transportName === '' && host) transport = 'tls';

  if (transport === 'unix') {
    if (host) throw badUri(uri, 'the unix transport connects to this machine and takes no host');
    if (user) throw badUri(uri, 'the unix transport takes no user name');
  } else {
    if (!host) throw badUri(uri, `the ${transportName || transport} transport needs a host name`);
    port ??= DEFAULT_PORTS[transport];
  }
  if (user && transport !== 'ssh') throw badUri(uri, `a user name is only used by the ssh transports`);

  const p = rawPath.replace(/\/+$/, '') || '';
  if (p !== '/system' && p !== '/session') {
    throw badUri(uri, `path ${JSON.stringify(rawPath || '')} must be /system or /session`);
  }

  const params: Record<string, string> = {};
  for (const part of (query ?? '').split(/[&;]/)) {
    if (!part) continue;
    const eq = part.indexOf('=');
    const key = safeDecode(uri, eq < 0 ? part : part.slice(0, eq));
    const value = eq < 0 ? '' : safeDecode(uri, part.slice(eq + 1));
    if (!KNOWN_PARAMS.has(key)) {
      throw badUri(uri, `unknown parameter ${JSON.stringify(key)} (known: ${[...KNOWN_PARAMS].join(', ')})`);
    }
    params[key] = value;
  }

  const noVerify = params.no_verify;
  if (noVerify !== undefined && noVerify !== '0' && (transport === 'ssh' || transport === 'tls')) {
    throw badUri(
      uri,
      transport === 'ssh'
        ? 'no_verify is refused: Ferry always verifies the SSH host key (accept an unknown key explicitly instead)'
        : "no_verify is refused: Ferry always verifies the server's TLS certificate",
    );
  }
  const khv = params.known_hosts_verify;
  if (khv !== undefined) {
    if (khv === 'ignore') {
      throw badUri(uri, 'known_hosts_verify=ignore is refused: Ferry always verifies the SSH host key');
    }
    if (khv !== 'normal' && khv !== 'auto') {
      throw badUri(uri, `known_hosts_verify must be normal or auto, not ${JSON.stringify(khv)}`);
    }
  }
  const proxy = params.proxy;
  if (proxy !== undefined && !['auto', 'netcat', 'native'].includes(proxy)) {
    throw badUri(uri, `proxy must be auto, netcat or native, not ${JSON.stringify(proxy)}`);
  }
  if (proxy === 'native' && params.netcat !== undefined) {
    throw badUri(uri, 'netcat path not valid with native proxy mode');
  }
  if (params.name !== undefined && !/^qemu(\+unix)?:\/\/\/(system|session)(\?.*)?$/.test(params.name)) {
    throw badUri(
      uri,
      `name must be a local QEMU driver URI such as qemu:///system, not ${JSON.stringify(params.name)}`,
    );
  }
  for (const k of ['socket', 'keyfile', 'known_hosts', 'pkipath'] as const) {
    if (params[k] === '') throw badUri(uri, `parameter ${k} is empty`);
  }

  return { driver: 'qemu', transport, user, host, port, path: p, params, raw: uri };
}

function safeDecode(uri: string, s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    throw badUri(uri, `bad percent-encoding in ${JSON.stringify(s)}`);
  }
}

/** The URI the daemon opens (CONNECT_OPEN): the `name` parameter, else qemu:///system or qemu:///session. */
export function driverUri(u: LibvirtUri): string {
  return u.params.name ?? `qemu://${u.path}`;
}

/** True for URIs whose connection is neither authenticated nor encrypted (qemu+tcp): the UI warns. */
export function isUnauthenticatedUri(uri: string | LibvirtUri): boolean {
  return (typeof uri === 'string' ? parseLibvirtUri(uri) : uri).transport === 'tcp';
}

// --- known_hosts -------------------------------------------------------------------------------

/** `SHA256:` + unpadded base64 of the key blob's SHA-256, exactly as `ssh-keygen -l` prints it. */
export function sshFingerprint(keyBlob: Buffer): string {
  return 'SHA256:' + createHash('sha256').update(keyBlob).digest('base64').replace(/=+$/, '');
}

/** The algorithm name at the start of an SSH public key blob (ssh-ed25519, ecdsa-sha2-nistp256, ssh-rsa…). */
export function sshKeyType(keyBlob: Buffer): string {
  if (keyBlob.length < 4) return 'unknown';
  const n = keyBlob.readUInt32BE(0);
  return keyBlob.toString('latin1', 4, Math.min(4 + n, keyBlob.length));
}

/** ed25519, ecdsa, rsa… as ssh-keygen shows it (lower-cased). */
export function shortKeyType(type: string): string {
  if (type === 'ssh-ed25519') return 'ed25519';
  if (type.startsWith('ecdsa-')) return 'ecdsa';
  if (type === 'ssh-rsa') return 'rsa';
  if (type === 'ssh-dss') return 'dsa';
  return type.replace(/^ssh-/, '');
}

/** The host name as known_hosts writes it: `host`, or `[host]:port` when the port is not 22. */
export function knownHostsName(host: string, port: number): string {
  return port === 22 ? host : `[${host}]:${port}`;
}

export type KnownHostResult =
  | { status: 'match'; line: number }
  | { status: 'mismatch'; line: number; knownType: string }
  | { status: 'revoked'; line: number }
  | { status: 'unknown'; knownTypes: string[] };

function globMatch(pattern: string, name: string): boolean {
  const re = new RegExp(
    '^' +
      pattern
        .split('')
        .map((c) => (c === '*' ? '.*' : c === '?' ? '.' : c.replace(/[.+^${}()|[\]\\]/g, '\\$&')))
        .join('') +
      '$',
    'i',
  );
  return re.test(name);
}

function hostFieldMatches(field: string, name: string): boolean {
  if (field.startsWith('|1|')) {
    const [, , salt = '', hash = ''] = field.split('|');
    const mac = createHmac('sha1', Buffer.from(salt, 'base64')).update(name).digest('base64');
    return mac === hash;
  }
  let matched = false;
  for (const pat of field.split(',')) {
    if (pat.startsWith('!')) {
      if (globMatch(pat.slice(1), name)) return false;
    } else if (globMatch(pat, name)) {
      matched = true;
    }
  }
  return matched;
}

/**
 * Looks a server key up in known_hosts text the way OpenSSH does: plain or hashed (`|1|salt|hmac`) host
 * fields, comma lists and wildcards, `[host]:port` for other ports than 22. Only lines of the same key
 * type count: a line of another type means "not known for this type", not a mismatch.
 */
export function checkKnownHosts(text: string, host: string, port: number, keyBlob: Buffer): KnownHostResult {
  const name = knownHostsName(host, port);
  const type = sshKeyType(keyBlob);
  const b64 = keyBlob.toString('base64');
  const knownTypes: string[] = [];
  let mismatch: KnownHostResult | null = null;
  let match: KnownHostResult | null = null;
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (!line || line.startsWith('#')) continue;
    const fields = line.split(/\s+/);
    let marker: string | null = null;
    if (fields[0]?.startsWith('@')) marker = fields.shift() ?? null;
    const [hosts = '', ktype = '', kdata = ''] = fields;
    if (marker === '@cert-authority') continue; // certificates are not supported: ignore CA lines
    if (!hostFieldMatches(hosts, name)) continue;
    if (marker === '@revoked') {
      if (kdata === b64) return { status: 'revoked', line: i + 1 };
      continue;
    }
    knownTypes.push(ktype);
    if (ktype !== type) continue;
    if (kdata === b64) match ??= { status: 'match', line: i + 1 };
    else mismatch ??= { status: 'mismatch', line: i + 1, knownType: ktype };
  }
  // OpenSSH accepts a key if any line for the host matches it.
  return match ?? mismatch ?? { status: 'unknown', knownTypes };
}

/** Appends `name keytype base64` to a known_hosts file, creating it (0600) and its folder (0700). */
export function appendKnownHost(file: string, host: string, port: number, keyBlob: Buffer): void {
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  let prefix = '';
  try {
    const cur = fs.readFileSync(file, 'utf8');
    if (cur.length && !cur.endsWith('\n')) prefix = '\n';
  } catch {
    // a new file
  }
  const line = `${prefix}${knownHostsName(host, port)} ${sshKeyType(keyBlob)} ${keyBlob.toString('base64')}\n`;
  fs.appendFileSync(file, line, { mode: 0o600 });
}

// --- transports --------------------------------------------------------------------------------

export interface TransportOptions {
  /** Private key file for SSH; overrides the URI's keyfile. */
  sshKey?: string | null;
  /** The SHA256 fingerprint of an unknown SSH host key the user agreed to trust. */
  acceptHostKey?: string | null;
  /** Deadline for establishing the stream. */
  timeoutMs: number;
}

/** An open byte stream to a libvirt daemon, ready for RPC. */
export interface Transport {
  stream: Duplex;
  /** What remote side wrote on stderr (ssh), for "libvirt is missing" messages. */
  stderr(): string;
  /** Tears the stream (and SSH session) down. */
  close(): void;
  /**
   * SSH only: a channel from the server on to an address or unix socket there (a VM's VNC listener),
   * the way `ssh -L` reaches it; the server's sshd must allow forwarding.
   */
  forward?(to: { host: string; port: number } | { socket: string }): Promise<Duplex>;
}

export async function openTransport(u: LibvirtUri, opts: TransportOptions): Promise<Transport> {
  switch (u.transport) {
    case 'unix':
      return openUnix(u, opts);
    case 'tcp':
      return openTcp(u, opts);
    case 'tls':
      return openTls(u, opts);
    case 'ssh':
      return openSsh(u, opts);
  }
}

function localSocketPath(u: LibvirtUri): string {
  if (u.params.socket) return u.params.socket;
  if (u.path === '/system') return DEFAULT_SYSTEM_SOCKET;
  const runtime = process.env.XDG_RUNTIME_DIR || path.join(os.homedir(), '.cache');
  return path.join(runtime, 'libvirt', 'libvirt-sock');
}

const simpleTransport = (s: net.Socket): Transport => ({
  stream: s,
  stderr: () => '',
  close: () => s.destroy(),
});

function openUnix(u: LibvirtUri, opts: TransportOptions): Promise<Transport> {
  const socketPath = localSocketPath(u);
  return new Promise((resolve, reject) => {
    const s = net.connect({ path: socketPath });
    const timer = setTimeout(() => {
      s.destroy();
      reject(
        new FerryError(
          'libvirt-missing',
          `libvirtd at ${socketPath} did not accept within ${opts.timeoutMs} ms`,
        ),
      );
    }, opts.timeoutMs);
    s.once('connect', () => {
      clearTimeout(timer);
      s.removeAllListeners('error');
      resolve(simpleTransport(s));
    });
    s.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      s.destroy();
      if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') {
        reject(
          new FerryError(
            'libvirt-missing',
            `no libvirtd listening on ${socketPath} (${err.code})`,
            'Install and start libvirt (apt-get install libvirt-daemon-system; systemctl start libvirtd).',
          ),
        );
      } else if (err.code === 'EACCES' || err.code === 'EPERM') {
        reject(
          new FerryError(
            'auth-failed',
            `permission denied on ${socketPath}`,
            'Run as root or add your user to the libvirt group.',
          ),
        );
      } else {
        reject(new FerryError('libvirt-missing', `cannot connect to ${socketPath}: ${err.message}`));
      }
    });
  });
}

/** Maps a socket error to 'host-unreachable' naming the cause, host and port. */
export function networkError(err: NodeJS.ErrnoException, host: string, port: number): FerryError {
  const where = `${host}:${port}`;
  switch (err.code) {
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
    case 'EAI_NONAME':
    case 'EAI_FAIL':
      return new FerryError(
        'host-unreachable',
        `cannot resolve host name ${host} (DNS lookup failed, ${err.code})`,
      );
    case 'ECONNREFUSED':
      return new FerryError(
        'host-unreachable',
        `connection refused by ${where}: nothing listens on that port`,
      );
    case 'ETIMEDOUT':
      return new FerryError('host-unreachable', `timed out connecting to ${where}`);
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
    case 'EHOSTDOWN':
    case 'ENETDOWN':
      return new FerryError('host-unreachable', `no route to ${where} (${err.code})`);
    case 'ECONNRESET':
    case 'EPIPE':
      return new FerryError('host-unreachable', `connection to ${where} was reset`);
    default:
      return new FerryError('host-unreachable', `cannot connect to ${where}: ${err.message}`);
  }
}

const timeoutError = (host: string, port: number, ms: number, what = 'connecting to'): FerryError =>
  new FerryError('host-unreachable', `timed out after ${ms} ms ${what} ${host}:${port}`);

function connectTcpSocket(host: string, port: number, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host, port });
    const timer = setTimeout(() => {
      s.destroy();
      reject(timeoutError(host, port, timeoutMs));
    }, timeoutMs);
    s.once('connect', () => {
      clearTimeout(timer);
      s.removeAllListeners('error');
      s.setNoDelay(true);
      resolve(s);
    });
    s.once('error', (err) => {
      clearTimeout(timer);
      s.destroy();
      reject(networkError(err, host, port));
    });
  });
}

async function openTcp(u: LibvirtUri, opts: TransportOptions): Promise<Transport> {
  return simpleTransport(await connectTcpSocket(u.host!, u.port!, opts.timeoutMs));
}

/** Client certificate files as libvirt looks them up (src/rpc/virnettlsconfig.c). */
export function tlsFiles(u: LibvirtUri): { ca: string; cert: string; key: string } {
  const pki = u.params.pkipath;
  if (pki) {
    return {
      ca: path.join(pki, 'cacert.pem'),
      cert: path.join(pki, 'clientcert.pem'),
      key: path.join(pki, 'clientkey.pem'),
    };
  }
  const system = {
    ca: '/etc/pki/CA/cacert.pem',
    cert: '/etc/pki/libvirt/clientcert.pem',
    key: '/etc/pki/libvirt/private/clientkey.pem',
  };
  if (process.getuid?.() === 0) return system;
  // Non-root: ~/.pki/libvirt, falling back to the system files when the user has none (as libvirt does).
  const dir = path.join(os.homedir(), '.pki', 'libvirt');
  const user = {
    ca: path.join(dir, 'cacert.pem'),
    cert: path.join(dir, 'clientcert.pem'),
    key: path.join(dir, 'clientkey.pem'),
  };
  return fs.existsSync(user.ca) || fs.existsSync(user.cert) ? user : system;
}

async function openTls(u: LibvirtUri, opts: TransportOptions): Promise<Transport> {
  const host = u.host!;
  const port = u.port!;
  const files = tlsFiles(u);
  const read = (file: string, what: string): Buffer => {
    try {
      return fs.readFileSync(file);
    } catch (err) {
      throw new FerryError(
        'auth-failed',
        `cannot read the TLS ${what} ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
        'Install the CA certificate and a client certificate/key signed by it (see libvirt\'s "TLS x509 certificates" guide), or set pkipath= in the URI.',
      );
    }
  };
  const ca = read(files.ca, 'CA certificate');
  const cert = read(files.cert, 'client certificate');
  const key = read(files.key, 'client key');
  const started = Date.now();
  const raw = await connectTcpSocket(host, port, opts.timeoutMs);
  const left = Math.max(1, opts.timeoutMs - (Date.now() - started));
  return new Promise((resolve, reject) => {
    const s = tls.connect({
      socket: raw,
      // The name the certificate must carry (DNS or IP altname); without it Node would check "localhost".
      host,
      ca,
      cert,
      key,
      servername: net.isIP(host) ? undefined : host,
      rejectUnauthorized: true,
    });
    let done = false;
    const fail = (e: FerryError): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.destroy();
      raw.destroy();
      reject(e);
    };
    const timer = setTimeout(
      () => fail(timeoutError(host, port, opts.timeoutMs, 'in the TLS handshake with')),
      left,
    );
    s.once('error', (err: NodeJS.ErrnoException) => {
      if (err.code?.startsWith('ERR_TLS_') || /certificate|altname|self.signed|verify/i.test(err.message)) {
        fail(new FerryError('auth-failed', `TLS verification of ${host}:${port} failed: ${err.message}`));
      } else if (/alert|handshake|ssl/i.test(err.message)) {
        fail(new FerryError('auth-failed', `TLS handshake with ${host}:${port} failed: ${err.message}`));
      } else {
        fail(networkError(err, host, port));
      }
    });
    s.once('close', () =>
      fail(new FerryError('host-unreachable', `${host}:${port} closed the TLS connection`)),
    );
    // libvirtd sends one byte (1) after the handshake once it has checked our certificate.
    const onData = (chunk: Buffer): void => {
      s.off('data', onData);
      s.pause();
      if (chunk[0] !== 1) {
        fail(
          new FerryError(
            chunk[0] === 0 ? 'auth-failed' : 'libvirt-missing',
            chunk[0] === 0
              ? `libvirtd on ${host}:${port} refused our client certificate`
              : `${host}:${port} is not a libvirtd TLS endpoint (first byte ${chunk[0]})`,
          ),
        );
        return;
      }
      if (chunk.length > 1) s.unshift(chunk.subarray(1));
      done = true;
      clearTimeout(timer);
      s.removeAllListeners('error');
      s.removeAllListeners('close');
      resolve(simpleTransport(s as unknown as net.Socket));
    };
    s.on('data', onData);
  });
}

// --- ssh ---------------------------------------------------------------------------------------

/** libvirt's virBufferEscapeShell: quote only when the string has shell metacharacters. */
export function shellEscape(s: string): string {
  if (s === '') return "''";
  if (!/[\r\t\n !"#$&'()*;<>?[\\\]^`{|}~]/.test(s)) return s;
  return `'${s.replace(/'/g, "'\\''")}'`;
}

/**
 * The remote command libvirt 9.0 runs over SSH (virNetClientSSHHelperCommand): virt-ssh-helper for the
 * driver URI when the remote has it, else `nc -U socket` (with -q0 where nc needs it to exit on EOF).
 */
export function sshRemoteCommand(
  u: LibvirtUri,
  proxy: 'auto' | 'netcat' | 'native' = (u.params.proxy as 'auto' | 'netcat' | 'native' | undefined) ??
    'auto',
): string {
  const netcat = u.params.netcat;
  const nc = shellEscape(shellEscape(netcat ?? 'nc'));
  const driver = shellEscape(shellEscape(driverUri(u)));
  const socket =
    u.params.socket ??
    (u.path === '/system' ? DEFAULT_SYSTEM_SOCKET : '$XDG_RUNTIME_DIR/libvirt/libvirt-sock');
  const nccmd =
    `if '${nc}' -q 2>&1 | grep "requires an argument" >/dev/null 2>&1; then ARG=-q0;else ARG=;fi;` +
    `'${nc}' $ARG -U ${socket}`;
  const helper = `virt-ssh-helper '${driver}'`;
  // A netcat path in the URI means the user wants the legacy nc proxy (as in libvirt).
  const mode = proxy === 'auto' && netcat !== undefined ? 'netcat' : proxy;
  if (mode === 'netcat') return `sh -c '${nccmd}'`;
  if (mode === 'native') return `sh -c '${helper}'`;
  return (
    `sh -c 'which virt-ssh-helper 1>/dev/null 2>&1; if test $? = 0; then     ${helper}; ` +
    `else    ${nccmd}; fi'`
  );
}

const HOST_KEY_ALGOS: Record<string, string[]> = {
  'ssh-ed25519': ['ssh-ed25519'],
  'ecdsa-sha2-nistp256': ['ecdsa-sha2-nistp256'],
  'ecdsa-sha2-nistp384': ['ecdsa-sha2-nistp384'],
  'ecdsa-sha2-nistp521': ['ecdsa-sha2-nistp521'],
  'ssh-rsa': ['rsa-sha2-512', 'rsa-sha2-256', 'ssh-rsa'],
};

/** Host key algorithms with the ones already known for this host first, as OpenSSH orders them. */
function hostKeyAlgorithms(knownTypes: string[]): string[] {
  const all = Object.values(HOST_KEY_ALGOS).flat();
  const first = [...new Set(knownTypes.flatMap((t) => HOST_KEY_ALGOS[t] ?? []))];
  return [...first, ...all.filter((a) => !first.includes(a))];
}

function currentUser(): string {
  try {
    return os.userInfo().username;
  } catch {
    return process.env.USER ?? 'root';
  }
}

type AuthMethod = PublicKeyAuthMethod | AgentAuthMethod;

interface SshAuthPlan {
  methods: AuthMethod[];
  described: string;
}

function sshAuthPlan(user: string, keyFile: string | null): SshAuthPlan {
  const loadKey = (file: string, explicit: boolean): AuthMethod | null => {
    let data: Buffer;
    try {
      data = fs.readFileSync(file);
    } catch (err) {
      if (!explicit) return null;
      throw new FerryError(
        'auth-failed',
        `cannot read the SSH key ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
      );
    }
    const parsed = sshUtils.parseKey(data);
    if (parsed instanceof Error) {
      if (!explicit) return null;
      const encrypted = /encrypt|passphrase/i.test(parsed.message);
      throw new FerryError(
        'auth-failed',
        encrypted
          ? `the SSH key ${file} is protected by a passphrase, which Ferry does not ask for`
          : `cannot use the SSH key ${file}: ${parsed.message}`,
        encrypted ? 'Load the key into ssh-agent (ssh-add) and make SSH_AUTH_SOCK point to it.' : undefined,
      );
    }
    return { type: 'publickey', username: user, key: data };
  };
  if (keyFile) return { methods: [loadKey(keyFile, true)!], described: `the key ${keyFile}` };
  const methods: AuthMethod[] = [];
  const what: string[] = [];
  if (process.env.SSH_AUTH_SOCK) {
    methods.push({ type: 'agent', username: user, agent: process.env.SSH_AUTH_SOCK });
    what.push('ssh-agent');
  }
  for (const name of ['id_ed25519', 'id_ecdsa', 'id_rsa']) {
    const file = path.join(os.homedir(), '.ssh', name);
    const m = fs.existsSync(file) ? loadKey(file, false) : null;
    if (m) {
      methods.push(m);
      what.push(file);
    }
  }
  if (!methods.length) {
    throw new FerryError(
      'auth-failed',
      `no SSH key to log in as ${user}: no ssh-agent (SSH_AUTH_SOCK) and none of ~/.ssh/id_ed25519, id_ecdsa, id_rsa`,
      "Give the host's SSH key file (or keyfile= in the URI), or start ssh-agent with your key loaded.",
    );
  }
  return { methods, described: what.join(', ') };
}

async function openSsh(u: LibvirtUri, opts: TransportOptions): Promise<Transport> {
  const host = u.host!;
  const port = u.port!;
  const user = u.user ?? currentUser();
  const knownHostsFile = u.params.known_hosts ?? path.join(os.homedir(), '.ssh', 'known_hosts');
  let knownText = '';
  try {
    knownText = fs.readFileSync(knownHostsFile, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new FerryError('host-key-unknown', `cannot read ${knownHostsFile}: ${(err as Error).message}`);
    }
  }
  const plan = sshAuthPlan(user, opts.sshKey ?? u.params.keyfile ?? null);
  // Which host key types are known decides the algorithm order (see hostKeyAlgorithms).
  const probe = checkKnownHosts(knownText, host, port, Buffer.alloc(0));
  const knownTypes = probe.status === 'unknown' ? probe.knownTypes : [];

  const conn = new SshClient();
  let hostKeyError: FerryError | null = null;
  const hostVerifier = (key: Buffer): boolean => {
    const res = checkKnownHosts(knownText, host, port, key);
    const fp = sshFingerprint(key);
    const type = sshKeyType(key);
    const short = shortKeyType(type);
    const name = knownHostsName(host, port);
    if (res.status === 'match') return true;
    if (res.status === 'mismatch' || res.status === 'revoked') {
      hostKeyError = new FerryError(
        'host-key-mismatch',
        res.status === 'revoked'
          ? `the SSH host key of ${name} (${fp}, ${short}) is marked @revoked in ${knownHostsFile} line ${res.line}`
          : `the SSH host key of ${name} has CHANGED: it is now ${fp} (${short}), which differs from ${knownHostsFile} line ${res.line}. ` +
              'Someone could be intercepting the connection, or the host was reinstalled.',
        res.status === 'revoked'
          ? undefined
          : `If the host really was reinstalled, remove line ${res.line} of ${knownHostsFile} (ssh-keygen -R '${name}' -f ${knownHostsFile}) and connect again.`,
        { fingerprint: fp, keyType: short, host: name, knownHostsFile, line: String(res.line) },
      );
      return false;
    }
    if (opts.acceptHostKey && opts.acceptHostKey === fp) {
      try {
        appendKnownHost(knownHostsFile, host, port, key);
      } catch (err) {
        hostKeyError = new FerryError(
          'host-key-unknown',
          `cannot record the host key of ${name} in ${knownHostsFile}: ${(err as Error).message}`,
        );
        return false;
      }
      return true;
    }
    // A fingerprint to accept that is not this key's is refused as the unknown key it is, saying so.
    const notAccepted = opts.acceptHostKey
      ? `; the fingerprint given to accept (${opts.acceptHostKey}) is not this key's, so it was not accepted`
      : '';
    hostKeyError = new FerryError(
      'host-key-unknown',
      `the SSH host key of ${name} is not known: host key ${fp} (${short}) is not in ${knownHostsFile}${notAccepted}`,
      `Check the fingerprint on the host (ssh-keygen -lf /etc/ssh/ssh_host_${short}_key.pub) and accept it if it matches.`,
      { fingerprint: fp, keyType: short, host: name, knownHostsFile },
    );
    return false;
  };

  return new Promise<Transport>((resolve, reject) => {
    let settled = false;
    let stderr = '';
    const fail = (e: FerryError): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      conn.end();
      reject(e);
    };
    const timer = setTimeout(
      () => fail(timeoutError(host, port, opts.timeoutMs, 'logging in over SSH to')),
      opts.timeoutMs,
    );
    conn.on('error', (err: Error & { level?: string; code?: string }) => {
      if (hostKeyError) return fail(hostKeyError);
      if (err.level === 'client-authentication') {
        return fail(
          new FerryError(
            'auth-failed',
            `SSH login as ${user} on ${knownHostsName(host, port)} was refused (tried ${plan.described})`,
            `Make sure ${user}'s authorized_keys on ${host} holds the public key.`,
          ),
        );
      }
      if (err.level === 'client-timeout')
        return fail(timeoutError(host, port, opts.timeoutMs, 'logging in over SSH to'));
      if (err.level === 'client-socket' && err.code) return fail(networkError(err, host, port));
      if (err.code) return fail(networkError(err, host, port));
      fail(new FerryError('host-unreachable', `SSH to ${host}:${port} failed: ${err.message}`));
    });
    conn.on('close', () => {
      if (hostKeyError) return fail(hostKeyError);
      fail(new FerryError('host-unreachable', `${host}:${port} closed the SSH connection during login`));
    });
    conn.on('ready', () => {
      conn.exec(sshRemoteCommand(u), (err, channel) => {
        if (err) {
          return fail(
            new FerryError(
              'libvirt-missing',
              `${host} refused to run libvirt's remote helper: ${err.message}`,
            ),
          );
        }
        if (settled) {
          channel.close();
          return;
        }
        settled = true;
        clearTimeout(timer);
        channel.stderr.on('data', (d: Buffer) => {
          if (stderr.length < 4096) stderr += d.toString('utf8');
        });
        channel.on('close', () => conn.end());
        conn.removeAllListeners('error');
        conn.removeAllListeners('close');
        conn.on('error', () => channel.destroy());
        conn.on('close', () => channel.destroy());
        resolve({
          stream: channel,
          stderr: () => stderr.trim(),
          close: () => {
            channel.destroy();
            conn.end();
          },
          forward: (to) =>
            new Promise<Duplex>((ok, no) => {
              const done = (err: Error | undefined, ch: Duplex): void =>
                err
                  ? no(
                      new FerryError(
                        'not-supported',
                        `${host} did not open a forwarded channel to ${'socket' in to ? to.socket : `${to.host}:${to.port}`}: ${err.message}`,
                        "The server's sshd must allow forwarding (AllowTcpForwarding, AllowStreamLocalForwarding).",
                      ),
                    )
                  : ok(ch);
              if ('socket' in to) conn.openssh_forwardOutStreamLocal(to.socket, done);
              else conn.forwardOut('127.0.0.1', 0, to.host, to.port, done);
            }),
        });
      });
    });
    const config: ConnectConfig = {
      host,
      port,
      username: user,
      readyTimeout: opts.timeoutMs,
      keepaliveInterval: 0,
      hostVerifier,
      authHandler: plan.methods,
      algorithms: { serverHostKey: hostKeyAlgorithms(knownTypes) as never },
    };
    conn.connect(config);
  });
}
