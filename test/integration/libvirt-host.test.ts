// libvirt hosts as an administrator uses them, through the `ferry` CLI, against the real libvirtd 9.0
// daemons of the libvirt lab (one lab of two machines for the whole file): the lab's hosts and their
// facts, a domain defined with plain virsh driven by Ferry (and virsh seeing every change), every bad
// `ferry host add` refused on its own terms with nothing saved, a daemon stopped and started under a
// long-lived engine, and the refusal of `ferry lab up --libvirt` for a user who is not root.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { HostSummary, ServerEvent, VmSummary } from '../../engine/api/index.js';
import { Inventory } from '../../engine/host/inventory.js';
import { parseLabGuestSerial } from '../../engine/host/lab-guest.js';
import {
  libvirtdPid,
  libvirtLabMachines,
  startLibvirtd,
  stopLibvirtd,
  stopLibvirtLab,
  type LibvirtLabMachine,
} from '../../engine/host/libvirt/lab.js';
import type { LibvirtHost } from '../../engine/host/libvirt/libvirt-host.js';
import { ApiService } from '../../engine/service/api-service.js';
import { consoleInfo, openConsole } from '../../engine/service/console.js';
import { ferry, tempHome, waitFor, type CliResult } from '../helpers.js';
import { FERRY_BIN, isRoot, labGuestDomainXml, sh, sshFingerprint, virsh } from '../libvirt-support.js';

interface HostJson extends HostSummary {
  facts?: Record<string, unknown> | null;
}

describe.skipIf(!isRoot)('libvirt hosts through the CLI (root, libvirt lab)', () => {
  let home: string;
  let lab1: LibvirtLabMachine;
  let lab2: LibvirtLabMachine;
  /** The lab's URIs as `ferry host list` shows them. */
  const uris: Record<string, string> = {};
  let dom: string;
  let serial: string;

  const run = async (args: string[], env: Record<string, string> = {}): Promise<CliResult> =>
    ferry(home, args, env);
  const ok = async (args: string[], env: Record<string, string> = {}): Promise<CliResult> => {
    const r = await run(args, env);
    expect(r.code, `ferry ${args.join(' ')}: ${r.stderr}`).toBe(0);
    return r;
  };
  const hostList = async (env: Record<string, string> = {}): Promise<HostJson[]> =>
    JSON.parse((await ok(['host', 'list', '--json'], env)).stdout) as HostJson[];
  const vmList = async (): Promise<VmSummary[]> =>
    JSON.parse((await ok(['vm', 'list', '--json'])).stdout) as VmSummary[];
  const inventoryBytes = (): Buffer => fs.readFileSync(path.join(home, 'inventory.json'));

  beforeAll(async () => {
    home = tempHome('libvirt-host');
    const up = await ferry(home, ['lab', 'up', '--libvirt', '--hosts', '2']);
    expect(up.code, up.stderr).toBe(0);
    expect(up.stdout).toBe('');
    expect(up.stderr).toMatch(/lab up: libvirt hosts lab1, lab2/);
    [lab1, lab2] = (await libvirtLabMachines(home)) as [LibvirtLabMachine, LibvirtLabMachine];
    dom = `${path.basename(home)}-ext`;
    serial = path.join(lab1.sharedDir, `${dom}.serial.log`);
  });

  afterAll(async () => {
    if (!home) return;
    const down = await ferry(home, ['lab', 'down']);
    // Whatever happened above, nothing of the lab may stay behind.
    const rest = await stopLibvirtLab(home).catch(() => null);
    expect(down.code, down.stderr).toBe(0);
    expect(down.stderr).toMatch(/lab down: removed lab1, lab2/);
    expect(rest).toEqual({ machines: [], killed: 0 });
    const netns = (await sh('ip', ['netns', 'list'])).stdout;
    for (const m of [lab1, lab2]) if (m) expect(netns).not.toContain(m.netns);
  });

  it('lists both lab hosts as connected libvirt hosts whose URI works as it is with virsh', async () => {
    const hosts = await hostList();
    expect(hosts.map((h) => h.name)).toEqual(['lab1', 'lab2']);
    for (const h of hosts) {
      expect(h).toMatchObject({ kind: 'libvirt', lab: true, connected: true, connectionError: null });
      expect(h.uri).toMatch(/^qemu\+[a-z0-9]*ssh[a-z0-9]*:\/\/root@10\.78\.\d+\.\d+\/system/);
      uris[h.name] = h.uri!;
    }
    // Pasted into virsh with stdin closed: no prompt (host key and login come from the URI).
    expect(await virsh(uris.lab1!, 'hostname')).toBe('lab1');
    expect(await virsh(uris.lab2!, 'hostname')).toBe('lab2');

    const table = await ok(['host', 'list']);
    expect(table.stdout).toMatch(/^lab1\s+libvirt\s+yes\s+yes\s/m);
    expect(table.stdout).toMatch(/^lab2\s+libvirt\s+yes\s+yes\s/m);

    const info = JSON.parse((await ok(['host', 'info', 'lab1', '--json'])).stdout) as HostJson & {
      facts: {
        hostname: string;
        libvirtVersion: string;
        qemuVersion: string;
        cpuModel: string;
        cpuCount: number;
        memTotalMiB: number;
        memFreeMiB: number;
        machineTypes: string[];
        defaultMachineType: string;
      };
    };
    expect(info).toMatchObject({ name: 'lab1', kind: 'libvirt', lab: true, connected: true });
    expect(info.facts.hostname).toBe('lab1');
    expect(info.facts.libvirtVersion).toBe('9.0.0');
    expect(info.facts.qemuVersion).toMatch(/^\d+\.\d+\.\d+$/);
    expect(info.facts.cpuModel).toBeTruthy();
    expect(info.facts.cpuCount).toBeGreaterThan(0);
    expect(info.facts.memTotalMiB).toBeGreaterThan(0);
    expect(info.facts.memFreeMiB).toBeGreaterThan(0);
    expect(info.facts.machineTypes).toContain('pc');
    expect(info.facts.machineTypes.some((t) => /^pc-i440fx-\d/.test(t))).toBe(true);
    expect(info.facts.machineTypes).toContain(info.facts.defaultMachineType);
    const human = await ok(['host', 'info', 'lab2']);
    expect(human.stdout).toMatch(/^Hostname\s+lab2$/m);
    expect(human.stdout).toMatch(/^libvirt\s+9\.0\.0$/m);
  });

  it('drives a domain defined with virsh: list, start, pause, resume, stop, each seen by virsh', async () => {
    const xmlFile = path.join(lab1.sharedDir, `${dom}.xml`);
    fs.writeFileSync(xmlFile, labGuestDomainXml(dom, serial, { console: true }));
    await virsh(uris.lab1!, 'define', xmlFile);

    const listed = (await vmList()).filter((v) => v.name === dom);
    expect(listed).toHaveLength(1);
    expect(listed[0]).toMatchObject({ host: 'lab1', state: 'stopped', memoryMiB: 128, cpus: 1 });

    const steps: [string[], string, string][] = [
      [['vm', 'start', dom], 'running', 'running'],
      [['vm', 'pause', dom], 'paused', 'paused'],
      [['vm', 'resume', dom], 'running', 'running'],
      [['vm', 'stop', dom, '--force'], 'stopped', 'shut off'],
    ];
    for (const [args, ferryState, virshState] of steps) {
      const r = await ok([...args, '--json']);
      expect((JSON.parse(r.stdout) as VmSummary).state, args.join(' ')).toBe(ferryState);
      expect(await virsh(uris.lab1!, 'domstate', dom), args.join(' ')).toBe(virshState);
      if (args[1] === 'start') {
        // Running: Ferry shows the guest's serial port, where it beats without memory errors.
        await waitFor(
          `two heartbeats of ${dom} in ${serial}`,
          async () => parseLabGuestSerial(fs.readFileSync(serial, 'utf8')).heartbeats.length >= 2,
          60_000,
        );
        const out = (await ok(['vm', 'serial', dom])).stdout;
        expect(out).toMatch(/^FERRY-GUEST boot ws=8 rate=5 mem=128$/m);
        expect(out).toMatch(/^FERRY-GUEST hb pass=2 ms=\d+ errors=0$/m);
        const report = parseLabGuestSerial(out);
        expect(report.heartbeats.length).toBeGreaterThanOrEqual(2);
        expect(report.heartbeats.every((h) => h.errors === 0)).toBe(true);
        expect(report.mismatches).toEqual([]);
        const info = JSON.parse((await ok(['vm', 'info', dom, '--json'])).stdout) as {
          host: string;
          state: string;
          memoryMiB: number;
          cpus: number;
          labGuest: unknown;
          serialLogPath: string;
        };
        expect(info).toMatchObject({
          host: 'lab1',
          state: 'running',
          memoryMiB: 128,
          cpus: 1,
          labGuest: { workingSetMiB: 8, dirtyRateMiBs: 5 },
          serialLogPath: serial,
        });
        // Its consoles, through the host's own connection: the serial port as a libvirt stream, the
        // screen through an SSH channel to the VNC listener on lab1's loopback.
        // The same as "Connect…" gets them (engine/service/console.ts); the lab guest echoes a key.
        const inv = new Inventory(home);
        expect(await consoleInfo(inv, dom)).toMatchObject({ host: 'lab1', running: true, display: 'vga' });
        const console = await openConsole(inv, { vm: dom, kind: 'serial' });
        let text = '';
        console.on('data', (d: Buffer) => (text += d.toString('latin1')));
        await waitFor('a heartbeat on the serial console', async () => /FERRY-GUEST hb pass=\d+/.test(text));
        console.write(Buffer.from('q'));
        await waitFor('the typed key echoed', async () => /^FERRY-GUEST key 0x71 q$/m.test(text));
        console.close();
        const host = (await inv.host('lab1')) as LibvirtHost;
        const screen = await host.openConsole(dom, 'vnc');
        const greeting = await new Promise<string>((resolve) =>
          screen.once('data', (d: Buffer) => resolve(d.toString('latin1'))),
        );
        expect(greeting).toBe('RFB 003.008\n');
        screen.destroy();
      }
    }
    expect((await vmList()).filter((v) => v.name === dom)).toMatchObject([
      { host: 'lab1', state: 'stopped' },
    ]);
    const host = (await new Inventory(home).host('lab1')) as LibvirtHost;
    await expect(host.openConsole(dom, 'serial')).rejects.toMatchObject({
      code: 'vm-not-running',
      message: `${dom} is stopped on lab1`,
    });
  });

  describe('ferry host add', () => {
    /** A refused add: exit 2, a message on stderr, no JSON, and the inventory as it was, byte for byte. */
    const refused = async (args: string[], env: Record<string, string> = {}): Promise<string> => {
      const before = inventoryBytes();
      const hostsDir = fs.readdirSync(path.join(home, 'hosts')).sort();
      const r = await run(['host', 'add', ...args], env);
      expect(r.code, `ferry host add ${args.join(' ')}: ${r.stderr}`).toBe(2);
      expect(r.stdout).toBe('');
      expect(r.stderr).toMatch(/^ferry: /);
      expect(inventoryBytes().equals(before)).toBe(true);
      expect(fs.readdirSync(path.join(home, 'hosts')).sort()).toEqual(hostsDir);
      return r.stderr;
    };

    it('refuses a wrong URI, an unreachable host and a closed port, each with its own message', async () => {
      const subnet = lab1.address.replace(/\.\d+$/, '');
      const messages = [
        [
          ['bad', '--uri', 'xen://x/system'],
          /invalid libvirt URI "xen:\/\/x\/system": driver "xen" is not supported/,
        ],
        [
          ['bad', '--uri', 'qemu+ssh:///system'],
          /invalid libvirt URI .*: the ssh transport needs a host name/,
        ],
        [['bad', '--uri', 'garbage'], /invalid libvirt URI "garbage": expected driver\[\+transport\]:\/\//],
        [
          ['bad', '--uri', `qemu+ssh://root@${subnet}.200/system`, '--ssh-key', lab1.sshKey],
          new RegExp(`no route to ${subnet}\\.200:22|timed out .*${subnet}\\.200:22`),
        ],
        [
          ['bad', '--uri', `qemu+tcp://${lab1.address}:1/system`],
          new RegExp(`connection refused by ${lab1.address}:1: nothing listens on that port`),
        ],
        [
          [
            'bad',
            '--uri',
            `qemu+ssh://root@${lab1.address}/system`,
            '--ssh-key',
            path.join(home, 'no-such-key'),
          ],
          /cannot read the SSH key file .*no-such-key/,
        ],
      ] as const;
      const seen: string[] = [];
      for (const [args, expected] of messages) {
        const err = await refused([...args]);
        expect(err).toMatch(expected);
        seen.push(err.split('\n')[0]!);
      }
      expect(new Set(seen).size).toBe(seen.length);
    });

    it('refuses a login with a key the server does not authorise', async () => {
      const dir = tempHome('libvirt-host-key');
      const key = path.join(dir, 'id_ed25519');
      expect((await sh('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', key])).code).toBe(0);
      // The host key is known (the lab's known_hosts), so it is the login that fails.
      const uri = `qemu+ssh://root@${lab1.address}/system?known_hosts=${lab1.knownHosts}`;
      const err = await refused(['bad', '--uri', uri, '--ssh-key', key]);
      expect(err).toContain(`SSH login as root on ${lab1.address} was refused (tried the key ${key})`);
      expect(err).toMatch(/authorized_keys/);
    });

    it('names an unknown host key, refuses a wrong fingerprint, accepts the right one and records it', async () => {
      const userHome = tempHome('libvirt-host-home'); // an empty ~ : ~/.ssh/known_hosts does not exist
      const env = { HOME: userHome };
      const knownHosts = path.join(userHome, '.ssh', 'known_hosts');
      const uri = `qemu+ssh://root@${lab1.address}/system`;
      const hostPub = path.join(lab1.dir, 'etc', 'ssh', 'ssh_host_ed25519_key.pub');
      const fp = await sshFingerprint(hostPub);
      const otherFp = await sshFingerprint(path.join(lab2.dir, 'etc', 'ssh', 'ssh_host_ed25519_key.pub'));
      expect(otherFp).not.toBe(fp);

      const unknown = await refused(['kvm1', '--uri', uri, '--ssh-key', lab1.sshKey], env);
      expect(unknown).toContain(`the SSH host key of ${lab1.address} is not known`);
      expect(unknown).toContain(fp);
      expect(unknown).toMatch(/ssh-keygen -lf/);
      expect(fs.existsSync(knownHosts)).toBe(false);

      // Another host's fingerprint is not this one's: still refused, nothing recorded.
      const wrong = await refused(
        ['kvm1', '--uri', uri, '--ssh-key', lab1.sshKey, '--accept-host-key', otherFp],
        env,
      );
      expect(wrong).toContain(fp);
      expect(wrong).toContain(otherFp);
      expect(fs.existsSync(knownHosts)).toBe(false);

      const added = await ok(
        ['host', 'add', 'kvm1', '--uri', uri, '--ssh-key', lab1.sshKey, '--accept-host-key', fp, '--json'],
        env,
      );
      expect(JSON.parse(added.stdout)).toMatchObject({
        name: 'kvm1',
        kind: 'libvirt',
        uri,
        lab: false,
        sshKey: lab1.sshKey,
        connected: true,
      });
      const [type, key] = fs.readFileSync(hostPub, 'utf8').trim().split(/\s+/);
      expect(fs.readFileSync(knownHosts, 'utf8')).toBe(`${lab1.address} ${type} ${key}\n`);

      // The same server under another name is refused; the first one stays as it is.
      const dup = await refused(['kvm1-again', '--uri', uri, '--ssh-key', lab1.sshKey], env);
      expect(dup).toContain(`${uri} is already added, as kvm1`);
      const named = await refused(['kvm1', '--uri', `qemu+tcp://${lab2.address}/system`], env);
      expect(named).toContain('a host named kvm1 already exists');

      // Now known: it connects without being asked again, and lists lab1's domain.
      const hosts = await hostList(env);
      expect(hosts.find((h) => h.name === 'kvm1')).toMatchObject({ connected: true, vmCount: 1 });
      const removed = await ok(['host', 'remove', 'kvm1'], env);
      expect(removed.stderr).toMatch(/removed kvm1/);
      expect((await hostList()).map((h) => h.name)).toEqual(['lab1', 'lab2']);
      // Forgetting a host leaves the server and its domains alone.
      expect(await virsh(uris.lab1!, 'domstate', dom)).toBe('shut off');
    });

    it('says libvirt is missing on a server whose libvirtd is stopped', async () => {
      // lab2's own URI is in the inventory already; the same server by the OpenSSH-style scheme is new.
      const uri = lab2.uris.ssh.replace(/^qemu\+libssh2:/, 'qemu+ssh:');
      await stopLibvirtd(lab2);
      try {
        expect(await libvirtdPid(lab2)).toBeNull();
        const err = await refused(['nolibvirt', '--uri', uri]);
        expect(err).toMatch(/libvirtd is not running on 10\.78\.\d+\.2|no libvirt RPC answer/);
        expect(err).toMatch(/libvirt-sock/);
        expect(err).toMatch(/make sure libvirtd runs/);
      } finally {
        await startLibvirtd(lab2);
      }
      expect(await virsh(uris.lab2!, 'hostname')).toBe('lab2');
    });

    it('accepts qemu+tcp:// with a visible warning', async () => {
      const uri = `qemu+tcp://${lab2.address}/system`;
      const r = await ok(['host', 'add', 'tcp2', '--uri', uri]);
      expect(r.stdout).toBe('');
      expect(r.stderr).toMatch(/^warning: qemu\+tcp:\/\/ is unauthenticated and unencrypted/m);
      expect(r.stderr).toContain(`added tcp2: ${uri} (connected)`);
      const list = await ok(['host', 'list']);
      expect(list.stderr).toMatch(/^warning: tcp2: qemu\+tcp:\/\/ is unauthenticated/m);
      const json = (await hostList()).find((h) => h.name === 'tcp2');
      expect(json).toMatchObject({ kind: 'libvirt', lab: false, connected: true });
      expect(json!.warning).toMatch(/unauthenticated/);
      await ok(['host', 'remove', 'tcp2']);
      expect((await hostList()).map((h) => h.name)).toEqual(['lab1', 'lab2']);
    });
  });

  it('keeps going when a daemon stops mid-session, and reconnects when it is back', async () => {
    const service = new ApiService(new Inventory(home));
    const events: ServerEvent[] = [];
    service.subscribe((e) => events.push(e));
    const listHosts = async (): Promise<HostSummary[]> =>
      (await service.call('listHosts', {})) as HostSummary[];
    const host = async (name: string): Promise<HostSummary> =>
      (await listHosts()).find((h) => h.name === name)!;
    try {
      expect((await listHosts()).map((h) => [h.name, h.connected])).toEqual([
        ['lab1', true],
        ['lab2', true],
      ]);

      events.length = 0;
      await stopLibvirtd(lab2);
      // The drop is pushed by itself (no call to the service in between).
      await waitFor(
        'an inventory-changed event after lab2 dropped',
        async () => events.some((e) => e.kind === 'inventory-changed'),
        20_000,
      );
      const down = await waitFor(
        'lab2 to read disconnected',
        async () => {
          const h = await host('lab2');
          return h.connected ? null : h;
        },
        20_000,
      );
      expect(down.connectionError).toMatch(/\S/);
      expect(down.vmCount).toBe(0);
      // lab1 is untouched: connected, its VMs listed, and listVms as a whole still answers.
      expect(await host('lab1')).toMatchObject({ connected: true, vmCount: 1 });
      const vms = (await service.call('listVms', {})) as VmSummary[];
      expect(vms.map((v) => [v.name, v.host])).toEqual([[dom, 'lab1']]);
      expect(await service.call('vmInfo', { name: dom })).toMatchObject({ host: 'lab1' });
      // A VM that may live on the missing host is not claimed to be nowhere without saying so.
      await expect(service.call('vmInfo', { name: 'no-such-vm' })).rejects.toThrow(/not reachable now: lab2/);

      await startLibvirtd(lab2);
      const back = await waitFor(
        'lab2 to reconnect by itself',
        async () => {
          const h = await host('lab2');
          return h.connected ? h : null;
        },
        20_000,
        500,
      );
      expect(back.connectionError).toBeNull();
      expect(await service.call('reconnectHost', { host: 'lab2' })).toMatchObject({
        name: 'lab2',
        connected: true,
        connectionError: null,
      });
      expect((await listHosts()).map((h) => [h.name, h.connected])).toEqual([
        ['lab1', true],
        ['lab2', true],
      ]);
    } finally {
      await service.dispose();
      if ((await libvirtdPid(lab2)) === null) await startLibvirtd(lab2);
    }
  });
});

describe('ferry lab up --libvirt as a user who is not root', () => {
  it('is refused with a clear message, exit 2, and nothing written', async () => {
    const home = tempHome('libvirt-host-nobody');
    fs.chmodSync(home, 0o777);
    const args = [FERRY_BIN, 'lab', 'up', '--libvirt', '--hosts', '2'];
    const env = { ...process.env, FERRY_HOME: home };
    const r = isRoot
      ? await sh(
          'setpriv',
          ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, ...args],
          env,
        )
      : await sh(process.execPath, args, env);
    expect(r.code, r.stderr).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/^ferry: ferry lab up --libvirt needs root: .*run it with sudo/);
    expect(fs.readdirSync(home)).toEqual([]);
  });
});
