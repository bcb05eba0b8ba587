// The next look after a Ferry process died in the middle of a move between libvirt hosts. libvirt ties a
// migration's cleanup to the client's connections (../shared/notes/libvirt-rpc.md §5): before Perform
// has returned, the source's daemon cancels the job (the VM runs on there) and the destination's kills
// the incoming VM. After Perform, though, libvirt's source leaves the domain paused ("let higher levels
// decide"), and only the destination knows whether Finish had started the VM there. Ferry is that
// higher level: for each abandoned move record between two libvirt hosts this looks at both hosts and
// brings the VM back to running on exactly one of them —
//
//   the destination (or any other libvirt host) runs a domain with the VM's UUID: Finish had completed,
//     so the paused copy left on the source is destroyed and undefined, as Confirm would have done;
//   no host runs it: the source's copy, paused for the migration, is resumed (a leftover incoming VM on
//     the destination, paused and with no job, is destroyed first);
//
// then writes what it found and did into the record (status failed, the reason saying so), which also
// makes it idempotent: a settled record is not looked at again. It never touches a domain that a live
// Ferry process is moving (a record of that VM with a live owner) or that libvirt still has a job on
// (the daemon has not finished its own cleanup yet): those wait for a later look. A host that cannot
// be reached leaves the record as it is, for a later look too.
//
// Called where the history and the VM lists are read (`ferry migrations`, `ferry vm list`, the console's
// lists), before they are read.
import path from 'node:path';
import type { MigrationRecord } from '../api/index.js';
import type { Inventory } from '../host/inventory.js';
import { LibvirtHost } from '../host/libvirt/libvirt-host.js';
import { withLock } from '../host/store.js';
import type { DomainRef, LibvirtClient } from '../libvirt/client.js';
import { LibvirtError } from '../libvirt/client.js';
import { processAlive } from '../qemu/process.js';
import { History, abandonedReason, isAbandoned } from './history.js';

/** virDomainState and the paused reason libvirt gives a domain stopped for a migration. */
const RUNNING = 1;
const BLOCKED = 2;
const PAUSED = 3;
const SHUTOFF = 5;
const PAUSED_MIGRATION = 2;
const ERR_NO_DOMAIN = 42;
/** What `virsh undefine` removes too: managed save, snapshot metadata, NVRAM, checkpoints. */
const UNDEFINE_ALL = 1 | 2 | 4 | 16;
/** The console asks for lists often: one scan per FERRY_HOME at most this often (a CLI run does one). */
const RESCAN_MS = 3000;
const lastScan = new Map<string, number>();

export interface Recovery {
  id: string;
  vm: string;
  /** What Ferry found on the hosts and what it did, as written into the record's reason. */
  reason: string;
}

interface Copy {
  host: LibvirtHost;
  client: LibvirtClient;
  dom: DomainRef;
  state: number;
  reason: number;
  /** libvirt still runs a job on the domain (its own cleanup, or a move by a live process). */
  busy: boolean;
}

/** Settles every abandoned libvirt move in FERRY_HOME; returns what it did. Never throws. */
export async function recoverAbandonedMoves(inv: Inventory): Promise<Recovery[]> {
  const now = Date.now();
  if (now - (lastScan.get(inv.home) ?? 0) < RESCAN_MS) return [];
  lastScan.set(inv.home, now);
  const history = new History(path.join(inv.home, 'migrations'));
  const saved = await history.saved().catch(() => []);
  const abandoned = saved.filter((r) => r.kind === 'live' && r.status === 'running' && isAbandoned(r));
  if (abandoned.length === 0) return [];
  const done: Recovery[] = [];
  for (const rec of abandoned) {
    // A newer move of the same VM run by a live process owns its domains now.
    const live = saved.some(
      (r) =>
        r.vm === rec.vm &&
        (r.status === 'running' || r.status === 'queued') &&
        r.ownerPid !== undefined &&
        processAlive(r.ownerPid),
    );
    if (live) continue;
    const r = await withLock(path.join(history.dir, `${rec.id}.recovery`), () =>
      recoverOne(inv, history, rec.id),
    ).catch(() => null);
    if (r) done.push(r);
  }
  return done;
}

async function recoverOne(inv: Inventory, history: History, id: string): Promise<Recovery | null> {
  // Read again under the lock: another process may have settled it meanwhile.
  const rec = (await history.saved()).find((r) => r.id === id);
  if (!rec || rec.status !== 'running' || !isAbandoned(rec)) return null;
  const hosts = await Promise.all([rec.from, rec.to].map((n) => inv.host(n).catch(() => null)));
  const [source, dest] = hosts;
  if (!(source instanceof LibvirtHost) || !(dest instanceof LibvirtHost)) return null;
  const [src, dst] = await Promise.all([source.client(), dest.client()]).catch(() => [null, null]);
  if (!src || !dst) return null; // not reachable now: a later look tries again

  const onSource = await copyOf(source, src, () => src.lookupDomainByName(rec.vm));
  const uuid = onSource?.dom.uuid ?? null;
  const find = (c: LibvirtClient) => () => (uuid ? c.lookupDomainByUuid(uuid) : c.lookupDomainByName(rec.vm));
  const onDest = await copyOf(dest, dst, find(dst));
  // Any other libvirt host Ferry knows running the same domain counts too (it is not moved twice).
  const elsewhere: Copy[] = [];
  for (const h of await inv.hosts()) {
    if (!(h instanceof LibvirtHost) || h.name === source.name || h.name === dest.name) continue;
    const c = await h.client().catch(() => null);
    const copy = c ? await copyOf(h, c, find(c)).catch(() => null) : null;
    if (copy) elsewhere.push(copy);
  }
  if ([onSource, onDest, ...elsewhere].some((c) => c?.busy)) return null; // libvirt is not done yet

  const running = (c: Copy | null): boolean => c !== null && (c.state === RUNNING || c.state === BLOCKED);
  const runsAt = [onDest, ...elsewhere].find(running) ?? null;
  const did: string[] = [];
  let found: string;
  if (runsAt && running(onSource)) {
    found = `${rec.vm} runs on both ${source.name} and ${runsAt.host.name}; left as is for an administrator`;
  } else if (runsAt) {
    found = `${rec.vm} runs on ${runsAt.host.name}${runsAt === onDest ? ' (Finish had completed there)' : ''}`;
    if (onSource) {
      // The source's copy is stale (paused since the switch-over): what Confirm would have removed.
      const steps: string[] = [];
      if (onSource.state !== SHUTOFF) {
        await src.domainDestroyFlags(onSource.dom, 0);
        steps.push('destroyed');
      }
      if (await src.domainIsPersistent(onSource.dom).catch(() => false)) {
        await src.domainUndefineFlags(onSource.dom, UNDEFINE_ALL);
        steps.push('undefined');
      }
      const what = onSource.state === PAUSED ? 'the paused copy' : 'the copy';
      if (steps.length) did.push(`${steps.join(' and ')} ${what} on ${source.name}`);
    }
  } else {
    if (onDest && onDest.state === PAUSED) {
      // An incoming VM the destination's daemon did not tear down: never started, so never the VM.
      await dst.domainDestroyFlags(onDest.dom, 0);
      did.push(`destroyed the leftover incoming VM on ${dest.name}`);
    }
    if (!onSource) found = `${rec.vm} is on neither ${source.name} nor ${dest.name}`;
    else if (onSource.state === PAUSED && onSource.reason === PAUSED_MIGRATION) {
      found = `${rec.vm} was paused for the migration on ${source.name} and runs on no other host`;
      await src.domainResume(onSource.dom);
      did.push(`resumed it on ${source.name}`);
    } else if (running(onSource)) found = `${rec.vm} runs on ${source.name} only: the move did not happen`;
    else found = `${rec.vm} is ${stateName(onSource.state)} on ${source.name} and runs on no other host`;
  }
  const reason = `${abandonedReason(rec)}; Ferry found that ${found}${did.length ? `, and ${did.join(', ')}` : ''}`;
  const settled: MigrationRecord = {
    ...rec,
    status: 'failed',
    reason,
    endedAt: new Date().toISOString(),
    events: [
      ...rec.events,
      { at: Date.now() - Date.parse(rec.requestedAt), type: 'recovery', message: reason },
    ],
  };
  await history.save(settled);
  return { id: rec.id, vm: rec.vm, reason };
}

/** The domain on one host (null when there is none) with its state and whether libvirt has a job on it. */
async function copyOf(
  host: LibvirtHost,
  c: LibvirtClient,
  lookup: () => Promise<DomainRef>,
): Promise<Copy | null> {
  let dom: DomainRef;
  try {
    dom = await lookup();
  } catch (err) {
    if (err instanceof LibvirtError && err.libvirtCode === ERR_NO_DOMAIN) return null;
    throw err;
  }
  const st = await c.domainGetState(dom, 0);
  const job = await c.domainGetJobStats(dom, 0).catch(() => ({ type: 0 }));
  return { host, client: c, dom, state: st.state, reason: st.reason, busy: job.type !== 0 };
}

function stateName(state: number): string {
  return (
    ['without state', 'running', 'blocked', 'paused', 'shutting down', 'shut off', 'crashed', 'suspended'][
      state
    ] ?? `in state ${state}`
  );
}
