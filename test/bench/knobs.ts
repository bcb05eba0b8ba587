// The migration knobs each side of the bench really ran with: QEMU's own query-migrate-capabilities and
// query-migrate-parameters on the source just before (raw) or just as (Ferry) it migrates, plus the
// accelerator and whether the stream went through Ferry's multifd relay. The table prints only what
// differs, so a knob Ferry sets and the baseline does not (or the other way round) cannot go unsaid.
import fs from 'node:fs';
import type { Inventory } from '../../engine/host/inventory.js';
import { LocalContext } from '../../engine/host/local/context.js';
import { QmpClient } from '../../engine/qemu/qmp.js';

export interface Knobs {
  accel: string;
  relay: boolean;
  capabilities: Record<string, boolean>;
  parameters: Record<string, unknown>;
}

/** Capabilities and parameters as QEMU reports them on this monitor. */
export async function queryKnobs(qmp: QmpClient): Promise<Pick<Knobs, 'capabilities' | 'parameters'>> {
  const caps = await qmp.execute<{ capability: string; state: boolean }[]>('query-migrate-capabilities');
  const parameters = await qmp.execute<Record<string, unknown>>('query-migrate-parameters');
  return { capabilities: Object.fromEntries(caps.map((c) => [c.capability, c.state])), parameters };
}

const runtime = async (inv: Inventory, host: string, vm: string): Promise<Record<string, unknown> | null> => {
  const ctx = new LocalContext((await inv.host(host)).record);
  try {
    return JSON.parse(fs.readFileSync(ctx.runtimePath(vm), 'utf8')) as Record<string, unknown>;
  } catch {
    return null;
  }
};

/**
 * A Ferry move's knobs, read while it runs: through the source QEMU's second (status) monitor, so
 * Ferry's own connection is not disturbed; the relay from the destination's runtime record.
 */
export async function ferryKnobs(inv: Inventory, vm: string, from: string, to: string): Promise<Knobs> {
  const src = await runtime(inv, from, vm);
  const dst = await runtime(inv, to, vm);
  if (!src || typeof src.statusSocket !== 'string') throw new Error(`no runtime record for ${vm} on ${from}`);
  const qmp = await QmpClient.connect(src.statusSocket, { timeoutMs: 3000 });
  try {
    return {
      accel: String(src.accel),
      relay: typeof dst?.relayPid === 'number',
      ...(await queryKnobs(qmp)),
    };
  } finally {
    await qmp.close();
  }
}

const show = (v: unknown): string =>
  v === '' ? '""' : typeof v === 'object' ? JSON.stringify(v) : String(v);

/** `knob raw→ferry` for every knob whose value differs, in a stable order. */
export function knobDiff(raw: Knobs, ferry: Knobs): string[] {
  const out: string[] = [];
  if (raw.accel !== ferry.accel) out.push(`accel ${raw.accel}→${ferry.accel}`);
  if (raw.relay !== ferry.relay)
    out.push(`multifd relay ${raw.relay ? 'yes' : 'no'}→${ferry.relay ? 'yes' : 'no'}`);
  for (const k of [...new Set([...Object.keys(raw.capabilities), ...Object.keys(ferry.capabilities)])].sort())
    if (raw.capabilities[k] !== ferry.capabilities[k])
      out.push(`${k} ${show(raw.capabilities[k] ?? false)}→${show(ferry.capabilities[k] ?? false)}`);
  for (const k of [...new Set([...Object.keys(raw.parameters), ...Object.keys(ferry.parameters)])].sort())
    if (JSON.stringify(raw.parameters[k]) !== JSON.stringify(ferry.parameters[k]))
      out.push(`${k} ${show(raw.parameters[k])}→${show(ferry.parameters[k])}`);
  return out;
}
