// The capabilities parsers read only what Ferry uses, cutting the rest before parsing (the host's
// topology, caches, security models; the domain capabilities' devices): the same facts as from the
// whole document. Fixtures: `virsh capabilities` and `virsh domcapabilities --virttype qemu` from a
// libvirt 9.0 lab host (Debian 12).
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  buildDomainXml,
  parseCapabilities,
  parseDomainCpuModels,
  parseDomainXml,
} from '../../engine/host/libvirt/domain-xml.js';

const fixture = (name: string): string =>
  fs.readFileSync(path.join(import.meta.dirname, 'fixtures', name), 'utf8');

describe('libvirt capabilities', () => {
  it('reads the host CPU, the emulator, machine types and migration transports', () => {
    const caps = parseCapabilities(fixture('libvirt-9.0-capabilities.xml'));
    expect(caps).toMatchObject({
      uuid: 'e6275f95-0846-4c05-b592-e51d0fea956c',
      cpuVendor: 'AMD',
      cpuModel: 'kvm64',
      arch: 'x86_64',
      emulator: '/usr/bin/qemu-system-x86_64',
      defaultMachineType: 'pc-i440fx-7.2',
      domainTypes: ['qemu', 'kvm'],
      migrationUriTransports: ['tcp', 'rdma'],
    });
    expect(caps.machineTypes).toContain('pc-q35-7.2');
    expect(caps.machineTypes).toContain('pc');
  });

  it('is not misled by a self-closing CPU <topology/> before the host <topology> block', () => {
    const xml =
      "<capabilities><host><cpu><arch>x86_64</arch><model>EPYC</model><vendor>AMD</vendor><topology sockets='2' cores='64' threads='2'/></cpu>" +
      '<power_management/><migration_features><uri_transports><uri_transport>tcp</uri_transport></uri_transports></migration_features>' +
      "<topology><cells num='1'><cell id='0'><cpus num='1'><cpu id='0' socket_id='0' core_id='0' siblings='0'/></cpus></cell></cells></topology>" +
      "<cache><bank id='0' level='3' type='both' size='32' unit='MiB' cpus='0'/></cache></host>" +
      "<guest><os_type>hvm</os_type><arch name='x86_64'><emulator>/usr/bin/qemu-system-x86_64</emulator><machine canonical='pc-q35-7.2'>q35</machine><domain type='kvm'/></arch></guest></capabilities>";
    expect(parseCapabilities(xml)).toMatchObject({
      cpuVendor: 'AMD',
      cpuModel: 'EPYC',
      machineTypes: ['q35'],
      defaultMachineType: 'pc-q35-7.2',
      domainTypes: ['kvm'],
      migrationUriTransports: ['tcp'],
    });
  });

  it('lists the usable CPU models from the domain capabilities', () => {
    const models = parseDomainCpuModels(fixture('libvirt-9.0-domcapabilities.xml'));
    expect(models.slice(0, 3)).toEqual(['qemu64', 'qemu32', 'pentium3']);
    expect(models).not.toContain('phenom'); // usable='no'
    expect(parseDomainCpuModels('<domainCapabilities><devices/></domainCapabilities>')).toEqual([]);
  });
});

describe('consoles in domain XML', () => {
  const base = {
    name: 'web01',
    uuid: '0b6e1b8e-5f7c-4c43-9a0e-3f0c1c6a2b11',
    type: 'qemu' as const,
    memoryMiB: 256,
    cpus: 1,
    machineType: 'pc-i440fx-7.2',
    disks: [],
    nics: [],
    labGuest: null,
  };

  it('gives a new domain a pty serial logged to its file and a VNC screen on loopback', () => {
    const d = parseDomainXml(buildDomainXml({ ...base, serialFile: '/srv/vm/web01.serial.log' }));
    expect(d).toMatchObject({
      serialType: 'pty',
      serialFile: '/srv/vm/web01.serial.log',
      vnc: { listen: '127.0.0.1', port: null, socket: null },
    });
    expect(parseDomainXml(buildDomainXml({ ...base, serialFile: null }))).toMatchObject({
      serialType: 'pty',
      serialFile: null,
    });
  });

  it('reads what a running domain has: a file serial, a VNC port or socket, or no screen', () => {
    const dom = (devices: string): string =>
      `<domain type='kvm'><name>a</name><memory unit='KiB'>262144</memory><os><type machine='pc'>hvm</type></os><devices>${devices}</devices></domain>`;
    expect(
      parseDomainXml(
        dom(
          "<serial type='file'><source path='/var/log/a.log'/></serial><graphics type='vnc' port='5901' autoport='yes' listen='0.0.0.0'><listen type='address' address='0.0.0.0'/></graphics>",
        ),
      ),
    ).toMatchObject({
      serialType: 'file',
      serialFile: '/var/log/a.log',
      vnc: { listen: '0.0.0.0', port: 5901 },
    });
    expect(parseDomainXml(dom("<graphics type='vnc' socket='/run/libvirt/qemu/a.vnc'/>"))).toMatchObject({
      serialType: null,
      vnc: { socket: '/run/libvirt/qemu/a.vnc', port: null },
    });
    expect(
      parseDomainXml(
        dom("<serial type='pty'><source path='/dev/pts/3'/></serial><graphics type='spice' port='5900'/>"),
      ),
    ).toMatchObject({ serialType: 'pty', serialFile: null, vnc: null });
  });
});
