// A VM's life on a lab host, with real QEMU running the lab guest: create, start, pause, resume, stop,
// delete; found again by a new Ferry process; a QEMU killed behind Ferry's back is reported as crashed.
import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Inventory } from '../../engine/host/inventory.js';
import { isQemuAlive } from '../../engine/qemu/process.js';
import { ferry, guestReport, tempHome, waitFor, waitForPasses } from '../helpers.js';

let home: string;
let inv: Inventory;

beforeAll(async () => {
  home = tempHome('lifecycle');
  inv = new Inventory(home);
  await inv.labUp(2);
});

afterAll(async () => {
  await inv.labDown().catch(() => undefined);
});

async function lastPass(vm: string): Promise<number> {
  return (await guestReport(inv, vm)).heartbeats.at(-1)?.pass ?? 0;
}

describe('VM lifecycle on a lab host', () => {
  it('creates, starts, pauses, resumes, stops and deletes a VM', async () => {
    const info = await inv.createVm({
      name: 'life',
      host: 'lab1',
      memoryMiB: 256,
      disks: [{ kind: 'new', sizeGiB: 1 }],
      labGuest: { workingSetMiB: 8, dirtyRateMiBs: 40 },
    });
    expect(info).toMatchObject({
      name: 'life',
      host: 'lab1',
      state: 'stopped',
      memoryMiB: 256,
      configVersion: 'pc-q35-7.2',
    });
    expect(info.disks).toEqual([
      expect.objectContaining({ id: 'disk0', format: 'qcow2', sizeBytes: 1024 ** 3, owned: true }),
    ]);
    expect(fs.existsSync(info.disks[0]!.path)).toBe(true);
    expect(info.nics[0]!.mac).toMatch(/^52:54:00:/);

    const lab1 = await inv.host('lab1');
    const started = await lab1.startVm('life');
    expect(started.state).toBe('running');
    expect(started.pid).toBeGreaterThan(0);
    await waitForPasses(inv, 'life', 3);

    expect((await lab1.pauseVm('life')).state).toBe('paused');
    const frozen = await lastPass('life');
    await sleep(800); // a throttled pass takes 200 ms: four would have run
    expect(await lastPass('life')).toBe(frozen);
    expect((await lab1.resumeVm('life')).state).toBe('running');
    await waitForPasses(inv, 'life', frozen + 2);

    // The lab guest ignores ACPI: a graceful stop waits out its timeout, then turns the VM off.
    const pid = started.pid!;
    const stopped = await lab1.stopVm('life', { force: false, timeoutMs: 1000 });
    expect(stopped).toMatchObject({ state: 'stopped', pid: null });
    expect(isQemuAlive(pid, '')).toBe(false);
    expect((await guestReport(inv, 'life')).mismatches).toEqual([]);

    await inv.deleteVm('life');
    expect(await lab1.hasVm('life')).toBe(false);
    expect(fs.existsSync(info.disks[0]!.path)).toBe(false);
    await expect(inv.locate('life')).rejects.toMatchObject({ code: 'unknown-vm' });
  });

  it('refuses to delete a running VM and to start it twice', async () => {
    await inv.createVm({
      name: 'busy',
      host: 'lab2',
      memoryMiB: 128,
      labGuest: { workingSetMiB: 4, dirtyRateMiBs: 10 },
    });
    const lab2 = await inv.host('lab2');
    await lab2.startVm('busy');
    await expect(inv.deleteVm('busy')).rejects.toMatchObject({ code: 'vm-running' });
    await expect(lab2.startVm('busy')).rejects.toMatchObject({ code: 'vm-running' });
    expect((await lab2.vmInfo('busy')).state).toBe('running');
    await lab2.stopVm('busy', { force: true, timeoutMs: 0 });
    await inv.deleteVm('busy');
  });

  it('re-attaches to VMs started by another Ferry process', async () => {
    await inv.createVm({
      name: 'attach',
      host: 'lab1',
      memoryMiB: 128,
      labGuest: { workingSetMiB: 4, dirtyRateMiBs: 20 },
    });
    // Each CLI call is its own process that exits: the VM must outlive it and be found again.
    expect((await ferry(home, ['vm', 'start', 'attach'])).code).toBe(0);
    const fresh = new Inventory(home);
    const seen = (await fresh.listVms()).find((v) => v.name === 'attach');
    expect(seen).toMatchObject({ state: 'running', host: 'lab1' });
    await waitForPasses(fresh, 'attach', 2);

    expect((await ferry(home, ['vm', 'pause', 'attach'])).code).toBe(0);
    const list = JSON.parse((await ferry(home, ['vm', 'list', '--json'])).stdout) as {
      name: string;
      state: string;
      pid: number;
    }[];
    expect(list.find((v) => v.name === 'attach')).toMatchObject({ state: 'paused', pid: seen!.pid });
    expect((await ferry(home, ['vm', 'resume', 'attach'])).code).toBe(0);
    expect((await new Inventory(home).host('lab1').then((h) => h.vmInfo('attach'))).state).toBe('running');
  });

  it('notices a QEMU that was killed and reports it, not as running', async () => {
    const lab1 = await inv.host('lab1');
    const before = await lab1.vmInfo('attach');
    process.kill(before.pid!, 'SIGKILL');
    const crashed = await waitFor('crash to be noticed', async () => {
      const v = await lab1.vmInfo('attach');
      return v.state === 'crashed' ? v : null;
    });
    expect(crashed.reason).toMatch(new RegExp(`QEMU \\(pid ${before.pid}\\) exited unexpectedly`));
    expect(crashed.pid).toBeNull();
    // Reported the same way to another process, and it stays reported until the VM is started again.
    const cli = JSON.parse((await ferry(home, ['vm', 'info', 'attach', '--json'])).stdout) as {
      state: string;
      reason: string;
    };
    expect(cli).toMatchObject({ state: 'crashed' });
    const again = await lab1.startVm('attach');
    expect(again.state).toBe('running');
    expect(again.pid).not.toBe(before.pid);
    await lab1.stopVm('attach', { force: true, timeoutMs: 0 });
    expect((await lab1.vmInfo('attach')).state).toBe('stopped');
  });
});
