// QEMU's block layer for moving disks: NBD exports on a destination, mirror jobs into them or into new
// files on the same host, and their progress. Facts: ../shared/notes/qemu-7.2-facts.md (Storage).
import { setTimeout as sleep } from 'node:timers/promises';
import { FerryError } from '../api/index.js';
import type { DiskJob } from '../host/driver.js';
import type { QmpClient } from './qmp.js';

interface BlockInfo {
  device: string;
  qdev?: string;
  inserted?: { 'node-name'?: string; file: string; ro: boolean };
}

interface BlockJob {
  device: string;
  type: string;
  offset: number;
  len: number;
  ready: boolean;
  status: string;
  error?: string;
}

/** The node a disk's device uses now (a storage move pivots it onto a new node). */
export async function currentNode(qmp: QmpClient, diskId: string): Promise<string> {
  const blocks = await qmp.execute<BlockInfo[]>('query-block');
  const b = blocks.find((x) => x.qdev?.includes(`/${diskId}-dev/`) || x.qdev === `${diskId}-dev`);
  const node = b?.inserted?.['node-name'];
  if (!node) throw new FerryError('migration-failed', `cannot find the block node of ${diskId}`);
  return node;
}

export const mirrorJobId = (diskId: string): string => `ferry-mirror-${diskId}`;

export async function diskJobs(qmp: QmpClient, diskIds: string[]): Promise<DiskJob[]> {
  const jobs = await qmp.execute<BlockJob[]>('query-block-jobs');
  return diskIds.map((id) => {
    const j = jobs.find((x) => x.device === mirrorJobId(id));
    if (!j) return { id, copied: 0, total: 0, ready: false, status: 'gone', error: null };
    return { id, copied: j.offset, total: j.len, ready: j.ready, status: j.status, error: j.error ?? null };
  });
}

/** Starts a full mirror of each disk into `target(id)`; writes go to both once copied (write-blocking). */
export async function startMirrors(
  qmp: QmpClient,
  diskIds: string[],
  target: (id: string) => string,
  speedMiBs: number | null,
): Promise<void> {
  for (const id of diskIds) {
    await qmp.execute('blockdev-mirror', {
      'job-id': mirrorJobId(id),
      device: await currentNode(qmp, id),
      target: target(id),
      sync: 'full',
      // Write-blocking from the start: once a region is copied, a guest write to it completes only when
      // the target has it too, so the copy converges under any write load. QEMU 7.2 cannot switch a
      // running job from background (block-job-change came in 8.2), and the mode does not slow the bulk
      // copy itself (it only touches guest writes).
      'copy-mode': 'write-blocking',
      // 16 requests of 2 MiB in flight (QEMU's default 16 MiB gives 1 MiB ones). Measured over NBD on a
      // loaded 2-core host: 256 MiB (16 MiB requests) was slower, 8-16 MiB no faster; the granularity
      // (default: the target's cluster, 64 KiB) made no difference. The NBD server's per-request buffer
      // was the cost: see NBD_MALLOC_TUNABLES in host/local/migration-destination.ts.
      'buf-size': 32 * 1024 * 1024,
      // The move's bandwidth limit holds for the disk copy too (0 = unlimited).
      speed: speedMiBs ? speedMiBs * 1024 * 1024 : 0,
    });
  }
}

/** Waits until none of these jobs exists any more (completed, cancelled or failed and dismissed). */
export async function waitJobsGone(qmp: QmpClient, diskIds: string[], timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const jobs = await qmp.execute<BlockJob[]>('query-block-jobs');
    if (!jobs.some((j) => diskIds.some((id) => j.device === mirrorJobId(id)))) return;
    if (Date.now() > deadline) throw new FerryError('migration-failed', 'disk mirror jobs did not end');
    await sleep(10);
  }
}

/** Ends mirror jobs: after READY a cancel leaves the target identical to the source (no pivot). */
export async function cancelMirrors(qmp: QmpClient, diskIds: string[], force: boolean): Promise<void> {
  for (const id of diskIds) {
    await qmp.execute('block-job-cancel', { device: mirrorJobId(id), force }).catch(() => undefined);
  }
  await waitJobsGone(qmp, diskIds);
}

export async function deleteNodes(qmp: QmpClient, nodes: string[]): Promise<void> {
  for (const n of nodes) await qmp.execute('blockdev-del', { 'node-name': n }).catch(() => undefined);
}
