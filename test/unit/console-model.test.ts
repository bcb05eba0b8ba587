// The console's rules apart from its components: the Move wizard's pages and request, the host settings
// form, the charts' data and the texts the main window shows.
import { describe, expect, it } from 'vitest';
import {
  HostSettingsSchema,
  type HostFacts,
  type HostSettings,
  type Sample,
} from '../../engine/api/index.js';
import { outlook, passBoundaries, throughputPoints } from '../../renderer/src/model/chart-data.js';
import { formatDuration, formatUptime } from '../../renderer/src/model/format.js';
import {
  ENCRYPTION_CHOICES,
  encryptionNotApplicable,
  FIELD_PAGE,
  formErrors,
  formFromSettings,
  formWarnings,
  networkProblem,
  rdmaUnavailable,
  settingsUpdate,
} from '../../renderer/src/model/host-settings-form.js';
import {
  encryptionText,
  memoryCopyMs,
  moveOptionsText,
  performanceText,
  plannedEncryptionText,
  plannedPerformanceText,
} from '../../renderer/src/model/move-options.js';
import {
  buildMoveRequest,
  destinationsQuery,
  initialState,
  pageProblem,
  summaryRows,
  verdictLevel,
  withMoveType,
  wizardPages,
  type PageContext,
} from '../../renderer/src/model/move-wizard.js';
import { copiedPercent, moveStatusText } from '../../renderer/src/model/status.js';

const SETTINGS: HostSettings = HostSettingsSchema.parse({ storageRoots: ['/lab/shared'], bandwidthMiBs: 20 });
const DISKS = [
  { id: 'disk0', path: '/lab/shared/demo/disk0.qcow2' },
  { id: 'disk1', path: '/lab/shared/demo/disk1.qcow2' },
];
const ready: PageContext = { verdicts: [], report: { errors: [], warnings: [] }, checking: false };

describe('Move wizard', () => {
  it('has the pages Hyper-V has, with locations only when files move', () => {
    const s = initialState('demo', 'lab1', DISKS);
    expect(wizardPages(s)).toEqual(['begin', 'type', 'destination', 'options', 'summary']);
    expect(wizardPages({ ...s, option: 'one-location' })).toEqual([
      'begin',
      'type',
      'destination',
      'options',
      'locations',
      'summary',
    ]);
  });

  it('asks for the live move with shared storage by default', () => {
    const s = { ...initialState('demo', 'lab1', DISKS), destination: 'lab2' };
    expect(buildMoveRequest(s)).toEqual({ vm: 'demo', kind: 'live', to: 'lab2', includeStorage: false });
    expect(destinationsQuery(s)).toEqual({ vm: 'demo', kind: 'live', includeStorage: false });
  });

  it('wires shared-nothing and storage-only moves into the MoveRequest fields', () => {
    const base = { ...initialState('demo', 'lab1', DISKS), destination: 'lab2' };
    expect(buildMoveRequest({ ...base, option: 'one-location', storagePath: ' /srv/vms ' })).toEqual({
      vm: 'demo',
      kind: 'live',
      to: 'lab2',
      includeStorage: true,
      storagePath: '/srv/vms',
      keepSource: false,
    });
    expect(
      buildMoveRequest({
        ...base,
        option: 'per-item',
        diskPaths: { disk0: '/a', disk1: '/b' },
        deleteSource: false,
      }),
    ).toEqual({
      vm: 'demo',
      kind: 'live',
      to: 'lab2',
      includeStorage: true,
      diskPaths: { disk0: '/a', disk1: '/b' },
      keepSource: true,
    });
    // Hosts are judged before any folder is chosen: an empty folder is left out, not sent as "".
    expect(destinationsQuery({ ...base, option: 'one-location' })).toEqual({
      vm: 'demo',
      kind: 'live',
      includeStorage: true,
      keepSource: false,
    });
    const storage = withMoveType(base, 'storage');
    expect(storage.option).toBe('one-location'); // "only the VM" makes no sense for a storage move
    expect(withMoveType(storage, 'vm')).toMatchObject({ option: 'shared', destination: null });
    expect(buildMoveRequest({ ...storage, storagePath: '/srv/new' })).toEqual({
      vm: 'demo',
      kind: 'storage',
      to: 'lab1',
      storagePath: '/srv/new',
      keepSource: false,
    });
  });

  it('says why Next or Finish is unavailable', () => {
    const s = initialState('demo', 'lab1', DISKS);
    expect(pageProblem('destination', s, { ...ready, verdicts: null })).toBe('checking the hosts…');
    expect(pageProblem('destination', s, ready)).toMatch(/no other host/);
    const verdicts = [
      { host: 'lab2', report: { errors: [{ code: 'x', message: 'disabled' }], warnings: [] } },
    ];
    expect(pageProblem('destination', s, { ...ready, verdicts })).toBe('choose a destination host');
    // A blocked host may be chosen: the Summary shows why, and Finish stays off.
    expect(pageProblem('destination', { ...s, destination: 'lab2' }, { ...ready, verdicts })).toBeNull();
    expect(
      pageProblem('locations', { ...s, option: 'one-location', storagePath: 'relative' }, ready),
    ).toMatch(/full path/);
    expect(
      pageProblem('locations', { ...s, option: 'per-item', diskPaths: { disk0: '/a', disk1: '' } }, ready),
    ).toBe('disk1: enter a folder');
    expect(pageProblem('summary', s, { ...ready, checking: true })).toMatch(/pre-flight/);
    expect(
      pageProblem('summary', s, {
        ...ready,
        report: { errors: [{ code: 'x', message: 'no' }], warnings: [] },
      }),
    ).toMatch(/blocking/);
    expect(pageProblem('summary', s, ready)).toBeNull();
  });

  it('judges a destination ready, with warnings, or blocked', () => {
    expect(verdictLevel({ errors: [], warnings: [] })).toBe('ready');
    expect(verdictLevel({ errors: [], warnings: [{ code: 'w', message: 'slow' }] })).toBe('warnings');
    expect(verdictLevel({ errors: [{ code: 'e', message: 'no' }], warnings: [] })).toBe('blocked');
  });

  it('summarises the choices and the source host performance settings', () => {
    const s = { ...initialState('demo', 'lab1', DISKS), destination: 'lab2' };
    const rows = Object.fromEntries(summaryRows(s, SETTINGS).map((r) => [r.label, r.value]));
    expect(rows['Destination host']).toBe('lab2');
    expect(rows['Performance option']).toBe('Compression (4 channels)');
    expect(rows['Bandwidth limit']).toBe('20 MiB/s');
    const tcp = Object.fromEntries(
      summaryRows(s, { ...SETTINGS, performance: 'tcp' }).map((r) => [r.label, r.value]),
    );
    expect(tcp['Performance option']).toBe('TCP/IP');
  });
});

describe('host settings form', () => {
  const facts = { name: 'lab1', rdma: false, multifdCompression: ['zlib', 'zstd'] } as unknown as HostFacts;

  it('validates inline with the contract limits', () => {
    const f = formFromSettings(SETTINGS);
    expect(formErrors(f)).toEqual({});
    const bad = {
      ...f,
      maxLiveMigrations: 0,
      channels: 100,
      downtimeMs: 500,
      downtimeCeilingMs: 400,
      incomingMode: 'list' as const,
    };
    const errors = formErrors(bad);
    expect(Object.keys(errors).sort()).toEqual([
      'channels',
      'downtimeCeilingMs',
      'maxLiveMigrations',
      'networks',
    ]);
    expect(formErrors({ ...f, incomingMode: 'list', networks: ['10.0.0.0/24', '10.0.0.0/24', 'x'] })).toEqual(
      {
        'networks.1': '"10.0.0.0/24" is listed twice',
        'networks.2': '"x" is not an IPv4 address or subnet such as 10.0.0.0/24',
      },
    );
    // TCP/IP uses no channels: their value does not matter then.
    expect(formErrors({ ...f, performance: 'tcp', channels: null })).toEqual({});
  });

  it('accepts IPv4 addresses and subnets only', () => {
    expect(networkProblem('192.168.1.0/24')).toBeNull();
    expect(networkProblem('10.1.2.3')).toBeNull();
    expect(networkProblem('10.0.0.0/33')).toMatch(/prefix/);
    expect(networkProblem('300.1.1.1')).not.toBeNull();
    expect(networkProblem('fe80::/64')).not.toBeNull();
  });

  it('explains RDMA being unavailable and settings a move would refuse', () => {
    expect(rdmaUnavailable(facts)).toMatch(/no RDMA-capable/);
    expect(rdmaUnavailable({ ...facts, rdma: true })).toBeNull();
    expect(formWarnings({ ...formFromSettings(SETTINGS), convergence: 'postcopy' }, facts)[0]).toMatch(
      /Post-copy/,
    );
  });

  it('sends the whole settings object with the changes (the patch schema fills omitted keys with defaults)', () => {
    const f = { ...formFromSettings(SETTINGS), performance: 'tcp' as const, limitBandwidth: false };
    const { changed, settings } = settingsUpdate(f, SETTINGS);
    expect(changed.sort()).toEqual(['bandwidthMiBs', 'performance']);
    expect(settings).toEqual({ ...SETTINGS, performance: 'tcp', bandwidthMiBs: null });
    expect(settings.storageRoots).toEqual(['/lab/shared']);
  });

  it('edits Encryption on the Advanced Features page (default Required) and saves only that change', () => {
    const f = formFromSettings(SETTINGS);
    expect(f.encryption).toBe('required');
    expect(FIELD_PAGE['encryption']).toBe('advanced');
    expect(ENCRYPTION_CHOICES.map((c) => c.label)).toEqual(['Required', 'When available', 'Off']);
    expect(ENCRYPTION_CHOICES[0]!.help).toMatch(/refused/);
    const { changed, settings } = settingsUpdate({ ...f, encryption: 'when-available' }, SETTINGS);
    expect(changed).toEqual(['encryption']);
    expect(settings).toEqual({ ...SETTINGS, encryption: 'when-available' });
    expect(formFromSettings({ ...SETTINGS, encryption: 'off' }).encryption).toBe('off');
    expect(settingsUpdate(f, SETTINGS).changed).toEqual([]);
  });

  it('says Encryption does not apply to Ferry’s own hosts, and warns when a libvirt host turns it off', () => {
    expect(encryptionNotApplicable('libvirt')).toBeNull();
    expect(encryptionNotApplicable(null)).toBeNull(); // not known yet: shown, not greyed
    expect(encryptionNotApplicable('lab')).toMatch(/^Does not apply to Ferry's lab hosts/);
    expect(encryptionNotApplicable('local')).toMatch(/never cross a network/);
    const off = { ...formFromSettings(SETTINGS), encryption: 'off' as const };
    expect(formWarnings(off, facts, 'libvirt')).toEqual([
      'Encryption is off: moves to and from this host send the VM’s memory and disks over the network unencrypted.',
    ]);
    expect(formWarnings(off, facts, 'lab')).toEqual([]);
    expect(formWarnings(off, facts)).toEqual([]);
  });

  it('warns on a libvirt host before 9.4 that Compression will be xbzrle', () => {
    const f = formFromSettings(SETTINGS);
    const old = { ...facts, libvirtVersion: '9.0.0' };
    expect(formWarnings(f, old, 'libvirt')).toEqual([
      'libvirt 9.0.0 has no multifd compression (zlib/zstd came in libvirt 9.4): Compression will use xbzrle over one connection, and Channels are not used.',
    ]);
    expect(formWarnings(f, { ...facts, libvirtVersion: '10.0.0' }, 'libvirt')).toEqual([]);
    expect(formWarnings({ ...f, performance: 'tcp' }, old, 'libvirt')).toEqual([]);
  });
});

describe('a move’s options in the progress view, the history and the Summary', () => {
  const options = {
    performance: 'compression' as const,
    channels: 4,
    bandwidthMiBs: 10,
    downtimeMs: 300,
    downtimeCeilingMs: 2000,
    convergence: 'raise-downtime' as const,
    compression: 'xbzrle' as const,
    encrypted: true,
  };

  it('names the compression method: xbzrle over one connection, zstd over channels', () => {
    expect(performanceText(options)).toBe('Compression: xbzrle');
    expect(performanceText({ ...options, compression: 'zstd' })).toBe('Compression: zstd, 4 channels');
    expect(performanceText({ ...options, compression: null })).toBe('Compression, 4 channels');
    expect(performanceText({ ...options, performance: 'multichannel', compression: null })).toBe(
      'Multichannel, 4 channels',
    );
    expect(performanceText({ ...options, performance: 'tcp', compression: null })).toBe('TCP/IP');
    expect(moveOptionsText(options, 'live')).toBe(
      'Compression: xbzrle · limit 10 MiB/s · downtime target 300 ms · policy raise-downtime',
    );
    expect(moveOptionsText({ ...options, bandwidthMiBs: null }, 'storage')).toBe('no bandwidth limit');
  });

  it('times the memory copy over phases 2 and 3 (libvirt runs its later passes in phase 3)', () => {
    expect(
      memoryCopyMs([
        { phase: 1, ms: 2500 },
        { phase: 2, ms: 1800 },
        { phase: 3, ms: 1800 },
        { phase: 4, ms: 25 },
      ]),
    ).toBe(3600);
    expect(memoryCopyMs([{ phase: 2, ms: null }])).toBeNull();
  });

  it('says whether the stream was encrypted, only when the move says', () => {
    expect(encryptionText(options)).toBe('Encrypted (TLS)');
    expect(encryptionText({ encrypted: false })).toBe('Not encrypted');
    expect(encryptionText({})).toBeNull(); // Ferry's own hosts
    expect(encryptionText(null)).toBeNull();
  });

  it('words the Summary’s Encryption and performance rows from the pre-flight report', () => {
    const xbzrle = { code: 'compression-xbzrle', message: 'libvirt 9.0.0 offers no multifd compression…' };
    expect(plannedEncryptionText(null)).toBe('checking…');
    expect(plannedEncryptionText({ errors: [], warnings: [xbzrle] })).toBe('Encrypted (TLS)');
    expect(
      plannedEncryptionText({
        errors: [],
        warnings: [{ code: 'unencrypted', message: 'encryption is off' }],
      }),
    ).toBe('Not encrypted (see below)');
    expect(
      plannedEncryptionText({ errors: [{ code: 'encryption-unavailable', message: '…' }], warnings: [] }),
    ).toMatch(/^Required, but migration TLS certificates are missing/);
    expect(
      plannedEncryptionText({ errors: [{ code: 'mixed-host-kinds', message: '…' }], warnings: [] }),
    ).toBe('—');
    expect(plannedPerformanceText('Compression (4 channels)', { errors: [], warnings: [xbzrle] })).toMatch(
      /^Compression: xbzrle \(one connection/,
    );
    expect(plannedPerformanceText('Compression (4 channels)', { errors: [], warnings: [] })).toBe(
      'Compression (4 channels)',
    );
  });
});

describe('progress figures', () => {
  const s = (at: number, pass: number, over: Partial<Sample> = {}): Sample => ({
    at,
    phase: 2,
    pass,
    bytesSent: 0,
    remainingBytes: 40 * 1048576,
    totalBytes: 512 * 1048576,
    dirtyBytesPerSec: 4 * 1048576,
    throughputMiBs: 20,
    expectedDowntimeMs: 100,
    throttlePct: 0,
    downtimeLimitMs: 300,
    ...over,
  });

  it('marks where each pass began, in seconds', () => {
    const samples = [s(1000, 0), s(1250, 1), s(1500, 1), s(1750, 2), s(2000, 4)];
    expect(passBoundaries(samples)).toEqual([
      { x: 1.25, pass: 1 },
      { x: 1.75, pass: 2 },
      { x: 2, pass: 4 },
    ]);
    expect(throughputPoints(samples)[0]).toEqual({ x: 1, y: 20 });
  });

  it('estimates the time left, or says why there is no estimate', () => {
    expect(outlook(s(1000, 2), null)).toMatchObject({ converging: true, text: 'about 3 s' });
    const stuck = outlook(s(1000, 2, { dirtyBytesPerSec: 25 * 1048576 }), null);
    expect(stuck.converging).toBe(false);
    expect(stuck.text).toMatch(/not converging: the guest dirties 25.0 MiB\/s, the link moves 20.0 MiB\/s/);
    expect(outlook(null, null).text).toBe('—');
  });

  it('words the status column and durations as the main window shows them', () => {
    expect(moveStatusText({ state: 'running', to: null, phase: 2, pass: 3, queuePosition: null })).toBe(
      'Moving — phase 2, pass 3',
    );
    expect(moveStatusText({ state: 'running', to: 'lab2', phase: 1, pass: 0, queuePosition: null })).toBe(
      'Moving to lab2 — phase 1',
    );
    expect(moveStatusText({ state: 'queued', to: 'lab2', phase: 0, pass: 0, queuePosition: 2 })).toBe(
      'Move queued (position 2)',
    );
    expect(
      moveStatusText({
        state: 'running',
        to: 'lab1',
        phase: 0,
        pass: 0,
        queuePosition: null,
        kind: 'storage',
        copiedPct: 30,
      }),
    ).toBe('Moving storage — 30% copied');
    expect(
      copiedPercent([
        { copied: 1, total: 4 },
        { copied: 1, total: 4 },
      ]),
    ).toBe(25);
    expect(formatDuration(350)).toBe('350 ms');
    expect(formatDuration(4200)).toBe('4.2 s');
    expect(formatDuration(125_000)).toBe('2 min 05 s');
    expect(formatUptime('2026-01-01T00:00:00Z', Date.parse('2026-01-02T01:02:03Z'))).toBe('1.01:02:03');
  });
});
