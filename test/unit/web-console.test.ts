// The web mode's console WebSockets (engine/web/server.ts, "Connect…") against a stub engine: the same
// token, Host, Origin checks and connection limit as /api/ws, raw bytes in binary frames both ways,
// the `binary` subprotocol, and each refusal or end as its close code. Real QEMU behind them:
// test/integration/console.test.ts.
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { FerryError } from '../../engine/api/index.js';
import { ConsoleStream } from '../../engine/service/console.js';
import { closeReason, startWebServer, type WebServer, type WebService } from '../../engine/web/server.js';

class StubConsoles implements WebService {
  readonly requests: unknown[] = [];
  readonly streams: { stream: ConsoleStream; written: Buffer[]; closed: boolean }[] = [];
  async call(): Promise<unknown> {
    return null;
  }
  subscribe(): () => void {
    return () => undefined;
  }
  async openConsole(request: unknown): Promise<ConsoleStream> {
    this.requests.push(request);
    const { vm, kind } = request as { vm: string; kind: 'serial' | 'vnc' };
    if (vm === 'ghost') throw new FerryError('unknown-vm', 'no VM named "ghost" on any host');
    if (vm === 'flat') throw new FerryError('no-display', 'VM "flat" has no display');
    if (vm === 'off') throw new FerryError('vm-not-running', 'VM "off" is not running on lab1');
    if (vm === 'slow') await new Promise((r) => setTimeout(r, 200));
    const entry = { stream: null as unknown as ConsoleStream, written: [] as Buffer[], closed: false };
    entry.stream = new ConsoleStream(vm, 'lab1', kind, {
      write: (b) => entry.written.push(b),
      close: () => (entry.closed = true),
    });
    this.streams.push(entry);
    if (kind === 'vnc') setTimeout(() => entry.stream.push(Buffer.from('RFB 003.008\n')), 10);
    return entry.stream;
  }
}

let service: StubConsoles;
let server: WebServer;
const sockets: WebSocket[] = [];

async function start(limit = 8): Promise<void> {
  service = new StubConsoles();
  server = await startWebServer({
    port: 0,
    host: '127.0.0.1',
    service,
    staticDir: '/nonexistent',
    limits: { connectionsPerClient: limit },
  });
}

afterEach(async () => {
  for (const ws of sockets.splice(0)) ws.terminate();
  await server?.close();
});

function open(
  kind: string,
  query: string,
  opts: { protocols?: string[]; headers?: Record<string, string> } = {},
): WebSocket {
  const ws = new WebSocket(`ws://127.0.0.1:${server.port}/api/console/${kind}?${query}`, opts.protocols, {
    headers: opts.headers ?? {},
  });
  ws.on('error', () => undefined);
  sockets.push(ws);
  return ws;
}
const closed = (ws: WebSocket): Promise<{ code: number; reason: string }> =>
  new Promise((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));
const message = (ws: WebSocket): Promise<{ data: Buffer; binary: boolean }> =>
  new Promise((resolve) => ws.once('message', (data: Buffer, binary) => resolve({ data, binary })));
const q = (vm: string): string => `vm=${vm}&token=${server.token}`;

describe('console WebSockets', () => {
  it('carry raw bytes both ways in binary frames, with the binary subprotocol when offered', async () => {
    await start();
    const ws = open('vnc', q('web1'), { protocols: ['binary'] });
    const first = await message(ws);
    expect(first).toEqual({ data: Buffer.from('RFB 003.008\n'), binary: true });
    expect(ws.protocol).toBe('binary');
    ws.send(Buffer.from('RFB 003.008\n'));
    await expect.poll(() => service.streams[0]!.written).toEqual([Buffer.from('RFB 003.008\n')]);
    expect(service.requests).toEqual([{ vm: 'web1', kind: 'vnc' }]);
    ws.close();
    await expect.poll(() => service.streams[0]!.closed).toBe(true);
  });

  it('keep what a client sends before the console is open, and take text on serial', async () => {
    await start();
    const ws = open('serial', `${q('slow')}&host=lab2`);
    await new Promise((r) => ws.once('open', r));
    expect(ws.protocol).toBe('');
    ws.send(Buffer.from('a'));
    ws.send('b');
    await expect.poll(() => service.streams[0]?.written.map(String).join('')).toBe('ab');
    expect(service.requests).toEqual([{ vm: 'slow', kind: 'serial', host: 'lab2' }]);
  });

  it('close with 4410 vm-gone when the VM goes away', async () => {
    await start();
    const ws = open('serial', q('web1'));
    await new Promise((r) => ws.once('open', r));
    await expect.poll(() => service.streams.length).toBe(1);
    service.streams[0]!.stream.finish({ code: 'vm-gone', message: 'VM "web1" is no longer running' });
    expect(await closed(ws)).toEqual({ code: 4410, reason: 'vm-gone' });
  });

  it('refuse without the token, from another origin or Host, and with a code per refusal', async () => {
    await start();
    expect(await closed(open('serial', 'vm=web1'))).toEqual({
      code: 4401,
      reason: 'missing or wrong access token',
    });
    const status = (ws: WebSocket): Promise<number> =>
      new Promise((resolve) => ws.once('unexpected-response', (_q, res) => resolve(res.statusCode ?? 0)));
    expect(await status(open('vnc', q('web1'), { headers: { Origin: 'https://evil.example' } }))).toBe(403);
    expect(await status(open('vnc', q('web1'), { headers: { Host: `evil.example:${server.port}` } }))).toBe(
      403,
    );
    expect(await status(open('shell', q('web1')))).toBe(404);
    expect(await closed(open('serial', q('ghost')))).toEqual({
      code: 4404,
      reason: 'no VM named "ghost" on any host',
    });
    expect(await closed(open('vnc', q('flat')))).toEqual({ code: 4409, reason: 'VM "flat" has no display' });
    expect((await closed(open('serial', q('off')))).code).toBe(4412);
    expect(service.streams).toHaveLength(0);
  });

  it('refuse text frames on the screen, and count against the per-client connection limit', async () => {
    await start(2);
    const a = open('vnc', q('web1'));
    await message(a);
    a.send('hello');
    expect((await closed(a)).code).toBe(1003);
    const b = open('serial', q('web1'));
    const c = open('serial', q('web1'));
    await Promise.all([b, c].map((ws) => new Promise((r) => ws.once('open', r))));
    expect((await closed(open('serial', q('web1')))).code).toBe(4429);
  });

  it('cut a close reason to the 123 bytes a close frame holds', () => {
    expect(closeReason('short')).toBe('short');
    const long = closeReason('é'.repeat(100));
    expect(Buffer.byteLength(long)).toBeLessThanOrEqual(123);
    expect(long.endsWith('…')).toBe(true);
  });
});
