// LibvirtClient against a fake libvirtd on a unix socket: opening sequence, serials, keepalive, errors,
// events and a lost connection.
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { FerryError } from '../../engine/api/index.js';
import { LibvirtClient, LibvirtError, type LibvirtEvent } from '../../engine/libvirt/client.js';
import {
  encodePacket,
  encodeRemoteError,
  KEEPALIVE_PROGRAM,
  type Packet,
  PacketDecoder,
  Proc,
  REMOTE_PROGRAM,
  writeDomain,
} from '../../engine/libvirt/protocol.js';
import { XdrWriter } from '../../engine/libvirt/xdr.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-lv-client-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

type Handler = (p: Packet, s: FakeSession) => boolean | void;

class FakeSession {
  readonly received: Packet[] = [];
  constructor(readonly sock: net.Socket) {}
  reply(p: Packet, payload: Buffer = Buffer.alloc(0), status = 0): void {
    this.sock.write(
      encodePacket({ prog: p.prog, vers: 1, proc: p.proc, type: 1, serial: p.serial, status }, payload),
    );
  }
  message(prog: number, proc: number, payload: Buffer = Buffer.alloc(0)): void {
    this.sock.write(encodePacket({ prog, vers: 1, proc, type: 2, serial: 0, status: 0 }, payload));
  }
}

let servers: net.Server[] = [];
afterEach(() => {
  for (const s of servers) s.close();
  servers = [];
});

let n = 0;
/** A fake daemon: answers the opening calls like libvirtd 9.0 (auth none, every feature supported). */
async function fakeDaemon(
  handler: Handler = () => false,
  opts: { auth?: number[] } = {},
): Promise<{ uri: string; sessions: FakeSession[] }> {
  const sock = path.join(tmp, `s${n++}.sock`);
  const sessions: FakeSession[] = [];
  const server = net.createServer((c) => {
    const s = new FakeSession(c);
    sessions.push(s);
    const dec = new PacketDecoder();
    c.on('error', () => undefined);
    c.on('data', (d) => {
      for (const p of dec.push(d)) {
        s.received.push(p);
        if (handler(p, s)) continue;
        if (p.prog !== REMOTE_PROGRAM) continue;
        if (p.proc === Proc.AUTH_LIST) {
          const w = new XdrWriter().array(opts.auth ?? [0], 20, (x, v) => x.int(v));
          s.reply(p, w.toBuffer());
        } else if (p.proc === Proc.CONNECT_SUPPORTS_FEATURE) s.reply(p, new XdrWriter().int(1).toBuffer());
        else if (p.proc === Proc.CONNECT_OPEN || p.proc === Proc.CONNECT_CLOSE) s.reply(p);
        else if (p.proc === Proc.CONNECT_GET_HOSTNAME)
          s.reply(p, new XdrWriter().string('fakehost').toBuffer());
      }
    });
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(sock, r));
  return { uri: `qemu:///system?socket=${sock}`, sessions };
}

const hostnameReply = (name: string): Buffer => new XdrWriter().string(name).toBuffer();
const wait = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('LibvirtClient', () => {
  it("opens like libvirt's client: AUTH_LIST, keepalive feature, CONNECT_OPEN, then 6, 13, 7", async () => {
    const d = await fakeDaemon();
    const c = await LibvirtClient.connect({ uri: d.uri });
    const calls = d.sessions[0]!.received.map((p) => p.proc);
    expect(calls).toEqual([66, 60, 1, 60, 60, 60]);
    const open = d.sessions[0]!.received[2]!.payload;
    expect(open.toString('hex')).toBe(
      '00000001' + '0000000e' + Buffer.from('qemu:///system').toString('hex') + '0000' + '00000000',
    );
    const features = d.sessions[0]!.received.filter((p) => p.proc === 60).map((p) =>
      p.payload.readInt32BE(0),
    );
    expect(features).toEqual([10, 6, 13, 7]);
    expect(c.features).toEqual({ migrationV3: true, migrationParams: true, changeProtection: true });
    expect(c.host).toBe('localhost');
    expect(await c.getHostname()).toBe('fakehost');
    await c.close();
    expect(c.closed).toBe(true);
    expect(d.sessions[0]!.received.at(-1)!.proc).toBe(Proc.CONNECT_CLOSE);
  });

  it('matches replies to calls by serial when several are in flight and answered out of order', async () => {
    const held: Packet[] = [];
    const d = await fakeDaemon((p, s) => {
      if (p.proc !== Proc.CONNECT_GET_HOSTNAME) return false;
      held.push(p);
      if (held.length === 3) {
        s.reply(held[2]!, hostnameReply('third'));
        s.reply(held[0]!, hostnameReply('first'));
        s.reply(held[1]!, hostnameReply('second'));
      }
      return true;
    });
    const c = await LibvirtClient.connect({ uri: d.uri });
    const results = await Promise.all([c.getHostname(), c.getHostname(), c.getHostname()]);
    expect(results).toEqual(['first', 'second', 'third']);
    expect(new Set(held.map((p) => p.serial)).size).toBe(3);
    await c.close();
  });

  it('answers a server PING with a PONG (keepalive program, MESSAGE, serial 0)', async () => {
    const d = await fakeDaemon();
    const c = await LibvirtClient.connect({ uri: d.uri });
    const s = d.sessions[0]!;
    s.message(KEEPALIVE_PROGRAM, 1);
    await wait(100);
    const pong = s.received.find((p) => p.prog === KEEPALIVE_PROGRAM);
    expect(pong).toMatchObject({ prog: KEEPALIVE_PROGRAM, vers: 1, proc: 2, type: 2, serial: 0, status: 0 });
    expect(pong!.payload.length).toBe(0);
    await c.close();
  });

  it('PINGs when idle and stays up while the server answers', async () => {
    const d = await fakeDaemon((p, s) => {
      if (p.prog === KEEPALIVE_PROGRAM && p.proc === 1) s.message(KEEPALIVE_PROGRAM, 2);
      return false;
    });
    const c = await LibvirtClient.connect({ uri: d.uri, keepaliveIntervalMs: 100, keepaliveCount: 3 });
    await wait(700);
    expect(c.closed).toBe(false);
    const pings = d.sessions[0]!.received.filter((p) => p.prog === KEEPALIVE_PROGRAM && p.proc === 1);
    expect(pings.length).toBeGreaterThanOrEqual(3);
    expect(pings[0]).toMatchObject({ type: 2, serial: 0 });
    await c.close();
  });

  it('declares the connection lost after keepaliveCount silent intervals, failing pending calls', async () => {
    const d = await fakeDaemon((p) => p.proc === Proc.CONNECT_GET_HOSTNAME || p.prog === KEEPALIVE_PROGRAM);
    const c = await LibvirtClient.connect({ uri: d.uri, keepaliveIntervalMs: 100, keepaliveCount: 3 });
    const closed = new Promise<Error | null>((r) => c.on('close', r));
    const t0 = Date.now();
    const pending = c.getHostname();
    await expect(pending).rejects.toMatchObject({ code: 'host-disconnected' });
    await expect(pending).rejects.toThrow(/lost the connection to localhost: no answer from localhost/);
    const err = await closed;
    expect((err as FerryError).code).toBe('host-disconnected');
    expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(c.closed).toBe(true);
  });

  it('fails every pending call at once when the connection drops', async () => {
    const d = await fakeDaemon((p) => p.proc === Proc.CONNECT_GET_HOSTNAME);
    const c = await LibvirtClient.connect({ uri: d.uri });
    const closed = new Promise<Error | null>((r) => c.on('close', r));
    const calls = [c.getHostname(), c.getLibVersion().catch((e: unknown) => e), c.getHostname()];
    const settled = Promise.allSettled(calls);
    await wait(50);
    d.sessions[0]!.sock.destroy();
    const results = await settled;
    expect(results[0]).toMatchObject({ status: 'rejected', reason: { code: 'host-disconnected' } });
    expect(results[2]).toMatchObject({ status: 'rejected', reason: { code: 'host-disconnected' } });
    expect((results[0] as PromiseRejectedResult).reason.message).toMatch(
      /^lost the connection to localhost: /,
    );
    expect(await closed).toBeInstanceOf(FerryError);
    await expect(c.getHostname()).rejects.toMatchObject({ code: 'host-disconnected' });
  });

  it('turns an error reply into LibvirtError with the full remote_error', async () => {
    const d = await fakeDaemon((p, s) => {
      if (p.proc !== Proc.DOMAIN_LOOKUP_BY_NAME) return false;
      const e = encodeRemoteError({
        code: 42,
        domain: 10,
        message: "Domain not found: no domain with matching name 'x'",
        level: 2,
        dom: null,
        str1: 'x',
        str2: null,
        str3: null,
        int1: 0,
        int2: 0,
        net: null,
      });
      s.reply(p, e, 1);
      return true;
    });
    const c = await LibvirtClient.connect({ uri: d.uri });
    const err = await c.lookupDomainByName('x').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LibvirtError);
    expect(err).toMatchObject({
      code: 'libvirt-error',
      libvirtCode: 42,
      libvirtDomain: 10,
      libvirtMessage: "Domain not found: no domain with matching name 'x'",
      message: "libvirt: Domain not found: no domain with matching name 'x' (code 42)",
    });
    expect((err as LibvirtError).remote.str1).toBe('x');
    await c.close();
  });

  it('routes events, holding back those that race the REGISTER_ANY reply', async () => {
    const dom = { name: 'vm', uuid: '00112233-4455-6677-8899-aabbccddeeff', id: 1 };
    const lifecycle = (cb: number): Buffer => {
      const w = new XdrWriter().int(cb);
      writeDomain(w, dom);
      return w.int(2).int(0).toBuffer();
    };
    const d = await fakeDaemon((p, s) => {
      if (p.proc !== Proc.CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY) return false;
      // The reply and the first event arrive in a single write.
      const reply = encodePacket(
        { prog: REMOTE_PROGRAM, vers: 1, proc: p.proc, type: 1, serial: p.serial, status: 0 },
        new XdrWriter().int(7).toBuffer(),
      );
      const ev = encodePacket(
        {
          prog: REMOTE_PROGRAM,
          vers: 1,
          proc: Proc.DOMAIN_EVENT_CALLBACK_LIFECYCLE,
          type: 2,
          serial: 0,
          status: 0,
        },
        lifecycle(7),
      );
      s.sock.write(Buffer.concat([reply, ev]));
      return true;
    });
    const c = await LibvirtClient.connect({ uri: d.uri });
    const seen: LibvirtEvent[] = [];
    c.on('event', (e) => seen.push(e));
    const id = await c.registerDomainEvent(0, null);
    expect(id).toBe(7);
    await wait(20);
    expect(seen).toEqual([{ kind: 'lifecycle', proc: 318, callbackID: 7, dom, event: 2, detail: 0 }]);
    // An unrouted event keeps its proc number.
    d.sessions[0]!.message(REMOTE_PROGRAM, 330, new XdrWriter().int(7).int(1).toBuffer());
    await wait(50);
    expect(seen[1]).toMatchObject({ kind: 'other', proc: 330, callbackID: 7 });
    await c.close();
  });

  it('refuses a SASL-only daemon with auth-failed', async () => {
    const d = await fakeDaemon(undefined, { auth: [1] });
    await expect(LibvirtClient.connect({ uri: d.uri })).rejects.toMatchObject({
      code: 'auth-failed',
      message: expect.stringMatching(/requires SASL authentication/),
    });
  });

  it('calls AUTH_POLKIT when the daemon asks for polkit', async () => {
    const d = await fakeDaemon(
      (p, s) => {
        if (p.proc !== Proc.AUTH_POLKIT) return false;
        s.reply(p, new XdrWriter().int(1).toBuffer());
        return true;
      },
      { auth: [2] },
    );
    const c = await LibvirtClient.connect({ uri: d.uri });
    expect(d.sessions[0]!.received.map((p) => p.proc).slice(0, 3)).toEqual([66, 70, 60]);
    await c.close();
  });

  it('says libvirt is missing when the peer does not speak RPC or nothing listens', async () => {
    const sock = path.join(tmp, 'garbage.sock');
    const server = net.createServer((c) => c.end('HTTP/1.1 400 Bad Request\r\n\r\n'));
    servers.push(server);
    await new Promise<void>((r) => server.listen(sock, r));
    await expect(LibvirtClient.connect({ uri: `qemu:///system?socket=${sock}` })).rejects.toMatchObject({
      code: 'libvirt-missing',
      message: expect.stringMatching(/not a libvirt RPC stream: packet length \d+ \(bytes "HTTP\/1.1 400/),
    });
    await expect(
      LibvirtClient.connect({ uri: `qemu:///system?socket=${path.join(tmp, 'none.sock')}` }),
    ).rejects.toMatchObject({
      code: 'libvirt-missing',
      message: expect.stringMatching(/no libvirtd listening on/),
    });
  });

  it('times out the opening when the daemon never answers', async () => {
    const d = await fakeDaemon(() => true);
    const t0 = Date.now();
    await expect(LibvirtClient.connect({ uri: d.uri, timeoutMs: 300 })).rejects.toMatchObject({
      code: 'libvirt-missing',
      message: expect.stringMatching(/did not answer within 300 ms/),
    });
    expect(Date.now() - t0).toBeLessThan(2000);
  });

  it('names the missing TLS file and the unreachable host:port', async () => {
    await expect(
      LibvirtClient.connect({ uri: `qemu+tls://127.0.0.1/system?pkipath=${path.join(tmp, 'nopki')}` }),
    ).rejects.toMatchObject({
      code: 'auth-failed',
      message: expect.stringContaining(path.join(tmp, 'nopki', 'cacert.pem')),
    });
    const probe = net.createServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
    const port = (probe.address() as net.AddressInfo).port;
    await new Promise((r) => probe.close(r));
    await expect(LibvirtClient.connect({ uri: `qemu+tcp://127.0.0.1:${port}/system` })).rejects.toMatchObject(
      {
        code: 'host-unreachable',
        message: `connection refused by 127.0.0.1:${port}: nothing listens on that port`,
      },
    );
    await expect(
      LibvirtClient.connect({ uri: 'qemu+tcp://no-such-host.invalid/system' }),
    ).rejects.toMatchObject({
      code: 'host-unreachable',
      message: expect.stringMatching(/cannot resolve host name no-such-host\.invalid/),
    });
  });
});
