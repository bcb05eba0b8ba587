// "Connect…" on Ferry's own hosts (issue 12), with real QEMU and the lab guest, through the web mode's
// console WebSockets: the serial console both ways (the guest echoes a typed key) while serial.log and
// `ferry vm serial` still get everything, the screen's RFB greeting from QEMU's VNC server, the
// refusals, and a console that ends with `vm-gone` when its VM moves (then connects on the destination).
import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { VmConfigSchema, type ConsoleInfo } from '../../engine/api/index.js';
import { Inventory } from '../../engine/host/inventory.js';
import { labGuestHealthy, parseLabGuestSerial } from '../../engine/host/lab-guest.js';
import { writeJsonAtomic } from '../../engine/host/store.js';
import { MigrationManager } from '../../engine/migration/manager.js';
import { ApiService } from '../../engine/service/api-service.js';
import { startWebServer, type WebServer } from '../../engine/web/server.js';
import { ferry, tempHome, waitFor, waitForPasses } from '../helpers.js';

let home: string;
let inv: Inventory;
let service: ApiService;
let server: WebServer;
const open: WebSocket[] = [];

beforeAll(async () => {
  home = tempHome('console');
  inv = new Inventory(home);
  await inv.labUp(2);
  await inv.createVm({
    name: 'con',
    host: 'lab1',
    memoryMiB: 64,
    labGuest: { workingSetMiB: 4, dirtyRateMiBs: 40 },
  });
  // A VM defined before Ferry had consoles: its configuration names no display.
  await inv.createVm({
    name: 'old',
    host: 'lab1',
    memoryMiB: 64,
    labGuest: { workingSetMiB: 4, dirtyRateMiBs: 40 },
  });
  const lab1 = await inv.host('lab1');
  const { display: _display, ...old } = await lab1.vmConfig('old');
  await writeJsonAtomic((await lab1.vmInfo('old')).configPath, VmConfigSchema.parse(old));
  await lab1.startVm('con');
  service = new ApiService(inv, { role: 'client' });
  server = await startWebServer({ port: 0, host: '127.0.0.1', service, staticDir: '/nonexistent' });
});

afterAll(async () => {
  for (const ws of open) ws.terminate();
  await server?.close();
  await service?.dispose();
  await inv.labDown().catch(() => undefined);
});

interface Viewer {
  ws: WebSocket;
  /** Everything received, as latin1 text (RFB is binary; the serial console is ASCII here). */
  text: () => string;
  closed: Promise<{ code: number; reason: string }>;
}

function viewer(kind: 'serial' | 'vnc', query: string, protocols?: string[]): Viewer {
  const ws = new WebSocket(`ws://127.0.0.1:${server.port}/api/console/${kind}?${query}`, protocols);
  open.push(ws);
  const chunks: Buffer[] = [];
  ws.on('message', (d: Buffer, isBinary) => {
    expect(isBinary).toBe(true);
    chunks.push(d);
  });
  const closed = new Promise<{ code: number; reason: string }>((resolve) =>
    ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })),
  );
  return { ws, text: () => Buffer.concat(chunks).toString('latin1'), closed };
}

const q = (vm: string, extra = ''): string => `vm=${vm}&token=${server.token}${extra}`;

const received = (v: Viewer, what: RegExp, timeoutMs = 20_000): Promise<string> =>
  waitFor(`${what} on the console`, async () => (what.test(v.text()) ? v.text() : null), timeoutMs, 50);

describe('the serial console', () => {
  it('streams the guest output, takes keys (echoed by the guest), and serial.log still gets it all', async () => {
    await waitForPasses(inv, 'con', 2);
    const info = (await service.call('consoleInfo', { name: 'con' })) as ConsoleInfo;
    expect(info).toMatchObject({ host: 'lab1', vm: 'con', running: true, display: 'vga', serial: true });
    expect(info.reason).toBeUndefined();
    expect(info.serialLog).toMatch(/^FERRY-GUEST boot ws=4 rate=40 mem=64\n/);

    const a = viewer('serial', q('con'));
    const b = viewer('serial', q('con', '&host=lab1')); // a second viewer shares the serial port
    await received(a, /FERRY-GUEST hb pass=\d+/);
    a.ws.send(Buffer.from('q'));
    await received(a, /FERRY-GUEST key 0x71 q\n/);
    await received(b, /FERRY-GUEST key 0x71 q\n/);
    b.ws.send(Buffer.from('\r'));
    await received(a, /FERRY-GUEST key 0x0d\n/);
    a.ws.close();
    b.ws.close();

    // Everything the guest wrote reached its log too, echoes as lines of their own that leave the
    // heartbeats whole, and keeps reaching it with no console connected.
    const log = (await inv.locate('con').then((h) => h.vmInfo('con'))).serialLogPath;
    const before = parseLabGuestSerial(fs.readFileSync(log, 'utf8'));
    expect(fs.readFileSync(log, 'utf8')).toMatch(/\nFERRY-GUEST key 0x71 q\nFERRY-GUEST key 0x0d\n/);
    expect(labGuestHealthy(before)).toBe(true);
    const after = await waitForPasses(inv, 'con', before.heartbeats.at(-1)!.pass + 2);
    expect(after.boots).toBe(1);
    const cli = await ferry(home, ['vm', 'serial', 'con']);
    expect(cli.code).toBe(0);
    expect(cli.stdout).toContain('FERRY-GUEST key 0x71 q\n');
  });
});

describe('the screen', () => {
  it("answers with QEMU's RFB greeting, raw, in binary frames (subprotocol binary accepted)", async () => {
    const v = viewer('vnc', q('con'), ['binary']);
    await new Promise((resolve) => v.ws.once('open', resolve));
    expect(v.ws.protocol).toBe('binary');
    await received(v, /^RFB 003\.008\n/);
    v.ws.close();
  });
});

describe('refusals', () => {
  it('without the token, for an unknown VM, a VM without a display, a VM that is off', async () => {
    const noToken = viewer('serial', 'vm=con');
    expect(await noToken.closed).toEqual({ code: 4401, reason: 'missing or wrong access token' });
    expect(noToken.text()).toBe('');
    expect((await viewer('vnc', `vm=con&token=x${server.token}`).closed).code).toBe(4401);
    expect(await viewer('serial', q('ghost')).closed).toMatchObject({ code: 4404 });
    const noDisplay = await viewer('vnc', q('old')).closed;
    expect(noDisplay.code).toBe(4409);
    expect(noDisplay.reason).toMatch(/^VM "old" has no display/);
    expect((await viewer('serial', q('old')).closed).code).toBe(4412);
    expect((await viewer('serial', q('con', '&host=lab2')).closed).code).toBe(4404);
    expect(await service.call('consoleInfo', { name: 'old' })).toMatchObject({
      host: 'lab1',
      running: false,
      display: 'none',
      serialLog: '',
      reason: 'VM "old" is stopped on lab1: start it to connect',
    });
  });

  it('a running VM without a display: no screen (4409), its serial console works', async () => {
    const lab1 = await inv.host('lab1');
    await lab1.startVm('old');
    expect((await viewer('vnc', q('old')).closed).code).toBe(4409);
    const serial = viewer('serial', q('old'));
    await received(serial, /FERRY-GUEST hb/);
    serial.ws.close();
    expect(await service.call('consoleInfo', { name: 'old' })).toMatchObject({
      running: true,
      display: 'none',
      reason: 'VM "old" has no display: only its serial console can be shown',
    });
    // A QEMU started before Ferry had consoles (its runtime record names no serial socket) says why.
    const rtFile = (await lab1.vmInfo('old')).configPath.replace(/vm\.json$/, 'runtime.json');
    const rt = JSON.parse(fs.readFileSync(rtFile, 'utf8')) as Record<string, unknown>;
    await writeJsonAtomic(rtFile, { ...rt, serialSocket: null });
    const refused = await viewer('serial', q('old')).closed;
    expect(refused.code).toBe(4405);
    expect(refused.reason).toMatch(/^VM "old" was started before Ferry could connect to serial ports/);
    await lab1.stopVm('old', { force: true, timeoutMs: 0 });
  });
});

describe('across a move', () => {
  it('ends the consoles with vm-gone when the VM leaves; they connect again on the destination', async () => {
    const serial = viewer('serial', q('con'));
    const screen = viewer('vnc', q('con'));
    await received(serial, /FERRY-GUEST hb/);
    await received(screen, /^RFB 003\.008\n/);
    const s = await (await new MigrationManager(inv).start({ vm: 'con', to: 'lab2' })).done;
    expect(s.status, s.reason ?? '').toBe('completed');
    expect(await serial.closed).toEqual({ code: 4410, reason: 'vm-gone' });
    expect(await screen.closed).toEqual({ code: 4410, reason: 'vm-gone' });

    const info = (await service.call('consoleInfo', { name: 'con' })) as ConsoleInfo;
    expect(info).toMatchObject({ host: 'lab2', running: true, display: 'vga' });
    const again = viewer('serial', q('con'));
    again.ws.once('open', () => again.ws.send(Buffer.from('m')));
    await received(again, /FERRY-GUEST key 0x6d m\n/);
    const screen2 = viewer('vnc', q('con'));
    await received(screen2, /^RFB 003\.008\n/);
    expect(labGuestHealthy(parseLabGuestSerial(info.serialLog + again.text()))).toBe(true);

    // Turned off with a console open: vm-gone too.
    await (await inv.host('lab2')).stopVm('con', { force: true, timeoutMs: 0 });
    expect(await again.closed).toEqual({ code: 4410, reason: 'vm-gone' });
    expect(await screen2.closed).toEqual({ code: 4410, reason: 'vm-gone' });
  });
});
