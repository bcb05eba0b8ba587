// Moves between two libvirt hosts of the libvirt lab, through the CLI, on real libvirtd 9.0 daemons and
// real QEMU: the six phases in order over libvirt's Begin/Prepare/Perform/Finish/Confirm (as the
// daemons' own logs show), encrypted by default (a capture of the link holds none of the guest's
// memory in the clear; the same move with encryption off does), the options, cancel, and the
// refusal of a move between a libvirt host and one of Ferry's own.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Inventory } from '../../engine/host/inventory.js';
import { parseLabGuestSerial } from '../../engine/host/lab-guest.js';
import { libvirtLabMachines, stopLibvirtLab, type LibvirtLabMachine } from '../../engine/host/libvirt/lab.js';
import { ferry, tempHome, waitFor } from '../helpers.js';
import {
  ALL_PHASES,
  domainNames,
  isRoot,
  moveEvents,
  phaseTrail,
  sh,
  spawnFerry,
  summaryOf,
  virsh,
} from '../libvirt-support.js';

/** Bytes of the lab guest's kernel, which lives in guest memory: a move in the clear carries them. */
const MARKER = Buffer.from('FERRY-GUEST hb pass=');

describe.skipIf(!isRoot)('moves between libvirt hosts (root, libvirt lab)', () => {
  let home: string;
  let lab1: LibvirtLabMachine;
  let lab2: LibvirtLabMachine;

  const serial = async (vm: string): Promise<ReturnType<typeof parseLabGuestSerial>> =>
    parseLabGuestSerial((await ferry(home, ['vm', 'serial', vm])).stdout);
  /** The guest keeps running with its memory intact: new heartbeats, no errors. */
  const stillBeating = async (vm: string): Promise<void> => {
    const before = (await serial(vm)).heartbeats.at(-1)?.pass ?? 0;
    const r = await waitFor(`${vm} to beat again`, async () => {
      const rep = await serial(vm);
      return (rep.heartbeats.at(-1)?.pass ?? 0) > before ? rep : null;
    });
    expect(r.mismatches).toEqual([]);
    expect(r.heartbeats.at(-1)!.errors).toBe(0);
    expect(r.boots).toBe(1);
  };

  beforeAll(async () => {
    home = tempHome('libvirt-move');
    const up = await ferry(home, ['lab', 'up', '--libvirt', '--hosts', '2']);
    expect(up.code, up.stderr).toBe(0);
    [lab1, lab2] = (await libvirtLabMachines(home)) as [LibvirtLabMachine, LibvirtLabMachine];
    const create = await ferry(home, [
      'vm',
      'create',
      'mv',
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
    expect((await ferry(home, ['vm', 'start', 'mv'])).code).toBe(0);
    await waitFor('the first heartbeat', async () => (await serial('mv')).heartbeats.length > 0);
  });

  afterAll(async () => {
    if (!home) return;
    await ferry(home, ['lab', 'down']);
    await stopLibvirtLab(home).catch(() => undefined);
  });

  it('moves a running VM lab1 → lab2 in six phases over Begin/Prepare/Perform/Finish/Confirm, encrypted', async () => {
    // Capture everything that crosses lab2's link while the move runs.
    const pcap = path.join(home, 'encrypted.pcap');
    const capture = await startCapture(lab2, pcap);
    // QEMU's own migration parameters name TLS credentials while the move runs.
    let sawTls = false;
    let moving = true;
    const watchTls = (async () => {
      while (moving && !sawTls) {
        const r = await sh('virsh', [
          '-c',
          lab1.uris.tcp,
          'qemu-monitor-command',
          'mv',
          '--hmp',
          'info migrate_parameters',
        ]);
        if (/tls-creds: \S+/.test(r.stdout) && !/tls-creds: ''/.test(r.stdout)) sawTls = true;
        await sleep(50);
      }
    })();
    const r = await ferry(home, ['move', 'mv', '--to', 'lab2', '--bandwidth', '20', '--json']);
    moving = false;
    await watchTls;
    await stopCapture(capture);
    expect(r.code, r.stderr).toBe(0);
    const events = moveEvents(r.stdout);
    const s = summaryOf(events);
    expect(s.status, s.reason ?? '').toBe('completed');
    expect(phaseTrail(events)).toBe(ALL_PHASES);
    expect(s.options?.encrypted).toBe(true);
    expect(s.downtimeMs).not.toBeNull();
    expect(s.bytes).toBeGreaterThan(0);
    // Live figures during Perform, in phases 2 and 3 only.
    const samples = events.flatMap((e) => (e.type === 'sample' ? [e.sample] : []));
    expect(samples.length).toBeGreaterThan(1);
    expect(samples.every((x) => x.phase === 2 || x.phase === 3)).toBe(true);
    expect(samples.some((x) => x.bytesSent > 0 && x.totalBytes > 0)).toBe(true);
    expect(sawTls).toBe(true);
    // Each step of the cut-over has its own figure; the guest's proof of life is reported beside the
    // phases (its heartbeat seen on lab2, timed from the resume).
    expect(s.cutover?.map((c) => c.step)).toEqual(
      expect.arrayContaining(['Finish (resume there)', 'Confirm (source off)']),
    );
    expect(s.guestAliveMs).toBeGreaterThanOrEqual(0);

    // Hyper-V's outcome: defined and running on the destination, gone from the source.
    expect(await virsh(lab2.uris.tcp, 'domstate', 'mv')).toBe('running');
    expect(await virsh(lab2.uris.tcp, 'dominfo', 'mv')).toMatch(/Persistent:\s+yes/);
    expect(await domainNames(lab1)).not.toContain('mv');
    const list = JSON.parse((await ferry(home, ['vm', 'list', '--json'])).stdout) as {
      name: string;
      host: string;
    }[];
    expect(list.find((v) => v.name === 'mv')?.host).toBe('lab2');
    await stillBeating('mv');

    // The daemons ran libvirt's five steps in this order (from their own debug logs).
    const log = (m: LibvirtLabMachine): string =>
      fs.readFileSync(path.join(m.dir, 'var/log/libvirt/libvirtd.log'), 'utf8');
    const at = (text: string, fn: string): number => text.indexOf(fn);
    const src = log(lab1);
    const dst = log(lab2);
    for (const fn of ['qemuMigrationSrcBegin', 'qemuMigrationSrcPerform', 'qemuMigrationSrcConfirm'])
      expect(at(src, fn), fn).toBeGreaterThanOrEqual(0);
    expect(at(src, 'qemuMigrationSrcBegin')).toBeLessThan(at(src, 'qemuMigrationSrcPerform'));
    expect(at(src, 'qemuMigrationSrcPerform')).toBeLessThan(at(src, 'qemuMigrationSrcConfirm'));
    expect(at(dst, 'qemuMigrationDstPrepare')).toBeGreaterThanOrEqual(0);
    expect(at(dst, 'qemuMigrationDstPrepare')).toBeLessThan(at(dst, 'qemuMigrationDstFinish'));
    // Ferry issued each step itself: no peer-to-peer call from one daemon to the other.
    expect(src).not.toMatch(/qemuMigrationSrcPerformPeer2Peer/);

    // Nothing the guest holds in memory crossed the link in the clear.
    const bytes = fs.readFileSync(pcap);
    expect(bytes.length).toBeGreaterThan(1_000_000);
    expect(bytes.includes(MARKER)).toBe(false);
  });

  it('with encryption off the same move carries the guest memory in the clear (the capture can see it)', async () => {
    for (const h of ['lab1', 'lab2'])
      expect((await ferry(home, ['host', 'settings', h, '--set', 'encryption=off'])).code).toBe(0);
    const pcap = path.join(home, 'clear.pcap');
    const capture = await startCapture(lab2, pcap);
    const r = await ferry(home, ['move', 'mv', '--to', 'lab1', '--json']);
    await stopCapture(capture);
    const events = moveEvents(r.stdout);
    expect(summaryOf(events).status).toBe('completed');
    expect(summaryOf(events).options?.encrypted).toBe(false);
    expect(
      events.some((e) => e.type === 'log' && e.level === 'warn' && /encryption is off/.test(e.message)),
    ).toBe(true);
    expect(fs.readFileSync(pcap).includes(MARKER)).toBe(true);
    for (const h of ['lab1', 'lab2'])
      expect((await ferry(home, ['host', 'settings', h, '--set', 'encryption=required'])).code).toBe(0);
    await stillBeating('mv');
  });

  it('moves with each performance option; Compression falls back to xbzrle with a warning on libvirt 9.0', async () => {
    const check = JSON.parse(
      (await ferry(home, ['move', 'mv', '--to', 'lab2', '--performance', 'compression', '--check', '--json']))
        .stdout,
    ) as { errors: unknown[]; warnings: { code: string; message: string }[] };
    expect(check.errors).toEqual([]);
    expect(check.warnings.map((w) => w.code)).toContain('compression-xbzrle');
    let from = 'lab1';
    for (const performance of ['compression', 'multichannel', 'tcp']) {
      const to = from === 'lab1' ? 'lab2' : 'lab1';
      const r = await ferry(home, ['move', 'mv', '--to', to, '--performance', performance, '--json']);
      const events = moveEvents(r.stdout);
      const s = summaryOf(events);
      expect(s.status, `${performance}: ${s.reason}`).toBe('completed');
      expect(phaseTrail(events)).toBe(ALL_PHASES);
      expect(s.options?.performance).toBe(performance);
      if (performance === 'compression') expect(s.options?.compression).toBe('xbzrle');
      expect(await virsh(to === 'lab1' ? lab1.uris.tcp : lab2.uris.tcp, 'domstate', 'mv')).toBe('running');
      await stillBeating('mv');
      from = to;
    }
    if (from === 'lab1') {
      const back = await ferry(home, ['move', 'mv', '--to', 'lab2', '--json']);
      expect(summaryOf(moveEvents(back.stdout)).status).toBe('completed');
    }
  });

  it('a move cancelled in phase 2 leaves the VM running on the source and nothing on the destination', async () => {
    // 1 MiB/s: the first pass alone takes seconds, time enough to cancel from another process.
    const child = spawnFerry(home, ['move', 'mv', '--to', 'lab1', '--bandwidth', '1', '--json']);
    const started = await waitFor('phase 2', async () =>
      child.events().find((e) => e.type === 'phase' && e.phase === 2 && e.state === 'started'),
    );
    const cancel = await ferry(home, ['cancel', started.id]);
    expect(cancel.code, cancel.stderr).toBe(0);
    const { events } = await child.done;
    const s = summaryOf(events);
    expect(s.status).toBe('cancelled');
    expect(await virsh(lab2.uris.tcp, 'domstate', 'mv')).toBe('running');
    expect(await domainNames(lab1)).not.toContain('mv');
    await stillBeating('mv');
  });

  it('a move tuned from another process in phase 2: bandwidth and downtime target on the source domain; post-copy refused', async () => {
    const [from, to] = (await domainNames(lab1)).includes('mv') ? [lab1, 'lab2'] : [lab2, 'lab1'];
    // 1 MiB/s: phase 2 lasts until the tune lifts the limit.
    const child = spawnFerry(home, ['move', 'mv', '--to', to, '--bandwidth', '1', '--json']);
    const started = await waitFor('phase 2', async () =>
      child.events().find((e) => e.type === 'phase' && e.phase === 2 && e.state === 'started'),
    );
    const postcopy = await ferry(home, ['move-tune', started.id, '--postcopy']);
    expect(postcopy.code).toBe(2);
    expect(postcopy.stderr).toMatch(
      /post-copy is not available: the move started without QEMU's post-copy capability/,
    );
    const tune = await ferry(home, [
      'move-tune',
      started.id,
      '--bandwidth',
      '1000',
      '--downtime',
      '400',
      '--json',
    ]);
    expect(tune.code, tune.stderr).toBe(0);
    expect(JSON.parse(tune.stdout)).toMatchObject({ bandwidthMiBs: 1000, downtimeMs: 400, postcopy: false });
    expect(await virsh(from.uris.tcp, 'migrate-getspeed', 'mv')).toBe('1000');
    const { events } = await child.done;
    expect(summaryOf(events).status).toBe('completed');
    const tuned = events.filter((e) => e.type === 'tuned');
    expect(tuned).toEqual([expect.objectContaining({ change: { bandwidthMiBs: 1000, downtimeMs: 400 } })]);
    const at = events.indexOf(tuned[0]!);
    const phase4 = events.findIndex((e) => e.type === 'phase' && e.phase === 4 && e.state === 'started');
    expect(at).toBeLessThan(phase4);
    const later = events.slice(at).flatMap((e) => (e.type === 'sample' ? [e.sample.downtimeLimitMs] : []));
    expect(later.length).toBeGreaterThan(0);
    expect(later.every((d) => d === 400)).toBe(true);
    // Over: refused with the reason. Then back where the tests below expect it.
    const late = await ferry(home, ['move-tune', started.id, '--bandwidth', '10']);
    expect(late.code).toBe(2);
    expect(late.stderr).toMatch(/the move is already over \(completed\)/);
    const back = await ferry(home, ['move', 'mv', '--to', from === lab1 ? 'lab1' : 'lab2']);
    expect(back.code, back.stderr).toBe(0);
  });

  it('refuses to move a VM while another libvirt job runs on it, names the job, and changes nothing', async () => {
    // An administrator's own `virsh migrate`, crawling at 1 MiB/s, holds the domain's migration job.
    const [from, to] = (await domainNames(lab1)).includes('mv') ? [lab1, lab2] : [lab2, lab1];
    const [fromName, toName] = [`lab${from.index}`, `lab${to.index}`];
    const outside = spawn(
      'virsh',
      [
        '-c',
        from.uris.tcp,
        'migrate',
        '--live',
        '--bandwidth',
        '1',
        'mv',
        to.uris.tcp,
        '--migrateuri',
        `tcp://${to.address}`,
      ],
      { stdio: 'ignore' },
    );
    const exited = new Promise<number>((resolve) => outside.once('exit', (code) => resolve(code ?? 1)));
    try {
      await waitFor('the outside migration job', async () =>
        /^Job type:\s+Unbounded/m.test(await virsh(from.uris.tcp, 'domjobinfo', 'mv')),
      );
      const check = await ferry(home, ['move', 'mv', '--to', toName, '--check', '--json']);
      expect(check.code, check.stderr).toBe(2);
      const report = JSON.parse(check.stdout) as { errors: { code: string; message: string }[] };
      const busy = report.errors.find((e) => e.code === 'vm-busy');
      expect(busy, check.stdout).toBeDefined();
      expect(busy?.message).toMatch(
        new RegExp(`^mv is busy on ${fromName}: a migration is running on it; .*virsh domjobabort mv`),
      );
      // The move itself is refused by the same check before anything changes.
      const move = await ferry(home, ['move', 'mv', '--to', toName, '--json']);
      expect(move.code).toBe(2);
      const s = summaryOf(moveEvents(move.stdout));
      expect(s.status).toBe('refused');
      expect(s.reason).toMatch(new RegExp(`busy on ${fromName}`));
    } finally {
      await virsh(from.uris.tcp, 'domjobabort', 'mv').catch(() => undefined);
      await exited;
    }
    expect(await virsh(from.uris.tcp, 'domstate', 'mv')).toBe('running');
    expect(await domainNames(to)).not.toContain('mv');
    await stillBeating('mv');
  });

  it('drains a libvirt host within its limit of one live migration at a time: the others queue', async () => {
    for (const vm of ['d1', 'd2']) {
      const c = await ferry(home, [
        'vm',
        'create',
        vm,
        '--host',
        'lab2',
        '--memory',
        '128',
        '--lab-guest',
        '--working-set',
        '8',
        '--dirty-rate',
        '5',
      ]);
      expect(c.code, c.stderr).toBe(0);
      expect((await ferry(home, ['vm', 'start', vm])).code).toBe(0);
    }
    expect((await ferry(home, ['host', 'settings', 'lab2', '--set', 'maxLiveMigrations=1'])).code).toBe(0);
    const r = await ferry(home, ['host', 'drain', 'lab2', '--to', 'lab1', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as {
      plan: { vm: string; mode: string }[];
      results: { id: string; status: string }[];
    };
    expect(out.plan.map((p) => `${p.vm}:${p.mode}`).sort()).toEqual(['d1:shared', 'd2:shared', 'mv:shared']);
    expect(out.results.map((s) => s.status)).toEqual(['completed', 'completed', 'completed']);
    // With one slot on lab2, two of the three moves waited in the queue first.
    const history = JSON.parse((await ferry(home, ['migrations', '--json'])).stdout) as {
      id: string;
      events: { type: string }[];
    }[];
    const mine = history.filter((h) => out.results.some((s) => s.id === h.id));
    expect(mine.filter((h) => h.events.some((e) => e.type === 'queued')).length).toBe(2);
    expect(await domainNames(lab2)).toEqual([]);
    for (const vm of ['mv', 'd1', 'd2']) expect(await virsh(lab1.uris.tcp, 'domstate', vm)).toBe('running');
    await stillBeating('d2');
  });

  it('refuses an encrypted move to a host without migration TLS certificates, and says how to provide them', async () => {
    const cert = path.join(lab2.dir, 'etc/pki/qemu/server-cert.pem');
    fs.renameSync(cert, `${cert}.away`);
    try {
      const r = await ferry(home, ['move', 'd1', '--to', 'lab2', '--check', '--json']);
      expect(r.code).toBe(2);
      const report = JSON.parse(r.stdout) as { errors: { code: string; message: string }[] };
      const e = report.errors.find((x) => x.code === 'encryption-unavailable');
      expect(e?.message).toMatch(/lab2: .*server-cert\.pem/);
      expect(e?.message).toMatch(/\/etc\/pki\/qemu/);
      const move = await ferry(home, ['move', 'd1', '--to', 'lab2', '--json']);
      expect(move.code).toBe(2);
      expect(summaryOf(moveEvents(move.stdout)).status).toBe('refused');
      expect(await virsh(lab1.uris.tcp, 'domstate', 'd1')).toBe('running');
      // "When available": the move may go, unencrypted, and the pre-flight says so.
      for (const h of ['lab1', 'lab2'])
        expect((await ferry(home, ['host', 'settings', h, '--set', 'encryption=when-available'])).code).toBe(
          0,
        );
      const relaxed = JSON.parse(
        (await ferry(home, ['move', 'd1', '--to', 'lab2', '--check', '--json'])).stdout,
      ) as {
        errors: unknown[];
        warnings: { code: string }[];
      };
      expect(relaxed.errors).toEqual([]);
      expect(relaxed.warnings.map((w) => w.code)).toContain('unencrypted');
    } finally {
      fs.renameSync(`${cert}.away`, cert);
      for (const h of ['lab1', 'lab2'])
        await ferry(home, ['host', 'settings', h, '--set', 'encryption=required']);
    }
  });

  it('raises libvirt’s maximum downtime while a move does not converge, then aborts at the ceiling', async () => {
    // 16 MiB rewritten ten times a second over an 8 MiB/s link: each pass leaves ~2 s of downtime
    // (over TCP/IP: xbzrle would send only the few changed bytes of each page and converge).
    const c = await ferry(home, [
      'vm',
      'create',
      'cv',
      '--host',
      'lab1',
      '--memory',
      '128',
      '--lab-guest',
      '--working-set',
      '16',
      '--dirty-rate',
      '160',
    ]);
    expect(c.code, c.stderr).toBe(0);
    expect((await ferry(home, ['vm', 'start', 'cv'])).code).toBe(0);
    expect((await ferry(home, ['host', 'settings', 'lab1', '--set', 'downtimeCeilingMs=400'])).code).toBe(0);
    const r = await ferry(home, [
      'move',
      'cv',
      '--to',
      'lab2',
      '--performance',
      'tcp',
      '--bandwidth',
      '8',
      '--downtime',
      '100',
      '--convergence',
      'raise-downtime',
      '--json',
    ]);
    const events = moveEvents(r.stdout);
    const steps = events.flatMap((e) => (e.type === 'escalation' ? [e.step] : []));
    expect(steps).toEqual(['raise-downtime', 'raise-downtime', 'abort']);
    const raised = events.flatMap((e) => (e.type === 'sample' ? [e.sample.downtimeLimitMs] : []));
    expect(raised).toContain(400);
    const s = summaryOf(events);
    expect(s.status).toBe('failed');
    expect(s.reason).toMatch(/did not converge/);
    expect(await virsh(lab1.uris.tcp, 'domstate', 'cv')).toBe('running');
    expect(await domainNames(lab2)).not.toContain('cv');
    expect((await ferry(home, ['vm', 'stop', 'cv', '--force'])).code).toBe(0);
  });

  it('refuses a move between a libvirt host and one of Ferry’s own hosts before anything changes', async () => {
    await new Inventory(home).addLocalHost('local');
    const r = await ferry(home, ['move', 'mv', '--to', 'local', '--check', '--json']);
    expect(r.code).toBe(2);
    const report = JSON.parse(r.stdout) as { errors: { code: string; message: string }[] };
    expect(report.errors.map((e) => e.code)).toEqual(['mixed-host-kinds']);
    expect(report.errors[0]!.message).toMatch(/same kind/);
    expect(await virsh(lab1.uris.tcp, 'domstate', 'mv')).toBe('running');
    expect((await ferry(home, ['host', 'remove', 'local'])).code).toBe(0);
  });
});

/** tcpdump on a lab machine's link (inside its network namespace). */
async function startCapture(m: LibvirtLabMachine, file: string): Promise<ChildProcess> {
  const child = spawn(
    'ip',
    ['netns', 'exec', m.netns, 'tcpdump', '-i', 'eth0', '-s', '0', '-U', '-w', file, 'tcp'],
    {
      stdio: ['ignore', 'ignore', 'pipe'],
    },
  );
  let err = '';
  child.stderr?.on('data', (c: Buffer) => (err += c.toString()));
  await waitFor(`tcpdump on ${m.hostname}`, async () => /listening on/.test(err) || null, 10_000, 50);
  return child;
}

async function stopCapture(child: ChildProcess): Promise<void> {
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGINT');
  await exited;
}
