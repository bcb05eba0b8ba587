// Every pre-flight error that can be produced on one machine, on real hosts with a running VM: the move
// is refused with the reason, and the VM is not touched (same QEMU, still running, nothing on the
// destination). The two that need a second machine (CPU maker, different storage) are in
// test/unit/preflight.test.ts.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import type { HostSettings, MoveEstimate, MoveRequest, PreflightReport } from '../../engine/api/index.js';
import { Inventory } from '../../engine/host/inventory.js';
import { LocalHost } from '../../engine/host/local/local-host.js';
import { MigrationManager } from '../../engine/migration/manager.js';
import { ferry, tempHome, waitForPasses } from '../helpers.js';

const MiB = 1024 * 1024;
/** The quiet guest's estimate, from the --check --json test. */
let quiet: MoveEstimate | null = null;

let home: string;
let inv: Inventory;
let manager: MigrationManager;
let pid: number;
const capsFile = (host: string): string => path.join(home, 'hosts', host, 'qemu-caps.json');
let originalCaps: string;

beforeAll(async () => {
  home = tempHome('preflight');
  inv = new Inventory(home);
  manager = new MigrationManager(inv);
  await inv.labUp(2);
  await inv.createVm({
    name: 'pf',
    host: 'lab1',
    memoryMiB: 128,
    disks: [{ kind: 'new', sizeGiB: 1 }],
    labGuest: { workingSetMiB: 4, dirtyRateMiBs: 10 },
  });
  pid = (await (await inv.host('lab1')).startVm('pf')).pid!;
  await (await inv.host('lab2')).facts(); // caches lab2's QEMU capabilities
  originalCaps = fs.readFileSync(capsFile('lab2'), 'utf8');
});
afterAll(async () => {
  await inv.labDown().catch(() => undefined);
});

const defaults: Partial<HostSettings> = {
  liveMigrationEnabled: true,
  incomingNetworks: 'any',
  accel: 'auto',
  reservedMemoryMiB: 0,
};
afterEach(async () => {
  for (const h of ['lab1', 'lab2'])
    await (await inv.host(h)).updateSettings({ ...defaults, storageRoots: [path.join(home, 'lab')] });
  fs.writeFileSync(capsFile('lab2'), originalCaps);
});

/** Pretends lab2 runs a different QEMU build by editing its cached capabilities. */
function patchDestCaps(patch: (caps: Record<string, unknown>) => void): void {
  const caps = JSON.parse(originalCaps) as Record<string, unknown>;
  patch(caps);
  fs.writeFileSync(capsFile('lab2'), JSON.stringify(caps));
}

async function expectRefused(code: string, message: RegExp, req: Partial<MoveRequest> = {}): Promise<void> {
  const started = await manager.start({ vm: 'pf', to: 'lab2', performance: 'tcp', ...req });
  const summary = await started.done;
  expect(summary.status).toBe('refused');
  expect(summary.reason).toMatch(message);
  const rec = await manager.history.get(started.id);
  expect(rec.status).toBe('refused');
  expect(rec.preflight?.errors.map((e) => e.code)).toContain(code);
  // Not touched: the same QEMU runs it on lab1, and lab2 has nothing of it.
  const info = await (await inv.host('lab1')).vmInfo('pf');
  expect(info).toMatchObject({ state: 'running', pid });
  expect(fs.existsSync(path.join(home, 'hosts', 'lab2', 'vms', 'pf'))).toBe(false);
}

describe('pre-flight refusals leave the VM untouched', () => {
  it('passes when nothing is wrong (only the no-hardware-virtualization warning here)', async () => {
    const report = await manager.check({ vm: 'pf', to: 'lab2' });
    expect(report.errors).toEqual([]);
  });

  it('same host', () => expectRefused('same-host', /pf is already on lab1/, { to: 'lab1' }));

  it('live migration disabled on the source', async () => {
    await (await inv.host('lab1')).updateSettings({ liveMigrationEnabled: false });
    await expectRefused('migration-disabled-source', /outgoing live migrations are disabled on lab1/);
  });

  it('live migration disabled on the destination', async () => {
    await (await inv.host('lab2')).updateSettings({ liveMigrationEnabled: false });
    await expectRefused('migration-disabled-destination', /incoming live migrations are disabled on lab2/);
  });

  it('destination does not accept migrations on its network', async () => {
    await (await inv.host('lab2')).updateSettings({ incomingNetworks: ['10.20.0.0/16', '192.168.7.0/24'] });
    await expectRefused(
      'network-not-accepted',
      /lab2 accepts incoming migrations only on 10\.20\.0\.0\/16, 192\.168\.7\.0\/24, not on its migration address 127\.0\.0\.1/,
    );
  });

  it('Q1: the hosts use different accelerators', async () => {
    const accel = (await (await inv.host('lab1')).facts()).accel;
    await (await inv.host('lab2')).updateSettings({ accel: accel === 'kvm' ? 'tcg' : 'kvm' });
    await expectRefused(
      'accelerator-mismatch',
      /lab1 runs VMs with \w+, lab2 with \w+; both must use the same accelerator/,
    );
  });

  it("Q2: the VM's CPU model is missing on the destination", async () => {
    patchDestCaps((c) => (c.cpuModels = (c.cpuModels as string[]).filter((m) => m !== 'qemu64')));
    await expectRefused('cpu-model-unsupported', /the VM's CPU model qemu64 is not available on lab2/);
  });

  it('Q6: the destination may not reach the shared storage', async () => {
    await (await inv.host('lab2')).updateSettings({ storageRoots: ['/srv/elsewhere'] });
    await expectRefused(
      'storage-not-allowed',
      /lab2 is not allowed to reach .*disk0\.qcow2 \(disk0\): it is outside its storage roots/,
    );
  });

  it("Q6: a disk on the source's own storage is not the same file from the destination", async () => {
    // lab/lab1/ is lab1's local storage: lab2 cannot see it, whatever the path says.
    await inv.createVm({
      name: 'local',
      host: 'lab1',
      memoryMiB: 64,
      storagePath: path.join(home, 'lab', 'lab1', 'local'),
      disks: [{ kind: 'new', sizeGiB: 1 }],
    });
    const lab1 = await inv.host('lab1');
    const localPid = (await lab1.startVm('local')).pid;
    try {
      const summary = await (await manager.start({ vm: 'local', to: 'lab2' })).done;
      expect(summary.status).toBe('refused');
      expect(summary.reason).toMatch(
        /lab2 does not see the same disk0 at .*lab1\/local\/disk0\.qcow2: the file does not exist there/,
      );
      expect((await lab1.vmInfo('local')).pid).toBe(localPid);
      // With its storage it can go (shared-nothing), so the check is about the storage, not the VM.
      expect((await manager.check({ vm: 'local', to: 'lab2', includeStorage: true })).errors).toEqual([]);
    } finally {
      await lab1.stopVm('local', { force: true, timeoutMs: 0 });
    }
  });

  it('R6: the destination runs an older QEMU', async () => {
    patchDestCaps((c) => (c.version = '6.2.0'));
    await expectRefused(
      'older-destination',
      /lab2 runs QEMU 6\.2\.0, older than lab1's 7\.\d+\.\d+; moving to an older version is not supported/,
    );
  });

  it("R6: the destination lacks the VM's machine type (configuration version)", async () => {
    patchDestCaps((c) => (c.machineTypes = (c.machineTypes as string[]).filter((m) => m !== 'pc-q35-7.2')));
    await expectRefused(
      'machine-type-unsupported',
      /lab2 \(QEMU [\d.]+\) does not support the VM's configuration version pc-q35-7\.2/,
    );
  });

  it('not enough memory on the destination', async () => {
    await (await inv.host('lab2')).updateSettings({ reservedMemoryMiB: 10_000_000 });
    await expectRefused('insufficient-memory', /pf needs 128 MiB; lab2 has 0 MiB available/);
  });

  it("the destination's QEMU cannot decompress the chosen method", async () => {
    patchDestCaps((c) => (c.multifdCompression = ['none']));
    await expectRefused('compression-unsupported', /lab2's QEMU cannot decompress zstd/, {
      performance: 'compression',
    });
  });

  it('RDMA without RDMA links', () =>
    expectRefused('rdma-unavailable', /RDMA needs RDMA-capable links/, { performance: 'rdma' }));

  it('post-copy with multifd (loses the guest in QEMU 7.2)', () =>
    expectRefused('options-conflict', /cannot be combined with Multichannel \(multifd\)/, {
      performance: 'multichannel',
      convergence: 'postcopy',
    }));

  it('a VM of that name already on the destination', async () => {
    const dir = path.join(home, 'hosts', 'lab2', 'vms', 'pf');
    fs.mkdirSync(dir, { recursive: true });
    fs.copyFileSync(path.join(home, 'hosts', 'lab1', 'vms', 'pf', 'vm.json'), path.join(dir, 'vm.json'));
    try {
      const summary = await (await manager.start({ vm: 'pf', to: 'lab2' })).done;
      expect(summary).toMatchObject({ status: 'refused' });
      expect(summary.reason).toMatch(/a VM named "pf" already exists on lab2/);
      expect((await (await inv.host('lab1')).vmInfo('pf')).pid).toBe(pid);
    } finally {
      fs.rmSync(dir, { recursive: true });
    }
  });

  it('a VM that is not running, and a pass-through disk', async () => {
    await inv.createVm({ name: 'cold', host: 'lab1', memoryMiB: 64 });
    const cfg = path.join(home, 'hosts', 'lab1', 'vms', 'cold', 'vm.json');
    const vm = JSON.parse(fs.readFileSync(cfg, 'utf8')) as { disks: unknown[] };
    vm.disks = [{ id: 'disk0', path: '/dev/null', format: 'raw', sizeBytes: 0, owned: false }];
    fs.writeFileSync(cfg, JSON.stringify(vm));
    const report = await manager.check({ vm: 'cold', to: 'lab2' });
    expect(report.estimate).toBeNull();
    expect(report.estimateNote).toMatch(/cold is stopped, not running/);
    expect(report.errors.map((e) => e.code)).toEqual(
      expect.arrayContaining(['vm-not-running', 'passthrough-disk']),
    );
    expect(report.errors.find((e) => e.code === 'passthrough-disk')?.message).toBe(
      'disk0 is a physical pass-through disk (/dev/null); live migration needs virtual disks',
    );
    const summary = await (await manager.start({ vm: 'cold', to: 'lab2' })).done;
    expect(summary.status).toBe('refused');
    expect((await (await inv.host('lab1')).vmInfo('cold')).state).toBe('stopped');
  });

  it('ferry move --check --json prints the report; exit 2 with errors, 0 without', async () => {
    const ok = await ferry(home, ['move', 'pf', '--to', 'lab2', '--check', '--json']);
    expect(ok.code, ok.stdout + ok.stderr).toBe(0);
    const report = JSON.parse(ok.stdout) as PreflightReport;
    expect(report.errors).toEqual([]);
    expect(Array.isArray(report.warnings)).toBe(true);
    // The estimate of a quiet guest (4 MiB rewritten 2.5 times a second) on loopback: it converges.
    expect(report.estimate).toMatchObject({ converges: true, step: 'none', fixes: [] });
    expect(report.estimate!.inputs.dirtyBytesPerSec).toBeGreaterThan(0);
    expect(report.estimate!.inputs).toMatchObject({ linkSource: 'loopback', memoryBytes: 128 * MiB });
    expect(report.estimate!.totalMs).toBeGreaterThan(0);
    quiet = report.estimate!;
    await (await inv.host('lab2')).updateSettings({ liveMigrationEnabled: false });
    const bad = await ferry(home, ['move', 'pf', '--to', 'lab2', '--check', '--json']);
    expect(bad.code).toBe(2);
    expect(JSON.parse(bad.stdout)).toMatchObject({
      errors: [
        { code: 'migration-disabled-destination', message: 'incoming live migrations are disabled on lab2' },
      ],
    });
    const run = await ferry(home, ['move', 'pf', '--to', 'lab2', '--json']);
    expect(run.code).toBe(2);
    const lines = run.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { type: string; status?: string; id?: string });
    expect(lines.at(-1)).toMatchObject({ type: 'summary', status: 'refused' });
    expect(lines.at(-1)!.id).toMatch(/^m-/);
    expect((await (await inv.host('lab1')).vmInfo('pf')).pid).toBe(pid);
  });
});

describe('the estimate before Finish', () => {
  it('follows the guest: a busy guest measures higher, and on a slow link says what would make it converge', async () => {
    expect(quiet).not.toBeNull();
    const lab1 = await inv.host('lab1');
    // 48 MiB rewritten eight times a second.
    await inv.createVm({
      name: 'busy',
      host: 'lab1',
      memoryMiB: 128,
      labGuest: { workingSetMiB: 48, dirtyRateMiBs: 400 },
    });
    await lab1.startVm('busy');
    try {
      await waitForPasses(inv, 'busy', 2);
      const check = async (...args: string[]): Promise<MoveEstimate> => {
        const r = await ferry(home, ['move', 'busy', '--to', 'lab2', '--check', '--json', ...args]);
        expect(r.code, r.stdout + r.stderr).toBe(0);
        return (JSON.parse(r.stdout) as PreflightReport).estimate!;
      };
      // 8 MiB/s: the guest dirties faster than that, so pre-copy never gets there.
      const slow = await check('--performance', 'tcp', '--bandwidth', '8');
      expect(slow.inputs.dirtyBytesPerSec).toBeGreaterThan(quiet!.inputs.dirtyBytesPerSec * 3);
      expect(slow).toMatchObject({ converges: false, totalMs: null, downtimeMs: null });
      expect(slow.inputs).toMatchObject({ linkBytesPerSec: 8 * MiB, linkSource: 'bandwidth-limit' });
      expect(slow.inputs.dirtyBytesPerSec).toBeGreaterThan(8 * MiB);
      const bandwidth = slow.fixes.find((f) => f.kind === 'bandwidth');
      expect(bandwidth?.value).toBeGreaterThan(8);
      expect(slow.fixes.some((f) => f.kind === 'policy' && f.value === 'postcopy')).toBe(true);
      // The person at the terminal reads it too.
      const text = await ferry(home, ['move', 'busy', '--to', 'lab2', '--check', '--bandwidth', '8']);
      expect(text.stdout).toMatch(/estimate: will NOT converge/);
      expect(text.stdout).toMatch(/would converge with a bandwidth limit of at least \d+ MiB\/s/);
    } finally {
      await lab1.stopVm('busy', { force: true, timeoutMs: 0 });
    }
  });

  it('checks asking at once share one measurement of the VM', async () => {
    const spy = vi.spyOn(LocalHost.prototype, 'measureMemory');
    try {
      const reports = await Promise.all(
        ['tcp', 'compression', 'multichannel'].map((performance) =>
          manager.check({ vm: 'pf', to: 'lab2', performance: performance as 'tcp' }),
        ),
      );
      expect(reports.map((r) => r.estimateNote ?? 'estimated')).toEqual(Array(3).fill('estimated'));
      expect(spy).toHaveBeenCalledTimes(1);
      const rates = reports.map((r) => r.estimate!.inputs.dirtyBytesPerSec);
      expect(new Set(rates).size).toBe(1);
      // Compression reports how well the memory compresses; the others 1.
      expect(reports[1]!.estimate!.inputs.compressionRatio).toBeGreaterThan(1);
      expect(reports[0]!.estimate!.inputs.compressionRatio).toBe(1);
      // A check a moment later still uses it.
      await manager.check({ vm: 'pf', to: 'lab2' });
      expect(spy).toHaveBeenCalledTimes(1);
    } finally {
      spy.mockRestore();
    }
  });
});
