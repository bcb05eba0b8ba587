// libvirt URIs, known_hosts matching, SSH fingerprints and the remote helper command line.
import { execFileSync } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FerryError } from '../../engine/api/index.js';
import {
  appendKnownHost,
  checkKnownHosts,
  driverUri,
  isUnauthenticatedUri,
  knownHostsName,
  parseLibvirtUri,
  shellEscape,
  sshFingerprint,
  sshKeyType,
  sshRemoteCommand,
  tlsFiles,
} from '../../engine/libvirt/transport.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-lv-transport-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function refused(uri: string): FerryError {
  try {
    parseLibvirtUri(uri);
  } catch (err) {
    expect(err).toBeInstanceOf(FerryError);
    expect((err as FerryError).code).toBe('bad-uri');
    return err as FerryError;
  }
  throw new Error(`${uri} was accepted`);
}

describe('parseLibvirtUri', () => {
  it('accepts the local forms', () => {
    expect(parseLibvirtUri('qemu:///system')).toMatchObject({
      driver: 'qemu',
      transport: 'unix',
      user: null,
      host: null,
      port: null,
      path: '/system',
      params: {},
    });
    expect(parseLibvirtUri('qemu+unix:///session')).toMatchObject({ transport: 'unix', path: '/session' });
    expect(parseLibvirtUri('qemu:///system?socket=/tmp/x/libvirt-sock').params).toEqual({
      socket: '/tmp/x/libvirt-sock',
    });
  });

  it('accepts ssh, libssh and libssh2 as the same SSH transport', () => {
    expect(parseLibvirtUri('qemu+ssh://root@host1/system')).toMatchObject({
      transport: 'ssh',
      user: 'root',
      host: 'host1',
      port: 22,
      path: '/system',
    });
    for (const t of ['libssh', 'libssh2']) {
      expect(parseLibvirtUri(`qemu+${t}://ops@10.0.0.2:2222/system?known_hosts=/tmp/kh`)).toMatchObject({
        transport: 'ssh',
        user: 'ops',
        host: '10.0.0.2',
        port: 2222,
        params: { known_hosts: '/tmp/kh' },
      });
    }
    expect(parseLibvirtUri('qemu+ssh://[fe80::1]:2200/system')).toMatchObject({
      host: 'fe80::1',
      port: 2200,
    });
    expect(
      parseLibvirtUri('qemu+ssh://host/system?keyfile=/k%20ey&netcat=/usr/bin/nc&sshauth=privkey').params,
    ).toEqual({ keyfile: '/k ey', netcat: '/usr/bin/nc', sshauth: 'privkey' });
  });

  it('accepts tls and tcp with their default ports', () => {
    expect(parseLibvirtUri('qemu+tls://h.example/system')).toMatchObject({ transport: 'tls', port: 16514 });
    expect(parseLibvirtUri('qemu+tls://h:1234/system?pkipath=/pki')).toMatchObject({
      port: 1234,
      params: { pkipath: '/pki' },
    });
    expect(parseLibvirtUri('qemu+tcp://h/system')).toMatchObject({ transport: 'tcp', port: 16509 });
    // libvirt: no transport but a host means TLS.
    expect(parseLibvirtUri('qemu://h/system').transport).toBe('tls');
  });

  it('says which URIs are unauthenticated', () => {
    expect(isUnauthenticatedUri('qemu+tcp://h/system')).toBe(true);
    expect(isUnauthenticatedUri('qemu+ssh://h/system')).toBe(false);
    expect(isUnauthenticatedUri('qemu:///system')).toBe(false);
  });

  it('opens the named driver URI', () => {
    expect(driverUri(parseLibvirtUri('qemu+ssh://h/system'))).toBe('qemu:///system');
    expect(driverUri(parseLibvirtUri('qemu+ssh://h/session'))).toBe('qemu:///session');
    expect(driverUri(parseLibvirtUri('qemu+ssh://h/system?name=qemu:///session'))).toBe('qemu:///session');
  });

  it('refuses everything else with a specific message', () => {
    expect(refused('xen:///system').message).toMatch(/driver "xen" is not supported/);
    expect(refused('qemu+ftp://h/system').message).toMatch(/unknown transport "ftp"/);
    expect(refused('qemu+ssh:///system').message).toMatch(/ssh transport needs a host/);
    expect(refused('qemu+tls:///system').message).toMatch(/tls transport needs a host/);
    expect(refused('qemu+tcp:///system').message).toMatch(/tcp transport needs a host/);
    expect(refused('qemu+unix://h/system').message).toMatch(/takes no host/);
    expect(refused('qemu:///').message).toMatch(/must be \/system or \/session/);
    expect(refused('qemu+ssh://h/embed').message).toMatch(/must be \/system or \/session/);
    expect(refused('qemu+ssh://h').message).toMatch(/must be \/system or \/session/);
    expect(refused('qemu+ssh://h:99999/system').message).toMatch(/bad port/);
    expect(refused('qemu+tcp://u@h/system').message).toMatch(/user name is only used by the ssh/);
    expect(refused('garbage').message).toMatch(/expected driver/);
    expect(refused('').message).toMatch(/expected driver/);
    expect(refused('qemu+ssh://h/system?frobnicate=1').message).toMatch(/unknown parameter "frobnicate"/);
    expect(refused('qemu+ssh://h/system?no_verify=1').message).toMatch(/no_verify is refused.*SSH host key/);
    expect(refused('qemu+tls://h/system?no_verify=1').message).toMatch(
      /no_verify is refused.*TLS certificate/,
    );
    expect(refused('qemu+ssh://h/system?known_hosts_verify=ignore').message).toMatch(/always verifies/);
    expect(refused('qemu+ssh://h/system?name=xen:///').message).toMatch(/name must be a local QEMU/);
    expect(refused('qemu+ssh://h/system#frag').message).toMatch(/fragment/);
    // no_verify=0 is harmless.
    expect(parseLibvirtUri('qemu+ssh://h/system?no_verify=0').params.no_verify).toBe('0');
  });
});

describe('known_hosts', () => {
  const keyFile = path.join(tmp, 'id_test');
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'test', '-f', keyFile]);
  const pub = fs.readFileSync(`${keyFile}.pub`, 'utf8').trim().split(/\s+/);
  const blob = Buffer.from(pub[1]!, 'base64');
  const other = Buffer.from('AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl', 'base64');

  it('prints the fingerprint exactly as ssh-keygen -lf does', () => {
    const out = execFileSync('ssh-keygen', ['-lf', `${keyFile}.pub`], { encoding: 'utf8' });
    // "256 SHA256:… test (ED25519)"
    expect(out.split(/\s+/)[1]).toBe(sshFingerprint(blob));
    expect(sshFingerprint(blob)).toMatch(/^SHA256:[A-Za-z0-9+/]{43}$/);
    expect(sshKeyType(blob)).toBe('ssh-ed25519');
  });

  it('matches plain, comma-listed, wildcard and [host]:port entries', () => {
    const b64 = blob.toString('base64');
    expect(checkKnownHosts(`host1 ssh-ed25519 ${b64}\n`, 'host1', 22, blob)).toEqual({
      status: 'match',
      line: 1,
    });
    expect(checkKnownHosts(`a,host1,b ssh-ed25519 ${b64}`, 'host1', 22, blob).status).toBe('match');
    expect(checkKnownHosts(`*.lab ssh-ed25519 ${b64}`, 'h1.lab', 22, blob).status).toBe('match');
    expect(checkKnownHosts(`*.lab,!h1.lab ssh-ed25519 ${b64}`, 'h1.lab', 22, blob).status).toBe('unknown');
    // A non-22 port only matches [host]:port.
    expect(checkKnownHosts(`host1 ssh-ed25519 ${b64}`, 'host1', 2222, blob).status).toBe('unknown');
    expect(checkKnownHosts(`[host1]:2222 ssh-ed25519 ${b64}`, 'host1', 2222, blob).status).toBe('match');
    expect(knownHostsName('h', 22)).toBe('h');
    expect(knownHostsName('h', 2222)).toBe('[h]:2222');
  });

  it('matches hashed entries (|1|salt|HMAC-SHA1)', () => {
    const salt = randomBytes(20);
    const hashed = (name: string): string =>
      `|1|${salt.toString('base64')}|${createHmac('sha1', salt).update(name).digest('base64')}`;
    const b64 = blob.toString('base64');
    expect(checkKnownHosts(`${hashed('host1')} ssh-ed25519 ${b64}`, 'host1', 22, blob).status).toBe('match');
    expect(checkKnownHosts(`${hashed('[host1]:2222')} ssh-ed25519 ${b64}`, 'host1', 2222, blob).status).toBe(
      'match',
    );
    expect(checkKnownHosts(`${hashed('host2')} ssh-ed25519 ${b64}`, 'host1', 22, blob).status).toBe(
      'unknown',
    );
  });

  it('matches what ssh-keygen -H hashes', () => {
    const file = path.join(tmp, 'kh-hashed');
    fs.writeFileSync(file, `[h.example]:2200 ssh-ed25519 ${blob.toString('base64')}\n`);
    execFileSync('ssh-keygen', ['-q', '-H', '-f', file], { stdio: 'ignore' });
    const text = fs.readFileSync(file, 'utf8');
    expect(text.startsWith('|1|')).toBe(true);
    expect(checkKnownHosts(text, 'h.example', 2200, blob).status).toBe('match');
  });

  it('reports a different key of the same type as a mismatch with its line, another type as unknown', () => {
    const text = `# comment\nother ssh-ed25519 ${blob.toString('base64')}\nhost1 ssh-ed25519 ${other.toString('base64')}\n`;
    expect(checkKnownHosts(text, 'host1', 22, blob)).toEqual({
      status: 'mismatch',
      line: 3,
      knownType: 'ssh-ed25519',
    });
    const rsaOnly = `host1 ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ\n`;
    expect(checkKnownHosts(rsaOnly, 'host1', 22, blob)).toEqual({
      status: 'unknown',
      knownTypes: ['ssh-rsa'],
    });
    expect(
      checkKnownHosts(`@revoked host1 ssh-ed25519 ${blob.toString('base64')}`, 'host1', 22, blob).status,
    ).toBe('revoked');
  });

  it('appends an accepted key as "host keytype base64", creating the file 0600 in a 0700 folder', () => {
    const file = path.join(tmp, 'new', 'dir', 'known_hosts');
    appendKnownHost(file, 'h1', 22, blob);
    appendKnownHost(file, 'h2', 2222, blob);
    const lines = fs.readFileSync(file, 'utf8').trim().split('\n');
    expect(lines).toEqual([`h1 ssh-ed25519 ${pub[1]}`, `[h2]:2222 ssh-ed25519 ${pub[1]}`]);
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    expect(fs.statSync(path.dirname(file)).mode & 0o777).toBe(0o700);
    expect(checkKnownHosts(fs.readFileSync(file, 'utf8'), 'h2', 2222, blob).status).toBe('match');
    // ssh-keygen agrees the entry is for [h2]:2222.
    const found = execFileSync('ssh-keygen', ['-F', '[h2]:2222', '-f', file], { encoding: 'utf8' });
    expect(found).toContain('[h2]:2222 ssh-ed25519');
  });
});

describe('remote helper command', () => {
  it("reproduces libvirt 9.0's sh -c line: virt-ssh-helper, else nc", () => {
    expect(sshRemoteCommand(parseLibvirtUri('qemu+ssh://h/system'))).toBe(
      "sh -c 'which virt-ssh-helper 1>/dev/null 2>&1; if test $? = 0; then     virt-ssh-helper 'qemu:///system'; " +
        'else    if \'nc\' -q 2>&1 | grep "requires an argument" >/dev/null 2>&1; then ARG=-q0;else ARG=;fi;' +
        "'nc' $ARG -U /var/run/libvirt/libvirt-sock; fi'",
    );
  });

  it('uses the legacy nc proxy when a netcat path is given, with the socket parameter', () => {
    expect(sshRemoteCommand(parseLibvirtUri('qemu+ssh://h/system?netcat=/opt/nc&socket=/run/x.sock'))).toBe(
      "sh -c 'if '/opt/nc' -q 2>&1 | grep \"requires an argument\" >/dev/null 2>&1; then ARG=-q0;else ARG=;fi;" +
        "'/opt/nc' $ARG -U /run/x.sock'",
    );
    expect(sshRemoteCommand(parseLibvirtUri('qemu+ssh://h/system?proxy=native'))).toBe(
      "sh -c 'virt-ssh-helper 'qemu:///system''",
    );
  });

  it('escapes like virBufferEscapeShell', () => {
    expect(shellEscape('plain/path-1.0')).toBe('plain/path-1.0');
    expect(shellEscape('')).toBe("''");
    expect(shellEscape('a b')).toBe("'a b'");
    expect(shellEscape("it's")).toBe("'it'\\''s'");
  });

  it('looks for TLS client files where libvirt does', () => {
    expect(tlsFiles(parseLibvirtUri('qemu+tls://h/system?pkipath=/p'))).toEqual({
      ca: '/p/cacert.pem',
      cert: '/p/clientcert.pem',
      key: '/p/clientkey.pem',
    });
    if (process.getuid?.() === 0) {
      expect(tlsFiles(parseLibvirtUri('qemu+tls://h/system'))).toEqual({
        ca: '/etc/pki/CA/cacert.pem',
        cert: '/etc/pki/libvirt/clientcert.pem',
        key: '/etc/pki/libvirt/private/clientkey.pem',
      });
    }
  });
});

describe("the CLI's entry: connections started before the command loads", () => {
  it('opens each libvirt host of the inventory once, only for commands that reach every host', async () => {
    const { warmConnections } = await import('../../engine/cli/entry.js');
    const { closeLibvirtConnections, libvirtConnection } =
      await import('../../engine/host/libvirt/connection.js');
    const home = fs.mkdtempSync(path.join(tmp, 'home-'));
    const sock = path.join(home, 'libvirt.sock');
    let accepted = 0;
    const server = net.createServer((s) => {
      accepted++;
      s.destroy(); // not a libvirtd: the login fails, and the command meets that same failure
    });
    await new Promise<void>((r) => server.listen(sock, r));
    try {
      const uri = `qemu+unix:///system?socket=${sock}`;
      fs.writeFileSync(
        path.join(home, 'inventory.json'),
        JSON.stringify({
          formatVersion: 1,
          hosts: [
            { name: 'kvm1', kind: 'libvirt', uri, sshKey: null },
            { name: 'here', kind: 'local', uri: null },
            { name: 42, kind: 'libvirt', uri }, // malformed: left to the command to report
          ],
        }),
      );
      expect(warmConnections(['lab', 'up'], home)).toBe(0);
      expect(warmConnections(['host', 'add', 'x'], home)).toBe(0);
      expect(warmConnections(['vm', 'list'], home)).toBe(1);
      // The command's own lookup finds the attempt under way (or its error): no second login.
      const err = await libvirtConnection({ name: 'kvm1', uri, sshKey: null })
        .get()
        .catch((e: unknown) => e);
      expect(err).toBeInstanceOf(FerryError);
      expect(accepted).toBe(1);
      expect(warmConnections(['host', 'list'], path.join(home, 'missing'))).toBe(0);
    } finally {
      await closeLibvirtConnections();
      server.close();
    }
  });
});
