// Faults during moves between libvirt hosts, through the CLI, on the libvirt lab's real daemons and
// QEMU: the destination's link cut during the memory copy, its libvirtd killed, its QEMU killed, the
// Ferry process killed during Perform and right after it (and after Finish), and the source's daemon
// restarted after a move. After each, the VM runs on exactly one host with its guest's memory intact,
// nothing is left on the other host, and the history says what happened (for a Ferry process that
// died: what the next look found on the hosts and did, engine/migration/libvirt-recovery.ts).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MigrationEvent, MigrationRecord, Summary, VmSummary } from '../../engine/api/index.js';
import { parseLabGuestSerial } from '../../engine/host/lab-guest.js';
import {
  libvirtdPid,
  libvirtLabMachines,
  startLibvirtd,
  stopLibvirtd,
  stopLibvirtLab,
  type LibvirtLabMachine,
} from '../../engine/host/libvirt/lab.js';
import { ferry, tempHome, waitFor } from '../helpers.js';
import { isRoot, moveEvents, phaseTrail, sh, virsh } from '../libvirt-support.js';

const VM = 'fv';

describe.skipIf(!isRoot)('faults during moves between libvirt hosts (root, libvirt lab)', () => {
  let home: string;
  let lab1: LibvirtLabMachine;
  let lab2: LibvirtLabMachine;
  const machine = (name: string): LibvirtLabMachine => (name === 'lab1' ? lab1 : lab2);

  const summaryOf = (events: MigrationEvent[]): Summary => {
    const s = events.at(-1);
    if (!s || s.type !== 'summary') throw new Error(`no summary in ${JSON.stringify(events.slice(-3))}`);
    return s;
  };
  const serial = async (): Promise<ReturnType<typeof parseLabGuestSerial>> =>
    parseLabGuestSerial((await ferry(home, ['vm', 'serial', VM])).stdout);
  /** The guest keeps running with its memory intact: new heartbeats, no errors, never rebooted. */
  const stillBeating = async (): Promise<void> => {
    const before = (await serial()).heartbeats.at(-1)?.pass ?? 0;
    const r = await waitFor(`${VM} to beat again`, async () => {
      const rep = await serial();
      return (rep.heartbeats.at(-1)?.pass ?? 0) > before ? rep : null;
    });
    expect(r.mismatches).toEqual([]);
    expect(r.heartbeats.at(-1)!.errors).toBe(0);
    expect(r.boots).toBe(1);
  };
  const list = async (m: LibvirtLabMachine, what: '--name' | '--uuid'): Promise<string[]> =>
    (await virsh(m.uris.tcp, 'list', '--all', what)).split('\n').filter(Boolean);
  const qemuPids = async (m: LibvirtLabMachine): Promise<number[]> => {
    const r = await sh('ip', ['netns', 'pids', m.netns]);
    return r.stdout
      .split('\n')
      .filter(Boolean)
      .map(Number)
      .filter((pid) => {
        try {
          return fs.readFileSync(`/proc/${pid}/comm`, 'utf8').startsWith('qemu-system');
        } catch {
          return false;
        }
      });
  };
  /** No domain, QEMU or storage pool on the host (what a failed move or a recovery must leave). */
  const leftBehind = async (m: LibvirtLabMachine): Promise<string | null> => {
    const doms = await list(m, '--name');
    if (doms.length) return `domains ${doms.join(', ')}`;
    if ((await qemuPids(m)).length) return 'a QEMU process';
    const pools = await virsh(m.uris.tcp, 'pool-list', '--all', '--name');
    return pools ? `storage pools ${pools}` : null;
  };
  /**
   * The VM runs on `host` and on no other: virsh on both (by name and UUID), Ferry's VM list, nothing
   * left on the other host, and the guest still beating with its memory intact.
   */
  const runsOnlyOn = async (host: 'lab1' | 'lab2'): Promise<void> => {
    const here = machine(host);
    const other = machine(host === 'lab1' ? 'lab2' : 'lab1');
    await waitFor(`nothing left on ${other.hostname}`, async () => (await leftBehind(other)) === null);
    // Ferry's VM list first: it is also the next look that settles a move whose Ferry process died.
    const vms = JSON.parse((await ferry(home, ['vm', 'list', '--json'])).stdout) as VmSummary[];
    expect(vms.filter((v) => v.name === VM).map((v) => `${v.host} ${v.state}`)).toEqual([`${host} running`]);
    expect(await virsh(here.uris.tcp, 'domstate', VM)).toBe('running');
    const uuid = await virsh(here.uris.tcp, 'domuuid', VM);
    expect(await list(other, '--uuid')).not.toContain(uuid);
    expect(await virsh(here.uris.tcp, 'pool-list', '--all', '--name')).toBe('');
    await stillBeating();
  };
  const history = async (): Promise<MigrationRecord[]> => {
    const r = await ferry(home, ['migrations', '--json']);
    expect(r.code, r.stderr).toBe(0);
    return JSON.parse(r.stdout) as MigrationRecord[];
  };
  const record = async (id: string): Promise<MigrationRecord> => {
    const rec = (await history()).find((x) => x.id === id);
    if (!rec) throw new Error(`no record ${id}`);
    return rec;
  };
  /** Phase 2 with memory really flowing (QEMU's stream connected), so a fault hits the copy itself. */
  const phase2 = async (child: Move): Promise<MigrationEvent> =>
    waitFor('phase 2 with bytes sent', async () => {
      const events = child.events();
      const flowing = events.some(
        (e) => e.type === 'sample' && e.sample.phase === 2 && e.sample.bytesSent > 0,
      );
      return flowing
        ? events.find((e) => e.type === 'phase' && e.phase === 2 && e.state === 'started')
        : undefined;
    });

  beforeAll(async () => {
    home = tempHome('libvirt-faults');
    const up = await ferry(home, ['lab', 'up', '--libvirt', '--hosts', '2']);
    expect(up.code, up.stderr).toBe(0);
    [lab1, lab2] = (await libvirtLabMachines(home)) as [LibvirtLabMachine, LibvirtLabMachine];
    const create = await ferry(home, [
      'vm',
      'create',
      VM,
      '--host',
      'lab1',
      '--memory',
      '256',
      '--lab-guest',
      '--working-set',
      '16',
      '--dirty-rate',
      '10',
    ]);
    expect(create.code, create.stderr).toBe(0);
    expect((await ferry(home, ['vm', 'start', VM])).code).toBe(0);
    await waitFor('the first heartbeat', async () => (await serial()).heartbeats.length > 0);
  });

  afterAll(async () => {
    if (!home) return;
    if (lab2) await sh('ip', ['-n', lab2.netns, 'link', 'set', 'eth0', 'up']);
    await ferry(home, ['lab', 'down']);
    await stopLibvirtLab(home).catch(() => undefined);
  });

  it('the link cut during the memory copy: the move fails as stalled, the VM stays on the source', async () => {
    // 1 MiB/s: the first pass alone takes minutes, so the cut falls in phase 2.
    const child = spawnMove(home, ['move', VM, '--to', 'lab2', '--bandwidth', '1', '--json']);
    const started = await phase2(child);
    let events: MigrationEvent[];
    try {
      expect((await sh('ip', ['-n', lab2.netns, 'link', 'set', 'eth0', 'down'])).code).toBe(0);
      events = await child.done;
    } finally {
      await sh('ip', ['-n', lab2.netns, 'link', 'set', 'eth0', 'up']);
    }
    const s = summaryOf(events);
    expect(s.status).toBe('failed');
    expect(s.reason).toMatch(/^the migration stalled: no bytes sent for \d+ s/);
    expect(phaseTrail(events)).toMatch(/^1\+ 1- 2\+ 2-( 3\+ 3-)?$/);
    // libvirt on lab2 destroys its incoming VM once the closed connections reach it over the link.
    await runsOnlyOn('lab1');
    const rec = await record(started.id);
    expect([rec.status, rec.reason]).toEqual(['failed', s.reason]);
  });

  it("the destination's libvirtd killed during Perform: the move is aborted, nothing stays on lab2", async () => {
    const child = spawnMove(home, ['move', VM, '--to', 'lab2', '--bandwidth', '2', '--json']);
    const started = await phase2(child);
    const pid = await libvirtdPid(lab2);
    expect(pid).not.toBeNull();
    process.kill(pid!, 'SIGKILL');
    const events = await child.done;
    const s = summaryOf(events);
    expect(s.status).toBe('failed');
    expect(s.reason).toMatch(/lost the connection to lab2|the connection to lab2 dropped/);
    expect(phaseTrail(events)).not.toMatch(/4\+/);
    // Ferry aborted the job: the source never paused, and lab2's QEMU, its stream cut, went away.
    expect(await virsh(lab1.uris.tcp, 'domstate', VM)).toBe('running');
    await startLibvirtd(lab2);
    await runsOnlyOn('lab1');
    expect((await record(started.id)).reason).toBe(s.reason);
  });

  it("the destination's QEMU killed during Perform: the move fails, the VM stays on the source", async () => {
    const child = spawnMove(home, ['move', VM, '--to', 'lab2', '--bandwidth', '2', '--json']);
    const started = await phase2(child);
    const [qemu] = await waitFor('the incoming QEMU on lab2', async () => {
      const pids = await qemuPids(lab2);
      return pids.length === 1 ? pids : null;
    });
    process.kill(qemu!, 'SIGKILL');
    const s = summaryOf(await child.done);
    expect(s.status).toBe('failed');
    expect(s.reason).toMatch(/^libvirt's Perform failed: /);
    await runsOnlyOn('lab1');
    expect((await record(started.id)).reason).toBe(s.reason);
  });

  it('the Ferry process killed in phase 2: libvirt cancels the move, the next look says what happened', async () => {
    const child = spawnMove(home, ['move', VM, '--to', 'lab2', '--bandwidth', '2', '--json']);
    const started = await phase2(child);
    child.kill();
    await child.done;
    // The daemons' connection cleanup: lab2 destroys its incoming VM, so lab1's job fails and ends.
    await waitFor('libvirt to end the job on lab1', async () =>
      /Job type:\s+None/.test(await virsh(lab1.uris.tcp, 'domjobinfo', VM)),
    );
    await runsOnlyOn('lab1');
    const rec = await record(started.id);
    expect(rec.status).toBe('failed');
    expect(rec.reason).toMatch(
      new RegExp(
        `^abandoned: the Ferry process running it \\(pid \\d+\\) ended during phase 2; Ferry found that ${VM} runs on lab1 only: the move did not happen$`,
      ),
    );
  });

  it('the Ferry process killed right after Perform: the next look resumes the paused source', async () => {
    const r = await ferry(home, ['move', VM, '--to', 'lab2', '--json'], { FERRY_TEST_EXIT_AFTER: 'perform' });
    expect(r.code).not.toBe(0);
    const events = moveEvents(r.stdout);
    expect(events.some((e) => e.type === 'summary')).toBe(false);
    expect(phaseTrail(events)).not.toMatch(/4\+/);
    const id = events[0]!.id;
    // (The record's phase is the last one saved before the process died: 2 or 3 here, 3 to 5 after Finish.)
    // What libvirt did: lab1's copy paused for the migration ("higher levels decide"), lab2's destroyed.
    expect(await virsh(lab1.uris.tcp, 'domstate', VM, '--reason')).toBe('paused (migrating)');
    await waitFor('lab2 to destroy its incoming VM', async () => (await leftBehind(lab2)) === null);
    // The next look (runsOnlyOn lists the VMs first) brings it back to running on lab1.
    await runsOnlyOn('lab1');
    const rec = await record(id);
    expect(rec.status).toBe('failed');
    expect(rec.reason).toMatch(
      new RegExp(
        `^abandoned: the Ferry process running it \\(pid \\d+\\) ended during phase \\d; Ferry found that ${VM} was paused for the migration on lab1 and runs on no other host, and resumed it on lab1$`,
      ),
    );
    expect(rec.endedAt).not.toBeNull();
    expect(rec.events.at(-1)).toMatchObject({ type: 'recovery', message: rec.reason });
    // Idempotent: another look changes nothing.
    expect(await record(id)).toEqual(rec);
  });

  it('the Ferry process killed right after Finish: the next look removes the paused source copy', async () => {
    const r = await ferry(home, ['move', VM, '--to', 'lab2', '--json'], { FERRY_TEST_EXIT_AFTER: 'finish' });
    expect(r.code).not.toBe(0);
    const events = moveEvents(r.stdout);
    expect(events.some((e) => e.type === 'summary')).toBe(false);
    const id = events[0]!.id;
    expect(await virsh(lab2.uris.tcp, 'domstate', VM)).toBe('running');
    expect(await virsh(lab1.uris.tcp, 'domstate', VM, '--reason')).toBe('paused (migrating)');
    const rec = await record(id); // the next look
    expect(rec.reason).toMatch(
      new RegExp(
        `^abandoned: the Ferry process running it \\(pid \\d+\\) ended during phase \\d; Ferry found that ${VM} runs on lab2 \\(Finish had completed there\\), and destroyed and undefined the paused copy on lab1$`,
      ),
    );
    await runsOnlyOn('lab2');
  });

  it("the source's libvirtd restarted after a move: the VM runs on the destination only", async () => {
    const r = await ferry(home, ['move', VM, '--to', 'lab1', '--json']);
    const s = summaryOf(moveEvents(r.stdout));
    expect(s.status, s.reason ?? '').toBe('completed');
    await stopLibvirtd(lab2);
    await startLibvirtd(lab2);
    await runsOnlyOn('lab1');
    expect(await virsh(lab1.uris.tcp, 'dominfo', VM)).toMatch(/Persistent:\s+yes/);
    expect((await record(s.id)).status).toBe('completed');
  });
});

interface Move {
  events: () => MigrationEvent[];
  done: Promise<MigrationEvent[]>;
  kill: () => void;
}

/** `ferry move --json` in the background, its events readable while it runs; kill() is SIGKILL. */
function spawnMove(home: string, args: string[]): Move {
  const child = spawn(process.execPath, [path.resolve('bin/ferry.js'), ...args], {
    env: { ...process.env, FERRY_HOME: home },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString()));
  const done = new Promise<MigrationEvent[]>((resolve) => child.once('exit', () => resolve(moveEvents(out))));
  return {
    events: () => moveEvents(out.slice(0, out.lastIndexOf('\n') + 1)),
    done,
    kill: () => child.kill('SIGKILL'),
  };
}
