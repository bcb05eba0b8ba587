// What the libvirt-lab tests share: commands run with stdin closed (anything that would prompt fails
// instead of hanging), virsh against a lab machine, a lab-guest domain as an administrator would
// write it, the lab machines' private folder, and the migration events `ferry move --json` prints
// (also of a `ferry` running in the background).
import { execFile, spawn } from 'node:child_process';
import path from 'node:path';
import type { MigrationEvent, Summary } from '../engine/api/index.js';
import type { LibvirtLabMachine } from '../engine/host/libvirt/lab.js';
import { REPO, type CliResult } from './helpers.js';

export const isRoot = process.platform === 'linux' && process.getuid?.() === 0;
export const LAB_GUEST = path.join(REPO, 'assets', 'lab-guest', 'ferry-lab-guest.bin');
/** The built CLI, as `npx ferry` runs it. */
export const FERRY_BIN = path.join(REPO, 'bin', 'ferry.js');
/** A folder every libvirt host has, but each lab machine its own (its /var/lib/libvirt is private). */
export const PRIVATE = '/var/lib/libvirt/images';
/** Every phase of a live move, started and completed in order, as phaseTrail writes them. */
export const ALL_PHASES = '1+ 1- 2+ 2- 3+ 3- 4+ 4- 5+ 5- 6+ 6-';

/** Where a lab machine's PRIVATE folder is, as this computer sees it. */
export function privateDir(m: LibvirtLabMachine): string {
  return path.join(m.dir, 'var', 'lib', 'libvirt', 'images');
}

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

/** sh that must succeed: its stdout, or an error with its stderr. */
export async function shOk(cmd: string, args: string[]): Promise<string> {
  const r = await sh(cmd, args);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr.trim() || `exit ${r.code}`}`);
  return r.stdout;
}

export async function virsh(uri: string, ...args: string[]): Promise<string> {
  const r = await sh('virsh', ['-q', '-c', uri, ...args]);
  if (r.code !== 0) throw new Error(`virsh -c ${uri} ${args.join(' ')}: ${r.stderr.trim()}`);
  return r.stdout.trim();
}

/** The names of a lab machine's domains, running or not. */
export async function domainNames(m: LibvirtLabMachine): Promise<string[]> {
  return (await virsh(m.uris.tcp, 'list', '--all', '--name')).split('\n').filter(Boolean);
}

/** `SHA256:…` of the (first) key in a public key or known_hosts file, as ssh-keygen -l prints it. */
export async function sshFingerprint(file: string): Promise<string> {
  const out = await shOk('ssh-keygen', ['-lf', file]);
  const fp = /(SHA256:[A-Za-z0-9+/]+)/.exec(out)?.[1];
  if (!fp) throw new Error(`no SHA256 fingerprint in ssh-keygen -lf ${file}: ${out}`);
  return fp;
}

/** A lab-guest domain defined outside Ferry (optionally with one disk). */
export function labGuestDomainXml(
  name: string,
  serial: string,
  o: {
    memoryMiB?: number;
    ws?: number;
    rate?: number;
    disk?: { file: string; format: string };
    /** A pty serial logged to `serial` and a VNC screen on loopback (what `ferry vm create` makes). */
    console?: boolean;
  } = {},
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
    ${
      o.console
        ? `<serial type='pty'><log file='${serial}' append='on'/><target port='0'/></serial>
    <graphics type='vnc' autoport='yes'><listen type='address' address='127.0.0.1'/></graphics>
    <video><model type='vga'/></video>`
        : `<serial type='file'><source path='${serial}'/><target port='0'/></serial>`
    }
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

/** The summary, the last of a move's events. */
export function summaryOf(events: MigrationEvent[]): Summary {
  const s = events.at(-1);
  if (!s || s.type !== 'summary') throw new Error(`no summary in ${JSON.stringify(events.slice(-3))}`);
  return s;
}

/** A `ferry … --json` running in the background. */
export interface FerryChild {
  /** The events it has printed so far (whole lines only). */
  events(): MigrationEvent[];
  /** Its exit code and all its events, once it has exited. */
  done: Promise<{ code: number; events: MigrationEvent[] }>;
  kill(signal?: NodeJS.Signals): void;
}

/** `ferry …` in a child process whose events can be read while it runs. */
export function spawnFerry(home: string, args: string[]): FerryChild {
  const child = spawn(process.execPath, [FERRY_BIN, ...args], {
    env: { ...process.env, FERRY_HOME: home },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString()));
  const done = new Promise<{ code: number; events: MigrationEvent[] }>((resolve) =>
    // 'close', not 'exit': by then all of stdout has been read, the summary too.
    child.once('close', (code) => resolve({ code: code ?? 1, events: moveEvents(out) })),
  );
  return {
    events: () => moveEvents(out.slice(0, out.lastIndexOf('\n') + 1)),
    done,
    kill: (signal = 'SIGKILL') => void child.kill(signal),
  };
}
