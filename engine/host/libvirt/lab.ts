// The libvirt lab: N real libvirt "machines" on this one computer, each with its own network, mount and
// UTS namespaces, its own libvirtd, virtlogd and OpenSSH sshd, its own /etc/libvirt, /etc/pki, /etc/hosts,
// /run and /var/{lib,cache,log}/libvirt and its own host UUID. Ferry (in the root namespace) reaches them
// the ways real servers are reached: qemu+libssh2, qemu+tcp, qemu+tls, and the unix socket (root only).
//
// The ssh URI uses libvirt's libssh2 transport: in libvirt 9.0 the OpenSSH-based qemu+ssh takes keyfile
// and no_verify but no known_hosts (virNetClientNewSSH), and the libssh transport (qemu+libssh) works but
// takes ~6 s for a 10 KB reply such as `virsh capabilities`; libssh2 takes keyfile, known_hosts and
// sshauth, verifies the host key (an unknown or changed key fails, never prompts with stdin closed).
//
// Layout (FERRY_HOME/lab/libvirt): state.json; ssh/ (the lab's client key and known_hosts); pki/ (the lab
// CA, and client/ with the TLS client files for pkipath); labN/ (the machine's private folders).
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { FerryError } from '../../api/index.js';
import { execFileAsync } from '../../qemu/system.js';

export interface LibvirtLabMachine {
  index: number;
  hostname: string;
  address: string;
  netns: string;
  dir: string;
  socketPath: string;
  uris: { ssh: string; tcp: string; tls: string; unix: string };
  sshKey: string;
  knownHosts: string;
  pkiPath: string;
  sharedDir: string;
}

interface LabState {
  formatVersion: 1;
  home: string;
  tag: string;
  bridge: string;
  bridgeAddress: string;
  /** A short folder holding the machines' /run folders when FERRY_HOME is too long for a socket path. */
  runBase: string | null;
  createdShared: boolean;
  machines: LibvirtLabMachine[];
}

const MAX_MACHINES = 16;
/** The lab's subnet is 10.78.X.0/24 (lab-link.ts uses 10.77.X.0/24): X from the home's hash. */
const SUBNET_PREFIX = '10.78';
/** What every daemon inside a machine starts with: nothing from Ferry's own environment. */
const DAEMON_ENV = {
  PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
  HOME: '/root',
  LC_ALL: 'C',
};
const SOCKET_MAX = 107; // sun_path is 108 bytes with its NUL
const TOOLS: { bin: string; pkg: string }[] = [
  { bin: 'libvirtd', pkg: 'libvirt-daemon-system' },
  { bin: 'virtlogd', pkg: 'libvirt-daemon-system' },
  { bin: 'virsh', pkg: 'libvirt-clients' },
  { bin: 'virt-ssh-helper', pkg: 'libvirt-daemon-system' },
  { bin: 'sshd', pkg: 'openssh-server' },
  { bin: 'ssh-keygen', pkg: 'openssh-client' },
  { bin: 'certtool', pkg: 'gnutls-bin' },
  { bin: 'qemu-system-x86_64', pkg: 'qemu-system-x86' },
  { bin: 'ip', pkg: 'iproute2' },
  { bin: 'tc', pkg: 'iproute2' },
  { bin: 'nsenter', pkg: 'util-linux' },
  { bin: 'unshare', pkg: 'util-linux' },
];

// ---- names ------------------------------------------------------------------------------------------

function labRoot(home: string): string {
  return path.join(home, 'lab', 'libvirt');
}
function stateFile(home: string): string {
  return path.join(labRoot(home), 'state.json');
}
function tagOf(home: string): string {
  return crypto.createHash('sha256').update(path.resolve(home)).digest('hex').slice(0, 6);
}
function netnsName(tag: string, i: number): string {
  return `ferry-lv-${tag}-${i}`;
}
/** Host-side and namespace-side veth names (≤ 15 characters); inside, the latter is renamed eth0. */
function vethNames(tag: string, i: number): { out: string; in: string } {
  return { out: `flv${tag}${i}`, in: `flp${tag}${i}` };
}
function holderPidFile(m: LibvirtLabMachine): string {
  return path.join(m.dir, 'holder.pid');
}
function runDirOf(m: LibvirtLabMachine): string {
  return path.dirname(path.dirname(m.socketPath));
}

// ---- small helpers ----------------------------------------------------------------------------------

function errText(err: unknown): string {
  const e = err as { stderr?: string | Buffer; message?: string };
  const stderr = e.stderr?.toString().trim();
  return stderr || (e.message ?? String(err)).trim();
}

/** Runs a command with stdin closed (nothing can prompt), returning stdout; failures are FerryErrors. */
async function run(
  cmd: string,
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {},
): Promise<string> {
  const p = execFileAsync(cmd, args, {
    env: opts.env ?? process.env,
    timeout: opts.timeoutMs ?? 60_000,
    maxBuffer: 16 * 1024 * 1024,
    cwd: '/',
  });
  p.child.stdin?.end();
  try {
    return (await p).stdout;
  } catch (err) {
    throw new FerryError('internal', `${cmd} ${args.join(' ')} failed: ${errText(err)}`);
  }
}

/** virsh against a URI from the root namespace, stdin closed, no default URI from the environment. */
function virsh(uri: string, args: string[], timeoutMs = 30_000): Promise<string> {
  const env = { ...process.env };
  delete env.LIBVIRT_DEFAULT_URI;
  delete env.VIRSH_DEFAULT_CONNECT_URI;
  return run('virsh', ['-q', '-c', uri, ...args], { env, timeoutMs });
}

function onPath(bin: string): boolean {
  const dirs = (process.env.PATH ?? '').split(':').concat(['/usr/sbin', '/sbin', '/usr/bin', '/bin']);
  return dirs.some((d) => {
    try {
      fs.accessSync(path.join(d, bin), fs.constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

function alive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

function readPid(file: string): number | null {
  try {
    const pid = Number(fs.readFileSync(file, 'utf8').trim());
    return Number.isInteger(pid) && pid > 0 ? pid : null;
  } catch {
    return null;
  }
}

function comm(pid: number): string {
  try {
    return fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return '';
  }
}

async function waitUntil<T>(what: string, probe: () => Promise<T | null>, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  for (;;) {
    try {
      const v = await probe();
      if (v !== null) return v;
    } catch (err) {
      last = errText(err);
    }
    if (Date.now() > deadline) {
      throw new FerryError('internal', `timed out waiting for ${what}${last ? `: ${last}` : ''}`);
    }
    await sleep(150);
  }
}

function writeFile(file: string, text: string, mode = 0o644): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, text, { mode });
  fs.chmodSync(file, mode);
}

function tail(file: string, lines = 15): string {
  try {
    return fs.readFileSync(file, 'utf8').trim().split('\n').slice(-lines).join('\n');
  } catch {
    return '';
  }
}

// ---- checks -----------------------------------------------------------------------------------------

/**
 * Refuses clearly where the lab cannot run: not Linux, not root, or a tool missing. `probe` lets a test
 * pose as another user or platform.
 */
export async function assertLibvirtLabPossible(
  probe: { platform?: NodeJS.Platform; uid?: number } = {},
): Promise<void> {
  const platform = probe.platform ?? process.platform;
  const uid = probe.uid ?? process.getuid?.();
  if (platform !== 'linux') {
    throw new FerryError(
      'not-supported',
      `ferry lab up --libvirt needs Linux (network, mount and UTS namespaces); this is ${platform}`,
    );
  }
  if (uid !== 0) {
    throw new FerryError(
      'not-supported',
      'ferry lab up --libvirt needs root: it creates network namespaces, a bridge and veth links, ' +
        'mounts private folders and starts libvirtd and sshd in each lab machine; run it with sudo',
    );
  }
  const missing = TOOLS.filter((t) => !onPath(t.bin));
  if (missing.length > 0) {
    const pkgs = [...new Set(missing.map((t) => t.pkg))];
    throw new FerryError(
      'not-supported',
      `ferry lab up --libvirt needs ${missing.map((t) => t.bin).join(', ')} (Debian: ${pkgs.join(' ')})`,
      'install them with: bash scripts/debian-deps.sh',
    );
  }
  for (const dir of ['/etc/libvirt', '/var/lib/libvirt', '/var/cache/libvirt', '/var/log/libvirt']) {
    if (!fs.existsSync(dir)) {
      throw new FerryError(
        'not-supported',
        `ferry lab up --libvirt needs ${dir} (from libvirt-daemon-system), which is missing`,
        'install it with: bash scripts/debian-deps.sh',
      );
    }
  }
}

// ---- state ------------------------------------------------------------------------------------------

async function readState(home: string): Promise<LabState | null> {
  try {
    const s = JSON.parse(await fs.promises.readFile(stateFile(home), 'utf8')) as LabState;
    return s.formatVersion === 1 && Array.isArray(s.machines) ? s : null;
  } catch {
    return null;
  }
}

function writeState(s: LabState): void {
  const file = stateFile(s.home);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(`${file}.tmp`, JSON.stringify(s, null, 2));
  fs.renameSync(`${file}.tmp`, file);
}

export async function libvirtLabMachines(home: string): Promise<LibvirtLabMachine[]> {
  return (await readState(home))?.machines ?? [];
}

// ---- plan -------------------------------------------------------------------------------------------

/** The first 10.78.X.0/24 no interface of this machine uses, starting from the home's hash. */
async function freeSubnet(tag: string): Promise<string> {
  const used = await run('ip', ['-4', '-o', 'addr', 'show']);
  const start = parseInt(tag, 16) % 240;
  for (let k = 0; k < 240; k++) {
    const net = `${SUBNET_PREFIX}.${10 + ((start + k) % 240)}`;
    if (!used.includes(` ${net}.`)) return net;
  }
  throw new FerryError('internal', `no free ${SUBNET_PREFIX}.X.0/24 subnet for the lab`);
}

function plan(home: string, count: number, subnet: string): LabState {
  const tag = tagOf(home);
  const root = labRoot(home);
  const sharedDir = path.join(home, 'lab', 'shared');
  let runBase: string | null = null;
  const longest = path.join(root, `lab${count}`, 'run', 'libvirt', 'libvirt-sock');
  if (Buffer.byteLength(longest) > SOCKET_MAX) runBase = path.join('/tmp', `ferry-lv-${tag}`);
  const sshKey = path.join(root, 'ssh', 'id_ed25519');
  const knownHosts = path.join(root, 'ssh', 'known_hosts');
  const pkiPath = path.join(root, 'pki', 'client');
  const machines = Array.from({ length: count }, (_, k): LibvirtLabMachine => {
    const index = k + 1;
    const hostname = `lab${index}`;
    const address = `${subnet}.${index}`;
    const dir = path.join(root, hostname);
    const runDir = runBase ? path.join(runBase, hostname) : path.join(dir, 'run');
    const socketPath = path.join(runDir, 'libvirt', 'libvirt-sock');
    const q = (s: string): string => encodeURIComponent(s).replace(/%2F/g, '/');
    return {
      index,
      hostname,
      address,
      netns: netnsName(tag, index),
      dir,
      socketPath,
      uris: {
        ssh:
          `qemu+libssh2://root@${address}/system?keyfile=${q(sshKey)}&known_hosts=${q(knownHosts)}` +
          `&sshauth=privkey`,
        tcp: `qemu+tcp://${address}/system`,
        tls: `qemu+tls://${address}/system?pkipath=${q(pkiPath)}`,
        unix: `qemu:///system?socket=${q(socketPath)}`,
      },
      sshKey,
      knownHosts,
      pkiPath,
      sharedDir,
    };
  });
  return {
    formatVersion: 1,
    home,
    tag,
    bridge: `flb${tag}`,
    bridgeAddress: `${subnet}.254`,
    runBase,
    createdShared: !fs.existsSync(sharedDir),
    machines,
  };
}

// ---- files: keys, certificates, configuration ------------------------------------------------------

async function makeSshKeys(s: LabState): Promise<void> {
  const m0 = s.machines[0]!;
  fs.mkdirSync(path.dirname(m0.sshKey), { recursive: true, mode: 0o700 });
  await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', `ferry-lab-${s.tag}`, '-f', m0.sshKey]);
  const clientPub = fs.readFileSync(`${m0.sshKey}.pub`, 'utf8').trim();
  const known: string[] = [];
  for (const m of s.machines) {
    const hostKey = path.join(m.dir, 'etc', 'ssh', 'ssh_host_ed25519_key');
    fs.mkdirSync(path.dirname(hostKey), { recursive: true, mode: 0o755 });
    await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', `root@${m.hostname}`, '-f', hostKey]);
    const [type, key] = fs.readFileSync(`${hostKey}.pub`, 'utf8').trim().split(/\s+/);
    known.push(`${m.address} ${type} ${key}`, `${m.hostname} ${type} ${key}`);
    writeFile(path.join(m.dir, 'etc', 'ssh', 'authorized_keys'), `${clientPub}\n`, 0o600);
  }
  writeFile(m0.knownHosts, `${known.join('\n')}\n`);
}

async function certtool(args: string[]): Promise<void> {
  await run('certtool', args);
}

async function makeKey(file: string): Promise<void> {
  await certtool(['--generate-privkey', '--bits', '2048', '--outfile', file]);
  fs.chmodSync(file, 0o600);
}

/** The lab CA; per machine one certificate for its daemon and QEMU (server and client); a client for Ferry. */
async function makePki(s: LabState): Promise<void> {
  const pki = path.join(labRoot(s.home), 'pki');
  fs.mkdirSync(pki, { recursive: true, mode: 0o700 });
  const caKey = path.join(pki, 'ca-key.pem');
  const caCert = path.join(pki, 'cacert.pem');
  const caTpl = path.join(pki, 'ca.info');
  writeFile(caTpl, `cn = "Ferry libvirt lab CA ${s.tag}"\nca\ncert_signing_key\nexpiration_days = 3650\n`);
  await makeKey(caKey);
  await certtool([
    '--generate-self-signed',
    '--load-privkey',
    caKey,
    '--template',
    caTpl,
    '--outfile',
    caCert,
  ]);
  const sign = async (key: string, tpl: string, out: string): Promise<void> => {
    await makeKey(key);
    await certtool([
      '--generate-certificate',
      '--load-privkey',
      key,
      '--load-ca-certificate',
      caCert,
      '--load-ca-privkey',
      caKey,
      '--template',
      tpl,
      '--outfile',
      out,
    ]);
  };
  // Ferry's client certificate, laid out as libvirt's pkipath wants it.
  const client = s.machines[0]!.pkiPath;
  fs.mkdirSync(client, { recursive: true, mode: 0o700 });
  const clientTpl = path.join(pki, 'client.info');
  writeFile(
    clientTpl,
    'organization = "Ferry lab"\ncn = "ferry"\ntls_www_client\nencryption_key\nsigning_key\n' +
      'expiration_days = 3650\n',
  );
  await sign(path.join(client, 'clientkey.pem'), clientTpl, path.join(client, 'clientcert.pem'));
  fs.copyFileSync(caCert, path.join(client, 'cacert.pem'));
  await Promise.all(
    s.machines.map(async (m) => {
      const etcPki = path.join(m.dir, 'etc', 'pki');
      const tpl = path.join(pki, `${m.hostname}.info`);
      writeFile(
        tpl,
        `organization = "Ferry lab"\ncn = "${m.hostname}"\ndns_name = "${m.hostname}"\n` +
          `ip_address = "${m.address}"\ntls_www_server\ntls_www_client\nencryption_key\nsigning_key\n` +
          'expiration_days = 3650\n',
      );
      const key = path.join(pki, `${m.hostname}-key.pem`);
      const cert = path.join(pki, `${m.hostname}-cert.pem`);
      await sign(key, tpl, cert);
      const place = (from: string, to: string, mode: number): void => {
        fs.mkdirSync(path.dirname(path.join(etcPki, to)), { recursive: true });
        fs.copyFileSync(from, path.join(etcPki, to));
        fs.chmodSync(path.join(etcPki, to), mode);
      };
      place(caCert, 'CA/cacert.pem', 0o644);
      place(cert, 'libvirt/servercert.pem', 0o644);
      place(key, 'libvirt/private/serverkey.pem', 0o600);
      place(cert, 'libvirt/clientcert.pem', 0o644);
      place(key, 'libvirt/private/clientkey.pem', 0o600);
      // QEMU's migration (and NBD) TLS: migrate_tls_x509_cert_dir.
      place(caCert, 'qemu/ca-cert.pem', 0o644);
      place(cert, 'qemu/server-cert.pem', 0o644);
      place(key, 'qemu/server-key.pem', 0o600);
      place(cert, 'qemu/client-cert.pem', 0o644);
      place(key, 'qemu/client-key.pem', 0o600);
    }),
  );
}

function makeMachineFiles(s: LabState, m: LibvirtLabMachine): void {
  const etc = path.join(m.dir, 'etc');
  // The machine's /etc/libvirt starts as a copy of this computer's, without autostarted networks.
  fs.cpSync('/etc/libvirt', path.join(etc, 'libvirt'), { recursive: true });
  fs.rmSync(path.join(etc, 'libvirt', 'qemu', 'networks', 'autostart'), { recursive: true, force: true });
  fs.mkdirSync(path.join(etc, 'libvirt', 'qemu', 'networks', 'autostart'), { recursive: true });
  writeFile(
    path.join(etc, 'libvirt', 'libvirtd.conf'),
    [
      `# Ferry libvirt lab machine ${m.hostname} (lab only: TCP without authentication).`,
      'listen_tls = 1',
      'listen_tcp = 1',
      'auth_tcp = "none"',
      'auth_tls = "none"',
      'auth_unix_ro = "none"',
      'auth_unix_rw = "none"',
      'unix_sock_ro_perms = "0777"',
      'unix_sock_rw_perms = "0700"',
      `host_uuid = "${crypto.randomUUID()}"`,
      // The migration steps each daemon runs (Begin, Prepare, Perform, Finish, Confirm) are logged, so
      // a test can read their order from the daemons themselves.
      'log_filters = "1:qemu.qemu_migration"',
      'log_outputs = "1:file:/var/log/libvirt/libvirtd.log"',
      '',
    ].join('\n'),
  );
  writeFile(
    path.join(etc, 'libvirt', 'qemu.conf'),
    [
      `# Ferry libvirt lab machine ${m.hostname}.`,
      '# QEMU runs as root: with /dev/kvm root-only (kvm_pvm), another user makes libvirt re-probe QEMU on',
      '# every look at its capabilities and a domain takes 20-40 s to start.',
      'user = "root"',
      'group = "root"',
      'dynamic_ownership = 0',
      'remember_owner = 0',
      'security_driver = "none"',
      'stdio_handler = "logd"',
      "# The lab machines share one kernel: keep their domains out of this computer's cgroups.",
      'cgroup_controllers = [ ]',
      `migration_address = "${m.address}"`,
      `migration_host = "${m.address}"`,
      'migrate_tls_x509_cert_dir = "/etc/pki/qemu"',
      'migrate_tls_x509_verify = 1',
      '',
    ].join('\n'),
  );
  writeFile(
    path.join(etc, 'libvirt', 'virtlogd.conf'),
    'log_outputs = "3:file:/var/log/libvirt/virtlogd.log"\n',
  );
  const hosts = ['127.0.0.1 localhost', '::1 localhost ip6-localhost ip6-loopback'];
  for (const o of s.machines) hosts.push(`${o.address} ${o.hostname}`);
  writeFile(path.join(etc, 'hosts'), `${hosts.join('\n')}\n`);
  writeFile(path.join(etc, 'hostname'), `${m.hostname}\n`);
  const sshDir = path.join(etc, 'ssh');
  writeFile(
    path.join(sshDir, 'sshd_config'),
    [
      `# Ferry libvirt lab machine ${m.hostname}: root by key only.`,
      'Port 22',
      `ListenAddress ${m.address}`,
      `HostKey ${path.join(sshDir, 'ssh_host_ed25519_key')}`,
      `AuthorizedKeysFile ${path.join(sshDir, 'authorized_keys')}`,
      'PermitRootLogin prohibit-password',
      'PubkeyAuthentication yes',
      'PasswordAuthentication no',
      'KbdInteractiveAuthentication no',
      '# The lab folder may live under a world-writable /dev/shm.',
      'StrictModes no',
      'UsePAM no',
      'PrintMotd no',
      'PrintLastLog no',
      'UseDNS no',
      'PidFile /run/sshd.pid',
      'Subsystem sftp /usr/lib/openssh/sftp-server',
      '',
    ].join('\n'),
  );
  for (const d of ['var/lib/libvirt', 'var/cache/libvirt', 'var/log/libvirt', '.etc-ovl']) {
    fs.mkdirSync(path.join(m.dir, d), { recursive: true });
  }
  fs.mkdirSync(runDirOf(m), { recursive: true, mode: 0o755 });
  // Runs in the machine's fresh mount and UTS namespaces; then it is the process that holds them.
  const sh = (p: string): string => `'${p.replace(/'/g, `'\\''`)}'`;
  const ovl = path.join(m.dir, '.etc-ovl');
  writeFile(
    path.join(m.dir, 'setup.sh'),
    [
      'set -eu',
      'mount --make-rprivate /',
      // /etc/pki does not exist on Debian: an overlay (upper layer on a tmpfs) gives the machine an /etc
      // where its own folders can be mounted without touching this computer's /etc.
      `mount -t tmpfs -o mode=0755 ferry-etc ${sh(ovl)}`,
      `mkdir -p ${sh(ovl)}/upper/pki ${sh(ovl)}/upper/libvirt ${sh(ovl)}/work`,
      `: > ${sh(ovl)}/upper/hosts`,
      `: > ${sh(ovl)}/upper/hostname`,
      `mount -t overlay ferry-etc -o lowerdir=/etc,upperdir=${sh(ovl)}/upper,workdir=${sh(ovl)}/work /etc`,
      `mount --bind ${sh(path.join(etc, 'libvirt'))} /etc/libvirt`,
      `mount --bind ${sh(path.join(etc, 'pki'))} /etc/pki`,
      `mount --bind ${sh(path.join(etc, 'hosts'))} /etc/hosts`,
      `mount --bind ${sh(path.join(etc, 'hostname'))} /etc/hostname`,
      `mount --bind ${sh(path.join(m.dir, 'var/lib/libvirt'))} /var/lib/libvirt`,
      `mount --bind ${sh(path.join(m.dir, 'var/cache/libvirt'))} /var/cache/libvirt`,
      `mount --bind ${sh(path.join(m.dir, 'var/log/libvirt'))} /var/log/libvirt`,
      `mount --bind ${sh(runDirOf(m))} /run`,
      // /run/lock (/var/lock): libvirt locks a pty there when it opens a domain's console.
      'mkdir -p /run/sshd /run/libvirt /run/lock && chmod 0755 /run/sshd && chmod 1777 /run/lock',
      `hostname ${m.hostname}`,
      `echo $$ > ${sh(holderPidFile(m))}.tmp`,
      `mv ${sh(holderPidFile(m))}.tmp ${sh(holderPidFile(m))}`,
      'exec sleep infinity',
      '',
    ].join('\n'),
  );
}

// ---- network ----------------------------------------------------------------------------------------

async function makeNetwork(s: LabState, linkMbit: number | null): Promise<void> {
  await run('ip', ['link', 'add', s.bridge, 'type', 'bridge']);
  await run('ip', ['addr', 'add', `${s.bridgeAddress}/24`, 'dev', s.bridge]);
  await run('ip', ['link', 'set', s.bridge, 'up']);
  for (const m of s.machines) {
    const v = vethNames(s.tag, m.index);
    await run('ip', ['netns', 'add', m.netns]);
    await run('ip', ['link', 'add', v.out, 'type', 'veth', 'peer', 'name', v.in]);
    await run('ip', ['link', 'set', v.in, 'netns', m.netns]);
    await run('ip', ['link', 'set', v.out, 'master', s.bridge]);
    await run('ip', ['link', 'set', v.out, 'up']);
    await run('ip', ['-n', m.netns, 'link', 'set', 'lo', 'up']);
    await run('ip', ['-n', m.netns, 'link', 'set', v.in, 'name', 'eth0']);
    await run('ip', ['-n', m.netns, 'addr', 'add', `${m.address}/24`, 'dev', 'eth0']);
    await run('ip', ['-n', m.netns, 'link', 'set', 'eth0', 'up']);
    if (linkMbit) {
      // What leaves each machine goes through a token bucket at the link's rate (as lab-link.ts).
      await run('ip', [
        'netns',
        'exec',
        m.netns,
        'tc',
        'qdisc',
        'add',
        'dev',
        'eth0',
        'root',
        'tbf',
        'rate',
        `${linkMbit}mbit`,
        'burst',
        '256kb',
        'latency',
        '50ms',
      ]);
    }
  }
}

// ---- processes inside a machine ---------------------------------------------------------------------

/** Starts the process that creates and holds the machine's mount and UTS namespaces; returns its pid. */
async function startHolder(m: LibvirtLabMachine): Promise<number> {
  fs.rmSync(holderPidFile(m), { force: true });
  const logFile = path.join(m.dir, 'setup.log');
  const log = fs.openSync(logFile, 'a');
  let exited: number | null = null;
  try {
    const child = spawn(
      'ip',
      [
        'netns',
        'exec',
        m.netns,
        'unshare',
        '--mount',
        '--uts',
        '--fork',
        '--',
        '/bin/sh',
        path.join(m.dir, 'setup.sh'),
      ],
      { detached: true, stdio: ['ignore', log, log], env: DAEMON_ENV, cwd: '/' },
    );
    child.on('exit', (code, signal) => {
      exited = code ?? (signal ? 128 : 1);
    });
    child.on('error', () => {
      exited = 127;
    });
    child.unref();
  } finally {
    fs.closeSync(log);
  }
  return waitUntil(
    `${m.hostname}'s namespaces`,
    async () => {
      const pid = readPid(holderPidFile(m));
      if (pid !== null && alive(pid)) return pid;
      if (exited !== null) {
        throw new FerryError(
          'internal',
          `setting up ${m.hostname} failed (exit ${exited}): ${tail(logFile) || 'no output'}`,
        );
      }
      return null;
    },
    15_000,
  );
}

function holderPid(m: LibvirtLabMachine): number {
  const pid = readPid(holderPidFile(m));
  if (pid === null || !alive(pid)) {
    throw new FerryError('internal', `lab machine ${m.hostname} is not running (its namespaces are gone)`);
  }
  return pid;
}

/** Runs a daemon's start command inside the machine (it forks into the background itself). */
async function startInMachine(m: LibvirtLabMachine, args: string[]): Promise<void> {
  const holder = holderPid(m);
  const logFile = path.join(m.dir, 'daemons.log');
  const log = fs.openSync(logFile, 'a');
  try {
    const code = await new Promise<number>((resolve) => {
      const child = spawn('nsenter', ['-t', String(holder), '-m', '-u', '-n', '--', ...args], {
        stdio: ['ignore', log, log],
        env: DAEMON_ENV,
        cwd: '/',
      });
      child.on('error', () => resolve(127));
      child.on('exit', (c, sig) => resolve(c ?? (sig ? 128 : 1)));
    });
    if (code !== 0) {
      throw new FerryError(
        'internal',
        `${path.basename(args[0]!)} did not start on ${m.hostname} (exit ${code}): ${tail(logFile, 5)}`,
      );
    }
  } finally {
    fs.closeSync(log);
  }
}

function daemonPid(m: LibvirtLabMachine, pidFile: string, name: string): number | null {
  const pid = readPid(path.join(runDirOf(m), pidFile));
  return pid !== null && alive(pid) && comm(pid) === name ? pid : null;
}

async function waitAnswers(m: LibvirtLabMachine): Promise<void> {
  await waitUntil(
    `libvirtd on ${m.hostname} to answer`,
    async () => ((await virsh(m.uris.unix, ['hostname'], 10_000)).trim() === m.hostname ? true : null),
    30_000,
  );
}

export async function libvirtdPid(m: LibvirtLabMachine): Promise<number | null> {
  return daemonPid(m, 'libvirtd.pid', 'libvirtd');
}

/** Stops the machine's libvirtd (SIGTERM, as `systemctl stop libvirtd`); its domains keep running. */
export async function stopLibvirtd(m: LibvirtLabMachine): Promise<void> {
  const pid = await libvirtdPid(m);
  if (pid === null) return;
  process.kill(pid, 'SIGTERM');
  const deadline = Date.now() + 15_000;
  while (alive(pid)) {
    if (Date.now() > deadline) {
      process.kill(pid, 'SIGKILL');
      break;
    }
    await sleep(100);
  }
  while (alive(pid)) await sleep(50);
}

/** Starts the machine's libvirtd (and its virtlogd if that is not running); returns once it answers. */
export async function startLibvirtd(m: LibvirtLabMachine): Promise<void> {
  if (daemonPid(m, 'virtlogd.pid', 'virtlogd') === null) {
    await startInMachine(m, ['/usr/sbin/virtlogd', '-d']);
  }
  if ((await libvirtdPid(m)) === null) {
    await startInMachine(m, ['/usr/sbin/libvirtd', '--listen', '-d']);
  }
  await waitAnswers(m);
}

/** The machine's namespaces, virtlogd and sshd; libvirtd comes after (see startLibvirtLab). */
async function startMachineBase(m: LibvirtLabMachine): Promise<void> {
  await startHolder(m);
  await startInMachine(m, ['/usr/sbin/virtlogd', '-d']);
  await startInMachine(m, ['/usr/sbin/sshd', '-f', path.join(m.dir, 'etc', 'ssh', 'sshd_config')]);
}

/** Every way in answers, as a client on this computer sees it. */
async function checkTransports(m: LibvirtLabMachine): Promise<void> {
  await Promise.all(
    (['ssh', 'tcp', 'tls'] as const).map((t) =>
      waitUntil(
        `${m.hostname} over ${t}`,
        async () => ((await virsh(m.uris[t], ['hostname'], 15_000)).trim() === m.hostname ? true : null),
        20_000,
      ),
    ),
  );
}

/**
 * libvirtd probes each QEMU binary once (several seconds under TCG) and caches what it found in
 * /var/cache/libvirt/qemu/capabilities. Every lab machine runs the same binaries on the same kernel,
 * so the first machine probes (now, not at the first domain start) and the others get a copy.
 */
async function warmCapabilities(first: LibvirtLabMachine, others: LibvirtLabMachine[]): Promise<void> {
  await virsh(first.uris.unix, ['capabilities'], 180_000);
  const rel = path.join('var', 'cache', 'libvirt', 'qemu', 'capabilities');
  const from = path.join(first.dir, rel);
  if (!fs.existsSync(from)) return;
  for (const m of others) fs.cpSync(from, path.join(m.dir, rel), { recursive: true });
}

// ---- up and down ------------------------------------------------------------------------------------

export async function startLibvirtLab(opts: {
  home: string;
  count: number;
  linkMbit?: number | null;
}): Promise<LibvirtLabMachine[]> {
  await assertLibvirtLabPossible();
  const home = path.resolve(opts.home);
  const { count } = opts;
  const linkMbit = opts.linkMbit ?? null;
  if (!Number.isInteger(count) || count < 1 || count > MAX_MACHINES) {
    throw new FerryError(
      'bad-input',
      `--hosts must be a whole number from 1 to ${MAX_MACHINES}, not ${count}`,
    );
  }
  if (linkMbit !== null && !(Number.isFinite(linkMbit) && linkMbit > 0)) {
    throw new FerryError('bad-input', `the link rate must be a positive number of Mbit/s, not ${linkMbit}`);
  }
  if (/^\/(var\/)?run(\/|$)/.test(home)) {
    throw new FerryError(
      'bad-input',
      `FERRY_HOME (${home}) is under /run, which every lab machine replaces with its own: use another folder`,
    );
  }
  const existing = await readState(home);
  if (existing) {
    throw new FerryError(
      'lab-already-up',
      `the libvirt lab is already up (${existing.machines.map((m) => m.hostname).join(', ')}); ` +
        'run "ferry lab down" first',
    );
  }
  const s = plan(home, count, await freeSubnet(tagOf(home)));
  // Written first, so a failure anywhere below (or a crash) can be undone by stopLibvirtLab.
  writeState(s);
  try {
    fs.mkdirSync(s.machines[0]!.sharedDir, { recursive: true });
    for (const m of s.machines) makeMachineFiles(s, m);
    await makeSshKeys(s);
    await makePki(s);
    await makeNetwork(s, linkMbit);
    await Promise.all(s.machines.map((m) => startMachineBase(m)));
    const [first, ...others] = s.machines as [LibvirtLabMachine, ...LibvirtLabMachine[]];
    await startLibvirtd(first);
    await warmCapabilities(first, others);
    await Promise.all(others.map((m) => startLibvirtd(m)));
    await Promise.all(s.machines.map((m) => checkTransports(m)));
    return s.machines;
  } catch (err) {
    await stopLibvirtLab(home).catch(() => undefined);
    if (err instanceof FerryError) throw err;
    throw new FerryError('internal', `starting the libvirt lab failed: ${errText(err)}`);
  }
}

async function netnsPids(ns: string): Promise<number[]> {
  try {
    const { stdout } = await execFileAsync('ip', ['netns', 'pids', ns]);
    return stdout
      .split(/\s+/)
      .filter(Boolean)
      .map(Number)
      .filter((p) => Number.isInteger(p) && p > 0 && p !== process.pid);
  } catch {
    return [];
  }
}

/** Kills everything in the machine's network namespace (daemons, sshd, QEMU of every domain). */
async function killNetns(ns: string): Promise<number> {
  const killed = new Set<number>();
  for (let round = 0; round < 20; round++) {
    const pids = (await netnsPids(ns)).filter(alive);
    if (pids.length === 0) break;
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
        killed.add(pid);
      } catch {
        /* gone */
      }
    }
    const deadline = Date.now() + 5_000;
    while (pids.some(alive) && Date.now() < deadline) await sleep(50);
  }
  return killed.size;
}

async function labNamespaces(tag: string): Promise<string[]> {
  try {
    const { stdout } = await execFileAsync('ip', ['netns', 'list']);
    return stdout
      .split('\n')
      .map((l) => l.split(/\s+/)[0] ?? '')
      .filter((n) => n.startsWith(`ferry-lv-${tag}-`));
  } catch {
    return [];
  }
}

/** True while Ferry's QEMU lab (kind 'lab' hosts) is up in this home: it uses lab/shared too. */
function qemuLabUp(home: string): boolean {
  try {
    const inv = JSON.parse(fs.readFileSync(path.join(home, 'inventory.json'), 'utf8')) as {
      hosts?: { kind?: string }[];
    };
    return (inv.hosts ?? []).some((h) => h.kind === 'lab');
  } catch {
    return false;
  }
}

export async function stopLibvirtLab(home: string): Promise<{ machines: string[]; killed: number }> {
  home = path.resolve(home);
  const tag = tagOf(home);
  const s = await readState(home);
  const names = new Set<string>(s ? s.machines.map((m) => m.netns) : []);
  for (const ns of await labNamespaces(tag)) names.add(ns);
  let killed = 0;
  for (const ns of names) killed += await killNetns(ns);
  for (const ns of names) {
    const i = Number(ns.slice(ns.lastIndexOf('-') + 1));
    await execFileAsync('ip', ['link', 'del', vethNames(tag, i).out]).catch(() => undefined);
    await execFileAsync('ip', ['netns', 'del', ns]).catch(() => undefined);
  }
  await execFileAsync('ip', ['link', 'del', s?.bridge ?? `flb${tag}`]).catch(() => undefined);
  if (s?.runBase) fs.rmSync(s.runBase, { recursive: true, force: true });
  fs.rmSync(path.join('/tmp', `ferry-lv-${tag}`), { recursive: true, force: true });
  fs.rmSync(labRoot(home), { recursive: true, force: true });
  if (s?.createdShared && !qemuLabUp(home)) {
    fs.rmSync(path.join(home, 'lab', 'shared'), { recursive: true, force: true });
  }
  try {
    fs.rmdirSync(path.join(home, 'lab'));
  } catch {
    /* not empty or not there */
  }
  return { machines: s ? s.machines.map((m) => m.hostname) : [], killed };
}
