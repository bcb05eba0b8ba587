// Migration benchmark: for the same VM on the same machine in one run, a raw QMP migration (only QEMU's
// own commands, the baseline) beside `ferry move`, for each performance option; then the same over a
// 1 Gbit/s link shaped with tc between two network namespaces, where the link and not QEMU is the
// limit (needs root). Prints the figures side by side. Each move's downtime three ways: QEMU's own
// figure, the guest-paused figure (Ferry: source stopped → destination running), and the gap the lab
// guest itself saw in its clock (measured against the RTC, which follows the host's clock; see
// assets/lab-guest/README.md).
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, describe, expect, it } from 'vitest';
import type { MoveOptions, PerformanceOption, VmConfig } from '../../engine/api/index.js';
import { Inventory } from '../../engine/host/inventory.js';
import { maxGapAfter, parseLabGuestSerial, type LabGuestReport } from '../../engine/host/lab-guest.js';
import { labGuestImage } from '../../engine/host/store.js';
import { MigrationManager } from '../../engine/migration/manager.js';
import { qemuArgv } from '../../engine/qemu/argv.js';
import { capabilityList, planMigration } from '../../engine/qemu/migration.js';
import { connectWhenReady, killQemu, spawnDetached } from '../../engine/qemu/process.js';
import { guestReport, tempHome, waitForPasses } from '../helpers.js';

const OPTIONS: PerformanceOption[] = ['tcp', 'compression', 'multichannel'];
const ROUNDS = Number(process.env.FERRY_BENCH_ROUNDS ?? 3);
const MEMORY = 1024;
const WORKING_SET = 64;
const rows: string[][] = [];
const BOOT_WAIT_MS = 3000;
const homes: Inventory[] = [];
/** Every round's guest-seen gaps, printed under the table (the table has medians). */
const gapNotes: string[] = [];

afterAll(async () => {
  for (const inv of homes) await inv.labDown().catch(() => undefined);
  if (rows.length === 0) return; // a filtered run (-t) that ran no raw-vs-ferry scenario
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  const text = rows.map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ')).join('\n');
  console.log(
    `\nMigration benchmark (${MEMORY} MiB VM, ${WORKING_SET} MiB working set at 50 MiB/s, median of ${ROUNDS})\n${text}\n` +
      `Downtime three ways: QEMU's own figure; guest paused (Ferry: source stopped → destination running); ` +
      `what the guest saw (the longest gap in its own clock around the move)\n${gapNotes.join('\n')}\n`,
  );
});

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
/** Median of the figures there are (a guest may report no gap), as text. */
const medianText = (xs: (number | null)[]): string => {
  const v = xs.filter((x): x is number => x !== null);
  return v.length ? `${median(v)} ms` : 'n/a';
};

/**
 * The longest gap the lab guest saw in its own clock after pass `passBefore`, once it has printed a
 * heartbeat more than 2.5 s after `since` (host time, after the move ended): it reports a gap one to two
 * seconds after the gap ended. Null if the guest printed none (an older image).
 */
async function guestGap(
  read: () => Promise<LabGuestReport>,
  passBefore: number,
  since: number,
): Promise<number | null> {
  await sleep(Math.max(0, since + 2500 - Date.now()));
  const seen = (await read()).heartbeats.at(-1)?.pass ?? 0;
  const deadline = Date.now() + 30_000;
  for (;;) {
    const r = await read();
    if (r.heartbeats.some((h) => h.pass > seen && h.gapMs !== undefined) || Date.now() > deadline)
      return maxGapAfter(r, passBefore);
    await sleep(200);
  }
}

function opts(performance: PerformanceOption, bandwidthMiBs: number | null): MoveOptions {
  return {
    performance,
    channels: 4,
    bandwidthMiBs,
    downtimeMs: 300,
    downtimeCeilingMs: 2000,
    convergence: 'raise-downtime',
    compression: performance === 'compression' ? 'zstd' : null,
  };
}

/** The baseline: two QEMUs and QMP only — what an administrator would script by hand. */
async function rawMigration(
  dir: string,
  vm: VmConfig,
  o: MoveOptions,
  listen: string,
  netns: { src?: string; dst?: string },
): Promise<{ totalMs: number; downtimeMs: number; wallMs: number; guestGapMs: number | null }> {
  fs.mkdirSync(dir, { recursive: true });
  const t0 = Date.now();
  const plan = planMigration(o);
  const paths = (side: string) => ({
    qmpSocket: `/tmp/fb-${process.pid}-${side}.qmp`,
    statusSocket: `/tmp/fb-${process.pid}-${side}.st`,
    serialLog: path.join(dir, `${side}.serial`),
    pidFile: path.join(dir, `${side}.pid`),
    labGuestKernel: labGuestImage(),
  });
  const start = async (side: 'src' | 'dst') => {
    const p = paths(side);
    for (const s of [p.qmpSocket, p.statusSocket]) fs.rmSync(s, { force: true });
    const argv = qemuArgv(vm, p, {
      accel: 'tcg',
      incoming: side === 'dst',
      paused: side === 'dst',
      prealloc: side === 'dst',
    });
    const ns = netns[side];
    const pid = ns
      ? await spawnDetached(
          'ip',
          ['netns', 'exec', ns, 'qemu-system-x86_64', ...argv],
          path.join(dir, `${side}.log`),
        )
      : await spawnDetached('qemu-system-x86_64', argv, path.join(dir, `${side}.log`));
    return {
      pid,
      qmp: await connectWhenReady(p.qmpSocket, pid, path.join(dir, `${side}.log`), 60_000),
      sock: p.qmpSocket,
    };
  };
  const src = await start('src');
  const dst = await start('dst');
  try {
    await sleep(BOOT_WAIT_MS); // let the guest boot and dirty its working set
    await dst.qmp.execute('migrate-set-capabilities', {
      capabilities: capabilityList(plan.destCapabilities),
    });
    if (Object.keys(plan.destParameters).length)
      await dst.qmp.execute('migrate-set-parameters', plan.destParameters);
    await dst.qmp.execute('migrate-incoming', { uri: `tcp:${listen}:0` });
    const port = (await dst.qmp.execute<{ 'socket-address': { port: string }[] }>('query-migrate'))[
      'socket-address'
    ][0]!.port;
    const caps = { ...plan.sourceCapabilities, 'pause-before-switchover': false };
    await src.qmp.execute('migrate-set-capabilities', { capabilities: capabilityList(caps) });
    await src.qmp.execute('migrate-set-parameters', plan.sourceParameters);
    await dst.qmp.execute('cont').catch(() => undefined); // autostart on arrival, as a plain migration does
    await src.qmp.execute('migrate', { uri: `tcp:${listen}:${port}` });
    let wallEnd = 0;
    for (;;) {
      const q = await src.qmp.execute<{ status: string; 'total-time'?: number; downtime?: number }>(
        'query-migrate',
      );
      if (q.status === 'failed') throw new Error('raw migration failed');
      if (q.status === 'completed' && !wallEnd) wallEnd = Date.now();
      // QEMU fills in total-time and downtime a moment after completion.
      if (q.status === 'completed' && q.downtime) {
        // The destination log holds only what the guest printed after the move, gap report included.
        const dstLog = paths('dst').serialLog;
        const guestGapMs = await guestGap(
          async () => parseLabGuestSerial(fs.existsSync(dstLog) ? fs.readFileSync(dstLog, 'utf8') : ''),
          0,
          Date.now(),
        );
        return {
          totalMs: q['total-time']!,
          downtimeMs: q.downtime,
          wallMs: wallEnd - t0 - BOOT_WAIT_MS,
          guestGapMs,
        };
      }
      await sleep(20);
    }
  } finally {
    await src.qmp.close();
    await dst.qmp.close();
    await killQemu(src.pid, src.sock);
    await killQemu(dst.pid, dst.sock);
  }
}

async function ferryRounds(
  inv: Inventory,
  performance: PerformanceOption,
  bandwidthMiBs: number | undefined,
): Promise<{ total: number; memory: number; down: number; qemuDown: number; guestGaps: (number | null)[] }> {
  const manager = new MigrationManager(inv);
  const totals: number[] = [];
  const downs: number[] = [];
  const qemuDowns: number[] = [];
  const memory: number[] = [];
  const guestGaps: (number | null)[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    const from = (await inv.locate('bench')).name;
    const to = from === 'lab1' ? 'lab2' : 'lab1';
    const passBefore = (await guestReport(inv, 'bench')).heartbeats.at(-1)?.pass ?? 0;
    const s = await (await manager.start({ vm: 'bench', to, performance, bandwidthMiBs })).done;
    expect(s.status, s.reason ?? '').toBe('completed');
    totals.push(s.totalMs);
    downs.push(s.downtimeMs ?? 0);
    qemuDowns.push(s.qemuDowntimeMs ?? 0);
    memory.push((s.phases[1]!.ms ?? 0) + (s.phases[2]!.ms ?? 0));
    // After the move's figures are taken: the wait for the guest's report is not part of the move.
    guestGaps.push(await guestGap(() => guestReport(inv, 'bench'), passBefore, Date.now()));
  }
  return {
    total: median(totals),
    memory: median(memory),
    down: median(downs),
    qemuDown: median(qemuDowns),
    guestGaps,
  };
}

async function labWithVm(label: string, link?: number): Promise<Inventory> {
  const inv = new Inventory(tempHome(label));
  homes.push(inv);
  await inv.labUp(2, link ? { linkMbit: link } : {});
  await inv.createVm({
    name: 'bench',
    host: 'lab1',
    memoryMiB: MEMORY,
    labGuest: { workingSetMiB: WORKING_SET, dirtyRateMiBs: 50 },
  });
  await (await inv.host('lab1')).startVm('bench');
  await waitForPasses(inv, 'bench', 2);
  return inv;
}

async function compare(
  scenario: string,
  inv: Inventory,
  listen: string,
  netns: { src?: string; dst?: string },
): Promise<void> {
  if (rows.length === 0)
    rows.push([
      'scenario',
      'option',
      'raw QMP: migrate',
      'raw: incl. QEMU starts',
      'raw downtime',
      'raw: guest saw',
      'ferry: phases 2+3',
      'ferry: all 6 phases',
      'ferry downtime (guest paused)',
      'ferry QEMU downtime',
      'ferry: guest saw',
    ]);
  const vm = await (await inv.locate('bench')).vmConfig('bench');
  for (const performance of OPTIONS) {
    const raws: { totalMs: number; downtimeMs: number; wallMs: number; guestGapMs: number | null }[] = [];
    for (let i = 0; i < ROUNDS; i++)
      raws.push(
        await rawMigration(
          path.join(inv.home, `raw-${performance}-${i}`),
          { ...vm, name: `raw${i}` },
          opts(performance, null),
          listen,
          netns,
        ),
      );
    const f = await ferryRounds(inv, performance, undefined);
    rows.push([
      scenario,
      performance,
      `${median(raws.map((r) => r.totalMs))} ms`,
      `${median(raws.map((r) => r.wallMs))} ms`,
      `${median(raws.map((r) => r.downtimeMs))} ms`,
      medianText(raws.map((r) => r.guestGapMs)),
      `${f.memory} ms`,
      `${f.total} ms`,
      `${f.down} ms`,
      `${f.qemuDown} ms`,
      medianText(f.guestGaps),
    ]);
    gapNotes.push(
      `${scenario} / ${performance}: raw QEMU downtime ${raws.map((r) => r.downtimeMs).join('/')} ms, guest saw ` +
        `${raws.map((r) => r.guestGapMs ?? 'n/a').join('/')} ms; ferry guest saw ${f.guestGaps.map((g) => g ?? 'n/a').join('/')} ms`,
    );
  }
}

const storageRows: string[][] = [];
afterAll(() => {
  if (storageRows.length === 0) return;
  const widths = storageRows[0]!.map((_, i) => Math.max(...storageRows.map((r) => r[i]!.length)));
  console.log(
    `\nShared-nothing move, 1 GiB disk full of data (loopback)\n${storageRows.map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ')).join('\n')}\n`,
  );
});

describe('migration benchmark', () => {
  it('shared-nothing: a VM with a 1 GiB disk, beside an offline qemu-img copy of the same disk', async () => {
    const inv = new Inventory(tempHome('bench-sn'));
    homes.push(inv);
    await inv.labUp(2);
    const dir = path.join(inv.labDir, 'lab1', 'sn');
    await inv.createVm({
      name: 'sn',
      host: 'lab1',
      memoryMiB: 512,
      storagePath: dir,
      disks: [{ kind: 'new', sizeGiB: 1 }],
      labGuest: { workingSetMiB: WORKING_SET, dirtyRateMiBs: 50 },
    });
    const disk = path.join(dir, 'disk0.qcow2');
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 1G', disk]);
    const t0 = Date.now();
    execFileSync('qemu-img', ['convert', '-O', 'qcow2', disk, path.join(inv.labDir, 'baseline-copy.qcow2')]);
    const offline = Date.now() - t0;
    await (await inv.host('lab1')).startVm('sn');
    await waitForPasses(inv, 'sn', 2);
    const s = await (
      await new MigrationManager(inv).start({
        vm: 'sn',
        to: 'lab2',
        includeStorage: true,
        performance: 'tcp',
      })
    ).done;
    expect(s.status, s.reason ?? '').toBe('completed');
    storageRows.push([
      'baseline: qemu-img convert (offline)',
      'ferry: disk copy (VM running)',
      'copy ÷ offline (target ≤ 2×)',
      'ferry: memory (phases 2+3)',
      'ferry: total',
      'ferry downtime',
    ]);
    storageRows.push([
      `${offline} ms`,
      `${s.storageCopyMs} ms`,
      `${((s.storageCopyMs ?? 0) / offline).toFixed(2)}×`,
      `${(s.phases[1]!.ms ?? 0) + (s.phases[2]!.ms ?? 0)} ms`,
      `${s.totalMs} ms`,
      `${s.downtimeMs} ms`,
    ]);
  });

  it('loopback, no bandwidth limit: raw QMP vs ferry move', async () => {
    const inv = await labWithVm('bench-loop');
    await compare('loopback', inv, '127.0.0.1', {});
  });

  it('1 Gbit/s link shaped with tc between two network namespaces (root only)', async (ctx) => {
    if (process.getuid?.() !== 0) {
      rows.push([
        '1 Gbit/s link',
        'not run: needs root for network namespaces',
        '',
        '',
        '',
        '',
        '',
        '',
        '',
        '',
        '',
      ]);
      ctx.skip();
    }
    const inv = await labWithVm('bench-link', 1000);
    const [a, b] = await inv.labHosts();
    await compare('1 Gbit/s link', inv, b!.migrationAddress, {
      src: a!.netns ?? undefined,
      dst: b!.netns ?? undefined,
    });
  });
});
