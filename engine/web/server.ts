// Web mode (`ferry web`): the built console (dist/renderer) and the API over a WebSocket, on one port.
// Like Jupyter, a random token in the printed URL is the only credential: the page itself is public,
// but every API request and WebSocket must carry the token, and a WebSocket must come from the page's
// own origin (another site open in the same browser must not drive the engine). It listens on loopback
// unless TLS is configured; the page moves the token out of the address bar as soon as it has loaded.
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type RawData, type WebSocket } from 'ws';
import {
  FerryError,
  ServerEventSchema,
  WsRequestSchema,
  WsResponseSchema,
  type ConsoleKind,
  type ServerEvent,
} from '../api/index.js';
import { packageRoot } from '../host/store.js';
import { toApiError, type ApiService } from '../service/api-service.js';
import type { ConsoleStream } from '../service/console.js';

/**
 * What the server needs of the engine; ApiService provides it (tests pass a stub). Without
 * `openConsole` the console endpoints refuse every connection as not supported.
 */
export type WebService = Pick<ApiService, 'call' | 'subscribe'> & Partial<Pick<ApiService, 'openConsole'>>;

export interface WebServerOptions {
  port: number;
  host: string;
  service: WebService;
  /** The built renderer; defaults to dist/renderer in Ferry's install folder. */
  staticDir?: string;
  /** Fixed token (tests); by default a fresh random one per start. */
  token?: string;
  /** Serve https/wss with this certificate and key (PEM); required to listen beyond loopback. */
  tls?: WebTls | null;
  /** Limits per client (tests lower them). */
  limits?: Partial<WebLimits>;
}

export interface WebTls {
  cert: string | Buffer;
  key: string | Buffer;
}

export interface WebLimits {
  /** Open WebSockets one client address may hold at once. */
  connectionsPerClient: number;
  /** Calls one WebSocket may have running at once; more are refused with `rate-limited`. */
  callsInFlight: number;
}

export const DEFAULT_LIMITS: WebLimits = { connectionsPerClient: 8, callsInFlight: 32 };

export interface WebServer {
  /** The URL to open, token included. */
  url: string;
  port: number;
  token: string;
  close(): Promise<void>;
}

export const WS_PATH = '/api/ws';
/** "Connect…": a VM's serial console and screen (raw RFB, as noVNC expects from websockify). */
export const CONSOLE_PATHS: Readonly<Record<string, ConsoleKind>> = {
  '/api/console/serial': 'serial',
  '/api/console/vnc': 'vnc',
};
/** A console whose VM's QEMU went away (stopped, or moved: ask consoleInfo again and reconnect). */
export const CLOSE_VM_GONE = 4410;
/** The close code of a console refused or ended by an error, by the error's code (reason: its message). */
export const CONSOLE_CLOSE_CODES: Readonly<Record<string, number>> = {
  'bad-input': 4400,
  'unknown-vm': 4404,
  'unknown-host': 4404,
  'not-supported': 4405,
  'no-display': 4409,
  'vm-not-running': 4412,
  'console-busy': 4423,
  'rate-limited': 4429,
};
/** Any other error (QEMU unreachable, …). */
export const CLOSE_CONSOLE_FAILED = 4500;
/** Close codes in the application range (4000-4999), mirrored in the renderer's client. */
export const CLOSE_UNAUTHORIZED = 4401;
/** Closed because the client already holds as many connections as it may. */
export const CLOSE_TOO_MANY = 4429;
const MAX_FRAME_BYTES = 1024 * 1024;
/** A client that stops reading must not make the server buffer without end: samples are dropped first. */
const MAX_BUFFERED_BYTES = 8 * 1024 * 1024;
/** A console viewer this far behind: the screen stops being read until it catches up; serial output is dropped. */
const CONSOLE_MAX_BUFFERED = 4 * 1024 * 1024;
/** What a console client may send before its VM's console is open (a few keys). */
const CONSOLE_EARLY_BYTES = 64 * 1024;
const PING_MS = 20_000;

const MIME: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.png': 'image/png',
  '.svg': 'image/svg+xml',
  '.ico': 'image/x-icon',
  '.woff2': 'font/woff2',
  '.woff': 'font/woff',
  '.ttf': 'font/ttf',
  '.map': 'application/json; charset=utf-8',
};

// Same policy as renderer/index.html's meta tag, plus what only a header can say (frame-ancestors).
const CSP =
  "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; " +
  "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'; object-src 'none'";

const COMMON_HEADERS: Record<string, string> = {
  'X-Content-Type-Options': 'nosniff',
  // The token is in the page's URL: never send it on as a Referer.
  'Referrer-Policy': 'no-referrer',
  'Cross-Origin-Opener-Policy': 'same-origin',
  'Cross-Origin-Resource-Policy': 'same-origin',
};

/** A loopback address (127.0.0.0/8, ::1) or `localhost`: exactly, never a name that merely starts so. */
export function isLoopback(host: string): boolean {
  const h = host.toLowerCase().replace(/^\[(.*)\]$/, '$1');
  if (h === 'localhost') return true;
  if (net.isIPv4(h)) return h.split('.')[0] === '127';
  if (net.isIPv6(h)) {
    // ::1, also written out, and 127.x.y.z mapped into IPv6.
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(h);
    if (mapped) return mapped[1]!.split('.')[0] === '127';
    return /^(0{0,4}:){2,7}0{0,3}1$/.test(h) || h === '::1';
  }
  return false;
}

/** A Host header's name and port ("127.0.0.1:8080", "[::1]:8080", "localhost"); null when malformed. */
export function parseHostHeader(value: string): { name: string; port: number | null } | null {
  const m = /^(\[[0-9a-fA-F:.]+\]|[^:[\]]+)(?::(\d{1,5}))?$/.exec(value);
  if (!m) return null;
  return { name: m[1]!, port: m[2] === undefined ? null : Number(m[2]) };
}

/**
 * TLS files for `ferry web`: both or neither. Listening beyond loopback needs them: the token must
 * never cross a network in clear text.
 */
export async function webTls(
  host: string,
  certFile: string | undefined,
  keyFile: string | undefined,
): Promise<WebTls | null> {
  if ((certFile === undefined) !== (keyFile === undefined))
    throw new FerryError('bad-input', '--tls-cert and --tls-key go together: give both files, or neither');
  if (certFile === undefined || keyFile === undefined) {
    assertServable(host, null);
    return null;
  }
  const read = async (file: string, what: string): Promise<Buffer> => {
    try {
      return await fs.promises.readFile(file);
    } catch (err) {
      throw new FerryError('bad-input', `cannot read the TLS ${what} ${file}: ${(err as Error).message}`);
    }
  };
  return { cert: await read(certFile, 'certificate'), key: await read(keyFile, 'key') };
}

function assertServable(host: string, tls: WebTls | null | undefined): void {
  if (tls || isLoopback(host)) return;
  throw new FerryError(
    'bad-input',
    `--host ${host} is not a loopback address: serving the console beyond this machine needs TLS`,
    'add --tls-cert FILE --tls-key FILE (then the address is https://), or keep the default 127.0.0.1',
  );
}

function urlHost(host: string): string {
  if (host === '0.0.0.0' || host === '::') return '127.0.0.1';
  return host.includes(':') ? `[${host}]` : host;
}

function tokenMatches(given: string | null | undefined, token: string): boolean {
  if (!given) return false;
  const a = Buffer.from(given);
  const b = Buffer.from(token);
  return a.length === b.length && crypto.timingSafeEqual(a, b);
}

/** Token from `?token=` or, for scripts, an `Authorization: token …` header (as Jupyter accepts). */
function requestToken(req: http.IncomingMessage, url: URL): string | null {
  const q = url.searchParams.get('token');
  if (q) return q;
  const auth = req.headers.authorization;
  const m = auth ? /^(?:token|bearer)\s+(\S+)$/i.exec(auth) : null;
  return m?.[1] ?? null;
}

/** A close frame's reason holds at most 123 bytes of UTF-8: cut at a character boundary. */
export function closeReason(text: string): string {
  if (Buffer.byteLength(text) <= 123) return text;
  let cut = text.slice(0, 120);
  while (Buffer.byteLength(cut + '…') > 123) cut = cut.slice(0, -1);
  return cut + '…';
}

function rawBytes(data: RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}

function send(
  res: http.ServerResponse,
  status: number,
  body: string,
  type = 'text/plain; charset=utf-8',
): void {
  res.writeHead(status, { ...COMMON_HEADERS, 'Content-Type': type, 'Cache-Control': 'no-store' });
  res.end(body);
}

function sendJson(res: http.ServerResponse, status: number, body: unknown): void {
  send(res, status, JSON.stringify(body), 'application/json; charset=utf-8');
}

/** Refuses an upgrade before the WebSocket handshake, with a plain HTTP status. */
function refuseUpgrade(socket: Duplex, status: number, message: string): void {
  socket.end(
    `HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? ''}\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(message)}\r\n\r\n${message}`,
  );
}

export async function startWebServer(opts: WebServerOptions): Promise<WebServer> {
  assertServable(opts.host, opts.tls);
  const token = opts.token ?? crypto.randomBytes(24).toString('base64url'); // 192 bits
  const staticDir = path.resolve(opts.staticDir ?? path.join(packageRoot(), 'dist', 'renderer'));
  const loopbackOnly = isLoopback(opts.host);
  const scheme = opts.tls ? 'https' : 'http';
  const limits: WebLimits = { ...DEFAULT_LIMITS, ...opts.limits };
  let servedPort = 0;

  /**
   * With a loopback binding, only a loopback address or `localhost` with the served port: a
   * DNS-rebinding page (evil.example resolving to 127.0.0.1, or 127.evil.example) must not reach us.
   */
  const hostAllowed = (hostHeader: string | undefined): boolean => {
    if (!hostHeader) return false;
    if (!loopbackOnly) return true; // TLS: the certificate names the server
    const h = parseHostHeader(hostHeader);
    if (!h || !isLoopback(h.name)) return false;
    return (h.port ?? (scheme === 'https' ? 443 : 80)) === servedPort;
  };
  /** Browsers always send Origin on a WebSocket; it must be the page's own (the Host it talks to). */
  const originAllowed = (origin: string | undefined, hostHeader: string | undefined): boolean => {
    if (origin === undefined) return true; // not a browser (scripts, tests): the token still applies
    return hostHeader !== undefined && origin === `${scheme}://${hostHeader}`;
  };

  const serveStatic = async (
    req: http.IncomingMessage,
    res: http.ServerResponse,
    url: URL,
  ): Promise<void> => {
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('Allow', 'GET, HEAD');
      return send(res, 405, 'method not allowed');
    }
    let rel: string;
    try {
      rel = decodeURIComponent(url.pathname);
    } catch {
      return send(res, 400, 'bad path');
    }
    if (rel.includes('\0')) return send(res, 400, 'bad path');
    if (rel === '/' || rel === '') rel = '/index.html';
    const file = path.resolve(staticDir, `.${rel}`);
    if (file !== staticDir && !file.startsWith(staticDir + path.sep)) return send(res, 404, 'not found');
    let body: Buffer;
    try {
      body = await fs.promises.readFile(file);
    } catch {
      if (rel === '/index.html') {
        return send(
          res,
          503,
          `The console is not built (${path.join(staticDir, 'index.html')} is missing): run "npm run build".`,
        );
      }
      return send(res, 404, 'not found');
    }
    const ext = path.extname(file).toLowerCase();
    const headers: Record<string, string> = {
      ...COMMON_HEADERS,
      'Content-Type': MIME[ext] ?? 'application/octet-stream',
      'Content-Length': String(body.length),
      // Hashed asset names never change; index.html must always be fresh.
      'Cache-Control': rel.startsWith('/assets/') ? 'public, max-age=31536000, immutable' : 'no-store',
    };
    if (ext === '.html') {
      headers['Content-Security-Policy'] = CSP;
      headers['X-Frame-Options'] = 'DENY';
    }
    res.writeHead(200, headers);
    res.end(req.method === 'HEAD' ? undefined : body);
  };

  const handler = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    if (url.pathname === '/api' || url.pathname.startsWith('/api/')) {
      if (!hostAllowed(req.headers.host))
        return sendJson(res, 403, { code: 'forbidden', message: 'host not allowed' });
      if (!tokenMatches(requestToken(req, url), token)) {
        return sendJson(res, 401, {
          code: 'unauthorized',
          message: 'missing or wrong access token: open the URL that "ferry web" printed',
        });
      }
      if (url.pathname === '/api/status' && req.method === 'GET') return sendJson(res, 200, { ok: true });
      return sendJson(res, 404, { code: 'not-found', message: `no API endpoint ${url.pathname}` });
    }
    serveStatic(req, res, url).catch((err: unknown) => {
      if (!res.headersSent) send(res, 500, `internal error: ${(err as Error).message}`);
      else res.destroy();
    });
  };
  const server = opts.tls
    ? https.createServer({ cert: opts.tls.cert, key: opts.tls.key }, handler)
    : http.createServer(handler);

  const wss = new WebSocketServer({
    noServer: true,
    maxPayload: MAX_FRAME_BYTES,
    // noVNC (like websockify's clients) may offer `binary`; nothing else is chosen.
    handleProtocols: (offered) => (offered.has('binary') ? 'binary' : false),
  });
  const alive = new WeakMap<WebSocket, boolean>();
  /** Open WebSockets per client address. */
  const perClient = new Map<string, number>();

  server.on('upgrade', (req, socket, head) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const consoleKind = Object.prototype.hasOwnProperty.call(CONSOLE_PATHS, url.pathname)
      ? CONSOLE_PATHS[url.pathname]!
      : null;
    if (url.pathname !== WS_PATH && !consoleKind) return refuseUpgrade(socket, 404, 'not found');
    if (!hostAllowed(req.headers.host)) return refuseUpgrade(socket, 403, 'host not allowed');
    if (!originAllowed(req.headers.origin, req.headers.host)) {
      return refuseUpgrade(socket, 403, `origin ${req.headers.origin ?? ''} not allowed`);
    }
    const authorized = tokenMatches(requestToken(req, url), token);
    wss.handleUpgrade(req, socket, head, (ws) => {
      // A browser cannot read the status of a refused handshake, so the refusal is a close with a reason
      // the console can show. Nothing is read from or sent to an unauthorized socket before that.
      if (!authorized) return ws.close(CLOSE_UNAUTHORIZED, 'missing or wrong access token');
      const client = req.socket.remoteAddress ?? '?';
      const held = perClient.get(client) ?? 0;
      if (held >= limits.connectionsPerClient) {
        return ws.close(
          CLOSE_TOO_MANY,
          `rate-limited: this client already holds ${held} connections (at most ${limits.connectionsPerClient})`,
        );
      }
      perClient.set(client, held + 1);
      ws.once('close', () => {
        const n = (perClient.get(client) ?? 1) - 1;
        if (n > 0) perClient.set(client, n);
        else perClient.delete(client);
      });
      if (consoleKind) serveConsole(ws, consoleKind, url);
      else serveSocket(ws);
    });
  });

  /** A console: the VM's serial or RFB bytes in binary frames, both ways, until either side ends it. */
  const serveConsole = (ws: WebSocket, kind: ConsoleKind, url: URL): void => {
    alive.set(ws, true);
    ws.on('pong', () => alive.set(ws, true));
    let stream: ConsoleStream | null = null;
    let early: Buffer[] = [];
    let earlyBytes = 0;
    let closed = false;
    const end = (code: number, reason: string): void => {
      closed = true;
      if (ws.readyState === ws.OPEN || ws.readyState === ws.CONNECTING) ws.close(code, closeReason(reason));
    };
    ws.on('message', (data: RawData, isBinary: boolean) => {
      if (!isBinary && kind === 'vnc') return end(1003, 'bad-input: the screen takes binary frames');
      const bytes = rawBytes(data);
      if (stream) return stream.write(bytes);
      earlyBytes += bytes.length;
      if (earlyBytes > CONSOLE_EARLY_BYTES)
        return end(1009, 'bad-input: too much sent before the console opened');
      early.push(bytes);
    });
    ws.on('close', () => {
      closed = true;
      stream?.close();
    });
    ws.on('error', () => stream?.close());

    const q = url.searchParams;
    const request = { vm: q.get('vm') ?? '', kind, ...(q.has('host') ? { host: q.get('host') ?? '' } : {}) };
    if (!opts.service.openConsole) return end(CONSOLE_CLOSE_CODES['not-supported']!, 'not-supported');
    opts.service.openConsole(request).then(
      (opened) => {
        if (closed) return opened.close();
        stream = opened;
        let paused = false;
        let drain: NodeJS.Timeout | null = null;
        opened.on('data', (chunk) => {
          if (ws.readyState !== ws.OPEN) return;
          if (ws.bufferedAmount > CONSOLE_MAX_BUFFERED) {
            if (kind === 'serial') return; // never hold up the guest's serial port for one slow viewer
            if (!paused) {
              paused = true;
              opened.pause();
              drain = setInterval(() => {
                if (ws.bufferedAmount > CONSOLE_MAX_BUFFERED / 2 && ws.readyState === ws.OPEN) return;
                clearInterval(drain!);
                drain = null;
                paused = false;
                opened.resume();
              }, 50);
            }
          }
          ws.send(chunk, { binary: true });
        });
        opened.on('end', (e) => {
          if (drain) clearInterval(drain);
          if (e.code === 'vm-gone') end(CLOSE_VM_GONE, 'vm-gone');
          else if (e.code === 'error') end(CLOSE_CONSOLE_FAILED, e.message);
          else end(1000, e.message);
        });
        for (const b of early) opened.write(b);
        early = [];
      },
      (err: unknown) => {
        const e = toApiError(err);
        end(CONSOLE_CLOSE_CODES[e.code] ?? CLOSE_CONSOLE_FAILED, e.message);
      },
    );
  };

  const serveSocket = (ws: WebSocket): void => {
    let inFlight = 0;
    alive.set(ws, true);
    ws.on('pong', () => alive.set(ws, true));

    const sendFrame = (frame: unknown): void => {
      if (ws.readyState !== ws.OPEN) return;
      const checked = WsResponseSchema.safeParse(frame);
      if (!checked.success) {
        // A frame the contract does not allow is a bug on this side: say so instead of sending it.
        const id = (frame as { id?: unknown }).id;
        if (typeof id !== 'number') return;
        frame = {
          id,
          ok: false,
          error: { code: 'internal', message: 'the server produced an invalid response' },
        };
      }
      ws.send(JSON.stringify(frame));
    };

    const unsubscribe = opts.service.subscribe((event: ServerEvent) => {
      // Samples are the bulk of the traffic and the next one supersedes them: drop them for a slow reader.
      if (ws.bufferedAmount > MAX_BUFFERED_BYTES) {
        if (event.kind === 'migration' && event.event.type === 'sample') return;
      }
      if (!ServerEventSchema.safeParse(event).success) return;
      sendFrame({ event });
    });

    ws.on('message', (data: RawData, isBinary: boolean) => {
      // A frame with no id to answer to is refused by closing, with the reason (code 1003/1007/1008).
      if (isBinary) return ws.close(1003, 'bad-input: frames are JSON text');
      let raw: unknown;
      try {
        raw = JSON.parse(data.toString());
      } catch {
        return ws.close(1007, 'bad-input: a frame is not JSON');
      }
      const parsed = WsRequestSchema.safeParse(raw);
      if (!parsed.success) {
        const id =
          raw !== null && typeof raw === 'object' && !Array.isArray(raw)
            ? (raw as { id?: unknown }).id
            : undefined;
        if (typeof id === 'number' && Number.isSafeInteger(id)) {
          return sendFrame({
            id,
            ok: false,
            error: { code: 'bad-input', message: 'a request frame is { id, method, input }' },
          });
        }
        return ws.close(1008, 'bad-input: a request frame is { id, method, input }');
      }
      const { id, method, input } = parsed.data;
      if (inFlight >= limits.callsInFlight) {
        return sendFrame({
          id,
          ok: false,
          error: {
            code: 'rate-limited',
            message: `too many calls in flight on this connection (at most ${limits.callsInFlight}): wait for answers`,
          },
        });
      }
      inFlight++;
      opts.service
        .call(method, input)
        .then(
          (result) => sendFrame({ id, ok: true, result: result ?? null }),
          (err: unknown) => sendFrame({ id, ok: false, error: toApiError(err) }),
        )
        .finally(() => inFlight--);
    });
    ws.on('close', () => unsubscribe());
    ws.on('error', () => unsubscribe());
  };

  const pinger = setInterval(() => {
    for (const ws of wss.clients) {
      if (alive.get(ws) === false) {
        ws.terminate();
        continue;
      }
      alive.set(ws, false);
      ws.ping();
    }
  }, PING_MS);
  pinger.unref();

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  servedPort = port;
  const url = `${scheme}://${urlHost(opts.host)}:${port}/?token=${token}`;

  return {
    url,
    port,
    token,
    close: async () => {
      clearInterval(pinger);
      const closing = [...wss.clients].map(
        (ws) =>
          new Promise<void>((resolve) => {
            ws.once('close', () => resolve());
            ws.close(1001, 'Ferry web server stopped');
            // A peer that never answers the close handshake must not hold the shutdown.
            setTimeout(() => {
              ws.terminate();
              resolve();
            }, 1000).unref();
          }),
      );
      await Promise.all(closing);
      await new Promise<void>((resolve) => wss.close(() => resolve()));
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    },
  };
}
