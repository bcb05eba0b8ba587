// The estimate before Finish (engine/migration/estimate.ts): numbers in, estimate out. Relations, not
// exact figures: a higher dirty rate or a slower link never makes a move shorter, and a move that will
// not converge says what would make it.
import { describe, expect, it } from 'vitest';
import {
  MoveEstimateSchema,
  type MigrationRecord,
  type MoveOptions,
  type PreflightReport,
  PreflightReportSchema,
} from '../../engine/api/index.js';
import {
  ESTIMATE_CONSTANTS,
  estimateMove,
  fixedCosts,
  type EstimateInput,
} from '../../engine/migration/estimate.js';

const MiB = 1024 * 1024;
const options = (o: Partial<MoveOptions> = {}): MoveOptions => ({
  performance: 'tcp',
  channels: 4,
  bandwidthMiBs: null,
  downtimeMs: 300,
  downtimeCeilingMs: 2000,
  convergence: 'raise-downtime',
  compression: null,
  ...o,
});
const input = (i: Partial<EstimateInput> = {}): EstimateInput => ({
  options: options(),
  memoryBytes: 1024 * MiB,
  dirtyBytesPerSec: 4 * MiB,
  dirtyRateWindowS: 1,
  zeroPageRatio: 0,
  compressionRatio: 1,
  linkBytesPerSec: 125_000_000, // a 1 Gbit/s lab link
  diskBytes: 0,
  costs: { overheadMs: 1000, switchoverMs: 30, from: 'constants' },
  ...i,
});

describe('the estimate before Finish', () => {
  it('a quiet VM on a 1 Gbit/s link converges: the first pass is its memory at the link rate', () => {
    const e = estimateMove(input());
    expect(MoveEstimateSchema.parse(e)).toEqual(e);
    expect(e).toMatchObject({ converges: true, step: 'none', fixes: [] });
    // 1 GiB at 125 MB/s ≈ 8.6 s, plus the fixed costs.
    expect(e.totalMs!).toBeGreaterThan(1000 + 8000);
    expect(e.totalMs!).toBeLessThan(1000 + 10_000);
    expect(e.downtimeMs!).toBeGreaterThanOrEqual(30);
    expect(e.downtimeMs!).toBeLessThanOrEqual(330);
    expect(e.bytes).toBeGreaterThan(1024 * MiB);
    expect(e.inputs).toMatchObject({
      dirtyBytesPerSec: 4 * MiB,
      linkBytesPerSec: 125_000_000,
      linkSource: 'lab-link',
      compressionRatio: 1,
    });
  });

  it('a higher dirty rate means more passes, more data and a longer move', () => {
    const low = estimateMove(input({ dirtyBytesPerSec: 4 * MiB }));
    const high = estimateMove(input({ dirtyBytesPerSec: 60 * MiB }));
    expect(high.converges).toBe(true);
    expect(high.passes).toBeGreaterThan(low.passes);
    expect(high.bytes).toBeGreaterThan(low.bytes);
    expect(high.totalMs!).toBeGreaterThan(low.totalMs!);
  });

  it('a pass re-sends at most what the guest uses: a small set rewritten fast converges by raising downtime', () => {
    // The bench's case: 512 MiB, ~64 MiB in use (the rest zero), 50 MiB/s of dirtying under a 40 MiB/s
    // limit. Passes cannot grow past the 64 MiB in use, so raising the downtime target does it.
    const e = estimateMove(
      input({
        memoryBytes: 512 * MiB,
        zeroPageRatio: 0.875,
        dirtyBytesPerSec: 50 * MiB,
        options: options({ bandwidthMiBs: 40 }),
      }),
    );
    expect(e).toMatchObject({ converges: true, step: 'raise-downtime' });
    expect(e.downtimeMs!).toBeLessThanOrEqual(2000 + 30);
    expect(e.totalMs!).toBeLessThan(60_000);
  });

  it('zero pages cost almost nothing: a mostly empty VM moves much faster', () => {
    const full = estimateMove(input());
    const empty = estimateMove(input({ zeroPageRatio: 0.95 }));
    expect(empty.totalMs!).toBeLessThan(full.totalMs! / 5);
    expect(empty.bytes).toBeLessThan(full.bytes / 10);
  });

  it('will not converge when the guest dirties faster than the bandwidth limit; says what would help', () => {
    const hot = { dirtyBytesPerSec: 40 * MiB, memoryBytes: 128 * MiB, zeroPageRatio: 0.5 };
    const e = estimateMove(input({ ...hot, options: options({ bandwidthMiBs: 8 }) }));
    expect(e).toMatchObject({ converges: false, totalMs: null, downtimeMs: null });
    expect(e.inputs).toMatchObject({ linkBytesPerSec: 8 * MiB, linkSource: 'bandwidth-limit' });
    expect(e.message).toMatch(/will not converge with the raise-downtime policy/);
    const bw = e.fixes.find((f) => f.kind === 'bandwidth');
    expect(bw?.value).toBeGreaterThan(8);
    expect(bw?.message).toMatch(/--bandwidth \d+/);
    // The higher limit it names does converge, and one below it does not.
    const at = (mibs: number) => estimateMove(input({ ...hot, options: options({ bandwidthMiBs: mibs }) }));
    expect(at(bw!.value as number).converges).toBe(true);
    expect(at((bw!.value as number) - 2).converges).toBe(false);
    const dt = e.fixes.find((f) => f.kind === 'downtime');
    expect(dt?.value).toBeGreaterThan(2000);
    expect(e.fixes.some((f) => f.kind === 'policy' && f.value === 'postcopy')).toBe(true);
    expect(e.step).toBe('raise-downtime');
  });

  it('abort policy: a downtime just above the target would do, so the step needed is raise-downtime', () => {
    // 1 GiB at 125 MB/s ≈ 8.6 s; 20 MiB/s dirtied in that is 172 MiB, 1.4 s to send: not within 300 ms,
    // and the passes shrink slowly.
    const e = estimateMove(
      input({ dirtyBytesPerSec: 110 * MiB, options: options({ convergence: 'abort' }) }),
    );
    expect(e.converges).toBe(false);
    expect(e.step).toBe('raise-downtime');
    expect(e.fixes.map((f) => f.kind)).toContain('downtime');
  });

  it('post-copy policy: a move that never converges by itself finishes with a short downtime', () => {
    const e = estimateMove(
      input({ dirtyBytesPerSec: 200 * MiB, options: options({ convergence: 'postcopy' }) }),
    );
    expect(e).toMatchObject({ converges: true, step: 'postcopy' });
    expect(e.downtimeMs!).toBeLessThan(100);
    expect(e.totalMs!).toBeGreaterThan(8000);
  });

  it('never suggests post-copy with multifd, but TCP/IP with post-copy', () => {
    const e = estimateMove(
      input({ dirtyBytesPerSec: 400 * MiB, options: options({ performance: 'multichannel' }) }),
    );
    expect(e.converges).toBe(false);
    const pc = e.fixes.find((f) => f.value === 'postcopy');
    expect(pc?.message).toMatch(/--performance tcp --convergence postcopy/);
  });

  it('Compression saves time on a link, not under a bandwidth limit (QEMU counts uncompressed bytes)', () => {
    const on = (o: Partial<MoveOptions>, i: Partial<EstimateInput> = {}) =>
      estimateMove(input({ compressionRatio: 3, options: options(o), ...i }));
    const tcp = on({});
    const zstd = on({ performance: 'compression', compression: 'zstd' });
    expect(zstd.inputs.compressionRatio).toBe(3);
    expect(zstd.totalMs!).toBeLessThan(tcp.totalMs! / 2);
    expect(zstd.wireBytes).toBeLessThan(tcp.wireBytes / 2);
    expect(tcp.inputs.compressionRatio).toBe(1);
    const capped = on({ bandwidthMiBs: 50 });
    const cappedZstd = on({ bandwidthMiBs: 50, performance: 'compression', compression: 'zstd' });
    expect(Math.abs(cappedZstd.totalMs! - capped.totalMs!)).toBeLessThan(capped.totalMs! * 0.05);
    expect(cappedZstd.wireBytes).toBeLessThan(capped.wireBytes / 2);
  });

  it('Multichannel: channels × a stream, up to the link', () => {
    const loop = { linkBytesPerSec: null, memoryBytes: 8192 * MiB };
    const one = estimateMove(input({ ...loop }));
    const four = estimateMove(input({ ...loop, options: options({ performance: 'multichannel' }) }));
    expect(one.inputs.linkSource).toBe('loopback');
    expect(four.inputs.effectiveBytesPerSec).toBeGreaterThan(one.inputs.effectiveBytesPerSec);
    expect(four.totalMs!).toBeLessThan(one.totalMs!);
    // On a 1 Gbit/s link one stream already fills it.
    const linkOne = estimateMove(input());
    const linkFour = estimateMove(input({ options: options({ performance: 'multichannel' }) }));
    expect(linkFour.inputs.effectiveBytesPerSec).toBe(linkOne.inputs.effectiveBytesPerSec);
  });

  it('shared-nothing: the disks are part of the data and the time', () => {
    const without = estimateMove(input());
    const withDisks = estimateMove(input({ diskBytes: 512 * MiB }));
    expect(withDisks.bytes - without.bytes).toBe(512 * MiB);
    expect(withDisks.totalMs!).toBeGreaterThan(without.totalMs! + 2000);
  });

  it('fixed costs come from past moves between own hosts, else from constants', () => {
    const rec = (totalMs: number, p2: number, p3: number, down: number, qemu: number): MigrationRecord =>
      ({
        id: 'm-x',
        vm: 'v',
        from: 'lab1',
        to: 'lab2',
        kind: 'live',
        status: 'completed',
        request: { vm: 'v', includeStorage: false },
        options: options(),
        summary: {
          totalMs,
          downtimeMs: down,
          qemuDowntimeMs: qemu,
          storageCopyMs: null,
          phases: [
            { phase: 1, name: 'setup', ms: 500 },
            { phase: 2, name: 'memory', ms: p2 },
            { phase: 3, name: 'modified-pages', ms: p3 },
          ],
        },
      }) as unknown as MigrationRecord;
    const own = new Set(['lab1', 'lab2']);
    expect(fixedCosts([], own, options(), false)).toEqual({
      overheadMs: ESTIMATE_CONSTANTS.overheadMs,
      switchoverMs: ESTIMATE_CONSTANTS.switchoverMs,
      from: 'constants',
    });
    const costs = fixedCosts(
      [rec(1500, 200, 100, 40, 5), rec(1700, 300, 100, 60, 5), rec(1600, 250, 50, 50, 5)],
      own,
      options(),
      false,
    );
    expect(costs).toEqual({ overheadMs: 1300, switchoverMs: 48, from: 'history' });
    // Moves between other hosts (libvirt's) do not count.
    expect(fixedCosts([rec(9000, 1, 1, 900, 1)], new Set(['a']), options(), false).from).toBe('constants');
  });

  it('older reports without an estimate still parse; a null estimate carries its reason', () => {
    const old: PreflightReport = { errors: [], warnings: [] };
    expect(PreflightReportSchema.parse(old)).toEqual(old);
    const libvirt = {
      errors: [],
      warnings: [],
      estimate: null,
      estimateNote: 'no estimate for libvirt hosts yet',
    };
    expect(PreflightReportSchema.parse(libvirt)).toEqual(libvirt);
    const e = estimateMove(input());
    expect(() => MoveEstimateSchema.parse({ ...e, extra: 1 })).toThrow();
  });
});
