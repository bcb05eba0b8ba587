// The API contract at its boundary: a settings change names only what changes, unknown keys are refused.
import { describe, expect, it } from 'vitest';
import { api, HostSettingsPatchSchema } from '../../engine/api/index.js';

describe('host settings patch', () => {
  it('keeps only the keys given (no defaults filled in for the others)', () => {
    expect(HostSettingsPatchSchema.parse({ performance: 'tcp' })).toEqual({ performance: 'tcp' });
    expect(api.updateHostSettings.input.parse({ host: 'lab1', patch: { downtimeMs: 500 } })).toEqual({
      host: 'lab1',
      patch: { downtimeMs: 500 },
    });
  });
  it('refuses unknown keys and bad values', () => {
    expect(api.updateHostSettings.input.safeParse({ host: 'lab1', patch: { turbo: true } }).success).toBe(
      false,
    );
    expect(api.updateHostSettings.input.safeParse({ host: 'lab1', patch: { channels: 0 } }).success).toBe(
      false,
    );
    expect(
      api.updateHostSettings.input.safeParse({ host: 'lab1', patch: { performance: 'warp' } }).success,
    ).toBe(false);
  });
});
