// The libvirt lab: two real libvirtd "machines" on this computer, each in its own network, mount and UTS
// namespaces, reached over ssh (libssh), tcp, tls and the unix socket as real servers are; a lab-guest
// domain starts and beats; the daemons can be stopped and started mid-session; and taking the lab down
// leaves nothing behind. Needs Linux and root (network namespaces); the refusal for others is checked too.
import fs from 'node:fs';
import path from 'node:path';
import ts from 'typescript';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseLabGuestSerial } from '../../engine/host/lab-guest.js';
import {
  assertLibvirtLabPossible,
  libvirtdPid,
  libvirtLabMachines,
  startLibvirtd,
  startLibvirtLab,
  stopLibvirtd,
  stopLibvirtLab,
  type LibvirtLabMachine,
} from '../../engine/host/libvirt/lab.js';
import { REPO, tempHome, waitFor } from '../helpers.js';
import { isRoot, labGuestDomainXml, sh, virsh } from '../libvirt-support.js';

/** A command inside a lab machine: its network, mount and UTS namespaces (those libvirtd runs in). */
async function inMachine(m: LibvirtLabMachine, ...args: string[]): Promise<string> {
  const pid = await libvirtdPid(m);
  if (pid === null) throw new Error(`libvirtd is not running on ${m.hostname}`);
  const r = await sh('nsenter', ['-t', String(pid), '-m', '-u', '-n', '--', ...args]);
  if (r.code !== 0) throw new Error(`${args.join(' ')} on ${m.hostname}: ${r.stderr.trim()}`);
  return r.stdout.trim();
}

/** QEMU processes whose command line names one of these domains (`-name guest=NAME,`). */
function qemuPids(...domains: string[]): number[] {
  return fs
    .readdirSync('/proc')
    .filter((p) => /^\d+$/.test(p))
    .filter((p) => {
      try {
        const cmd = fs.readFileSync(`/proc/${p}/cmdline`, 'utf8');
        return cmd.includes('qemu-system') && domains.some((d) => cmd.includes(`guest=${d},`));
      } catch {
        return false;
      }
    })
    .map(Number);
}

function alive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/^\d+ \(.*\) Z/.test(stat);
  } catch {
    return false;
  }
}

async function heartbeats(serial: string, passes: number): Promise<number> {
  return waitFor(
    `heartbeats in ${serial}`,
    async () => {
      const r = parseLabGuestSerial(fs.readFileSync(serial, 'utf8'));
      const last = r.heartbeats.at(-1);
      return last && last.pass >= passes && last.errors === 0 ? last.pass : null;
    },
    60_000,
  );
}

describe.skipIf(!isRoot)('libvirt lab (root)', () => {
  let home: string;
  let machines: LibvirtLabMachine[];
  let lab1: LibvirtLabMachine;
  let lab2: LibvirtLabMachine;
  /** Domain names unique to this run: one started through Ferry's URIs, one defined with plain virsh. */
  let guest: string;
  let other: string;

  beforeAll(async () => {
    home = tempHome('libvirt-lab');
    guest = `${path.basename(home)}-guest`;
    other = `${path.basename(home)}-other`;
    const t0 = Date.now();
    machines = await startLibvirtLab({ home, count: 2, linkMbit: 1000 });
    console.log(`libvirt lab of 2 machines up in ${Date.now() - t0} ms`);
    [lab1, lab2] = machines as [LibvirtLabMachine, LibvirtLabMachine];
  });
  afterAll(async () => {
    if (home) await stopLibvirtLab(home).catch(() => undefined);
  });

  it('records its machines with their names, addresses, folders and shaped links', async () => {
    expect(machines.map((m) => m.hostname)).toEqual(['lab1', 'lab2']);
    expect(await libvirtLabMachines(home)).toEqual(machines);
    expect(lab1.address).not.toBe(lab2.address);
    expect(lab1.sharedDir).toBe(path.join(home, 'lab', 'shared'));
    expect(lab1.dir).toBe(path.join(home, 'lab', 'libvirt', 'lab1'));
    for (const m of machines) {
      expect(Buffer.byteLength(m.socketPath)).toBeLessThan(108);
      expect(fs.existsSync(m.socketPath)).toBe(true);
      for (const f of ['cacert.pem', 'clientcert.pem', 'clientkey.pem']) {
        expect(fs.existsSync(path.join(m.pkiPath, f))).toBe(true);
      }
      expect(fs.readFileSync(m.knownHosts, 'utf8')).toContain(`${m.address} ssh-ed25519 `);
      // linkMbit: what leaves the machine goes through a 1 Gbit/s token bucket.
      const qdisc = await sh('ip', ['netns', 'exec', m.netns, 'tc', 'qdisc', 'show', 'dev', 'eth0']);
      expect(qdisc.stdout).toMatch(/tbf .*rate 1Gbit/);
    }
  });

  it('each machine is its own host: hostname over ssh, its own host UUID, every transport answers', async () => {
    const uuids: string[] = [];
    for (const m of machines) {
      expect(await virsh(m.uris.ssh, 'hostname')).toBe(m.hostname);
      const caps = await virsh(m.uris.ssh, 'capabilities');
      const uuid = /<host>\s*<uuid>([^<]+)<\/uuid>/.exec(caps)?.[1];
      expect(uuid).toMatch(/^[0-9a-f-]{36}$/);
      uuids.push(uuid!);
      for (const t of ['ssh', 'tcp', 'tls', 'unix'] as const) {
        expect(await virsh(m.uris[t], 'hostname')).toBe(m.hostname);
        await virsh(m.uris[t], 'list', '--all');
      }
      // The machine's own /etc: its hostname, its hosts file, its TLS folder with QEMU's migration files.
      expect(await inMachine(m, 'hostname')).toBe(m.hostname);
      expect((await inMachine(m, 'ls', '/etc/pki/qemu')).split('\n').sort()).toEqual([
        'ca-cert.pem',
        'client-cert.pem',
        'client-key.pem',
        'server-cert.pem',
        'server-key.pem',
      ]);
    }
    expect(new Set(uuids).size).toBe(2);
    // Nothing of the machines' /etc leaked onto this computer.
    expect(fs.existsSync('/etc/pki/qemu/server-cert.pem')).toBe(false);
  });

  it('lab1 resolves lab2 by name and reaches its daemon over the lab network', async () => {
    expect(await inMachine(lab1, 'getent', 'hosts', 'lab2')).toMatch(new RegExp(`^${lab2.address}\\s+lab2`));
    expect(await inMachine(lab1, 'virsh', '-q', '-c', 'qemu+tcp://lab2/system', 'hostname')).toBe('lab2');
    expect(await inMachine(lab2, 'virsh', '-q', '-c', 'qemu+tcp://lab1/system', 'hostname')).toBe('lab1');
  });

  it('starts a lab-guest domain, which beats on its serial port (shared storage)', async () => {
    const serial = path.join(lab1.sharedDir, `${guest}-serial.log`);
    const xml = path.join(lab1.sharedDir, `${guest}.xml`);
    fs.writeFileSync(xml, labGuestDomainXml(guest, serial));
    await virsh(lab1.uris.ssh, 'define', xml);
    for (const round of ['first', 'second']) {
      fs.rmSync(serial, { force: true });
      const t0 = Date.now();
      await virsh(lab1.uris.ssh, 'start', guest);
      console.log(`lab-guest domain start (${round} on lab1): ${Date.now() - t0} ms`);
      expect(await virsh(lab1.uris.tcp, 'domstate', guest)).toBe('running');
      expect(await heartbeats(serial, 2)).toBeGreaterThanOrEqual(2);
      if (round === 'first') await virsh(lab1.uris.ssh, 'destroy', guest);
    }
    // Shared storage: lab2 sees the same file at the same path.
    expect(await inMachine(lab2, 'grep', '-c', 'FERRY-GUEST hb pass=', serial)).toMatch(/^[1-9]/);
  });

  it('stops and starts a daemon mid-session; the domain keeps running', async () => {
    const before = await libvirtdPid(lab1);
    expect(before).toBeGreaterThan(0);
    const qemu = qemuPids(guest);
    expect(qemu).toHaveLength(1);
    await stopLibvirtd(lab1);
    expect(await libvirtdPid(lab1)).toBeNull();
    expect(alive(before!)).toBe(false);
    await expect(virsh(lab1.uris.tcp, 'hostname')).rejects.toThrow();
    expect(alive(qemu[0]!)).toBe(true);
    await startLibvirtd(lab1);
    const after = await libvirtdPid(lab1);
    expect(after).toBeGreaterThan(0);
    expect(after).not.toBe(before);
    expect(await virsh(lab1.uris.ssh, 'domstate', guest)).toBe('running');
    expect(await virsh(lab1.uris.tls, 'hostname')).toBe('lab1');
  });

  it('taking the lab down leaves no process, namespace, bridge, mount or folder (and kills QEMU)', async () => {
    // A second domain defined outside Ferry, with plain virsh over tcp, on lab2.
    const serial2 = path.join(lab2.sharedDir, `${other}-serial.log`);
    const xml2 = path.join(lab2.sharedDir, `${other}.xml`);
    fs.writeFileSync(xml2, labGuestDomainXml(other, serial2));
    await virsh(lab2.uris.tcp, 'define', xml2);
    await virsh(lab2.uris.tcp, 'start', other);
    const qemu = qemuPids(guest, other);
    expect(qemu).toHaveLength(2);
    const addrs = (await sh('ip', ['-o', '-4', 'addr', 'show'])).stdout;
    const bridge = addrs
      .split('\n')
      .find((l) => l.includes(` ${lab1.address.replace(/\.\d+$/, '.254')}/`))
      ?.split(/\s+/)[1];
    expect(bridge).toBeTruthy();

    const down = await stopLibvirtLab(home);
    expect(down.machines).toEqual(['lab1', 'lab2']);
    expect(down.killed).toBeGreaterThanOrEqual(qemu.length);
    for (const p of qemu) expect(alive(p)).toBe(false);
    const netns = (await sh('ip', ['netns', 'list'])).stdout;
    for (const m of machines) expect(netns).not.toContain(m.netns);
    expect((await sh('ip', ['link', 'show', bridge!])).code).not.toBe(0);
    expect(fs.existsSync(path.join(home, 'lab'))).toBe(false);
    expect(fs.readFileSync('/proc/self/mountinfo', 'utf8')).not.toContain(home);
    const left = fs
      .readdirSync('/proc')
      .filter((p) => /^\d+$/.test(p))
      .filter((p) => {
        try {
          return fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').replace(/\0/g, ' ').includes(home);
        } catch {
          return false;
        }
      });
    expect(left).toEqual([]);
    expect(await libvirtLabMachines(home)).toEqual([]);
    // Idempotent.
    expect(await stopLibvirtLab(home)).toEqual({ machines: [], killed: 0 });
  });
});

/**
 * The module as a non-root user runs it: lab.ts and what it imports, transpiled on the fly (the repo's
 * engine build takes far longer), loaded by node as user nobody.
 */
function transpileForNode(entry: string, outDir: string): string {
  const seen = new Set<string>();
  const visit = (file: string): void => {
    if (seen.has(file)) return;
    seen.add(file);
    const source = fs.readFileSync(file, 'utf8');
    const out = ts.transpileModule(source, {
      compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 },
    }).outputText;
    const target = path.join(outDir, path.relative(REPO, file)).replace(/\.ts$/, '.js');
    fs.mkdirSync(path.dirname(target), { recursive: true });
    fs.writeFileSync(target, out);
    for (const m of source.matchAll(/from '(\.{1,2}\/[^']+)\.js'/g)) {
      visit(path.resolve(path.dirname(file), `${m[1]}.ts`));
    }
  };
  visit(entry);
  fs.writeFileSync(path.join(outDir, 'package.json'), '{"type":"module"}');
  fs.symlinkSync(path.join(REPO, 'node_modules'), path.join(outDir, 'node_modules'));
  return path.join(outDir, path.relative(REPO, entry)).replace(/\.ts$/, '.js');
}

describe('libvirt lab refusal', () => {
  it('refuses a non-root user with a clear message (run as nobody)', async () => {
    const expected = /needs root: it creates network namespaces.*run it with sudo/;
    if (!isRoot) {
      await expect(assertLibvirtLabPossible()).rejects.toThrow(expected);
      return;
    }
    const dir = tempHome('libvirt-lab-nobody');
    const mod = transpileForNode(path.join(REPO, 'engine', 'host', 'libvirt', 'lab.ts'), dir);
    const script =
      `const m = await import(${JSON.stringify(mod)});` +
      `for (const f of [() => m.assertLibvirtLabPossible(), () => m.startLibvirtLab({ home: '/nonexistent', count: 1 })]) {` +
      `try { await f(); console.log('allowed'); } catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message })); } }`;
    const r = await sh('setpriv', [
      '--reuid=65534',
      '--regid=65534',
      '--clear-groups',
      process.execPath,
      '--input-type=module',
      '-e',
      script,
    ]);
    expect(r.stderr).toBe('');
    const lines = r.stdout.trim().split('\n');
    expect(lines).toHaveLength(2);
    for (const line of lines) {
      const e = JSON.parse(line) as { code: string; message: string };
      expect(e.code).toBe('not-supported');
      expect(e.message).toMatch(expected);
    }
    // The same check with the uid posed, in this process.
    await expect(assertLibvirtLabPossible({ uid: 1000 })).rejects.toThrow(expected);
    await expect(assertLibvirtLabPossible({ platform: 'darwin' })).rejects.toThrow(/needs Linux/);
  });
});
