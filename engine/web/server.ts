// Web mode (`ferry web`): the built console (dist/renderer) and the API over a WebSocket, on one port.
// Like Jupyter, a random token in the printed URL is the only credential: the page itself is public,
// but every API request and WebSocket must carry the token, and a WebSocket must come from the page's
// own origin (another site open in the same browser must not drive the engine).
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type RawData, type WebSocket } from 'ws';
import { ServerEventSchema, WsRequestSchema, WsResponseSchema, type ServerEvent } from '../api/index.js';
import { packageRoot } from '../host/store.js';
import { toApiError, type ApiService } from '../service/api-service.js';

/** What the server needs of the engine; ApiService provides it (tests pass a stub). */
export type WebService = Pick<ApiService, 'call' | 'subscribe'>;

export interface WebServerOptions {
  port: number;
  host: string;
  service: WebService;
  /** The built renderer; defaults to dist/renderer in Ferry's install folder. */
  staticDir?: string;
  /** Fixed token (tests); by default a fresh random one per start. */
  token?: string;
}

export interface WebServer {
  /** The URL to open, token included. */
  url: string;
  port: number;
  token: string;
  close(): Promise<void>;
}

export const WS_PATH = '/api/ws';
/** Close codes in the application range (4000-4999), mirrored in the renderer's client. */
export const CLOSE_UNAUTHORIZED = 4401;
const MAX_FRAME_BYTES = 1024 * 1024;
/** A client that stops reading must not make the server buffer without end: samples are dropped first. */
const MAX_BUFFERED_BYTES = 8 * 1024 * 1024;
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

const LOOPBACK_NAMES = new Set(['127.0.0.1', 'localhost', '[::1]', '::1']);

function isLoopback(host: string): boolean {
  return LOOPBACK_NAMES.has(host) || host.startsWith('127.');
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
  const token = opts.token ?? crypto.randomBytes(24).toString('base64url'); // 192 bits
  const staticDir = path.resolve(opts.staticDir ?? path.join(packageRoot(), 'dist', 'renderer'));
  const loopbackOnly = isLoopback(opts.host);

  /** With a loopback binding, only loopback Host headers: a DNS-rebinding page must not reach us. */
  const hostAllowed = (hostHeader: string | undefined): boolean => {
    if (!hostHeader) return false;
    if (!loopbackOnly) return true;
    const name = hostHeader.replace(/:\d+$/, '');
    return isLoopback(name);
  };
  /** Browsers always send Origin on a WebSocket; it must be the page's own (the Host it talks to). */
  const originAllowed = (origin: string | undefined, hostHeader: string | undefined): boolean => {
    if (origin === undefined) return true; // not a browser (scripts, tests): the token still applies
    return (
      hostHeader !== undefined && (origin === `http://${hostHeader}` || origin === `https://${hostHeader}`)
    );
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

  const server = http.createServer((req, res) => {
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
  });

  const wss = new WebSocketServer({ noServer: true, maxPayload: MAX_FRAME_BYTES });
  const alive = new WeakMap<WebSocket, boolean>();

  server.on('upgrade', (req, socket, head) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    if (url.pathname !== WS_PATH) return refuseUpgrade(socket, 404, 'not found');
    if (!hostAllowed(req.headers.host)) return refuseUpgrade(socket, 403, 'host not allowed');
    if (!originAllowed(req.headers.origin, req.headers.host)) {
      return refuseUpgrade(socket, 403, `origin ${req.headers.origin ?? ''} not allowed`);
    }
    const authorized = tokenMatches(requestToken(req, url), token);
    wss.handleUpgrade(req, socket, head, (ws) => {
      // A browser cannot read the status of a refused handshake, so the refusal is a close with a reason
      // the console can show. Nothing is read from or sent to an unauthorized socket before that.
      if (!authorized) return ws.close(CLOSE_UNAUTHORIZED, 'missing or wrong access token');
      serveSocket(ws);
    });
  });

  const serveSocket = (ws: WebSocket): void => {
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
      if (isBinary) return ws.close(1003, 'frames are JSON text');
      let raw: unknown;
      try {
        raw = JSON.parse(data.toString());
      } catch {
        return ws.close(1007, 'a frame is not JSON');
      }
      const parsed = WsRequestSchema.safeParse(raw);
      if (!parsed.success) {
        const id = (raw as { id?: unknown } | null)?.id;
        if (typeof id === 'number' && Number.isInteger(id)) {
          return sendFrame({
            id,
            ok: false,
            error: { code: 'bad-input', message: 'a request frame is { id, method, input }' },
          });
        }
        return ws.close(1008, 'malformed request frame');
      }
      const { id, method, input } = parsed.data;
      opts.service.call(method, input).then(
        (result) => sendFrame({ id, ok: true, result: result ?? null }),
        (err: unknown) => sendFrame({ id, ok: false, error: toApiError(err) }),
      );
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
  const url = `http://${urlHost(opts.host)}:${port}/?token=${token}`;

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
