// Tuning a running move (issue 10, point 5) apart from QEMU: the event and the API's schemas, the
// engine's refusals and its inbox of tunes, and what the progress view's Tune controls make of a move
// (why a control is disabled, the chart's markers and the stepped bandwidth limit).
import { describe, expect, it } from 'vitest';
import {
  api,
  MigrationEventSchema,
  MigrationRecordSchema,
  type MigrationEvent,
  type MoveOptions,
} from '../../engine/api/index.js';
import { TuneInbox } from '../../engine/migration/live-migration.js';
import { tuneRefusal } from '../../engine/migration/manager.js';
import { bandwidthLimitPoints, chartSummary, tuneMarks } from '../../renderer/src/model/chart-data.js';
import {
  applyEvent,
  currentTuning,
  hydrate,
  moveFromListItem,
  newMove,
  postcopyDisabledReason,
  tuneUnavailable,
  type LiveMove,
} from '../../renderer/src/model/live-move.js';

const OPTIONS: MoveOptions = {
  performance: 'tcp',
  channels: 1,
  bandwidthMiBs: 8,
  downtimeMs: 300,
  downtimeCeilingMs: 2000,
  convergence: 'raise-downtime',
  compression: null,
};
const ID = 'm-20261129-120000-abcd';

function ev(e: Record<string, unknown>): MigrationEvent {
  return MigrationEventSchema.parse({ id: ID, at: 0, ...e });
}

/** A live move in the given phase, fed through the same events the engine sends. */
function moveIn(phase: number, options: MoveOptions = OPTIONS): LiveMove {
  const m = newMove(ID);
  applyEvent(m, ev({ type: 'started', vm: 'slow', from: 'lab1', to: 'lab2', kind: 'live', options }));
  for (let p = 1; p <= phase; p++)
    applyEvent(
      m,
      ev({ type: 'phase', at: p * 100, phase: p, name: PHASE_NAMES[p - 1], state: 'started', ms: null }),
    );
  return m;
}
const PHASE_NAMES = ['setup', 'memory', 'modified-pages', 'storage-handle', 'online', 'network-cleanup'];

describe('the tuned event and the tuneMove method', () => {
  it('parses a tune, strictly, and older records without one', () => {
    const e = ev({
      type: 'tuned',
      at: 4200,
      change: { bandwidthMiBs: 512, downtimeMs: 1500 },
      message: 'tuned by the administrator: bandwidth limit 8 → 512 MiB/s, downtime target 300 → 1500 ms',
    });
    expect(e).toMatchObject({ type: 'tuned', change: { bandwidthMiBs: 512, downtimeMs: 1500 } });
    expect(() => ev({ type: 'tuned', change: {}, message: 'x', extra: 1 })).toThrow();
    expect(() => ev({ type: 'tuned', change: { postcopy: false }, message: 'x' })).toThrow();
    expect(() => ev({ type: 'tuned', change: { bandwidthMiBs: 0 }, message: 'x' })).toThrow();
    // A record from before tuning existed: events without `change`.
    const old = {
      id: ID,
      vm: 'slow',
      from: 'lab1',
      to: 'lab2',
      kind: 'live',
      request: { vm: 'slow', to: 'lab2' },
      status: 'completed',
      reason: null,
      requestedAt: '2026-11-29T12:00:00.000Z',
      startedAt: null,
      endedAt: null,
      phase: 6,
      pass: 3,
      options: OPTIONS,
      preflight: null,
      phases: [],
      samples: [],
      events: [{ at: 5, type: 'info', message: 'listening' }],
      summary: null,
    };
    expect(MigrationRecordSchema.parse(old).events).toEqual([{ at: 5, type: 'info', message: 'listening' }]);
  });

  it('validates tuneMove: at least one change, known keys only, in range', () => {
    const input = api.tuneMove.input;
    expect(input.safeParse({ id: ID, bandwidthMiBs: 100 }).success).toBe(true);
    expect(input.safeParse({ id: ID, postcopy: true }).success).toBe(true);
    expect(input.safeParse({ id: ID }).success).toBe(false);
    expect(input.safeParse({ id: ID, downtimeMs: 0 }).success).toBe(false);
    expect(input.safeParse({ id: ID, bandwidthMiBs: 10, channels: 4 }).success).toBe(false);
  });
});

describe('the engine: when a move can be tuned', () => {
  it('refuses, with the reason, a move that is queued, over, past phase 3, before phase 2 or storage-only', () => {
    const bw = { bandwidthMiBs: 100 };
    expect(tuneRefusal('running', 2, 'live', OPTIONS, bw)).toBeNull();
    expect(tuneRefusal('running', 3, 'live', OPTIONS, bw)).toBeNull();
    expect(tuneRefusal('queued', 0, 'live', OPTIONS, bw)).toMatch(/still queued/);
    expect(tuneRefusal('completed', 6, 'live', OPTIONS, bw)).toBe('the move is already over (completed)');
    expect(tuneRefusal('running', 4, 'live', OPTIONS, bw)).toMatch(/^phase 4 \(Storage handle\) has begun/);
    expect(tuneRefusal('running', 1, 'live', OPTIONS, bw)).toMatch(/^it is in phase 1 \(Setup\)/);
    expect(tuneRefusal('running', 2, 'storage', OPTIONS, bw)).toMatch(/storage-only move/);
  });

  it('refuses post-copy without the capability, saying why (and why multifd never has it)', () => {
    const pc = { postcopy: true as const };
    expect(tuneRefusal('running', 2, 'live', { ...OPTIONS, convergence: 'postcopy' }, pc)).toBeNull();
    expect(tuneRefusal('running', 2, 'live', OPTIONS, pc)).toMatch(
      /^post-copy is not available: the move started without QEMU's post-copy capability \(convergence policy "raise-downtime"\)/,
    );
    expect(tuneRefusal('running', 2, 'live', { ...OPTIONS, performance: 'multichannel' }, pc)).toMatch(
      /post-copy with multifd loses the guest in QEMU 7\.2/,
    );
  });

  it("hands tunes to the move's loop only while it is open, and refuses the waiting ones when it closes", async () => {
    const inbox = new TuneInbox();
    await expect(inbox.submit({ downtimeMs: 500 })).rejects.toThrow(/phase 2\) has not begun yet/);
    inbox.open();
    const first = inbox.submit({ downtimeMs: 500 });
    const [t] = await inbox.take();
    expect(t!.change).toEqual({ downtimeMs: 500 });
    t!.resolve({ id: ID, bandwidthMiBs: 8, downtimeMs: 500, postcopy: false, message: 'ok' });
    await expect(first).resolves.toMatchObject({ downtimeMs: 500 });
    const waiting = inbox.submit({ bandwidthMiBs: 64 });
    await inbox.close('the memory copy is over');
    await expect(waiting).rejects.toThrow('cannot tune the move: the memory copy is over');
    inbox.open(); // never again once closed
    await expect(inbox.submit({ bandwidthMiBs: 64 })).rejects.toMatchObject({ code: 'not-supported' });
  });
});

describe('the progress view: Tune controls and chart markers', () => {
  it('says why tuning is unavailable: queued, before phase 2, after phase 3, over', () => {
    expect(tuneUnavailable(null)).toBe('loading…');
    const queued = newMove(ID);
    applyEvent(queued, ev({ type: 'queued', vm: 'slow', from: 'lab1', to: 'lab2', position: 1 }));
    expect(tuneUnavailable(queued)).toMatch(/still queued/);
    expect(tuneUnavailable(moveIn(1))).toBe('the memory copy (phase 2) has not begun yet');
    expect(tuneUnavailable(moveIn(2))).toBeNull();
    expect(tuneUnavailable(moveIn(3))).toBeNull();
    expect(tuneUnavailable(moveIn(4))).toBe(
      'phase 3 is over: the memory copy is done and the VM runs on lab2',
    );
    const over = moveIn(6);
    applyEvent(over, ev({ ...summary(), type: 'summary' }));
    expect(tuneUnavailable(over)).toBe('the move is over (completed)');
  });

  it('disables Switch to post-copy with the reason: no capability, already switched, the switch-over begun', () => {
    expect(postcopyDisabledReason(moveIn(2))).toMatch(
      /^the move started without QEMU's post-copy capability \(convergence policy "raise-downtime"\)/,
    );
    const pc = { ...OPTIONS, convergence: 'postcopy' as const };
    expect(postcopyDisabledReason(moveIn(2, pc))).toBeNull();
    expect(postcopyDisabledReason(moveIn(3, pc))).toMatch(/switch-over has begun \(phase 3\)/);
    expect(postcopyDisabledReason(moveIn(1, pc))).toBe('the memory copy (phase 2) has not begun yet');
    const switched = moveIn(2, pc);
    applyEvent(
      switched,
      ev({ type: 'escalation', at: 900, step: 'postcopy', message: 'switching to post-copy' }),
    );
    expect(postcopyDisabledReason(switched)).toBe('the move has already switched to post-copy');
  });

  it('keeps each tune in the log and as a chart marker, live and from the history, once', () => {
    const m = moveIn(2);
    const tuned = ev({
      type: 'tuned',
      at: 4200,
      change: { bandwidthMiBs: 512, downtimeMs: 1500 },
      message: 'tuned by the administrator: bandwidth limit 8 → 512 MiB/s, downtime target 300 → 1500 ms',
    });
    expect(applyEvent(m, tuned)).toBe(true);
    expect(applyEvent(m, tuned)).toBe(false); // twice around a reconnect
    expect(m.tunes).toEqual([
      {
        at: 4200,
        change: { bandwidthMiBs: 512, downtimeMs: 1500 },
        message: tuned.type === 'tuned' ? tuned.message : '',
      },
    ]);
    expect(m.log.at(-1)).toMatchObject({ level: 'tuned', at: 4200 });
    expect(currentTuning(m)).toEqual({ bandwidthMiBs: 512, downtimeMs: 1500 });
    expect(tuneMarks(m.tunes)).toEqual([{ x: 4.2, label: '512 MiB/s · 1500 ms' }]);
    // The bandwidth limit steps at the tune.
    expect(bandwidthLimitPoints(8, m.tunes, 10)).toEqual([
      { x: 0, y: 8 },
      { x: 4.2, y: 8 },
      { x: 4.2, y: 512 },
      { x: 10, y: 512 },
    ]);
    expect(bandwidthLimitPoints(null, [], 10)).toEqual([]);
    expect(
      chartSummary(
        'Throughput',
        [{ label: 'T', data: [{ x: 1, y: 2 }], color: '#000' }],
        [],
        tuneMarks(m.tunes),
      ),
    ).toMatch(/Tuned at 4\.2 s: 512 MiB\/s · 1500 ms\.$/);
    // From the history's record (older records have no `change`: a plain "tuned" marker).
    const item = {
      ...MigrationRecordSchema.parse({
        id: ID,
        vm: 'slow',
        from: 'lab1',
        to: 'lab2',
        kind: 'live',
        request: { vm: 'slow', to: 'lab2' },
        status: 'running',
        reason: null,
        requestedAt: '2026-11-29T12:00:00.000Z',
        startedAt: null,
        endedAt: null,
        phase: 2,
        pass: 1,
        options: { ...OPTIONS, convergence: 'postcopy' },
        preflight: null,
        phases: [],
        samples: [],
        events: [
          {
            at: 4200,
            type: 'tuned',
            message: tuned.type === 'tuned' ? tuned.message : '',
            change: { bandwidthMiBs: 512, downtimeMs: 1500 },
          },
          { at: 5000, type: 'tuned', message: 'tuned by the administrator: switching to post-copy' },
        ],
        summary: null,
      }),
    };
    const fromHistory = moveFromListItem(item);
    expect(tuneMarks(fromHistory.tunes)).toEqual([
      { x: 4.2, label: '512 MiB/s · 1500 ms' },
      { x: 5, label: 'tuned' },
    ]);
    // Merged with what the events brought: each tune once.
    expect(hydrate(m, item).tunes.map((t) => t.at)).toEqual([4200, 5000]);
  });
});

function summary(): Record<string, unknown> {
  return {
    status: 'completed',
    reason: null,
    vm: 'slow',
    from: 'lab1',
    to: 'lab2',
    kind: 'live',
    options: OPTIONS,
    totalMs: 5000,
    downtimeMs: 20,
    qemuDowntimeMs: 10,
    bytes: 1,
    passes: 3,
    storageCopyMs: null,
    phases: [],
    warnings: [],
  };
}
