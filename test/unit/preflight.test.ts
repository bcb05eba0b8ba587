// The pre-flight judgement as a pure function: the checks that need two different machines to fail
// for real (CPU maker, storage that is not the same), and the network matching.
import { describe, expect, it } from 'vitest';
import {
  HostSettingsSchema,
  MoveRequestSchema,
  type HostFacts,
  type VmConfig,
} from '../../engine/api/index.js';
import { inNetwork, judge, resolveOptions, type PreflightInput } from '../../engine/migration/preflight.js';
import {
  brokenMigrationMessage,
  isBroken,
  isSettled,
  type OutgoingState,
} from '../../engine/qemu/migration.js';

const facts = (over: Partial<HostFacts> = {}): HostFacts => ({
  name: 'a',
  qemuBinary: '/usr/bin/qemu-system-x86_64',
  qemuVersion: '7.2.22',
  accel: 'kvm',
  hardwareVirtualization: true,
  accelNote: 'KVM',
  cpuVendor: 'GenuineIntel',
  cpuModel: 'Xeon',
  cpuCount: 8,
  memTotalMiB: 32768,
  memFreeMiB: 16384,
  diskFreeBytes: 1e12,
  machineTypes: ['pc-q35-7.2', 'pc-q35-7.1'],
  defaultMachineType: 'pc-i440fx-7.2',
  cpuModels: ['qemu64', 'host'],
  migrationCapabilities: ['multifd'],
  multifdCompression: ['none', 'zlib', 'zstd'],
  rdma: false,
  ...over,
});

const vm: VmConfig = {
  formatVersion: 1,
  name: 'web1',
  uuid: '8a1b6f3e-2c4d-4e5f-9a0b-1c2d3e4f5a6b',
  memoryMiB: 2048,
  cpus: 2,
  machineType: 'pc-q35-7.2',
  cpuModel: 'qemu64',
  disks: [
    { id: 'disk0', path: '/srv/share/web1/disk0.qcow2', format: 'qcow2', sizeBytes: 1 << 30, owned: true },
  ],
  nics: [],
  labGuest: null,
  createdAt: new Date(0).toISOString(),
};

function input(over: Partial<PreflightInput> = {}): PreflightInput {
  const settings = HostSettingsSchema.parse({});
  const request = MoveRequestSchema.parse({ vm: 'web1', to: 'b' });
  return {
    request,
    vm,
    vmState: 'running',
    source: { name: 'a', facts: facts(), settings, migrationAddress: '10.0.0.1' },
    dest: { name: 'b', facts: facts({ name: 'b' }), settings, migrationAddress: '10.0.0.2' },
    destHasVm: false,
    options: resolveOptions(request, settings, facts()),
    sharedStorage: [{ id: 'disk0', path: vm.disks[0]!.path, inRoots: true, sameFile: true, why: '' }],
    passthroughDisks: [],
    ...over,
  };
}

describe('pre-flight judgement', () => {
  it('passes two like hosts with no warnings', () => {
    expect(judge(input())).toEqual({ errors: [], warnings: [] });
  });

  it('Q2: refuses hosts with processors of different makers', () => {
    const r = judge(input({ dest: { ...input().dest, facts: facts({ cpuVendor: 'AuthenticAMD' }) } }));
    expect(r.errors).toEqual([
      {
        code: 'cpu-vendor-mismatch',
        message: 'a has GenuineIntel processors, b has AuthenticAMD; both must be of the same maker',
      },
    ]);
  });

  it('Q6: refuses a path that is a different file on the destination', () => {
    const r = judge(
      input({
        sharedStorage: [
          {
            id: 'disk0',
            path: '/srv/share/web1/disk0.qcow2',
            inRoots: true,
            sameFile: false,
            why: 'a marker written by the source is not visible',
          },
        ],
      }),
    );
    expect(r.errors.map((e) => e.code)).toEqual(['storage-not-shared']);
    expect(r.errors[0]!.message).toBe(
      'b does not see the same disk0 at /srv/share/web1/disk0.qcow2: a marker written by the source is not visible',
    );
  });

  it('Q6 does not apply to a shared-nothing move', () => {
    const request = MoveRequestSchema.parse({ vm: 'web1', to: 'b', includeStorage: true });
    expect(
      judge(
        input({
          request,
          sharedStorage: [{ id: 'disk0', path: 'x', inRoots: false, sameFile: false, why: '' }],
        }),
      ).errors,
    ).toEqual([]);
  });

  it('warns about hosts without hardware virtualization and falls back to zlib without zstd', () => {
    const slow = facts({
      hardwareVirtualization: false,
      accel: 'tcg',
      accelNote: 'no /dev/kvm',
      multifdCompression: ['none', 'zlib'],
    });
    const settings = HostSettingsSchema.parse({});
    const request = MoveRequestSchema.parse({ vm: 'web1', to: 'b' });
    const r = judge(
      input({
        source: { name: 'a', facts: slow, settings, migrationAddress: '10.0.0.1' },
        dest: { name: 'b', facts: { ...slow, name: 'b' }, settings, migrationAddress: '10.0.0.2' },
        options: resolveOptions(request, settings, slow),
      }),
    );
    expect(r.errors).toEqual([]);
    expect(r.warnings.map((w) => w.code)).toEqual([
      'no-hardware-virtualization',
      'no-hardware-virtualization',
      'zstd-missing',
    ]);
  });

  it('matches migration addresses against incoming networks', () => {
    expect(inNetwork('10.0.0.2', '10.0.0.0/24')).toBe(true);
    expect(inNetwork('10.0.1.2', '10.0.0.0/24')).toBe(false);
    expect(inNetwork('192.168.1.7', '192.168.1.7')).toBe(true);
    expect(inNetwork('192.168.1.7', '0.0.0.0/0')).toBe(true);
    expect(inNetwork('::1', '10.0.0.0/8')).toBe(false);
    const settings = HostSettingsSchema.parse({ incomingNetworks: ['10.0.0.0/24'] });
    expect(judge(input({ dest: { ...input().dest, settings } })).errors).toEqual([]);
  });

  it('refuses moving to an older QEMU', () => {
    const r = judge(input({ dest: { ...input().dest, facts: facts({ qemuVersion: '7.1.0' }) } }));
    expect(r.errors.map((e) => e.code)).toEqual(['older-destination']);
    expect(
      judge(input({ dest: { ...input().dest, facts: facts({ qemuVersion: '8.0.0' }) } })).errors,
    ).toEqual([]);
  });
});

describe("pre-flight: the source QEMU's migration state and the destination's readiness", () => {
  const mig = (ready: boolean, broken: boolean, status: string): PreflightInput['sourceMigration'] => ({
    ready,
    broken,
    status,
  });

  it('starts again from a failed or cancelled migration that QEMU has cleaned up', () => {
    for (const status of ['none', 'failed', 'cancelled'])
      expect(judge(input({ sourceMigration: mig(true, false, status) })).errors).toEqual([]);
  });

  it('refuses a QEMU stuck in a broken migration, with the way out', () => {
    expect(judge(input({ sourceMigration: mig(false, true, 'cancelling') })).errors).toEqual([
      { code: 'migration-broken', message: brokenMigrationMessage('web1') },
    ]);
    expect(brokenMigrationMessage('web1')).toBe(
      "this VM's QEMU still holds a broken migration; it can move again after a restart (shut down and start, " +
        'or turn off and start if the guest does not shut down): ferry vm stop web1, then ferry vm start web1. ' +
        'Until then web1 keeps running where it is',
    );
  });

  it('refuses a migration still running in QEMU that no Ferry move owns', () => {
    expect(judge(input({ sourceMigration: mig(false, false, 'active') })).errors).toEqual([
      {
        code: 'migration-in-progress',
        message:
          "web1's QEMU on a is still running a migration (active) that Ferry did not start; wait for it to end or cancel it first",
      },
    ]);
  });

  it("a move of Ferry's under way is reported once, as vm-migrating", () => {
    const r = judge(input({ vmState: 'migrating', sourceMigration: mig(false, false, 'active') }));
    expect(r.errors.map((e) => e.code)).toEqual(['vm-migrating']);
  });

  it('refuses a destination whose migration address does not answer', () => {
    expect(judge(input({ destReachable: false })).errors).toEqual([
      {
        code: 'destination-unreachable',
        message: "b's migration address 10.0.0.2 does not answer from a: is the link between them down?",
      },
    ]);
  });
});

describe('QEMU 7.2 outgoing migration states', () => {
  const st = (status: string, cleanedUp: boolean): OutgoingState => ({ status, cleanedUp, error: null });
  it('settled: over and cleaned up; broken: cancelling, or over (or set up) without clean-up', () => {
    expect(isSettled(st('failed', true))).toBe(true);
    expect(isSettled(st('failed', false))).toBe(false);
    expect(isSettled(st('active', true))).toBe(false);
    expect(isBroken(st('failed', false))).toBe(true);
    expect(isBroken(st('cancelled', false))).toBe(true);
    expect(isBroken(st('setup', false))).toBe(true);
    expect(isBroken(st('cancelling', true))).toBe(true);
    expect(isBroken(st('active', false))).toBe(false);
    expect(isBroken(st('failed', true))).toBe(false);
  });
});
