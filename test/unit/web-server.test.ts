// The web mode's server (engine/web/server.ts) against a stub engine: the token, the Origin and Host
// checks, frame validation, events, static files. The real engine behind it is covered by test/e2e.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { FerryError, type ServerEvent } from '../../engine/api/index.js';
import {
  isLoopback,
  startWebServer,
  webTls,
  type WebLimits,
  type WebServer,
  type WebService,
} from '../../engine/web/server.js';

class StubService implements WebService {
  readonly calls: { method: string; input: unknown }[] = [];
  private readonly listeners = new Set<(e: ServerEvent) => void>();

  /** Calls of `slow` wait here until the test lets them go. */
  readonly held: (() => void)[] = [];

  async call(method: string, input: unknown): Promise<unknown> {
    this.calls.push({ method, input });
    if (method === 'slow') return new Promise((resolve) => this.held.push(() => resolve('done')));
    if (method === 'listHosts') return [];
    if (method === 'vmInfo') throw new FerryError('unknown-vm', 'no VM named "x"', 'see: ferry vm list');
    return { echoed: method };
  }

  subscribe(listener: (e: ServerEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  push(e: ServerEvent): void {
    for (const l of this.listeners) l(e);
  }

  get listenerCount(): number {
    return this.listeners.size;
  }
}

let staticDir: string;
let service: StubService;
let server: WebServer;
const sockets: WebSocket[] = [];

beforeAll(() => {
  staticDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-web-static-'));
  fs.mkdirSync(path.join(staticDir, 'assets'));
  fs.writeFileSync(path.join(staticDir, 'index.html'), '<!doctype html><title>Ferry</title>');
  fs.writeFileSync(path.join(staticDir, 'assets', 'app.js'), 'console.log(1)');
  fs.writeFileSync(path.join(path.dirname(staticDir), 'ferry-secret.txt'), 'secret');
});

afterAll(() => {
  fs.rmSync(staticDir, { recursive: true, force: true });
});

async function start(limits?: Partial<WebLimits>): Promise<void> {
  service = new StubService();
  server = await startWebServer({ port: 0, host: '127.0.0.1', service, staticDir, limits });
}

afterEach(async () => {
  for (const ws of sockets.splice(0)) ws.terminate();
  await server?.close();
});

interface HttpAnswer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** A raw request, so paths reach the server exactly as written (no client-side normalising). */
function get(rawPath: string, headers: Record<string, string> = {}): Promise<HttpAnswer> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: server.port, path: rawPath, headers }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

function wsUrl(token: string | null = server.token): string {
  return `ws://127.0.0.1:${server.port}/api/ws${token === null ? '' : `?token=${encodeURIComponent(token)}`}`;
}

function open(url = wsUrl(), headers: Record<string, string> = {}): WebSocket {
  const ws = new WebSocket(url, { headers });
  ws.on('error', () => undefined); // refusals are asserted through 'unexpected-response' and 'close'
  sockets.push(ws);
  return ws;
}

function opened(ws: WebSocket): Promise<void> {
  return new Promise((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('unexpected-response', (_req, res) => reject(new Error(`refused with ${res.statusCode}`)));
  });
}

function closed(ws: WebSocket): Promise<{ code: number; reason: string }> {
  return new Promise((resolve) =>
    ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })),
  );
}

function refusedWith(ws: WebSocket): Promise<number> {
  return new Promise((resolve) =>
    ws.once('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0)),
  );
}

/** The next `n` frames, parsed. */
function frames(ws: WebSocket, n: number): Promise<unknown[]> {
  return new Promise((resolve) => {
    const got: unknown[] = [];
    const on = (data: WebSocket.RawData): void => {
      got.push(JSON.parse(data.toString()));
      if (got.length === n) {
        ws.off('message', on);
        resolve(got);
      }
    };
    ws.on('message', on);
  });
}

describe('startWebServer', () => {
  it('prints a loopback URL with a fresh random token of 192 bits', async () => {
    await start();
    const first = server.token;
    expect(server.url).toBe(`http://127.0.0.1:${server.port}/?token=${first}`);
    expect(first).toMatch(/^[A-Za-z0-9_-]{32}$/);
    await server.close();
    await start();
    expect(server.token).not.toBe(first);
  });

  it('serves the built console with a strict CSP and no Referer', async () => {
    await start();
    const index = await get(`/?token=${server.token}`);
    expect(index.status).toBe(200);
    expect(index.body).toContain('<title>Ferry</title>');
    expect(index.headers['content-type']).toMatch(/^text\/html/);
    expect(index.headers['content-security-policy']).toContain("frame-ancestors 'none'");
    expect(index.headers['content-security-policy']).toContain("script-src 'self'");
    expect(index.headers['referrer-policy']).toBe('no-referrer');
    const js = await get('/assets/app.js');
    expect(js.status).toBe(200);
    expect(js.headers['content-type']).toMatch(/^text\/javascript/);
  });

  it('never serves a file outside the renderer folder', async () => {
    await start();
    for (const p of [
      '/../ferry-secret.txt',
      '/%2e%2e/ferry-secret.txt',
      '/assets/..%2f..%2fferry-secret.txt',
    ]) {
      const r = await get(p);
      expect(r.status, p).toBe(404);
      expect(r.body).not.toContain('secret');
    }
    expect((await get('/missing.js')).status).toBe(404);
  });

  it('refuses API requests without the right token (401)', async () => {
    await start();
    expect((await get('/api/status')).status).toBe(401);
    expect((await get('/api/status?token=wrong')).status).toBe(401);
    expect((await get(`/api/status?token=${server.token}x`)).status).toBe(401);
    const ok = await get(`/api/status?token=${server.token}`);
    expect(ok.status).toBe(200);
    expect(JSON.parse(ok.body)).toEqual({ ok: true });
    expect((await get('/api/status', { Authorization: `token ${server.token}` })).status).toBe(200);
  });

  it('closes a WebSocket without the right token with a reason, before reading anything', async () => {
    await start();
    for (const token of [null, 'wrong']) {
      const ws = open(wsUrl(token));
      ws.on('open', () => ws.send(JSON.stringify({ id: 1, method: 'listHosts', input: {} })));
      expect(await closed(ws)).toEqual({ code: 4401, reason: 'missing or wrong access token' });
    }
    expect(service.calls).toEqual([]);
    expect(service.listenerCount).toBe(0);
  });

  it('refuses a WebSocket from another origin or through a foreign Host name (403)', async () => {
    await start();
    expect(await refusedWith(open(wsUrl(), { Origin: 'https://evil.example' }))).toBe(403);
    expect(await refusedWith(open(wsUrl(), { Origin: 'http://localhost:1' }))).toBe(403);
    // A DNS-rebinding page reaches 127.0.0.1 under its own name.
    expect(await refusedWith(open(wsUrl(), { Host: `evil.example:${server.port}` }))).toBe(403);
    const same = open(wsUrl(), { Origin: `http://127.0.0.1:${server.port}` });
    await opened(same);
  });

  it('answers calls by id, with results or the contract error shape', async () => {
    await start();
    const ws = open();
    await opened(ws);
    const answers = frames(ws, 2);
    ws.send(JSON.stringify({ id: 7, method: 'listHosts', input: {} }));
    ws.send(JSON.stringify({ id: 8, method: 'vmInfo', input: { name: 'x' } }));
    const got = await answers;
    expect(got).toContainEqual({ id: 7, ok: true, result: [] });
    expect(got).toContainEqual({
      id: 8,
      ok: false,
      error: { code: 'unknown-vm', message: 'no VM named "x"', hint: 'see: ferry vm list' },
    });
    expect(service.calls).toEqual([
      { method: 'listHosts', input: {} },
      { method: 'vmInfo', input: { name: 'x' } },
    ]);
  });

  it('validates every frame: a wrong shape is refused, garbage closes the socket', async () => {
    await start();
    const ws = open();
    await opened(ws);
    const answer = frames(ws, 1);
    ws.send(JSON.stringify({ id: 3, method: 'listHosts', input: {}, extra: true }));
    expect(await answer).toEqual([
      { id: 3, ok: false, error: { code: 'bad-input', message: 'a request frame is { id, method, input }' } },
    ]);
    const noId = open();
    await opened(noId);
    noId.send(JSON.stringify({ method: 'listHosts' }));
    expect((await closed(noId)).code).toBe(1008);
    const garbage = open();
    await opened(garbage);
    garbage.send('{not json');
    expect((await closed(garbage)).code).toBe(1007);
    expect(service.calls).toEqual([]);
  });

  it('pushes engine events to every connected client, and stops when they leave', async () => {
    await start();
    const a = open();
    const b = open();
    await Promise.all([opened(a), opened(b)]);
    const fa = frames(a, 1);
    const fb = frames(b, 1);
    service.push({ kind: 'inventory-changed' });
    expect(await fa).toEqual([{ event: { kind: 'inventory-changed' } }]);
    expect(await fb).toEqual([{ event: { kind: 'inventory-changed' } }]);
    a.close();
    await closed(a);
    await expect.poll(() => service.listenerCount).toBe(1);
  });

  it('closes its clients when stopped', async () => {
    await start();
    const ws = open();
    await opened(ws);
    const done = closed(ws);
    await server.close();
    expect((await done).code).toBe(1001);
  });

  it('accepts only loopback addresses and localhost, with the served port, as the Host', async () => {
    await start();
    const status = async (host: string): Promise<number> =>
      (await get(`/api/status?token=${server.token}`, { Host: host })).status;
    for (const host of [`127.0.0.1:${server.port}`, `localhost:${server.port}`, `127.0.0.2:${server.port}`])
      expect(await status(host), host).toBe(200);
    for (const host of [
      `127.evil.com:${server.port}`, // a name that merely starts like a loopback address
      `127.0.0.1.evil.com:${server.port}`,
      `localhost.evil.com:${server.port}`,
      `127.0.0.1:${server.port + 1}`, // another port: another server's page
      '127.0.0.1',
      `evil.example:${server.port}`,
      `[::1]x:${server.port}`,
    ])
      expect(await status(host), host).toBe(403);
    expect(await refusedWith(open(wsUrl(), { Host: `127.evil.com:${server.port}` }))).toBe(403);
    expect(isLoopback('::1')).toBe(true);
    expect(isLoopback('[::1]')).toBe(true);
    expect(isLoopback('127.1.2.3')).toBe(true);
    expect(isLoopback('127.evil.com')).toBe(false);
    expect(isLoopback('0.0.0.0')).toBe(false);
    expect(isLoopback('::')).toBe(false);
  });

  it('refuses to listen beyond loopback without TLS', async () => {
    const stub = new StubService();
    for (const host of ['0.0.0.0', '::', '192.0.2.1']) {
      await expect(startWebServer({ port: 0, host, service: stub, staticDir })).rejects.toMatchObject({
        code: 'bad-input',
        message: expect.stringMatching(
          /not a loopback address: serving the console beyond this machine needs TLS/,
        ),
      });
      await expect(webTls(host, undefined, undefined)).rejects.toMatchObject({ code: 'bad-input' });
    }
    await expect(webTls('0.0.0.0', '/nonexistent/cert.pem', undefined)).rejects.toMatchObject({
      code: 'bad-input',
      message: expect.stringMatching(/go together/),
    });
    expect(await webTls('127.0.0.1', undefined, undefined)).toBeNull();
    expect(stub.listenerCount).toBe(0);
  });

  it('serves https and wss beyond loopback with --tls-cert and --tls-key', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-web-tls-'));
    try {
      const [cert, key] = [path.join(dir, 'cert.pem'), path.join(dir, 'key.pem')];
      execFileSync(
        'openssl',
        [
          'req',
          '-x509',
          '-newkey',
          'rsa:2048',
          '-nodes',
          '-days',
          '1',
          '-subj',
          '/CN=localhost',
          '-keyout',
          key,
          '-out',
          cert,
        ],
        { stdio: 'ignore' },
      );
      service = new StubService();
      server = await startWebServer({
        port: 0,
        host: '0.0.0.0',
        service,
        staticDir,
        tls: (await webTls('0.0.0.0', cert, key))!,
      });
      expect(server.url).toBe(`https://127.0.0.1:${server.port}/?token=${server.token}`);
      const status = await new Promise<number>((resolve, reject) => {
        https
          .get(
            {
              host: '127.0.0.1',
              port: server.port,
              path: `/api/status?token=${server.token}`,
              rejectUnauthorized: false,
            },
            (res) => {
              res.resume();
              resolve(res.statusCode ?? 0);
            },
          )
          .on('error', reject);
      });
      expect(status).toBe(200);
      const ws = new WebSocket(`wss://127.0.0.1:${server.port}/api/ws?token=${server.token}`, {
        rejectUnauthorized: false,
        headers: { Origin: `https://127.0.0.1:${server.port}` },
      });
      sockets.push(ws);
      await opened(ws);
      const answer = frames(ws, 1);
      ws.send(JSON.stringify({ id: 1, method: 'listHosts', input: {} }));
      expect(await answer).toEqual([{ id: 1, ok: true, result: [] }]);
      // A page served over https cannot be driven from a plain-http origin.
      expect(
        await refusedWith(
          (() => {
            const w = new WebSocket(`wss://127.0.0.1:${server.port}/api/ws?token=${server.token}`, {
              rejectUnauthorized: false,
              headers: { Origin: `http://127.0.0.1:${server.port}` },
            });
            w.on('error', () => undefined);
            sockets.push(w);
            return w;
          })(),
        ),
      ).toBe(403);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('bounds the connections of one client and the calls in flight on one connection', async () => {
    await start({ connectionsPerClient: 2, callsInFlight: 2 });
    const [a, b] = [open(), open()];
    await Promise.all([opened(a), opened(b)]);
    const third = open();
    expect(await closed(third)).toEqual({
      code: 4429,
      reason: 'rate-limited: this client already holds 2 connections (at most 2)',
    });
    // One leaves: the next may come in.
    a.close();
    await closed(a);
    const again = open();
    await opened(again);

    const answers = frames(b, 1);
    for (const id of [1, 2, 3]) b.send(JSON.stringify({ id, method: 'slow', input: {} }));
    expect(await answers).toEqual([
      {
        id: 3,
        ok: false,
        error: {
          code: 'rate-limited',
          message: 'too many calls in flight on this connection (at most 2): wait for answers',
        },
      },
    ]);
    // Once answered, calls are accepted again.
    const done = frames(b, 3);
    for (const release of service.held.splice(0)) release();
    b.send(JSON.stringify({ id: 4, method: 'listHosts', input: {} }));
    expect(await done).toEqual(
      expect.arrayContaining([
        { id: 1, ok: true, result: 'done' },
        { id: 2, ok: true, result: 'done' },
        { id: 4, ok: true, result: [] },
      ]),
    );
  });

  it('refuses garbage frames as bad-input, closing only that socket', async () => {
    await start();
    const ws = open();
    await opened(ws);
    ws.send('{not json');
    expect(await closed(ws)).toEqual({ code: 1007, reason: 'bad-input: a frame is not JSON' });
    const huge = open();
    await opened(huge);
    huge.send(JSON.stringify({ id: 2 ** 60, method: 'listHosts' }));
    expect((await closed(huge)).reason).toMatch(/^bad-input: /);
    const next = open();
    await opened(next);
    const answer = frames(next, 1);
    next.send(JSON.stringify({ id: 1, method: 'listHosts', input: {} }));
    expect(await answer).toEqual([{ id: 1, ok: true, result: [] }]);
  });
});
