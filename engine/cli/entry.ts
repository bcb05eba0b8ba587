// The `ferry` process's entry (bin/ferry.js). A command that talks to every host (a move, any `vm`
// command, `host list`) first starts opening its libvirt connections, and only then loads the rest of
// the command line (commander, the engine, the API's zod schemas: ~100 ms on a fast machine). An SSH or
// TLS login is mostly waiting on the server, so the two overlap instead of adding up: an administrator
// pays it on every command, and a move's total time with it (issue 9's comparison with virsh).
// Nothing here decides anything: the command validates its inventory and hosts as always, and reuses
// the connection that is already open (or the error it met) from the process-wide pool.
import fs from 'node:fs';
import path from 'node:path';
import { libvirtConnection } from '../host/libvirt/connection.js';
import { ferryHome } from '../host/store.js';
import type { HostRecord } from '../api/model.js';

/** Commands (first word, or first two) that look at every host before doing anything. */
const REACHES_EVERY_HOST = [
  'move',
  'move-storage',
  'vm',
  'drain',
  'migrations',
  'queue',
  'cancel',
  'host list',
  'host info',
];

function reachesEveryHost(argv: string[]): boolean {
  const [a = '', b = ''] = argv;
  return REACHES_EVERY_HOST.includes(a) || REACHES_EVERY_HOST.includes(`${a} ${b}`);
}

/**
 * Starts connecting to the inventory's libvirt hosts. Reads the inventory without validating it (the
 * command does, before using any host): only well-formed libvirt records are taken, anything else is
 * left to the command to report.
 */
export function warmConnections(argv: string[], home: string = ferryHome()): number {
  if (!reachesEveryHost(argv)) return 0;
  let hosts: unknown;
  try {
    hosts = (JSON.parse(fs.readFileSync(path.join(home, 'inventory.json'), 'utf8')) as { hosts?: unknown })
      .hosts;
  } catch {
    return 0;
  }
  if (!Array.isArray(hosts)) return 0;
  let started = 0;
  for (const h of hosts as Partial<Record<keyof HostRecord, unknown>>[]) {
    if (h.kind !== 'libvirt' || typeof h.name !== 'string' || typeof h.uri !== 'string') continue;
    const sshKey = typeof h.sshKey === 'string' ? h.sshKey : null;
    // The pool keys a connection by name, URI and key, exactly as the command's own lookup does.
    void libvirtConnection({ name: h.name, uri: h.uri, sshKey })
      .get()
      .catch(() => undefined);
    started++;
  }
  return started;
}

export async function run(argv: string[]): Promise<number> {
  warmConnections(argv);
  const { main } = await import('./main.js');
  return main(argv);
}
