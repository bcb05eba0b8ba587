// Storage-only move (R4): a running VM's disks move to another folder on the same host. Each disk is
// mirrored into a new file while the guest runs (every write goes to both once copied), then the
// device pivots onto the copy without pausing the guest, and the old files are deleted.
import type { Summary } from '../api/index.js';
import type { DiskTarget } from './preflight.js';
import { Cancelled, followDiskCopy, summary, type MoveContext } from './live-migration.js';

export async function storageMove(ctx: MoveContext, targets: DiskTarget[]): Promise<Summary> {
  const host = ctx.source;
  const name = ctx.vm.name;
  const timings = new Map<number, { start: number; end: number | null }>();
  const warnings: string[] = [];
  const start = ctx.now();
  let started = false;
  try {
    await host.startStorageMove(name, targets, ctx.options.bandwidthMiBs);
    started = true;
    await followDiskCopy(
      ctx,
      () => host.storageMoveJobs(name),
      () => {
        if (ctx.cancelRequested()) throw new Cancelled();
      },
    );
    const copyMs = ctx.now() - start;
    const result = await host.completeStorageMove(name);
    for (const d of result.disks)
      ctx.emit({ type: 'log', level: 'info', message: `${d.id}: ${d.from} → ${d.to}` });
    if (result.pauses > 0) warnings.push(`the guest was paused ${result.pauses} time(s) during the move`);
    return {
      ...summary(copyMs, ctx, 'completed', null, timings, null, null, null, warnings),
      kind: 'storage',
      downtimeMs: 0,
    };
  } catch (err) {
    const cancelled = err instanceof Cancelled;
    if (started)
      await host.abortStorageMove(name).catch((e: Error) => warnings.push(`clean-up failed: ${e.message}`));
    const reason = cancelled ? 'cancelled by the administrator' : (err as Error).message;
    return {
      ...summary(null, ctx, cancelled ? 'cancelled' : 'failed', reason, timings, null, null, null, warnings),
      kind: 'storage',
    };
  }
}
