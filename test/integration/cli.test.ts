// The `ferry` CLI as a new user types it, and every bad-input case: a specific message on stderr, a
// non-zero exit, and nothing changed.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isQemuAlive } from '../../engine/qemu/process.js';
import { ferry, tempHome, waitFor } from '../helpers.js';

let home: string;

interface VmJson {
  name: string;
  host: string;
  state: string;
  memoryMiB: number;
  pid: number | null;
}

async function vmList(): Promise<VmJson[]> {
  const r = await ferry(home, ['vm', 'list', '--json']);
  expect(r.code).toBe(0);
  return JSON.parse(r.stdout) as VmJson[]; // stdout holds JSON only
}

/** Everything under FERRY_HOME, to show that a refused command changed nothing. */
function snapshot(): string[] {
  return (fs.readdirSync(home, { recursive: true }) as string[]).filter((p) => !p.includes('.lock')).sort();
}

beforeAll(() => {
  home = tempHome('cli');
});

afterAll(async () => {
  await ferry(home, ['lab', 'down']);
});

describe('ferry CLI', () => {
  it('runs the README walk-through: lab up, create, start, list, info, lab down', async () => {
    const up = await ferry(home, ['lab', 'up', '--hosts', '2']);
    expect(up.code, up.stderr).toBe(0);
    expect(up.stdout).toBe('');
    expect(up.stderr).toMatch(/lab1, lab2/);

    const hosts = JSON.parse((await ferry(home, ['host', 'list', '--json'])).stdout) as {
      name: string;
      kind: string;
    }[];
    expect(hosts.map((h) => [h.name, h.kind])).toEqual([
      ['lab1', 'lab'],
      ['lab2', 'lab'],
    ]);
    const info = JSON.parse((await ferry(home, ['host', 'info', 'lab1', '--json'])).stdout) as {
      facts: {
        accel: string;
        qemuVersion: string;
        migrationCapabilities: string[];
        multifdCompression: string[];
      };
    };
    expect(info.facts.qemuVersion).toMatch(/^\d+\.\d+\.\d+$/);
    expect(['kvm', 'tcg']).toContain(info.facts.accel);
    expect(info.facts.migrationCapabilities).toContain('pause-before-switchover');
    expect(info.facts.multifdCompression).toContain('zlib');

    const created = await ferry(home, [
      'vm',
      'create',
      'demo',
      '--host',
      'lab1',
      '--lab-guest',
      '--working-set',
      '64',
    ]);
    expect(created.code, created.stderr).toBe(0);
    expect((await ferry(home, ['vm', 'start', 'demo'])).code).toBe(0);
    const list = await vmList();
    expect(list).toEqual([
      expect.objectContaining({ name: 'demo', host: 'lab1', state: 'running', memoryMiB: 512 }),
    ]);

    const vmInfo = JSON.parse((await ferry(home, ['vm', 'info', 'demo', '--json'])).stdout) as {
      serialLogPath: string;
      labGuest: { workingSetMiB: number; dirtyRateMiBs: number };
      disks: unknown[];
    };
    expect(vmInfo.labGuest).toEqual({ workingSetMiB: 64, dirtyRateMiBs: 50 });
    expect(vmInfo.disks).toEqual([]);
    await waitFor(
      'the guest to report a heartbeat',
      async () =>
        fs.existsSync(vmInfo.serialLogPath) &&
        /FERRY-GUEST hb pass=1 /.test(fs.readFileSync(vmInfo.serialLogPath, 'utf8')),
    );
    const human = await ferry(home, ['vm', 'list']);
    expect(human.stdout).toMatch(/^NAME\s+HOST\s+STATE/);
    expect(human.stdout).toMatch(/demo\s+lab1\s+running\s+512 MiB/);

    const down = await ferry(home, ['lab', 'down']);
    expect(down.code).toBe(0);
    expect(down.stderr).toMatch(/turned off 1 VM/);
    expect(isQemuAlive(list[0]!.pid!, '')).toBe(false);
    expect(await vmList()).toEqual([]);
    expect(JSON.parse((await ferry(home, ['host', 'list', '--json'])).stdout)).toEqual([]);
  });

  describe('bad input is refused with a specific message and changes nothing', () => {
    beforeAll(async () => {
      expect((await ferry(home, ['lab', 'up'])).code).toBe(0);
      const r = await ferry(home, ['vm', 'create', 'taken', '--host', 'lab1', '--memory', '64']);
      expect(r.code, r.stderr).toBe(0);
    });

    const cases: [string, string[], RegExp, Record<string, string>?][] = [
      [
        'unknown host',
        ['vm', 'create', 'a', '--host', 'lab9'],
        /unknown host "lab9"; known hosts: lab1, lab2/,
      ],
      [
        'duplicate VM name',
        ['vm', 'create', 'taken', '--host', 'lab2'],
        /a VM named "taken" already exists \(on host lab1\)/,
      ],
      [
        'memory above free memory',
        ['vm', 'create', 'b', '--host', 'lab1', '--memory', '100000000'],
        /100000000 MiB is more than host lab1 has free/,
      ],
      [
        'missing image',
        ['vm', 'create', 'c', '--host', 'lab1', '--disk-image', '/nonexistent/x.qcow2'],
        /disk image not found: \/nonexistent\/x\.qcow2/,
      ],
      [
        'QEMU not installed',
        ['vm', 'create', 'd', '--host', 'lab1'],
        /QEMU not found: FERRY_QEMU names \/nonexistent\/qemu[\s\S]*apt-get install qemu-system-x86/,
        { FERRY_QEMU: '/nonexistent/qemu' },
      ],
      ['lab already up', ['lab', 'up'], /the lab is already up \(lab1, lab2\)/],
      [
        'not a number',
        ['vm', 'create', 'e', '--host', 'lab1', '--memory', 'lots'],
        /expected a whole number from 16/,
      ],
      ['bad VM name', ['vm', 'create', 'no spaces', '--host', 'lab1'], /VM names are 1-63 characters/],
      [
        'working set bigger than memory',
        ['vm', 'create', 'f', '--host', 'lab1', '--memory', '64', '--lab-guest', '--working-set', '64'],
        /does not fit in 64 MiB/,
      ],
      ['unknown VM', ['vm', 'start', 'ghost'], /no VM named "ghost" on any host/],
    ];
    for (const [label, args, message, env] of cases) {
      it(label, async () => {
        const before = snapshot();
        const r = await ferry(home, args, env);
        expect(r.code).toBe(2);
        expect(r.stderr).toMatch(message);
        expect(r.stdout).toBe('');
        expect(snapshot()).toEqual(before);
      });
    }

    it('QEMU missing is reported by lab up too, before anything is written', async () => {
      const other = tempHome('cli-noqemu');
      const r = await ferry(other, ['lab', 'up'], { FERRY_QEMU: path.join(other, 'nope') });
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(/QEMU not found/);
      expect(fs.existsSync(path.join(other, 'inventory.json'))).toBe(false);
    });
  });
});

describe('ferry host settings', () => {
  it('shows, changes and validates settings; the change is saved on the host', async () => {
    const h = tempHome('settings');
    expect((await ferry(h, ['lab', 'up', '--hosts', '1'])).code).toBe(0);
    try {
      const shown = JSON.parse((await ferry(h, ['host', 'settings', 'lab1', '--json'])).stdout) as Record<
        string,
        unknown
      >;
      expect(shown).toMatchObject({
        liveMigrationEnabled: true,
        maxLiveMigrations: 2,
        maxStorageMigrations: 2,
        performance: 'compression',
        channels: 4,
        bandwidthMiBs: null,
        downtimeMs: 300,
        convergence: 'raise-downtime',
        incomingNetworks: 'any',
      });
      const set = await ferry(h, [
        'host',
        'settings',
        'lab1',
        '--set',
        'performance=tcp',
        'bandwidthMiBs=200',
        'incomingNetworks=10.0.0.0/8,192.168.1.0/24',
        'liveMigrationEnabled=off',
        '--json',
      ]);
      expect(set.code, set.stderr).toBe(0);
      expect(JSON.parse(set.stdout)).toMatchObject({
        performance: 'tcp',
        bandwidthMiBs: 200,
        incomingNetworks: ['10.0.0.0/8', '192.168.1.0/24'],
        liveMigrationEnabled: false,
      });
      expect(JSON.parse((await ferry(h, ['host', 'settings', 'lab1', '--json'])).stdout)).toMatchObject({
        performance: 'tcp',
        bandwidthMiBs: 200,
      });
      const unknown = await ferry(h, ['host', 'settings', 'lab1', '--set', 'turbo=yes']);
      expect(unknown.code).toBe(2);
      expect(unknown.stderr).toMatch(/unknown setting "turbo"; settings are: liveMigrationEnabled, /);
      const bad = await ferry(h, ['host', 'settings', 'lab1', '--set', 'performance=warp']);
      expect(bad.code).toBe(2);
      expect(bad.stderr).toMatch(/bad value for performance: "warp"/);
      const badNum = await ferry(h, ['host', 'settings', 'lab1', '--set', 'maxLiveMigrations=0']);
      expect(badNum.code).toBe(2);
      expect(badNum.stderr).toMatch(/bad value for maxLiveMigrations: "0"/);
      // Refusals changed nothing.
      expect(JSON.parse((await ferry(h, ['host', 'settings', 'lab1', '--json'])).stdout)).toMatchObject({
        performance: 'tcp',
        maxLiveMigrations: 2,
      });
    } finally {
      await ferry(h, ['lab', 'down']);
    }
  });
});
