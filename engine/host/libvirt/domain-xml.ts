// libvirt speaks XML: a domain's definition, the host's capabilities. This module reads what Ferry
// shows of them (and writes the one kind of domain Ferry defines itself), so the driver deals in
// Ferry's model only. Parsing is tolerant: a domain defined by virt-manager, OpenStack or by hand may
// lack any optional element, and one odd domain must never hide the others.
import { XMLBuilder, XMLParser } from 'fast-xml-parser';
import type { Disk, LabGuest, Nic } from '../../api/index.js';

const ALWAYS_ARRAY = new Set([
  'domain.devices.disk',
  'domain.devices.interface',
  'domain.devices.serial',
  'domain.devices.console',
  'capabilities.guest',
  'capabilities.guest.arch.machine',
  'capabilities.guest.arch.domain',
  'domainCapabilities.cpu.mode',
  'domainCapabilities.cpu.mode.model',
]);

const parser = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: '@',
  textNodeName: '#text',
  parseAttributeValue: false,
  parseTagValue: false,
  isArray: (_name, jpath) => ALWAYS_ARRAY.has(String(jpath)),
});

type Node = Record<string, unknown>;

function obj(v: unknown): Node {
  return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Node) : {};
}
function arr(v: unknown): Node[] {
  return Array.isArray(v) ? v.map(obj) : v === undefined ? [] : [obj(v)];
}
/** An element's text, whether the parser gave it as a string or as an object with attributes. */
function text(v: unknown): string | null {
  if (typeof v === 'string') return v.trim();
  if (typeof v === 'number') return String(v);
  const t = obj(v)['#text'];
  return typeof t === 'string' || typeof t === 'number' ? String(t).trim() : null;
}
function attr(v: unknown, name: string): string | null {
  const a = obj(v)[`@${name}`];
  return typeof a === 'string' ? a : null;
}

/** Converts a libvirt memory element (value + unit, default KiB) to MiB. */
function memoryMiB(el: unknown): number {
  const value = Number(text(el) ?? 0);
  const unit = (attr(el, 'unit') ?? 'KiB').toLowerCase();
  const factor: Record<string, number> = {
    b: 1 / 1048576,
    bytes: 1 / 1048576,
    k: 1 / 1024,
    kib: 1 / 1024,
    kb: 1000 / 1048576,
    m: 1,
    mib: 1,
    mb: 1e6 / 1048576,
    g: 1024,
    gib: 1024,
    gb: 1e9 / 1048576,
    t: 1048576,
    tib: 1048576,
  };
  return Math.round(value * (factor[unit] ?? 1 / 1024));
}

export interface DomainDescription {
  name: string;
  uuid: string;
  /** libvirt's domain type: kvm, qemu (TCG), … */
  type: string;
  memoryMiB: number;
  cpus: number;
  machineType: string;
  cpuModel: string;
  emulator: string | null;
  disks: Disk[];
  nics: Nic[];
  /** The file the first serial port writes to: a `<serial type='file'>`, or the `<log>` of a pty. */
  serialFile: string | null;
  /** The first serial port's kind: only a pty can be a console (libvirt's open-console). */
  serialType: string | null;
  /** The first graphical console: VNC's listen address and port, or its unix socket. */
  vnc: { listen: string | null; port: number | null; socket: string | null } | null;
  /** The lab guest, recognised by its kernel file and command line. */
  labGuest: LabGuest | null;
  kernel: string | null;
}

/** Reads a domain's XML (`virDomainGetXMLDesc`) into what Ferry shows and checks. */
export function parseDomainXml(xml: string): DomainDescription {
  const dom = obj(parser.parse(xml)['domain']);
  const os = obj(dom['os']);
  const osType = obj(os['type']);
  const cpu = obj(dom['cpu']);
  const devices = obj(dom['devices']);

  const disks: Disk[] = [];
  for (const d of arr(devices['disk'])) {
    const device = attr(d, 'device') ?? 'disk';
    if (device !== 'disk') continue; // cdrom, floppy, lun: not the VM's storage
    const target = attr(d['target'], 'dev');
    const source = obj(d['source']);
    const file =
      attr(source, 'file') ?? attr(source, 'dev') ?? attr(source, 'volume') ?? attr(source, 'name');
    if (!target || !/^[hsvx]d[a-z]{1,3}$/.test(target) || !file) continue;
    disks.push({
      id: target,
      path: file,
      format: attr(d['driver'], 'type') ?? 'raw',
      sizeBytes: 0, // the XML does not say; the driver fills it from the volume where it can
      owned: false,
    });
  }

  const nics: Nic[] = arr(devices['interface']).map((n, i) => {
    const kind = attr(n, 'type') ?? 'user';
    const src = obj(n['source']);
    const name = attr(src, 'network') ?? attr(src, 'bridge') ?? attr(src, 'dev');
    return {
      id: `net${i}`,
      mac: (attr(n['mac'], 'address') ?? '00:00:00:00:00:00').toLowerCase(),
      model: attr(n['model'], 'type') ?? 'default',
      source: name ? `${kind}:${name}` : kind,
    };
  });

  const serial = arr(devices['serial'])[0];
  const serialType = serial ? (attr(serial, 'type') ?? null) : null;
  const serialFile = !serial
    ? null
    : serialType === 'file'
      ? attr(serial['source'], 'path')
      : (attr(serial['log'], 'file') ?? null);
  const g = arr(devices['graphics']).find((x) => attr(x, 'type') === 'vnc');
  const gl = g ? arr(g['listen'])[0] : undefined;
  const vncPort = g ? Number(attr(g, 'port') ?? NaN) : NaN;
  const vnc = g
    ? {
        listen: attr(g, 'listen') ?? attr(gl, 'address') ?? null,
        port: Number.isInteger(vncPort) && vncPort > 0 ? vncPort : null,
        socket: attr(g, 'socket') ?? attr(gl, 'socket') ?? null,
      }
    : null;
  const kernel = text(os['kernel']);
  const cmdline = text(os['cmdline']) ?? '';

  return {
    name: text(dom['name']) ?? '',
    uuid: (text(dom['uuid']) ?? '').toLowerCase(),
    type: attr(dom, 'type') ?? 'qemu',
    memoryMiB: memoryMiB(dom['currentMemory'] ?? dom['memory']),
    cpus: Number(text(dom['vcpu']) ?? 1) || 1,
    machineType: attr(osType, 'machine') ?? 'unknown',
    cpuModel: text(cpu['model']) ?? attr(cpu, 'mode') ?? 'default',
    emulator: text(devices['emulator']),
    disks,
    nics,
    serialFile,
    serialType,
    vnc,
    labGuest: kernel && /ferry-lab-guest/.test(kernel) ? labGuestFromCmdline(cmdline) : null,
    kernel,
  };
}

function labGuestFromCmdline(cmdline: string): LabGuest {
  const get = (k: string, d: number): number => {
    const m = new RegExp(`(?:^|\\s)${k}=(\\d+)`).exec(cmdline);
    return m ? Number(m[1]) : d;
  };
  return { workingSetMiB: get('ws', 64), dirtyRateMiBs: get('rate', 50) };
}

export interface HostCapabilities {
  uuid: string | null;
  cpuVendor: string;
  cpuModel: string;
  arch: string;
  /** Emulator and machine types of the x86_64 (or host-arch) hvm guest. */
  emulator: string | null;
  machineTypes: string[];
  /** The canonical machine type behind the `pc` alias (what a new domain gets by default). */
  defaultMachineType: string | null;
  /** libvirt domain types this host can run: qemu (TCG), kvm. */
  domainTypes: string[];
  migrationUriTransports: string[];
}

/**
 * Parts of the capabilities XML Ferry never reads. On a many-core server the host's topology, caches and
 * security models are most of the document (one element per CPU thread), and parsing is the costliest
 * step of a pre-flight: they are cut before parsing. None of these elements nests inside itself.
 */
const UNREAD_CAPABILITIES =
  /<(topology|cache|secmodel|power_management|iommu|memory_bandwidth|netprefix)\b[^>]*?(?:\/>|(?<!\/)>[\s\S]*?<\/\1>)/g;

/** Reads `virConnectGetCapabilities`. */
export function parseCapabilities(xml: string): HostCapabilities {
  const caps = obj(parser.parse(xml.replace(UNREAD_CAPABILITIES, ''))['capabilities']);
  const host = obj(caps['host']);
  const cpu = obj(host['cpu']);
  const arch = text(cpu['arch']) ?? 'x86_64';
  const guests = arr(caps['guest']).filter((g) => text(g['os_type']) === 'hvm');
  const guest = guests.find((g) => attr(g['arch'], 'name') === arch) ?? guests[0] ?? {};
  const garch = obj(guest['arch']);
  const machines = arr(garch['machine']);
  const names = machines.map((m) => text(m)).filter((m): m is string => !!m);
  const pc = machines.find((m) => text(m) === 'pc' || text(m) === 'q35');
  const t = obj(obj(host['migration_features'])['uri_transports'])['uri_transport'];
  const transports: unknown[] = Array.isArray(t) ? t : t === undefined ? [] : [t];
  return {
    uuid: text(host['uuid']),
    cpuVendor: text(cpu['vendor']) ?? 'unknown',
    cpuModel: text(cpu['model']) ?? 'unknown',
    arch,
    emulator: text(garch['emulator']),
    machineTypes: [...new Set(names)],
    defaultMachineType: pc ? (attr(pc, 'canonical') ?? text(pc)) : (names[0] ?? null),
    domainTypes: arr(garch['domain']).map((d) => attr(d, 'type') ?? ''),
    migrationUriTransports: transports.map((t) => text(t) ?? '').filter(Boolean),
  };
}

/** CPU models a new domain may name, from `virConnectGetDomainCapabilities`. */
export function parseDomainCpuModels(xml: string): string[] {
  // Only the <cpu> element is read (devices and features are most of the document).
  const from = xml.indexOf('<cpu>');
  const to = xml.lastIndexOf('</cpu>');
  const cpu = from >= 0 && to > from ? xml.slice(from, to + '</cpu>'.length) : '';
  const caps = obj(parser.parse(`<domainCapabilities>${cpu}</domainCapabilities>`)['domainCapabilities']);
  const custom = arr(obj(caps['cpu'])['mode']).find((m) => attr(m, 'name') === 'custom');
  return custom
    ? arr(custom['model'])
        .filter((m) => attr(m, 'usable') !== 'no')
        .map((m) => text(m) ?? '')
        .filter(Boolean)
    : [];
}

const builder = new XMLBuilder({
  ignoreAttributes: false,
  attributeNamePrefix: '@',
  textNodeName: '#text',
  format: true,
  suppressEmptyNode: true,
});

export interface NewDomain {
  name: string;
  uuid: string;
  type: 'kvm' | 'qemu';
  memoryMiB: number;
  cpus: number;
  machineType: string;
  /** Existing images on the host (libvirt 9.0 makes no plain files outside a storage pool). */
  disks: { target: string; path: string; format: string }[];
  nics: { mac: string; network: string }[];
  labGuest: { kernel: string; lab: LabGuest } | null;
  serialFile: string | null;
}

/** The XML of a domain Ferry defines on a libvirt host (`ferry vm create --host <libvirt host>`). */
export function buildDomainXml(d: NewDomain): string {
  const os: Node = { type: { '@arch': 'x86_64', '@machine': d.machineType, '#text': 'hvm' } };
  if (d.labGuest) {
    os['kernel'] = d.labGuest.kernel;
    os['cmdline'] = `ws=${d.labGuest.lab.workingSetMiB} rate=${d.labGuest.lab.dirtyRateMiBs}`;
  } else {
    os['boot'] = { '@dev': 'hd' };
  }
  const devices: Node = {
    disk: d.disks.map((k) => ({
      '@type': 'file',
      '@device': 'disk',
      driver: { '@name': 'qemu', '@type': k.format },
      source: { '@file': k.path },
      target: { '@dev': k.target, '@bus': 'virtio' },
    })),
    interface: d.nics.map((n) => ({
      '@type': 'network',
      mac: { '@address': n.mac },
      source: { '@network': n.network },
      model: { '@type': 'virtio' },
    })),
    // A pty, so the console can be opened (libvirt's open-console needs one), logged to a file when
    // one is named (what `ferry vm serial` reads).
    serial: {
      '@type': 'pty',
      ...(d.serialFile ? { log: { '@file': d.serialFile, '@append': 'on' } } : {}),
      target: { '@port': '0' },
    },
    // A screen, served by VNC on the server's loopback only: Ferry reaches it through its SSH connection.
    graphics: { '@type': 'vnc', '@autoport': 'yes', listen: { '@type': 'address', '@address': '127.0.0.1' } },
    video: { model: { '@type': 'vga' } },
  };
  return builder.build({
    domain: {
      '@type': d.type,
      name: d.name,
      uuid: d.uuid,
      memory: { '@unit': 'MiB', '#text': String(d.memoryMiB) },
      vcpu: String(d.cpus),
      os,
      features: { acpi: '' },
      // The RTC follows the host's wall clock (QEMU `-rtc base=utc,clock=host`, its default), also while
      // the VM is paused or moving: the lab guest measures the gap a move leaves in its own clock against
      // it. Only new domains get the element; it is what they would have without it.
      clock: { '@offset': 'utc', timer: { '@name': 'rtc', '@track': 'wall' } },
      on_poweroff: 'destroy',
      on_reboot: 'restart',
      on_crash: 'destroy',
      devices,
    },
  }) as string;
}
