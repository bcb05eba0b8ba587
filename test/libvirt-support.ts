// What the libvirt-lab tests share: commands run with stdin closed (anything that would prompt fails
// instead of hanging), virsh against a lab machine, a lab-guest domain as an administrator would
// write it, and the migration events `ferry move --json` prints.
import { execFile } from 'node:child_process';
import path from 'node:path';
import type { MigrationEvent } from '../engine/api/index.js';
import { REPO, type CliResult } from './helpers.js';

export const isRoot = process.platform === 'linux' && process.getuid?.() === 0;
export const LAB_GUEST = path.join(REPO, 'assets', 'lab-guest', 'ferry-lab-guest.bin');

export function sh(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): Promise<CliResult> {
  return new Promise((resolve) => {
    const e = { ...env };
    delete e.LIBVIRT_DEFAULT_URI;
    delete e.VIRSH_DEFAULT_CONNECT_URI;
    const child = execFile(
      cmd,
      args,
      { timeout: 120_000, env: e, maxBuffer: 64 << 20 },
      (err, stdout, stderr) => {
        resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr });
      },
    );
    child.stdin?.end();
  });
}

export async function virsh(uri: string, ...args: string[]): Promise<string> {
  const r = await sh('virsh', ['-q', '-c', uri, ...args]);
  if (r.code !== 0) throw new Error(`virsh -c ${uri} ${args.join(' ')}: ${r.stderr.trim()}`);
  return r.stdout.trim();
}

/** A lab-guest domain defined outside Ferry (optionally with one disk). */
export function labGuestDomainXml(
  name: string,
  serial: string,
  o: { memoryMiB?: number; ws?: number; rate?: number; disk?: { file: string; format: string } } = {},
): string {
  const disk = o.disk
    ? `<disk type='file' device='disk'><driver name='qemu' type='${o.disk.format}'/><source file='${o.disk.file}'/><target dev='vda' bus='virtio'/></disk>`
    : '';
  return `<domain type='qemu'>
  <name>${name}</name>
  <memory unit='MiB'>${o.memoryMiB ?? 128}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>${LAB_GUEST}</kernel>
    <cmdline>ws=${o.ws ?? 8} rate=${o.rate ?? 5}</cmdline>
  </os>
  <devices>
    ${disk}
    <serial type='file'><source path='${serial}'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
`;
}

/** The events of `ferry move --json` (one JSON object per line; the last is the summary). */
export function moveEvents(stdout: string): MigrationEvent[] {
  return stdout
    .split('\n')
    .filter((l) => l.trim().startsWith('{'))
    .map((l) => JSON.parse(l) as MigrationEvent);
}

/** "1+ 1- 2+ 2- …": the phase events in the order they came. */
export function phaseTrail(events: MigrationEvent[]): string {
  return events
    .flatMap((e) => (e.type === 'phase' ? [`${e.phase}${e.state === 'started' ? '+' : '-'}`] : []))
    .join(' ');
}
