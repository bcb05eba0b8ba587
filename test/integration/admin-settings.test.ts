// Least privilege for API clients (issue 11, points 1 and 7) on a real lab: the web token holder and
// the desktop renderer may not change a host's QEMU binary or storage roots (the desktop app asks the
// person at the machine in a main-process dialog), and a new VM's files must lie inside the storage
// roots after resolving symlinks. The administrator's CLI may change the settings, but only to a QEMU
// Ferry probes as one, and it is warned when a disk lies outside shared storage.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import WebSocket from 'ws';
import type { HostSettings } from '../../engine/api/index.js';
import { main } from '../../engine/cli/main.js';
import { Inventory } from '../../engine/host/inventory.js';
import { ApiService, type AdminChange } from '../../engine/service/api-service.js';
import { startWebServer } from '../../engine/web/server.js';
import { tempHome } from '../helpers.js';

let home: string;
let inv: Inventory;
let shared: string;
let outside: string;

const settings = async (host = 'lab1'): Promise<HostSettings> => (await inv.host(host)).settings();

async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const code = await main(args, { out: (s) => (stdout += s), err: (s) => (stderr += s) }, inv);
  return { code, stdout, stderr };
}

/** An executable that is not QEMU, and leaves a mark when something runs it. */
function fakeQemu(): { binary: string; ran: () => boolean } {
  const dir = fs.mkdtempSync(path.join(home, 'bin-'));
  const binary = path.join(dir, 'not-qemu.sh');
  const mark = path.join(dir, 'not-qemu.ran');
  fs.writeFileSync(binary, `#!/bin/sh\ntouch '${mark}'\nexit 0\n`, { mode: 0o755 });
  return { binary, ran: () => fs.existsSync(mark) };
}

beforeAll(async () => {
  home = tempHome('admin');
  inv = new Inventory(home);
  await inv.labUp(2);
  shared = (await inv.host('lab1')).record.vmDir; // FERRY_HOME/lab/shared, inside the roots
  outside = path.join(home, 'outside'); // not in any storage root
  fs.mkdirSync(outside);
  fs.writeFileSync(path.join(outside, 'id_ed25519'), '-----BEGIN OPENSSH PRIVATE KEY-----\nsecret\n');
});

afterAll(async () => {
  await inv.labDown().catch(() => undefined);
});

describe('administrator-only settings', () => {
  it('are refused to API clients (web mode), with what to do instead', async () => {
    const service = new ApiService(inv, { role: 'client' });
    const before = await settings();
    await expect(
      service.call('updateHostSettings', { host: 'lab1', patch: { qemuBinary: '/bin/sh' } }),
    ).rejects.toMatchObject({
      code: 'not-permitted',
      message: 'qemuBinary of lab1 can be changed only by the administrator, not through the API',
      hint: 'on the machine running Ferry: ferry host settings lab1 --set qemuBinary=…',
    });
    await expect(
      service.call('updateHostSettings', { host: 'lab1', patch: { storageRoots: ['/'] } }),
    ).rejects.toMatchObject({ code: 'not-permitted' });
    expect(await settings()).toEqual(before);

    // The console's settings form sends the whole object: unchanged values are no change.
    const saved = (await service.call('updateHostSettings', {
      host: 'lab1',
      patch: { ...before, downtimeMs: 450 },
    })) as HostSettings;
    expect(saved).toEqual({ ...before, downtimeMs: 450 });
    await service.dispose();
  });

  it('are refused over the web mode WebSocket', async () => {
    const service = new ApiService(inv, { role: 'client' });
    const server = await startWebServer({ port: 0, host: '127.0.0.1', service, staticDir: '/nonexistent' });
    try {
      const ws = new WebSocket(`ws://127.0.0.1:${server.port}/api/ws?token=${server.token}`);
      await new Promise((resolve) => ws.once('open', resolve));
      const answer = new Promise<unknown>((resolve) =>
        ws.once('message', (d) => resolve(JSON.parse(String(d)))),
      );
      ws.send(
        JSON.stringify({
          id: 1,
          method: 'updateHostSettings',
          input: { host: 'lab2', patch: { storageRoots: ['/'] } },
        }),
      );
      expect(await answer).toMatchObject({ id: 1, ok: false, error: { code: 'not-permitted' } });
      ws.close();
      expect((await settings('lab2')).storageRoots).not.toContain('/');
    } finally {
      await server.close();
      await service.dispose();
    }
  });

  it('need the dialog of the desktop main process, asked before anything runs', async () => {
    const fake = fakeQemu();
    const answers: boolean[] = [];
    const confirm = vi.fn(async (_c: AdminChange) => answers.shift() ?? false);
    const service = new ApiService(inv, { role: 'client', confirmAdminChange: confirm });
    const before = await settings();

    answers.push(false);
    await expect(
      service.call('updateHostSettings', { host: 'lab1', patch: { qemuBinary: fake.binary } }),
    ).rejects.toMatchObject({
      code: 'not-permitted',
      message: 'the change of qemuBinary of lab1 was not confirmed',
    });
    expect(confirm).toHaveBeenLastCalledWith({
      host: 'lab1',
      settings: ['qemuBinary'],
      from: { qemuBinary: null },
      to: { qemuBinary: fake.binary },
    });
    expect(fake.ran()).toBe(false); // refused before the binary was ever started
    expect(await settings()).toEqual(before);

    // Confirmed, the value is still checked: a QEMU binary must be one Ferry probes as QEMU.
    answers.push(true);
    await expect(
      service.call('updateHostSettings', { host: 'lab1', patch: { qemuBinary: fake.binary } }),
    ).rejects.toMatchObject({
      code: 'bad-input',
      message: expect.stringContaining(`${fake.binary} is not a QEMU Ferry can use`),
    });
    expect(await settings()).toEqual(before);

    answers.push(true);
    const roots = [...before.storageRoots, outside];
    expect(
      await service.call('updateHostSettings', { host: 'lab1', patch: { storageRoots: roots } }),
    ).toMatchObject({ storageRoots: roots });
    expect(confirm).toHaveBeenCalledTimes(3);
    await (await inv.host('lab1')).updateSettings({ storageRoots: before.storageRoots });
    await service.dispose();
  });

  it('may be changed by the administrator with the CLI, to a QEMU Ferry probed', async () => {
    const fake = fakeQemu();
    const before = await settings();
    const bad = await cli(['host', 'settings', 'lab1', '--set', `qemuBinary=${fake.binary}`]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain(`${fake.binary} is not a QEMU Ferry can use`);
    expect(await settings()).toEqual(before);

    const qemu = execFileSync('sh', ['-c', 'command -v qemu-system-x86_64'], { encoding: 'utf8' }).trim();
    const good = await cli(['host', 'settings', 'lab1', '--set', `qemuBinary=${qemu}`]);
    expect(good.code, good.stderr).toBe(0);
    expect((await settings()).qemuBinary).toBe(qemu);
    expect((await cli(['host', 'settings', 'lab1', '--set', 'qemuBinary=none'])).code).toBe(0);

    const roots = await cli([
      'host',
      'settings',
      'lab1',
      '--set',
      `storageRoots=${before.storageRoots.join(',')},/srv/vms`,
    ]);
    expect(roots.code, roots.stderr).toBe(0);
    expect((await settings()).storageRoots).toEqual([...before.storageRoots, '/srv/vms']);
    const relative = await cli(['host', 'settings', 'lab1', '--set', 'storageRoots=vms']);
    expect(relative.code).toBe(2);
    expect(relative.stderr).toMatch(/storage roots are absolute folders; "vms" is not absolute/);
    await (await inv.host('lab1')).updateSettings({ storageRoots: before.storageRoots });
  });
});

describe('ferry web', () => {
  it('refuses to serve beyond loopback without TLS', async () => {
    const r = await cli(['web', '--host', '0.0.0.0', '--port', '0']);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain(
      '--host 0.0.0.0 is not a loopback address: serving the console beyond this machine needs TLS',
    );
    expect(r.stderr).toContain('add --tls-cert FILE --tls-key FILE');
    const half = await cli(['web', '--host', '0.0.0.0', '--tls-cert', '/nonexistent/cert.pem']);
    expect(half.code).toBe(2);
    expect(half.stderr).toMatch(/--tls-cert and --tls-key go together/);
  });
});

describe("a new VM's files", () => {
  it('must lie inside the storage roots for an API client, symlinks resolved', async () => {
    const service = new ApiService(inv, { role: 'client' });
    const key = path.join(outside, 'id_ed25519');
    const link = path.join(shared, 'innocent.img');
    fs.symlinkSync(key, link); // inside a root, pointing outside
    const escape = path.join(shared, 'more-space');
    fs.symlinkSync(outside, escape);
    const image = (p: string): unknown => ({
      name: 'grab',
      host: 'lab1',
      disks: [{ kind: 'image', path: p }],
    });

    await expect(service.call('createVm', image(key))).rejects.toMatchObject({
      code: 'not-permitted',
      message: expect.stringMatching(new RegExp(`^the disk image ${key} is outside lab1's storage roots`)),
    });
    await expect(service.call('createVm', image(link))).rejects.toMatchObject({
      code: 'not-permitted',
      message: expect.stringContaining(
        `the disk image ${link} (it leads to ${key}) is outside lab1's storage roots`,
      ),
    });
    await expect(
      service.call('createVm', image(path.join(shared, '..', '..', 'outside', 'id_ed25519'))),
    ).rejects.toMatchObject({
      code: 'not-permitted',
    });
    await expect(
      service.call('createVm', {
        name: 'grab',
        host: 'lab1',
        disks: [{ kind: 'new', sizeGiB: 1 }],
        storagePath: escape,
      }),
    ).rejects.toMatchObject({ code: 'not-permitted', message: expect.stringContaining('the storage path') });
    // The same for a move's target folders.
    await expect(
      service.call('checkMove', { vm: 'grab', to: 'lab2', includeStorage: true, storagePath: escape }),
    ).rejects.toMatchObject({ code: 'not-permitted' });
    expect(await inv.listVms()).toEqual([]);
    expect(fs.readdirSync(outside).sort()).toEqual(['id_ed25519']);

    // Inside the roots it works.
    const ok = path.join(shared, 'ok.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', ok, '16M']);
    expect(await service.call('createVm', image(ok))).toMatchObject({
      name: 'grab',
      disks: [{ path: ok, format: 'qcow2', owned: false }],
    });
    await service.call('vmAction', { name: 'grab', action: 'delete' });
    fs.rmSync(link);
    fs.rmSync(escape);
    await service.dispose();
  });

  it('outside shared storage: the CLI creates the VM and warns that it cannot move without its storage', async () => {
    const disk = path.join(outside, 'local.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', disk, '16M']);
    const r = await cli(['vm', 'create', 'pinned', '--host', 'lab1', '--memory', '64', '--disk-image', disk]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain(
      `warning: ${disk} is outside lab1's storage roots (${(await settings()).storageRoots.join(', ')}): ` +
        'a live move of pinned will be refused unless it moves with its storage ' +
        '(ferry move pinned --to HOST --include-storage); to move it over shared storage, put the disk ' +
        'inside the storage roots',
    );
    expect(r.stderr).toMatch(/created pinned on lab1/);
    // Inside shared storage: no warning.
    const inside = path.join(shared, 'shared.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', inside, '16M']);
    const quiet = await cli([
      'vm',
      'create',
      'roams',
      '--host',
      'lab1',
      '--memory',
      '64',
      '--disk-image',
      inside,
    ]);
    expect(quiet.code, quiet.stderr).toBe(0);
    expect(quiet.stderr).not.toMatch(/warning/);
    // The move itself is refused by the pre-flight (engine/migration/preflight.ts), saying what to do.
    const move = await cli(['move', 'pinned', '--to', 'lab2', '--check']);
    expect(move.code).toBe(2);
    expect(move.stderr + move.stdout).toMatch(
      /outside its storage roots \(.*\); move pinned with its storage \(ferry move pinned --to lab2 --include-storage\), or put the disk on storage shared by both hosts/,
    );
    for (const vm of ['pinned', 'roams']) expect((await cli(['vm', 'delete', vm])).code).toBe(0);
  });
});
