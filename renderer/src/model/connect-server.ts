// "Connect to Server…": what the dialog works out from a libvirt connection URI before asking the engine
// (the transport, a name for the host, whether the connection is unauthenticated), and how hosts read in
// the host list (kind and connection status).
import { HostNameSchema, type HostSummary } from '../../../engine/api/index.js';

export type Transport = 'ssh' | 'tls' | 'tcp' | 'unix' | 'local' | 'other';

export interface ParsedUri {
  /** The hypervisor driver (qemu). */
  driver: string;
  transport: Transport;
  /** The server's address as written (no user, no port, no brackets), or null for this machine. */
  host: string | null;
  user: string | null;
}

export const URI_PLACEHOLDER = 'qemu+ssh://root@server.example.com/system';

/** The forms the help line lists, in the order a user most likely wants them. */
export const URI_FORMS = [
  { form: 'qemu+ssh://user@host/system', what: 'over SSH (a key or an agent)' },
  { form: 'qemu+tls://host/system', what: 'TLS with certificates' },
  { form: 'qemu:///system', what: 'this computer’s libvirtd' },
  { form: 'qemu+tcp://host/system', what: 'lab only: unauthenticated' },
] as const;

const URI_RE =
  /^([a-z][a-z0-9]*)(?:\+([a-z][a-z0-9-]*))?:\/\/(?:([^@/]*)@)?(\[[^\]]*\]|[^:/?#]*)(?::\d+)?(\/[^?#]*)?/i;

/** The parts of a libvirt URI the console cares about; null when it does not look like one at all. */
export function parseLibvirtUri(uri: string): ParsedUri | null {
  const m = URI_RE.exec(uri.trim());
  if (!m) return null;
  const driver = m[1]!.toLowerCase();
  const t = m[2]?.toLowerCase();
  const rawHost = (m[4] ?? '').replace(/^\[|\]$/g, '');
  const host = rawHost === '' ? null : rawHost;
  let transport: Transport;
  if (t === undefined)
    transport = host === null ? 'local' : 'tls'; // libvirt's default for a remote host
  else if (t === 'ssh' || t === 'libssh' || t === 'libssh2') transport = 'ssh';
  else if (t === 'tls' || t === 'tcp' || t === 'unix') transport = t;
  else transport = 'other';
  return { driver, transport, host, user: m[3] ? decodeURIComponent(m[3]) : null };
}

/** Shown before connecting (and again in the host list, where the engine words it). */
export function uriWarning(uri: string): string | null {
  const p = parseLibvirtUri(uri);
  if (p?.transport !== 'tcp') return null;
  return (
    'qemu+tcp:// is unauthenticated and unencrypted: anyone who can reach this port controls the ' +
    'server’s VMs. Use it only for a lab on a network you trust; prefer qemu+ssh:// or qemu+tls://.'
  );
}

/** A hint under the URI field when it cannot be a libvirt URI (the engine has the final word). */
export function uriProblem(uri: string): string | null {
  const u = uri.trim();
  if (u === '') return null;
  if (!parseLibvirtUri(u)) return 'A connection URI looks like qemu+ssh://root@server.example.com/system.';
  return null;
}

function toHostName(raw: string): string {
  const cleaned = raw
    .toLowerCase()
    .replace(/[^a-z0-9-]+/g, '-')
    .replace(/-+/g, '-')
    .replace(/^-+/, '')
    .slice(0, 32)
    .replace(/-+$/, '');
  return cleaned;
}

/**
 * Ferry's name for the server: its short host name (server.example.com → server), an address with
 * dashes (10.0.0.5 → 10-0-0-5), "localhost" for this machine; made unique among `taken` with -2, -3…
 */
export function suggestHostName(uri: string, taken: readonly string[] = []): string {
  const p = parseLibvirtUri(uri);
  if (!p) return '';
  let base: string;
  if (p.host === null) base = 'localhost';
  else if (/^[0-9.]+$/.test(p.host) || p.host.includes(':')) base = toHostName(p.host);
  else base = toHostName(p.host.split('.')[0]!);
  if (!HostNameSchema.safeParse(base).success) return '';
  let name = base;
  for (let i = 2; taken.includes(name); i++) {
    const suffix = `-${i}`;
    name = `${base.slice(0, 32 - suffix.length).replace(/-+$/, '')}${suffix}`;
  }
  return name;
}

/** The host-name field's inline error, in HostNameSchema's words. */
export function hostNameProblem(name: string, taken: readonly string[]): string | null {
  if (name === '') return 'Give the host a name.';
  const r = HostNameSchema.safeParse(name);
  if (!r.success) return r.error.issues[0]?.message ?? 'not a valid host name';
  if (taken.includes(name)) return `Ferry already has a host named ${name}.`;
  return null;
}

/** What an unknown SSH host key error carries, for the fingerprint step. */
export interface UnknownHostKey {
  fingerprint: string;
  keyType: string | null;
  host: string | null;
}

/** "ssh-ed25519" → "ED25519", "ecdsa-sha2-nistp256" → "ECDSA", "ssh-rsa" → "RSA", as ssh says it. */
export function keyTypeLabel(keyType: string | null): string {
  if (!keyType) return '';
  const t = keyType.toLowerCase();
  if (t.includes('ed25519')) return 'ED25519';
  if (t.includes('ecdsa')) return 'ECDSA';
  if (t.includes('rsa')) return 'RSA';
  if (t.includes('dss') || t.includes('dsa')) return 'DSA';
  return keyType.toUpperCase();
}

/** The file on the server whose fingerprint the user should compare with. */
export function hostKeyFile(keyType: string | null): string {
  const label = keyTypeLabel(keyType).toLowerCase();
  return `/etc/ssh/ssh_host_${label === '' ? 'ed25519' : label}_key.pub`;
}

// ---- The host list -------------------------------------------------------------------------------

export interface HostTag {
  label: string;
  title: string;
}

/** Tags for a host's kind: local / lab / libvirt, and "lab" again for a libvirt lab machine. */
export function hostTags(h: Pick<HostSummary, 'kind' | 'lab'>): HostTag[] {
  switch (h.kind) {
    case 'local':
      return [{ label: 'local', title: 'This computer, with Ferry’s own QEMU driver' }];
    case 'lab':
      return [{ label: 'lab', title: 'A lab host of Ferry’s own driver on this computer' }];
    case 'libvirt':
      return h.lab
        ? [
            { label: 'libvirt', title: 'A libvirt server' },
            { label: 'lab', title: 'A libvirt lab machine of ferry lab' },
          ]
        : [{ label: 'libvirt', title: 'A libvirt server' }];
  }
}

export interface HostStatus {
  connected: boolean;
  /** "Connected" / "Disconnected". */
  text: string;
  /** Why it is not connected, as the engine says it. */
  reason: string | null;
}

export function hostStatus(h: Pick<HostSummary, 'connected' | 'connectionError'>): HostStatus {
  if (h.connected) return { connected: true, text: 'Connected', reason: null };
  return { connected: false, text: 'Disconnected', reason: h.connectionError };
}

/** "Disconnected: the daemon stopped" — the tooltip and the empty VM table's line. */
export function disconnectedText(h: Pick<HostSummary, 'connectionError'>): string {
  return h.connectionError ? `Disconnected: ${h.connectionError}` : 'Disconnected';
}
