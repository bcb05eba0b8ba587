// `ferry move`, `ferry cancel`, `ferry move-tune`, `ferry migrations`, `ferry queue` and `ferry host settings`.
import { Option, type Command } from 'commander';
import { z } from 'zod';
import {
  ConvergencePolicySchema,
  FerryError,
  HostSettingsSchema,
  PerformanceOptionSchema,
  PHASES,
  type HostSettings,
  type MigrationEvent,
  type MoveOptions,
  type MoveRequest,
  type PreflightReport,
  type Summary,
} from '../api/index.js';
import type { Inventory } from '../host/inventory.js';
import { planDrain, runDrain } from '../migration/drain.js';
import { recoverAbandonedMoves } from '../migration/libvirt-recovery.js';
import { MigrationManager } from '../migration/manager.js';
import type { Io } from './main.js';
import { ExitWith, int, table } from './util.js';

const MiB = 1024 * 1024;

function oneOf<T extends string>(schema: z.ZodType<T>, what: string) {
  return (value: string): T => {
    const r = schema.safeParse(value);
    if (!r.success) throw new FerryError('bad-input', `unknown ${what} "${value}"`);
    return r.data;
  };
}

/** Human lines for a terminal: phases as they start and end, figures as they come. */
function describe(e: MigrationEvent): string | null {
  switch (e.type) {
    case 'queued':
      return `queued: position ${e.position} (waiting for a free slot on ${e.from} or ${e.to})`;
    case 'started':
      if (e.kind === 'storage') return `moving ${e.vm}'s storage on ${e.from} (${e.id})`;
      return `moving ${e.vm} ${e.from} → ${e.to} (${e.id}): ${performanceText(e.options)}, bandwidth ${e.options.bandwidthMiBs ?? 'unlimited'}${e.options.bandwidthMiBs ? ' MiB/s' : ''}, downtime ${e.options.downtimeMs} ms, ${e.options.convergence}`;
    case 'phase':
      return e.state === 'started'
        ? `phase ${e.phase}/6 ${PHASES[e.phase - 1]!.title}…`
        : `phase ${e.phase}/6 ${PHASES[e.phase - 1]!.title} done in ${e.ms} ms`;
    case 'sample': {
      const s = e.sample;
      return `  pass ${s.pass}: sent ${(s.bytesSent / MiB).toFixed(1)} MiB, remaining ${(s.remainingBytes / MiB).toFixed(1)} MiB, ${s.throughputMiBs.toFixed(1)} MiB/s, dirty ${(s.dirtyBytesPerSec / MiB).toFixed(1)} MiB/s, expected downtime ${s.expectedDowntimeMs ?? '?'} ms`;
    }
    case 'storage-copy':
      return `  storage copy: ${e.disks.map((d) => `${d.id} ${(d.copied / MiB).toFixed(0)}/${(d.total / MiB).toFixed(0)} MiB`).join(', ')}`;
    case 'escalation':
      return `! ${e.step}: ${e.message}`;
    case 'log':
      return `${e.level === 'warn' ? 'warning: ' : ''}${e.message}`;
    case 'tuned':
      return `* ${e.message}`;
    case 'summary':
      return summaryText(e);
  }
}

function summaryText(s: Summary): string {
  if (s.status !== 'completed') return `${s.status}: ${s.reason ?? ''}`;
  if (s.kind === 'storage') {
    return `completed: ${s.vm}'s disks moved in ${(s.totalMs / 1000).toFixed(2)} s (copy ${s.storageCopyMs} ms); the VM kept running`;
  }
  const phases = s.phases.map((p) => `${p.phase}:${p.ms ?? '-'}ms`).join(' ');
  const copy = s.storageCopyMs !== null ? `, disk copy ${s.storageCopyMs} ms` : '';
  const cutover = s.cutover?.length
    ? `\ncut-over: ${s.cutover.map((c) => `${c.step} ${c.ms} ms`).join(', ')}`
    : '';
  const alive =
    s.guestAliveMs === undefined
      ? ''
      : s.guestAliveMs === null
        ? '\nguest: no heartbeat seen on the destination'
        : `\nguest: next heartbeat from ${s.to} ${s.guestAliveMs} ms after it resumed (once per pass; checked beside the phases)`;
  return `completed: ${s.vm} now runs on ${s.to} in ${(s.totalMs / 1000).toFixed(2)} s${copy}, downtime ${s.downtimeMs ?? '?'} ms, ${(s.bytes / MiB).toFixed(1)} MiB in ${s.passes} passes (${phases})${cutover}${alive}${s.warnings.length ? `\nwarnings: ${s.warnings.join('; ')}` : ''}`;
}

/** The estimate of a check, for a terminal: what to expect, its inputs, and what would help. */
export function estimateText(report: PreflightReport): string | null {
  const e = report.estimate;
  if (!e) return report.estimateNote ? `estimate: ${report.estimateNote}` : null;
  const i = e.inputs;
  const mbs = (b: number): string => `${(b / MiB).toFixed(1)} MiB/s`;
  const lines = [
    e.converges
      ? `estimate: ${((e.totalMs ?? 0) / 1000).toFixed(1)} s in all, ${e.downtimeMs} ms of downtime, ${(e.bytes / MiB).toFixed(1)} MiB to send (${(e.wireBytes / MiB).toFixed(1)} MiB over the link), ${e.step === 'none' ? 'converges' : `converges with ${e.step}`}`
      : `estimate: will NOT converge`,
    `  ${e.message}`,
    `  inputs: dirty ${mbs(i.dirtyBytesPerSec)} (over ${i.dirtyRateWindowS} s), link ${mbs(i.linkBytesPerSec)} (${i.linkSource}), moving ${mbs(i.effectiveBytesPerSec)}, compression ${i.compressionRatio}×, ${Math.round(i.zeroPageRatio * 100)} % zero pages, fixed costs ${i.overheadMs} ms + ${i.switchoverMs} ms paused (${i.costsFrom})`,
    ...e.fixes.map((f) => `  would converge with ${f.message}`),
  ];
  return lines.join('\n');
}

interface MoveFlags {
  to?: string;
  performance?: MoveRequest['performance'];
  channels?: number;
  bandwidth?: number;
  downtime?: number;
  convergence?: MoveRequest['convergence'];
  includeStorage?: boolean;
  storagePath?: string;
  diskPath?: string[];
  keepSource?: boolean;
  check?: boolean;
  json?: boolean;
}

/** --storage-path DIR, or --disk-path disk0=DIR … */
/** "compression (zstd) ×4", "compression (xbzrle)", "multichannel ×8", "tcp"; "encrypted" when it is. */
function performanceText(o: MoveOptions): string {
  const method = o.performance === 'compression' && o.compression ? ` (${o.compression})` : '';
  const channels = o.channels > 1 && o.performance !== 'tcp' ? ` ×${o.channels}` : '';
  return `${o.performance}${method}${channels}${o.encrypted ? ', encrypted' : ''}`;
}

function storageTargets(o: MoveFlags): Pick<MoveRequest, 'storagePath' | 'diskPaths'> {
  if (o.storagePath && o.diskPath)
    throw new FerryError('bad-input', 'use --storage-path or --disk-path, not both');
  if (o.storagePath) return { storagePath: o.storagePath };
  if (!o.diskPath) return {};
  const diskPaths: Record<string, string> = {};
  for (const kv of o.diskPath) {
    // Ferry's own disks are disk0, disk1…; a libvirt domain's are named by target (vda, sdb).
    const m = /^(disk\d+|[hsvx]d[a-z]{1,3})=(.+)$/.exec(kv);
    if (!m)
      throw new FerryError(
        'bad-input',
        `--disk-path takes DISK=DIR (e.g. disk0=/srv/vms or vda=/srv/vms), not "${kv}"`,
      );
    diskPaths[m[1]!] = m[2]!;
  }
  return { diskPaths };
}

function parseSetting(key: string, value: string): Partial<HostSettings> {
  const shape = HostSettingsSchema.shape;
  if (!(key in shape)) {
    throw new FerryError(
      'bad-input',
      `unknown setting "${key}"; settings are: ${Object.keys(shape).join(', ')}`,
    );
  }
  let raw: unknown = value;
  const bool = (v: string): boolean | string =>
    ['true', 'on', 'yes'].includes(v) ? true : ['false', 'off', 'no'].includes(v) ? false : v;
  switch (key) {
    case 'liveMigrationEnabled':
      raw = bool(value);
      break;
    case 'bandwidthMiBs':
      raw = ['none', 'unlimited', 'null'].includes(value)
        ? null
        : /^\d+$/.test(value)
          ? Number(value)
          : value;
      break;
    case 'incomingNetworks':
      raw =
        value === 'any'
          ? 'any'
          : value
              .split(',')
              .map((s) => s.trim())
              .filter(Boolean);
      break;
    case 'storageRoots':
      raw = value
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean);
      break;
    case 'qemuBinary':
      raw = value === 'none' || value === '' ? null : value;
      break;
    default:
      if (/^\d+$/.test(value)) raw = Number(value);
  }
  const field = shape[key as keyof typeof shape] as z.ZodType;
  const r = field.safeParse(raw);
  if (!r.success)
    throw new FerryError(
      'bad-input',
      `bad value for ${key}: "${value}" (${r.error.issues[0]?.message ?? 'invalid'})`,
    );
  return { [key]: r.data } as Partial<HostSettings>;
}

export function registerMigrationCommands(program: Command, io: Io, inv: Inventory, host: Command): void {
  const manager = (): MigrationManager => new MigrationManager(inv);
  const json = (v: unknown): void => io.out(JSON.stringify(v, null, 2) + '\n');
  const say = (s: string): void => io.err(s + '\n');

  /** Runs a move with live output; exit 0 completed, 2 refused, 1 otherwise. Ctrl-C cancels cleanly. */
  const runMove = async (m: MigrationManager, request: MoveRequest, asJson: boolean): Promise<Summary> => {
    const tty = !asJson && process.stderr.isTTY;
    let lastSampleLine = -Infinity;
    let id: string | null = null;
    const pending: MigrationEvent[] = [];
    const print = (e: MigrationEvent): void => {
      if (asJson) return io.out(JSON.stringify(e) + '\n');
      const line = describe(e);
      if (!line) return;
      if (e.type === 'sample' || e.type === 'storage-copy') {
        if (tty) return io.err(`\r\x1b[K${line}`);
        if (e.at - lastSampleLine < 1000) return; // a line a second off a terminal
        lastSampleLine = e.at;
      }
      io.err(`${tty ? '\r\x1b[K' : ''}${line}\n`);
    };
    const off = m.subscribe((e) => {
      if (id === null) pending.push(e);
      else if (e.id === id) print(e);
    });
    const started = await m.start(request);
    id = started.id;
    for (const e of pending.splice(0)) if (e.id === id) print(e);
    // Ctrl-C cancels cleanly while cancel is allowed; QEMU is never just killed.
    const onSigint = (): void => {
      void m.cancel(started.id).then((r) => {
        if (!asJson) say(r.accepted ? '\ncancelling…' : `\ncannot cancel: ${r.reason}`);
      });
    };
    process.on('SIGINT', onSigint);
    try {
      return await started.done;
    } finally {
      process.off('SIGINT', onSigint);
      off();
    }
  };
  const exitFor = (s: Summary): void => {
    if (s.status !== 'completed') throw new ExitWith(s.status === 'refused' ? 2 : 1);
  };
  const printReport = (report: PreflightReport, ok: string, asJson: boolean): void => {
    if (asJson) json(report);
    else {
      for (const e of report.errors) io.out(`error   ${e.code}: ${e.message}\n`);
      for (const w of report.warnings) io.out(`warning ${w.code}: ${w.message}\n`);
      if (report.errors.length === 0) io.out(`${ok}\n`);
      const line = estimateText(report);
      if (line) io.out(`${line}\n`);
    }
    if (report.errors.length > 0) throw new ExitWith(2);
  };

  program
    .command('move <vm>')
    .description('live-migrate a running VM to another host (with --include-storage: shared-nothing)')
    .option('--to <host>', 'destination host')
    .addOption(
      new Option('--performance <option>', 'tcp | compression | multichannel | rdma').argParser(
        oneOf(PerformanceOptionSchema, 'performance option'),
      ),
    )
    .addOption(
      new Option('--channels <n>', 'parallel connections for Compression / Multichannel').argParser(
        int(1, 64),
      ),
    )
    .addOption(
      new Option('--bandwidth <MiB/s>', 'bandwidth limit (also for the disk copy)').argParser(
        int(1, 1_000_000),
      ),
    )
    .addOption(new Option('--downtime <ms>', 'downtime target').argParser(int(1, 60_000)))
    .addOption(
      new Option('--convergence <policy>', 'abort | raise-downtime | postcopy | throttle').argParser(
        oneOf(ConvergencePolicySchema, 'convergence policy'),
      ),
    )
    .option('--include-storage', "shared-nothing: copy the VM's disks to the destination while it runs")
    .option('--storage-path <dir>', "with --include-storage: all of the VM's disks to this folder")
    .option('--disk-path <disk=dir...>', 'with --include-storage: a folder per disk, e.g. disk0=/srv/vm/a')
    .option('--keep-source', "with --include-storage: keep the source's disk files")
    .option('--check', 'print the pre-flight report only')
    .option('--json', 'one JSON object per line on stdout; the last is the summary')
    .action(async (vm: string, o: MoveFlags) => {
      if (!o.to) throw new FerryError('bad-input', 'choose the destination with --to HOST');
      if (!o.includeStorage && (o.storagePath || o.diskPath || o.keepSource)) {
        throw new FerryError(
          'bad-input',
          '--storage-path, --disk-path and --keep-source apply to --include-storage only',
        );
      }
      const request: MoveRequest = {
        vm,
        to: o.to,
        performance: o.performance,
        channels: o.channels,
        bandwidthMiBs: o.bandwidth,
        downtimeMs: o.downtime,
        convergence: o.convergence,
        includeStorage: !!o.includeStorage,
        keepSource: !!o.keepSource,
        ...storageTargets(o),
      };
      const m = manager();
      if (o.check) return printReport(await m.check(request), `ready: ${vm} can move to ${o.to}`, !!o.json);
      exitFor(await runMove(m, request, !!o.json));
    });

  program
    .command('move-storage <vm>')
    .description("move a running VM's disks to another folder on its host (it never stops)")
    .option('--storage-path <dir>', "all of the VM's disks to this folder")
    .option('--disk-path <disk=dir...>', 'a folder per disk, e.g. disk0=/srv/vm/a')
    .addOption(new Option('--bandwidth <MiB/s>', 'limit for the copy').argParser(int(1, 1_000_000)))
    .option('--check', 'print the pre-flight report only')
    .option('--json', 'one JSON object per line on stdout; the last is the summary')
    .action(async (vm: string, o: MoveFlags) => {
      if (!o.storagePath && !o.diskPath)
        throw new FerryError('bad-input', 'give --storage-path DIR or --disk-path DISK=DIR');
      const request: MoveRequest = { vm, kind: 'storage', bandwidthMiBs: o.bandwidth, ...storageTargets(o) };
      const m = manager();
      if (o.check) return printReport(await m.check(request), `ready: ${vm}'s storage can move`, !!o.json);
      exitFor(await runMove(m, request, !!o.json));
    });

  host
    .command('drain <host>')
    .description('move every running VM off a host (shared storage where possible, else with storage)')
    .option('--to <host>', 'destination for all of them')
    .option('--auto', 'choose destinations by free memory')
    .option('--plan', 'print the plan and stop')
    .option('--json', 'JSON on stdout: the plan, then (unless --plan) the summaries')
    .action(async (name: string, o: { to?: string; auto?: boolean; plan?: boolean; json?: boolean }) => {
      const m = manager();
      const plan = await planDrain(inv, m, name, o);
      if (!o.json) {
        if (plan.length === 0) say(`${name} runs no VMs: nothing to move`);
        else
          io.out(
            table([
              ['VM', 'MEMORY', 'TO', 'HOW', 'NOTE'],
              ...plan.map((p) => [p.vm, `${p.memoryMiB} MiB`, p.to ?? '-', p.mode, p.reason ?? '']),
            ]),
          );
      }
      if (o.plan) {
        if (o.json) json({ plan });
        return;
      }
      if (!o.json) {
        m.subscribe((e) => {
          if (e.type === 'queued' || e.type === 'started' || e.type === 'summary')
            say(`${e.id} ${describe(e) ?? ''}`);
        });
      }
      // Ctrl-C cancels what can still be cancelled and waits for the rest, never abandoning a move.
      const onSigint = (): void => {
        say('\nstopping the drain: cancelling moves that have not switched over…');
        void m.shutdown();
      };
      process.on('SIGINT', onSigint);
      const results = await runDrain(m, plan).finally(() => process.off('SIGINT', onSigint));
      if (o.json) json({ plan, results });
      const stays = plan.filter((p) => p.mode === 'stays');
      if (results.some((r) => r.status !== 'completed') || stays.length > 0) throw new ExitWith(1);
      if (!o.json) say(`${name} is drained: ${results.length} VM(s) moved`);
    });

  program
    .command('cancel <id>')
    .description('cancel a queued or running move (refused once phase 3 is over)')
    .action(async (id: string) => {
      const r = await manager().cancel(id);
      if (!r.accepted) throw new FerryError('cancel-refused', `cannot cancel ${id}: ${r.reason}`);
      say(`cancel requested for ${id}`);
    });

  program
    .command('move-tune <id>')
    .description('tune a running move in phases 2–3: bandwidth, downtime target, or switch to post-copy')
    .addOption(new Option('--bandwidth <MiB/s>', 'new bandwidth limit').argParser(int(1, 1_000_000)))
    .addOption(new Option('--downtime <ms>', 'new downtime target').argParser(int(1, 60_000)))
    .option('--postcopy', 'switch to post-copy (only a move started with --convergence postcopy)')
    .option('--json', 'the settings the move runs with now, as JSON on stdout')
    .action(
      async (
        id: string,
        o: { bandwidth?: number; downtime?: number; postcopy?: boolean; json?: boolean },
      ) => {
        const r = await manager().tune(id, {
          ...(o.bandwidth !== undefined ? { bandwidthMiBs: o.bandwidth } : {}),
          ...(o.downtime !== undefined ? { downtimeMs: o.downtime } : {}),
          ...(o.postcopy ? { postcopy: true as const } : {}),
        });
        if (o.json) return json(r);
        say(`${id}: ${r.message}`);
        io.out(
          `bandwidth ${r.bandwidthMiBs === null ? 'unlimited' : `${r.bandwidthMiBs} MiB/s`}, downtime target ${r.downtimeMs} ms${r.postcopy ? ', post-copy' : ''}\n`,
        );
      },
    );

  program
    .command('migrations')
    .description('the history of moves, newest first')
    .option('--json', 'JSON on stdout')
    .action(async (o: { json?: boolean }) => {
      await recoverAbandonedMoves(inv); // a move whose Ferry process died is settled first
      const list = await manager().history.list();
      if (o.json) return json(list.map(({ samples: _s, ...rest }) => rest));
      if (list.length === 0) return say('no moves yet');
      io.out(
        table([
          ['ID', 'VM', 'FROM', 'TO', 'STATUS', 'TIME', 'DOWNTIME', 'OPTION', 'REASON'],
          ...list.map((r) => [
            r.id,
            r.vm,
            r.from,
            r.to,
            r.status,
            r.summary ? `${(r.summary.totalMs / 1000).toFixed(1)} s` : '',
            r.summary?.downtimeMs != null ? `${r.summary.downtimeMs} ms` : '',
            r.options?.performance ?? '',
            r.reason ?? '',
          ]),
        ]),
      );
    });

  program
    .command('queue')
    .description('moves running and waiting for a slot')
    .option('--json', 'JSON on stdout')
    .action(async (o: { json?: boolean }) => {
      const q = await manager().queue();
      if (o.json) return json(q);
      if (q.length === 0) return say('no moves running or queued');
      io.out(
        table([
          ['ID', 'VM', 'FROM', 'TO', 'STATE', 'POSITION'],
          ...q.map((e) => [e.id, e.vm, e.from, e.to, e.state, e.position ? String(e.position) : '']),
        ]),
      );
    });

  host
    .command('settings <host>')
    .description("show or change a host's settings (Hyper-V Settings)")
    .option('--set <key=value...>', 'change settings, e.g. --set performance=tcp bandwidthMiBs=100')
    .option('--json', 'JSON on stdout')
    .action(async (name: string, o: { set?: string[]; json?: boolean }) => {
      const h = await inv.host(name);
      let settings = await h.settings();
      if (o.set?.length) {
        let patch: Partial<HostSettings> = {};
        for (const kv of o.set) {
          const eq = kv.indexOf('=');
          if (eq <= 0) throw new FerryError('bad-input', `--set takes key=value, not "${kv}"`);
          patch = { ...patch, ...parseSetting(kv.slice(0, eq), kv.slice(eq + 1)) };
        }
        settings = await h.updateSettings(patch);
        if (!o.json) say(`updated ${Object.keys(patch).join(', ')} on ${name}`);
      }
      if (o.json) return json(settings);
      io.out(
        table(
          Object.entries(settings).map(([k, v]) => [
            k,
            v === null ? 'none' : Array.isArray(v) ? v.join(', ') : String(v),
          ]),
        ),
      );
    });
}
