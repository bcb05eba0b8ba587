// Convergence policies fed with pass figures as QEMU reports them.
import { describe, expect, it } from 'vitest';
import type { MoveOptions } from '../../engine/api/index.js';
import { ConvergenceWatch, type PassFigures } from '../../engine/migration/convergence.js';
import { planMigration } from '../../engine/qemu/migration.js';

const MiB = 1024 * 1024;
const options = (o: Partial<MoveOptions>): MoveOptions => ({
  performance: 'tcp',
  channels: 4,
  bandwidthMiBs: 32,
  downtimeMs: 300,
  downtimeCeilingMs: 2000,
  convergence: 'raise-downtime',
  compression: null,
  ...o,
});

/**
 * A guest rewriting 64 MiB per pass that would need 2500 ms of downtime, never shrinking; the target
 * follows each raise, as QEMU's does. Returns the steps taken, stopping after an abort.
 */
function stuckPasses(policy: MoveOptions['convergence'], passes: number): string[] {
  const watch = new ConvergenceWatch(options({ convergence: policy }));
  let limit = 300;
  const out: string[] = [];
  for (let pass = 1; pass <= passes && !out.includes('abort'); pass++) {
    const f: PassFigures = {
      passes: pass,
      remaining: 64 * MiB,
      expectedDowntimeMs: 2500,
      downtimeLimitMs: limit,
      throttlePct: 0,
    };
    const a = watch.observe(f);
    if (a.kind === 'raise-downtime') limit = a.downtimeMs;
    if (a.kind !== 'none') out.push(a.kind === 'raise-downtime' ? `raise:${a.downtimeMs}` : a.kind);
  }
  return out;
}

describe('convergence policies', () => {
  it('raise-downtime doubles the target up to the ceiling, then aborts', () => {
    expect(stuckPasses('raise-downtime', 20)).toEqual(['raise:600', 'raise:1200', 'raise:2000', 'abort']);
  });

  it('abort never raises anything', () => {
    expect(stuckPasses('abort', 6)).toEqual(['abort']);
  });

  it('postcopy raises first, then switches to post-copy once', () => {
    expect(stuckPasses('postcopy', 30)).toEqual(['raise:600', 'raise:1200', 'raise:2000', 'postcopy']);
  });

  it('throttle reports auto-converge steps and aborts only at the maximum throttle', () => {
    const w = new ConvergenceWatch(options({ convergence: 'throttle' }));
    const seen: string[] = [];
    let pass = 1;
    for (const pct of [0, 0, 20, 30, 30, 99, 99, 99, 99]) {
      const a = w.observe({
        passes: pass++,
        remaining: 64 * MiB,
        expectedDowntimeMs: 2500,
        downtimeLimitMs: 300,
        throttlePct: pct,
      });
      if (a.kind !== 'none') seen.push(a.kind);
    }
    expect(seen).toEqual(['throttle', 'throttle', 'throttle', 'abort']);
  });

  it('does nothing while passes shrink', () => {
    const w = new ConvergenceWatch(options({ convergence: 'abort' }));
    const actions = [64, 40, 20, 10, 5, 2].map(
      (m, i) =>
        w.observe({
          passes: i + 1,
          remaining: m * MiB,
          expectedDowntimeMs: m * 31,
          downtimeLimitMs: 300,
          throttlePct: 0,
        }).kind,
    );
    expect(actions.every((k) => k === 'none')).toBe(true);
  });
});

describe('migration plan', () => {
  it('sets max-bandwidth explicitly, also without a limit', () => {
    expect(planMigration(options({ bandwidthMiBs: null })).sourceParameters['max-bandwidth']).toBe(2 ** 40);
    expect(planMigration(options({ bandwidthMiBs: 100 })).sourceParameters['max-bandwidth']).toBe(100 * MiB);
  });
  it('Compression is multifd + zstd on both ends; TCP/IP is one stream', () => {
    const c = planMigration(options({ performance: 'compression', compression: 'zstd' }));
    expect(c.sourceCapabilities.multifd).toBe(true);
    expect(c.destCapabilities.multifd).toBe(true);
    expect(c.destParameters).toEqual({ 'multifd-channels': 4, 'multifd-compression': 'zstd' });
    const t = planMigration(options({ performance: 'tcp' }));
    expect(t.sourceCapabilities.multifd).toBe(false);
    expect(t.sourceCapabilities['pause-before-switchover']).toBe(true);
  });
  it('refuses post-copy with multifd', () => {
    expect(() => planMigration(options({ performance: 'multichannel', convergence: 'postcopy' }))).toThrow(
      /loses the guest/,
    );
    expect(
      planMigration(options({ performance: 'tcp', convergence: 'postcopy' })).destCapabilities[
        'postcopy-ram'
      ],
    ).toBe(true);
  });
});
