// The Hyper-V Settings pages' form: host settings as the user edits them, inline validation with the
// contract's own limits, and the patch that updateHostSettings receives (only what changed).
import {
  HostSettingsSchema,
  type ConvergencePolicy,
  type HostFacts,
  type HostKind,
  type HostSettings,
  type PerformanceOption,
} from '../../../engine/api/index.js';

export interface SettingsForm {
  liveMigrationEnabled: boolean;
  maxLiveMigrations: number | null;
  incomingMode: 'any' | 'list';
  networks: string[];
  performance: PerformanceOption;
  channels: number | null;
  limitBandwidth: boolean;
  bandwidthMiBs: number | null;
  downtimeMs: number | null;
  downtimeCeilingMs: number | null;
  convergence: ConvergencePolicy;
  maxStorageMigrations: number | null;
  encryption: EncryptionSetting;
}

export type EncryptionSetting = HostSettings['encryption'];

/** Advanced Features → Encryption: the choices as the select lists them. */
export const ENCRYPTION_CHOICES: { value: EncryptionSetting; label: string; help: string }[] = [
  {
    value: 'required',
    label: 'Required',
    help: 'A move without migration TLS certificates on both hosts is refused.',
  },
  {
    value: 'when-available',
    label: 'When available',
    help: 'Encrypted when both hosts have migration TLS certificates, otherwise sent unencrypted (with a warning).',
  },
  { value: 'off', label: 'Off', help: 'Never encrypted: memory and disks cross the network in the clear.' },
];

/** The line under the Encryption select, before the chosen value's own help. */
export const ENCRYPTION_EXPLAINED =
  'Between libvirt hosts the migration stream — memory and disks — is encrypted with TLS (the stricter of the two hosts’ settings applies).';

/**
 * Why Encryption does not apply to a host (null: it does). Ferry's own hosts (this computer, the lab)
 * all run on this machine: their moves never cross a network, so there is no stream to encrypt.
 */
export function encryptionNotApplicable(kind: HostKind | null): string | null {
  if (kind === null || kind === 'libvirt') return null;
  return kind === 'lab'
    ? "Does not apply to Ferry's lab hosts: they are on this computer, and their moves cross only the lab's own link, never a network."
    : "Does not apply to Ferry's own hosts: they run on this computer, and their moves never cross a network.";
}

export type SettingsPage = 'live' | 'advanced' | 'storage';
export const SETTINGS_PAGES: { id: SettingsPage; title: string }[] = [
  { id: 'live', title: 'Live Migrations' },
  { id: 'advanced', title: 'Advanced Features' },
  { id: 'storage', title: 'Storage Migrations' },
];

/** Which page each field is on, so a page with an error can be marked in the navigation. */
export const FIELD_PAGE: Record<string, SettingsPage> = {
  maxLiveMigrations: 'live',
  networks: 'live',
  channels: 'advanced',
  bandwidthMiBs: 'advanced',
  downtimeMs: 'advanced',
  downtimeCeilingMs: 'advanced',
  performance: 'advanced',
  encryption: 'advanced',
  maxStorageMigrations: 'storage',
};

export function formFromSettings(s: HostSettings): SettingsForm {
  return {
    liveMigrationEnabled: s.liveMigrationEnabled,
    maxLiveMigrations: s.maxLiveMigrations,
    incomingMode: s.incomingNetworks === 'any' ? 'any' : 'list',
    networks: s.incomingNetworks === 'any' ? [] : [...s.incomingNetworks],
    performance: s.performance,
    channels: s.channels,
    limitBandwidth: s.bandwidthMiBs !== null,
    bandwidthMiBs: s.bandwidthMiBs,
    downtimeMs: s.downtimeMs,
    downtimeCeilingMs: s.downtimeCeilingMs,
    convergence: s.convergence,
    maxStorageMigrations: s.maxStorageMigrations,
    encryption: s.encryption,
  };
}

const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

/** An incoming network is an IPv4 address or subnet in CIDR form (what the engine's check understands). */
export function networkProblem(entry: string): string | null {
  const e = entry.trim();
  if (e === '') return 'enter an address or subnet';
  const [addr, bits, extra] = e.split('/');
  if (extra !== undefined || !IPV4.test(addr ?? ''))
    return `"${e}" is not an IPv4 address or subnet such as 10.0.0.0/24`;
  if (bits !== undefined && !(/^\d{1,2}$/.test(bits) && Number(bits) <= 32))
    return `"${e}": the prefix length is 0-32`;
  return null;
}

function intProblem(v: number | null, min: number, max: number, what: string): string | null {
  if (v === null || !Number.isFinite(v)) return `enter ${what}`;
  if (!Number.isInteger(v)) return `${what} is a whole number`;
  if (v < min || v > max) return `${what} is ${min} to ${max}`;
  return null;
}

export type FormErrors = Partial<Record<string, string>>;

export function formErrors(f: SettingsForm): FormErrors {
  const errors: FormErrors = {};
  const put = (key: string, problem: string | null): void => {
    if (problem) errors[key] = problem;
  };
  put(
    'maxLiveMigrations',
    intProblem(f.maxLiveMigrations, 1, 64, 'the number of simultaneous live migrations'),
  );
  put(
    'maxStorageMigrations',
    intProblem(f.maxStorageMigrations, 1, 64, 'the number of simultaneous storage migrations'),
  );
  if (f.incomingMode === 'list') {
    if (f.networks.length === 0) put('networks', 'add at least one network, or accept any network');
    f.networks.forEach((n, i) => put(`networks.${i}`, networkProblem(n)));
    const seen = new Set<string>();
    f.networks.forEach((n, i) => {
      if (seen.has(n.trim()) && !errors[`networks.${i}`])
        errors[`networks.${i}`] = `"${n.trim()}" is listed twice`;
      seen.add(n.trim());
    });
  }
  if (f.performance === 'compression' || f.performance === 'multichannel') {
    put('channels', intProblem(f.channels, 1, 64, 'the number of channels'));
  }
  if (f.limitBandwidth)
    put('bandwidthMiBs', intProblem(f.bandwidthMiBs, 1, 1_000_000, 'the bandwidth limit (MiB/s)'));
  put('downtimeMs', intProblem(f.downtimeMs, 1, 60_000, 'the downtime target (ms)'));
  put('downtimeCeilingMs', intProblem(f.downtimeCeilingMs, 1, 60_000, 'the maximum downtime (ms)'));
  if (!errors['downtimeMs'] && !errors['downtimeCeilingMs'] && f.downtimeCeilingMs! < f.downtimeMs!) {
    errors['downtimeCeilingMs'] = 'the maximum downtime cannot be below the downtime target';
  }
  return errors;
}

/** Allowed, but a move with these settings will be refused: say so where the choice is made. */
export function formWarnings(
  f: SettingsForm,
  facts: HostFacts | null,
  kind: HostKind | null = null,
): string[] {
  const out: string[] = [];
  if (f.convergence === 'postcopy' && (f.performance === 'compression' || f.performance === 'multichannel')) {
    out.push(
      `Post-copy cannot be combined with ${f.performance === 'compression' ? 'Compression' : 'Multichannel'} (QEMU 7.2 would lose the guest): moves will be refused until you pick TCP/IP or another policy.`,
    );
  }
  if (f.performance === 'compression' && facts && !facts.multifdCompression.includes('zstd')) {
    out.push("This host's QEMU has no zstd: Compression will use zlib, which costs more CPU.");
  }
  if (
    kind === 'libvirt' &&
    f.performance === 'compression' &&
    facts?.libvirtVersion &&
    versionBelow(facts.libvirtVersion, '9.4.0')
  ) {
    out.push(
      `libvirt ${facts.libvirtVersion} has no multifd compression (zlib/zstd came in libvirt 9.4): Compression will use xbzrle over one connection, and Channels are not used.`,
    );
  }
  if (kind === 'libvirt' && f.encryption === 'off') {
    out.push(
      'Encryption is off: moves to and from this host send the VM’s memory and disks over the network unencrypted.',
    );
  }
  return out;
}

function versionBelow(version: string, min: string): boolean {
  const a = version.split('.').map(Number);
  const b = min.split('.').map(Number);
  for (let i = 0; i < 3; i++) if ((a[i] ?? 0) !== (b[i] ?? 0)) return (a[i] ?? 0) < (b[i] ?? 0);
  return false;
}

/** Why RDMA cannot be chosen on this host (null: it can). */
export function rdmaUnavailable(facts: HostFacts | null): string | null {
  if (!facts) return 'checking the host…';
  if (facts.rdma) return null;
  return `${facts.name} has no RDMA-capable network adapter (QEMU's rdma transport needs one on both hosts)`;
}

export function settingsFromForm(f: SettingsForm): Partial<HostSettings> {
  return {
    liveMigrationEnabled: f.liveMigrationEnabled,
    maxLiveMigrations: f.maxLiveMigrations ?? undefined,
    incomingNetworks: f.incomingMode === 'any' ? 'any' : f.networks.map((n) => n.trim()),
    performance: f.performance,
    channels: f.channels ?? undefined,
    bandwidthMiBs: f.limitBandwidth ? (f.bandwidthMiBs ?? undefined) : null,
    downtimeMs: f.downtimeMs ?? undefined,
    downtimeCeilingMs: f.downtimeCeilingMs ?? undefined,
    convergence: f.convergence,
    maxStorageMigrations: f.maxStorageMigrations ?? undefined,
    encryption: f.encryption,
  };
}

/**
 * What to send to updateHostSettings: the whole settings object with the form's changes, plus the names
 * of the settings that changed. The whole object, because the contract's patch schema
 * (HostSettingsSchema.partial()) fills every omitted key with its default, which would silently reset
 * settings this form does not show (storage roots, accelerator, …).
 */
export function settingsUpdate(
  f: SettingsForm,
  original: HostSettings,
): { changed: string[]; settings: HostSettings } {
  const next = settingsFromForm(f);
  const changed: string[] = [];
  const merged: Record<string, unknown> = { ...original };
  for (const [key, value] of Object.entries(next)) {
    if (value === undefined) continue;
    if (JSON.stringify(value) !== JSON.stringify(original[key as keyof HostSettings])) {
      changed.push(key);
      merged[key] = value;
    }
  }
  return { changed, settings: HostSettingsSchema.parse(merged) };
}
