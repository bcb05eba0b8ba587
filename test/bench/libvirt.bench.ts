// libvirt benchmark: the same VM (lab guest, 512 MiB, 64 MiB working set at 50 MiB/s) moved back and forth
// between two libvirt lab hosts, in the same run, by `virsh migrate --live` with the equivalent options
// (what an administrator would use instead of Ferry: managed direct, client-driven, libvirt's v3
// protocol — the mode Ferry issues step by step) and by `ferry move`, alternating, for each performance
// option; first on the lab's own link, then on a 1 Gbit/s link shaped with tc (`--link-mbit 1000`).
// Everything goes through the command lines an administrator types (ferry, virsh), timed from process
// start to exit. Prints the figures side by side, plus Ferry's per-phase medians beside virsh's steps
// (from libvirt's own client log), so a slow step shows. Beside each downtime figure, the gap the lab
// guest itself saw in its clock around the move (see assets/lab-guest/README.md). Nothing is asserted
// about timings; the guest must keep beating with its memory intact after every move.
//
// Target (issue): Ferry's total ≤ 1.1× virsh's, and its downtime no worse.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, describe, expect, it } from 'vitest';
import type { MigrationEvent, Summary } from '../../engine/api/index.js';
import { maxGapAfter, parseLabGuestSerial, type LabGuestReport } from '../../engine/host/lab-guest.js';
import { REPO, tempHome } from '../helpers.js';

const isRoot = process.platform === 'linux' && process.getuid?.() === 0;
const FERRY_BIN = path.join(REPO, 'bin', 'ferry.js');
const ROUNDS = Number(process.env.FERRY_BENCH_ROUNDS ?? 3);
const OPTIONS = ['tcp', 'multichannel', 'compression'] as const;
type Option = (typeof OPTIONS)[number];
const VM = 'bench';
const MEMORY = 512;
const WORKING_SET = 64;
const DIRTY_RATE = 50;
/** One pass of the lab guest over its working set, in ms. */
const PASS_MS = (WORKING_SET * 1000) / DIRTY_RATE;

// ---- running commands, timed ------------------------------------------------------------------------

interface Run {
  code: number;
  stdout: string;
  stderr: string;
  /** Wall clock from spawning the process to its exit. */
  wallMs: number;
  /** Date.now() when it was spawned (libvirt's log timestamps are wall-clock too). */
  startedAt: number;
}

/** Runs a command with stdin closed (nothing can prompt), timing it from spawn to exit. */
function run(cmd: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs = 300_000): Promise<Run> {
  return new Promise((resolve) => {
    const startedAt = Date.now();
    const t0 = performance.now();
    const child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let wallMs = 0;
    let code = 0;
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', (err) => {
      stderr += String(err);
      code = 127;
    });
    child.on('exit', (c, sig) => {
      wallMs = performance.now() - t0;
      code = c ?? (sig ? 128 : 1);
    });
    child.on('close', () => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr, wallMs: Math.round(wallMs), startedAt });
    });
  });
}

function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env = { ...process.env, ...extra };
  delete env.LIBVIRT_DEFAULT_URI;
  delete env.VIRSH_DEFAULT_CONNECT_URI;
  return env;
}

const ferry = (home: string, args: string[]): Promise<Run> =>
  run(process.execPath, [FERRY_BIN, ...args], cleanEnv({ FERRY_HOME: home }));

async function ok(r: Promise<Run>, what: string): Promise<Run> {
  const done = await r;
  expect(done.code, `${what}: ${done.stderr.trim()}`).toBe(0);
  return done;
}

// ---- the labs -----------------------------------------------------------------------------------------

interface LabHost {
  name: string;
  uri: string;
  migrationAddress: string;
}

interface Lab {
  home: string;
  hosts: Record<string, LabHost>;
  /** Where the VM runs now. */
  at: string;
}

/** Every lab home made by this file: each gets `ferry lab down` in afterAll, whatever happened. */
const homes: string[] = [];

async function labUp(label: string, linkMbit: number | null): Promise<Lab> {
  const home = tempHome(label);
  homes.push(home);
  const link = linkMbit ? ['--link-mbit', String(linkMbit)] : [];
  await ok(ferry(home, ['lab', 'up', '--libvirt', '--hosts', '2', ...link]), 'ferry lab up --libvirt');
  const list = JSON.parse((await ok(ferry(home, ['host', 'list', '--json']), 'ferry host list')).stdout) as {
    name: string;
    uri: string;
    migrationAddress: string;
  }[];
  const hosts: Record<string, LabHost> = {};
  for (const h of list) hosts[h.name] = { name: h.name, uri: h.uri, migrationAddress: h.migrationAddress };
  expect(Object.keys(hosts).sort()).toEqual(['lab1', 'lab2']);
  await ok(
    ferry(home, [
      'vm',
      'create',
      VM,
      '--host',
      'lab1',
      '--memory',
      String(MEMORY),
      '--lab-guest',
      '--working-set',
      String(WORKING_SET),
      '--dirty-rate',
      String(DIRTY_RATE),
    ]),
    'ferry vm create',
  );
  await ok(ferry(home, ['vm', 'start', VM]), 'ferry vm start');
  const lab: Lab = { home, hosts, at: 'lab1' };
  // The guest must be dirtying its working set before the first move.
  await waitForPass(lab, 2);
  return lab;
}

// ---- the guest ----------------------------------------------------------------------------------------

async function serial(lab: Lab): Promise<LabGuestReport> {
  return parseLabGuestSerial((await ok(ferry(lab.home, ['vm', 'serial', VM]), 'ferry vm serial')).stdout);
}

const lastPass = (r: LabGuestReport): number => r.heartbeats.at(-1)?.pass ?? 0;

async function waitForPass(lab: Lab, pass: number, timeoutMs = 60_000): Promise<LabGuestReport> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await serial(lab);
    if (lastPass(r) >= pass) return r;
    if (Date.now() > deadline)
      throw new Error(`the lab guest did not reach pass ${pass} (at ${lastPass(r)})\n${await stuck(lab)}`);
    await sleep(300);
  }
}

/** What a guest that stopped beating is doing: libvirt's state of it and where its CPU is. */
async function stuck(lab: Lab): Promise<string> {
  const uri = lab.hosts[lab.at]!.uri;
  const out: string[] = [];
  for (const args of [
    ['domstate', VM, '--reason'],
    ['qemu-monitor-command', VM, '--hmp', 'info status'],
    ['qemu-monitor-command', VM, '--hmp', 'info registers'],
    ['qemu-monitor-command', VM, '--hmp', 'info migrate'],
    ['qemu-monitor-command', VM, '--hmp', 'xp /24xw $esp'],
  ]) {
    const r = await run('virsh', ['-c', uri, ...args], cleanEnv(), 20_000);
    out.push(`$ virsh ${args.join(' ')} (on ${lab.at})\n${r.stdout.trim()}${r.stderr.trim()}`);
  }
  const log = (await ferry(lab.home, ['vm', 'serial', VM])).stdout.split('\n').slice(-8).join('\n');
  return `${out.join('\n')}\n$ ferry vm serial (last lines)\n${log}`;
}

/**
 * After a move: the guest beats again on the destination (a pass newer than any in the log when the move
 * ended, so written after the source was gone), never rebooted, and found no memory error. Returns its
 * report: its STALE lines (a write of its CPU missing from memory after a move, QEMU's doing, seen with
 * virsh and Ferry alike) are counted per mover and printed, not failed on.
 */
async function expectGuestHealthy(lab: Lab, what: string): Promise<LabGuestReport> {
  const after = await serial(lab);
  const r = await waitForPass(lab, lastPass(after) + 1, 10 * PASS_MS + 10_000);
  expect(r.boots, `${what}: the guest booted again`).toBe(1);
  expect(r.mismatches, `${what}: memory mismatches`).toEqual([]);
  expect(r.faults, `${what}: guest faults`).toEqual([]);
  expect(
    r.heartbeats.filter((h) => h.errors !== 0),
    `${what}: heartbeats with errors`,
  ).toEqual([]);
  expect(r.heartbeats.at(-1)!.errors, what).toBe(0);
  return r;
}

/**
 * The longest gap the guest saw in its own clock after pass `passBefore`, once it has printed a heartbeat
 * more than 2.5 s after `since` (host time, after the move ended): it reports a gap one to two seconds
 * after the gap ended. Null if it printed none (an older image).
 */
async function guestGap(lab: Lab, passBefore: number, since: number): Promise<number | null> {
  await sleep(Math.max(0, since + 2500 - Date.now()));
  const seen = lastPass(await serial(lab));
  const deadline = Date.now() + 10 * PASS_MS + 10_000;
  for (;;) {
    const r = await serial(lab);
    if (r.heartbeats.some((h) => h.pass > seen && h.gapMs !== undefined) || Date.now() > deadline)
      return maxGapAfter(r, passBefore);
    await sleep(300);
  }
}

// ---- virsh ----------------------------------------------------------------------------------------------

/** `virsh domjobinfo --completed` on the destination: libvirt's own figures for the finished migration. */
interface JobInfo {
  downtimeMs: number;
  elapsedMs: number;
  dataBytes: number;
  passes: number;
}

const UNITS: Record<string, number> = { B: 1, KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3, TiB: 1024 ** 4 };

function parseJobInfo(text: string): JobInfo {
  const field = (name: string): string => {
    const m = new RegExp(`^${name}:\\s+(.+?)\\s*$`, 'm').exec(text);
    if (!m) throw new Error(`no "${name}" in domjobinfo:\n${text}`);
    return m[1]!;
  };
  const ms = (name: string): number => Number(/^(\d+)\s*ms$/.exec(field(name))?.[1] ?? NaN);
  const size = /^([\d.]+)\s*(B|KiB|MiB|GiB|TiB)$/.exec(field('Data processed'));
  return {
    downtimeMs: ms('Total downtime'),
    elapsedMs: ms('Time elapsed'),
    dataBytes: size ? Number(size[1]) * UNITS[size[2]!]! : NaN,
    passes: Number(/^Iteration:\s+(\d+)/m.exec(text)?.[1] ?? NaN),
  };
}

async function destJobInfo(lab: Lab, dest: string): Promise<JobInfo> {
  const r = await ok(
    run('virsh', ['-c', lab.hosts[dest]!.uri, 'domjobinfo', VM, '--completed'], cleanEnv()),
    `virsh domjobinfo on ${dest}`,
  );
  return parseJobInfo(r.stdout);
}

/** What `ferry move --check` says Ferry will use, so virsh gets the same. */
interface Equivalent {
  tls: boolean;
  parallel: boolean;
  compression: string | null;
}

async function equivalentFor(lab: Lab, option: Option): Promise<Equivalent> {
  const to = lab.at === 'lab1' ? 'lab2' : 'lab1';
  const r = await ferry(lab.home, ['move', VM, '--to', to, '--performance', option, '--check', '--json']);
  expect(r.code, `ferry move --check: ${r.stderr}`).toBe(0);
  const report = JSON.parse(r.stdout) as { warnings: { code: string }[] };
  const codes = report.warnings.map((w) => w.code);
  // Compression on libvirt < 9.4 is xbzrle over one connection; from 9.4 zstd over parallel connections.
  const xbzrle = codes.includes('compression-xbzrle');
  return {
    tls: !codes.includes('unencrypted'),
    parallel: option === 'multichannel' || (option === 'compression' && !xbzrle),
    compression: option === 'compression' ? (xbzrle ? 'xbzrle' : 'zstd') : null,
  };
}

/** virsh's steps, from libvirt's client debug log (virDomainMigrateVersion3Full), in ms. */
interface VirshSteps {
  connect: number;
  beginPrepare: number;
  perform: number;
  finish: number;
  confirm: number;
  closeExit: number;
}

function parseVirshLog(file: string, startedAt: number, wallMs: number): VirshSteps | null {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return null;
  }
  const at = (re: RegExp): number | null => {
    for (const line of text.split('\n')) {
      if (!re.test(line)) continue;
      const m = /^(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d\.\d{3})\+0000:/.exec(line);
      if (m) return Date.parse(`${m[1]}T${m[2]}Z`);
    }
    return null;
  };
  const begin = at(/virDomainMigrateVersion3Full:\d+ : Begin3 /);
  const perform = at(/virDomainMigrateVersion3Full:\d+ : Perform3 /);
  const finish = at(/virDomainMigrateVersion3Full:\d+ : Finish3 /);
  const confirm = at(/virDomainMigrateVersion3Full:\d+ : Confirm3 /);
  const close = at(/ virConnectClose:\d+ /);
  if ([begin, perform, finish, confirm, close].some((t) => t === null)) return null;
  return {
    connect: begin! - startedAt,
    beginPrepare: perform! - begin!,
    perform: finish! - perform!,
    finish: confirm! - finish!,
    confirm: close! - confirm!,
    closeExit: startedAt + wallMs - close!,
  };
}

interface VirshRound {
  wallMs: number;
  job: JobInfo;
  steps: VirshSteps | null;
}

async function virshMove(lab: Lab, eq: Equivalent, tag: string): Promise<VirshRound> {
  const from = lab.hosts[lab.at]!;
  const to = lab.hosts[lab.at === 'lab1' ? 'lab2' : 'lab1']!;
  const args = [
    '-c',
    from.uri,
    'migrate',
    '--live',
    '--persistent',
    '--undefinesource',
    ...(eq.tls ? ['--tls'] : []),
    ...(eq.parallel ? ['--parallel', '--parallel-connections', '4'] : []),
    ...(eq.compression ? ['--compressed', '--comp-methods', eq.compression] : []),
    VM,
    to.uri,
    '--migrateuri',
    `tcp://${to.migrationAddress}`,
  ];
  // libvirt's client log of the public API calls only (a few dozen lines): it times virsh's own steps.
  const log = path.join(lab.home, `virsh-${tag}.log`);
  const r = await run(
    'virsh',
    args,
    cleanEnv({ LIBVIRT_LOG_FILTERS: '1:libvirt', LIBVIRT_LOG_OUTPUTS: `1:file:${log}` }),
  );
  expect(r.code, `virsh ${args.join(' ')}: ${r.stderr.trim()}`).toBe(0);
  lab.at = to.name;
  return {
    wallMs: r.wallMs,
    job: await destJobInfo(lab, to.name),
    steps: parseVirshLog(log, r.startedAt, r.wallMs),
  };
}

// ---- ferry ----------------------------------------------------------------------------------------------

interface FerryRound {
  wallMs: number;
  summary: Summary;
  /** When the move started after the pre-flight (the `started` event), ms from the move's t0. */
  startedAtMs: number;
  /** libvirt's figures for the same migration, read exactly as for virsh. */
  job: JobInfo;
  /** Convergence steps Ferry took (raise-downtime…): virsh takes none. */
  escalations: number;
}

async function ferryMove(lab: Lab, option: Option, eq: Equivalent): Promise<FerryRound> {
  const to = lab.at === 'lab1' ? 'lab2' : 'lab1';
  const r = await ferry(lab.home, ['move', VM, '--to', to, '--performance', option, '--json']);
  const events = r.stdout
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l) as MigrationEvent);
  const summary = events.at(-1) as Summary | undefined;
  expect(summary?.type, `ferry move: ${r.stderr}`).toBe('summary');
  expect(summary!.status, summary!.reason ?? r.stderr).toBe('completed');
  expect(r.code, r.stderr).toBe(0);
  lab.at = to;
  // The virsh rounds must have used what Ferry used.
  const o = summary!.options;
  expect(o, 'the summary names its options').not.toBeNull();
  expect(o!.encrypted ?? false, 'Ferry encrypted differently from the virsh rounds').toBe(eq.tls);
  if (eq.parallel) expect(o!.channels, 'Ferry used another number of channels').toBe(4);
  if (option === 'compression') expect(o!.compression).toBe(eq.compression);
  const started = events.find((e) => e.type === 'started');
  return {
    wallMs: r.wallMs,
    summary: summary!,
    startedAtMs: started?.at ?? 0,
    job: await destJobInfo(lab, to),
    escalations: events.filter((e) => e.type === 'escalation').length,
  };
}

// ---- figures --------------------------------------------------------------------------------------------

const median = (xs: number[]): number => {
  const v = xs.filter((x) => Number.isFinite(x));
  return v.length ? [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)]! : NaN;
};
const msText = (x: number): string => (Number.isFinite(x) ? `${Math.round(x)} ms` : 'n/a');
const mibs = (bytes: number, ms: number): number => (ms > 0 ? bytes / 1048576 / (ms / 1000) : NaN);
const rateText = (x: number): string => (Number.isFinite(x) ? `${x.toFixed(1)} MiB/s` : 'n/a');

const mainRows: string[][] = [
  [
    'scenario',
    'option',
    'virsh total (wall)',
    'ferry total (wall)',
    'ferry total (summary)',
    'ratio wall',
    'ratio summary',
    'virsh downtime',
    'virsh: guest saw',
    'ferry downtime (paused→resumed)',
    'ferry downtime (libvirt)',
    'ferry: guest saw',
    'virsh throughput',
    'ferry throughput (bytes/ph 2+3)',
    'ferry throughput (as virsh)',
  ],
];
const phaseRows: string[][] = [
  [
    'scenario',
    'option',
    'ferry: CLI (wall−total)',
    'pre-flight',
    '1 setup',
    '2 memory',
    '3 modified',
    '4 storage',
    '5 online',
    '6 cleanup',
    '| virsh: connect',
    'Begin+Prepare',
    'Perform',
    'Finish',
    'Confirm',
    'close+exit',
  ],
];
const notes: string[] = [];

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ')).join('\n');
}

afterAll(async () => {
  // The labs come down whatever happened (each `ferry lab down` kills its machines' QEMUs too).
  for (const home of homes) {
    const r = await ferry(home, ['lab', 'down']).catch((e: Error) => ({ code: 1, stderr: e.message }));
    if (r.code !== 0) console.error(`ferry lab down (${home}) failed: ${r.stderr}`);
  }
  if (mainRows.length === 1) return;
  console.log(
    `\nlibvirt benchmark: virsh migrate --live vs ferry move (lab guest, ${MEMORY} MiB, ${WORKING_SET} MiB ` +
      `working set at ${DIRTY_RATE} MiB/s; median of ${ROUNDS}; ratio = ferry / virsh, target ≤ 1.1)\n` +
      `${table(mainRows)}\n\nPer-step medians (ms)\n${table(phaseRows)}\n` +
      (notes.length ? `\n${notes.join('\n')}\n` : ''),
  );
});

async function compare(scenario: string, lab: Lab): Promise<void> {
  for (const option of OPTIONS) {
    const eq = await equivalentFor(lab, option);
    notes.push(
      `${scenario} / ${option}: virsh with${eq.tls ? ' --tls' : 'out --tls'}` +
        `${eq.parallel ? ' --parallel --parallel-connections 4' : ''}` +
        `${eq.compression ? ` --compressed --comp-methods ${eq.compression}` : ''}`,
    );
    const virsh: VirshRound[] = [];
    const fer: FerryRound[] = [];
    const guestSaw = { virsh: [] as number[], ferry: [] as number[] };
    const lostWrites = { virsh: 0, ferry: 0 };
    for (let i = 0; i < ROUNDS; i++) {
      // Alternate which goes first, so neither always moves in the same direction.
      const order = i % 2 === 0 ? (['virsh', 'ferry'] as const) : (['ferry', 'virsh'] as const);
      for (const who of order) {
        const what = `${scenario} ${option} round ${i + 1} ${who} ${lab.at}→${lab.at === 'lab1' ? 'lab2' : 'lab1'}`;
        const before = await serial(lab);
        const passBefore = lastPass(before);
        if (who === 'virsh')
          virsh.push(await virshMove(lab, eq, `${scenario}-${option}-${i}`.replace(/\W+/g, '-')));
        else fer.push(await ferryMove(lab, option, eq));
        guestSaw[who].push((await guestGap(lab, passBefore, Date.now())) ?? NaN);
        const after = await expectGuestHealthy(lab, what);
        if (after.stale.length > before.stale.length) lostWrites[who]++;
      }
    }
    const vTotal = median(virsh.map((v) => v.wallMs));
    const fWall = median(fer.map((f) => f.wallMs));
    const fTotal = median(fer.map((f) => f.summary.totalMs));
    const phase = (n: number): number => median(fer.map((f) => f.summary.phases[n - 1]?.ms ?? NaN));
    const vStep = (k: keyof VirshSteps): number => median(virsh.map((v) => (v.steps ? v.steps[k] : NaN)));
    mainRows.push([
      scenario,
      option === 'compression' && eq.compression ? `compression (${eq.compression})` : option,
      msText(vTotal),
      msText(fWall),
      msText(fTotal),
      `${(fWall / vTotal).toFixed(2)}×`,
      `${(fTotal / vTotal).toFixed(2)}×`,
      msText(median(virsh.map((v) => v.job.downtimeMs))),
      msText(median(guestSaw.virsh)),
      msText(median(fer.map((f) => f.summary.downtimeMs ?? NaN))),
      msText(median(fer.map((f) => f.summary.qemuDowntimeMs ?? NaN))),
      msText(median(guestSaw.ferry)),
      rateText(median(virsh.map((v) => mibs(v.job.dataBytes, v.job.elapsedMs)))),
      rateText(
        median(
          fer.map((f) =>
            mibs(f.summary.bytes, (f.summary.phases[1]?.ms ?? 0) + (f.summary.phases[2]?.ms ?? 0)),
          ),
        ),
      ),
      rateText(median(fer.map((f) => mibs(f.job.dataBytes, f.job.elapsedMs)))),
    ]);
    phaseRows.push([
      scenario,
      option,
      msText(median(fer.map((f) => f.wallMs - f.summary.totalMs))),
      msText(median(fer.map((f) => f.startedAtMs))),
      ...[1, 2, 3, 4, 5, 6].map((n) => msText(phase(n))),
      `| ${msText(vStep('connect'))}`,
      msText(vStep('beginPrepare')),
      msText(vStep('perform')),
      msText(vStep('finish')),
      msText(vStep('confirm')),
      msText(vStep('closeExit')),
    ]);
    // Every round, for whoever wants to see the spread behind the medians.
    notes.push(
      `  rounds: virsh wall ${virsh.map((v) => v.wallMs).join('/')} ms, downtime ${virsh.map((v) => v.job.downtimeMs).join('/')} ms; ` +
        `ferry wall ${fer.map((f) => f.wallMs).join('/')} ms, summary ${fer.map((f) => f.summary.totalMs).join('/')} ms, ` +
        `downtime ${fer.map((f) => f.summary.downtimeMs).join('/')} ms (libvirt ${fer.map((f) => f.summary.qemuDowntimeMs).join('/')}), ` +
        `guest saw virsh ${guestSaw.virsh.join('/')} ms, ferry ${guestSaw.ferry.join('/')} ms, ` +
        `passes virsh ${virsh.map((v) => v.job.passes).join('/')} ferry ${fer.map((f) => f.summary.passes).join('/')}, ferry escalations ${fer.map((f) => f.escalations).join('/')}, ` +
        `moves after which the guest found a lost write: virsh ${lostWrites.virsh}/${ROUNDS}, ferry ${lostWrites.ferry}/${ROUNDS}`,
    );
  }
}

describe.skipIf(!isRoot)('libvirt benchmark: virsh migrate vs ferry move (root, libvirt lab)', () => {
  it('on the lab link (no shaping)', { timeout: 300_000 + ROUNDS * 300_000 }, async () => {
    await compare('lab link', await labUp('bench-lv', null));
  });

  it('on a 1 Gbit/s link shaped with tc', { timeout: 300_000 + ROUNDS * 300_000 }, async () => {
    await compare('1 Gbit/s link', await labUp('bench-lv-1g', 1000));
  });
});
