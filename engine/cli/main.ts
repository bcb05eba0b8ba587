// `ferry`: the command line. It never prompts; `--json` writes JSON only on stdout (messages go to
// stderr). Every argument is validated before anything changes.
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { registerMigrationCommands } from './migrate.js';
import { ExitWith, int, table } from './util.js';
import { FerryError, isFerryError, REFUSAL_CODES, type DiskRequest, type VmSummary } from '../api/index.js';
import type { HostDriver } from '../host/driver.js';
import { Inventory } from '../host/inventory.js';
import { closeLibvirtConnections } from '../host/libvirt/connection.js';
import { recoverAbandonedMoves } from '../migration/libvirt-recovery.js';
import { ApiService } from '../service/api-service.js';

/** Exit codes: 0 done, 1 failed while doing it, 2 refused (bad input or a check said no). */

function positive(value: string): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0)
    throw new InvalidArgumentError(`expected a positive number, got "${value}"`);
  return n;
}

export interface Io {
  out: (s: string) => void;
  err: (s: string) => void;
}

const stdio: Io = {
  out: (s) => process.stdout.write(s),
  err: (s) => process.stderr.write(s),
};

function vmRows(vms: VmSummary[]): string {
  return table([
    ['NAME', 'HOST', 'STATE', 'MEMORY', 'CPUS', 'MACHINE', 'NOTE'],
    ...vms.map((v) => [
      v.name,
      v.host,
      v.state,
      `${v.memoryMiB} MiB`,
      String(v.cpus),
      v.machineType,
      v.reason ?? '',
    ]),
  ]);
}

export function buildProgram(io: Io, inv: Inventory): Command {
  const json = (v: unknown): void => io.out(JSON.stringify(v, null, 2) + '\n');
  const say = (s: string): void => io.err(s + '\n');

  const program = new Command('ferry')
    .description('Ferry: move running QEMU virtual machines between hosts')
    .exitOverride()
    .configureOutput({ writeOut: io.out, writeErr: io.err })
    .showHelpAfterError('(run with --help for usage)');

  // ---- lab ----
  const lab = program.command('lab').description('a local lab of several hosts on this machine');
  lab
    .command('up')
    .description(
      'create lab hosts lab1..labN sharing one storage folder: on loopback, or with --libvirt as ' +
        'separate libvirt "machines" (root: namespaces, libvirtd, sshd)',
    )
    .addOption(new Option('--hosts <n>', 'number of lab hosts').argParser(int(1, 16)).default(2))
    .option('--libvirt', 'run a libvirtd per host, each in its own namespaces, reached over SSH')
    .addOption(
      new Option(
        '--link-mbit <n>',
        'join the hosts by a real link shaped to this rate (root: netns, veth, tc)',
      ).argParser(int(1, 100_000)),
    )
    .action(async (o: { hosts: number; linkMbit?: number; libvirt?: boolean }) => {
      const hosts = await inv.labUp(o.hosts, { linkMbit: o.linkMbit, libvirt: !!o.libvirt });
      if (o.libvirt) {
        say(
          `lab up: libvirt hosts ${hosts.map((h) => h.name).join(', ')}` +
            (o.linkMbit ? ` on a ${o.linkMbit} Mbit/s link` : '') +
            `; shared storage: ${hosts[0]!.vmDir}`,
        );
        for (const h of hosts) say(`  ${h.name}: virsh -c '${h.uri}'`);
        return;
      }
      const where = o.linkMbit
        ? `on a ${o.linkMbit} Mbit/s link (${hosts.map((h) => `${h.name} ${h.migrationAddress}`).join(', ')})`
        : 'on loopback';
      say(`lab up: ${hosts.map((h) => h.name).join(', ')} ${where}; shared storage: ${hosts[0]!.vmDir}`);
    });
  lab
    .command('down')
    .description('turn off every VM on the lab hosts and remove the lab')
    .action(async () => {
      const r = await inv.labDown();
      say(`lab down: removed ${r.hosts.join(', ')}; turned off ${r.stoppedVms.length} VM(s)`);
    });

  // ---- host ----
  const host = program.command('host').description('hosts and their facts');
  host
    .command('list')
    .option('--json', 'JSON on stdout')
    .action(async (o: { json?: boolean }) => {
      const hosts = await inv.hostSummaries();
      if (o.json) return json(hosts);
      if (hosts.length === 0)
        return say('no hosts yet (try: ferry lab up, or ferry host add NAME --uri URI)');
      io.out(
        table([
          ['NAME', 'KIND', 'LAB', 'CONNECTED', 'VMS', 'RUNNING', 'WHERE'],
          ...hosts.map((h) => [
            h.name,
            h.kind,
            h.lab || h.kind === 'lab' ? 'yes' : '',
            h.connected ? 'yes' : `no: ${h.connectionError ?? 'unknown'}`,
            String(h.vmCount),
            String(h.runningCount),
            h.uri ?? h.stateDir,
          ]),
        ]),
      );
      for (const h of hosts) if (h.warning) say(`warning: ${h.name}: ${h.warning}`);
    });
  host
    .command('info <host>')
    .option('--json', 'JSON on stdout')
    .action(async (name: string, o: { json?: boolean }) => {
      const h = await inv.host(name);
      const status = await inv.hostStatus(h);
      const settings = await h.settings();
      // A host that cannot be reached still has a record and settings: show them and why.
      const facts = status.connected ? await h.facts() : null;
      if (o.json) return json({ ...h.record, ...status, facts, settings });
      const head = [
        ['Host', h.name],
        ['Kind', h.record.kind + (h.record.lab ? ' (lab)' : '')],
        ...(h.record.uri ? [['URI', h.record.uri]] : []),
        ['Connected', status.connected ? 'yes' : `no: ${status.connectionError ?? 'unknown'}`],
      ];
      if (status.warning) say(`warning: ${status.warning}`);
      if (!facts) {
        io.out(table(head));
        throw new ExitWith(1);
      }
      io.out(
        table([
          ...head,
          ...(facts.hostname ? [['Hostname', facts.hostname]] : []),
          ...(facts.libvirtVersion ? [['libvirt', facts.libvirtVersion]] : []),
          ['QEMU', `${facts.qemuVersion} (${facts.qemuBinary})`],
          ['Accelerator', `${facts.accel} — ${facts.accelNote}`],
          ['CPU', `${facts.cpuVendor}, ${facts.cpuModel} ×${facts.cpuCount}`],
          ['Memory', `${facts.memFreeMiB} MiB free of ${facts.memTotalMiB} MiB`],
          ['Disk free', `${(facts.diskFreeBytes / 1024 ** 3).toFixed(1)} GiB in ${h.record.vmDir}`],
          ['Machine types', `default ${facts.defaultMachineType}; ${facts.machineTypes.length} supported`],
          ['Migration', facts.migrationCapabilities.join(', ')],
          ['Multifd compression', facts.multifdCompression.join(', ')],
          ['RDMA', facts.rdma ? 'yes' : 'no'],
        ]),
      );
    });

  host
    .command('add <name>')
    .description(
      'connect to a libvirt host (a QEMU/KVM server): qemu+ssh://[user@]host[:port]/system, ' +
        'qemu+tls://host/system, qemu:///system, or qemu+tcp://host/system (labs only: unauthenticated)',
    )
    .requiredOption('--uri <uri>', 'libvirt connection URI, as virsh -c takes it')
    .option('--ssh-key <path>', 'private key file to log in with (default: ssh-agent, then ~/.ssh/id_*)')
    .option(
      '--accept-host-key <fingerprint>',
      "accept the server's SSH host key with this SHA256 fingerprint (check it on the server first)",
    )
    .option('--json', 'JSON on stdout')
    .action(
      async (name: string, o: { uri: string; sshKey?: string; acceptHostKey?: string; json?: boolean }) => {
        const rec = await inv.addLibvirtHost({
          name,
          uri: o.uri,
          sshKey: o.sshKey ?? null,
          acceptHostKey: o.acceptHostKey ?? null,
        });
        const status = await inv.hostStatus(await inv.host(rec.name));
        if (status.warning) say(`warning: ${status.warning}`);
        if (o.json) return json({ ...rec, ...status });
        say(`added ${rec.name}: ${rec.uri} (connected)`);
      },
    );
  host
    .command('remove <name>')
    .description(
      "forget a host (a libvirt server and its VMs are untouched; Ferry's own hosts keep their files)",
    )
    .action(async (name: string) => {
      await inv.removeHost(name);
      say(`removed ${name}`);
    });

  // ---- vm ----
  const vm = program.command('vm').description('virtual machines');
  vm.command('create <name>')
    .description('define a VM on a host (its configuration lives on that host)')
    .requiredOption('--host <host>', 'host to create it on')
    .addOption(new Option('--memory <MiB>', 'memory in MiB').argParser(int(16)).default(512))
    .addOption(new Option('--cpus <n>', 'virtual CPUs').argParser(int(1, 256)).default(1))
    .option('--machine <type>', 'QEMU machine type (default q35, stored as its versioned name)')
    .addOption(new Option('--disk <GiB>', 'a new empty qcow2 disk of this size').argParser(positive))
    .option('--disk-image <path>', 'use an existing qcow2/raw image in place')
    .option('--storage-path <dir>', "folder for the VM's new disks (default: the host's VM folder)")
    .option('--lab-guest', "boot Ferry's self-checking lab guest")
    .addOption(new Option('--working-set <MiB>', 'lab guest working set').argParser(int(1, 65536)))
    .addOption(
      new Option('--dirty-rate <MiB/s>', 'lab guest dirty rate, 0 = as fast as it can').argParser(int(0)),
    )
    .option('--json', 'JSON on stdout')
    .action(
      async (
        name: string,
        o: {
          host: string;
          memory: number;
          cpus: number;
          machine?: string;
          disk?: number;
          storagePath?: string;
          diskImage?: string;
          labGuest?: boolean;
          workingSet?: number;
          dirtyRate?: number;
          json?: boolean;
        },
      ) => {
        if (!o.labGuest && (o.workingSet !== undefined || o.dirtyRate !== undefined)) {
          throw new FerryError('bad-input', '--working-set and --dirty-rate apply to --lab-guest only');
        }
        const disks: DiskRequest[] = [];
        if (o.disk !== undefined) disks.push({ kind: 'new', sizeGiB: o.disk });
        if (o.diskImage !== undefined) disks.push({ kind: 'image', path: o.diskImage });
        const request = {
          name,
          host: o.host,
          memoryMiB: o.memory,
          cpus: o.cpus,
          machineType: o.machine,
          disks,
          storagePath: o.storagePath,
          labGuest: o.labGuest
            ? { workingSetMiB: o.workingSet ?? 64, dirtyRateMiBs: o.dirtyRate ?? 50 }
            : null,
        };
        const info = await inv.createVm(request);
        // Allowed to the administrator, but a disk outside shared storage cannot move without its storage.
        for (const w of await inv.diskWarnings(request).catch(() => [])) say(`warning: ${w}`);
        if (o.json) return json(info);
        say(
          `created ${info.name} on ${info.host} (${info.memoryMiB} MiB, ${info.cpus} vCPU, ${info.machineType})`,
        );
      },
    );

  /**
   * The host a VM command acts on: the one named with --host (both hosts list a VM whose move was
   * interrupted after the switch-over), else the one the VM is found on.
   */
  const hostOf = async (name: string, host: string | undefined): Promise<HostDriver> => {
    if (host === undefined) return inv.locate(name);
    const h = await inv.host(host);
    if (!(await h.hasVm(name)))
      throw new FerryError('unknown-vm', `there is no VM named "${name}" on ${host}`);
    return h;
  };
  const lifecycle = (
    cmd: string,
    what: string,
    run: (h: HostDriver, name: string) => Promise<VmSummary>,
  ): void => {
    vm.command(`${cmd} <name>`)
      .description(what)
      .option('--host <host>', 'the host whose copy of the VM to act on (default: where it is found)')
      .option('--json', 'JSON on stdout')
      .action(async (name: string, o: { host?: string; json?: boolean }) => {
        const s = await run(await hostOf(name, o.host), name);
        if (o.json) return json(s);
        say(`${s.name} on ${s.host}: ${s.state}`);
      });
  };
  lifecycle('start', 'start a VM', (h, n) => h.startVm(n));
  lifecycle('pause', 'pause a running VM', (h, n) => h.pauseVm(n));
  lifecycle('resume', 'resume a paused VM', (h, n) => h.resumeVm(n));
  vm.command('stop <name>')
    .description('shut down (ACPI power button, then turn off after the timeout)')
    .option('--force', 'turn off at once (the lab guest ignores ACPI)')
    .addOption(
      new Option('--timeout <s>', 'seconds to wait for a graceful shut-down')
        .argParser(int(0, 3600))
        .default(30),
    )
    .option('--host <host>', 'the host whose copy of the VM to act on (default: where it is found)')
    .option('--json', 'JSON on stdout')
    .action(async (name: string, o: { force?: boolean; timeout: number; host?: string; json?: boolean }) => {
      const s = await (
        await hostOf(name, o.host)
      ).stopVm(name, { force: !!o.force, timeoutMs: o.timeout * 1000 });
      if (o.json) return json(s);
      say(`${s.name} on ${s.host}: ${s.state}`);
    });
  vm.command('delete <name>')
    .description('delete a stopped VM and the disks Ferry created for it')
    .action(async (name: string) => {
      await inv.deleteVm(name);
      say(`deleted ${name}`);
    });
  vm.command('info <name>')
    .option('--json', 'JSON on stdout')
    .action(async (name: string, o: { json?: boolean }) => {
      const info = await (await inv.locate(name)).vmInfo(name);
      if (o.json) return json(info);
      io.out(
        table([
          ['Name', info.name],
          ['Host', info.host],
          ['State', info.state + (info.reason ? ` (${info.reason})` : '')],
          ['Memory', `${info.memoryMiB} MiB`],
          ['vCPUs', String(info.cpus)],
          ['Configuration version', info.configVersion],
          ['CPU model', info.cpuModel],
          ...info.disks.map((d) => [
            d.id,
            `${d.path} (${d.format}, ${(d.sizeBytes / 1024 ** 3).toFixed(2)} GiB)`,
          ]),
          ...info.nics.map((n) => [n.id, n.mac]),
          [
            'Lab guest',
            info.labGuest
              ? `working set ${info.labGuest.workingSetMiB} MiB, ${info.labGuest.dirtyRateMiBs} MiB/s`
              : 'no',
          ],
          ['Serial log', info.serialLogPath],
          ['Configuration', info.configPath],
        ]),
      );
    });
  vm.command('list')
    .option('--json', 'JSON on stdout')
    .action(async (o: { json?: boolean }) => {
      await recoverAbandonedMoves(inv); // a move whose Ferry process died is settled first
      const vms = await inv.listVms();
      if (o.json) return json(vms);
      if (vms.length === 0) return say('no VMs');
      io.out(vmRows(vms));
    });
  vm.command('serial <name>')
    .description("print the VM's serial console log")
    .action(async (name: string) => {
      io.out((await (await inv.locate(name)).readSerial(name, 0)).text);
    });

  registerMigrationCommands(program, io, inv, host);

  program
    .command('web')
    .description('serve the console in a browser (127.0.0.1, with an access token in the URL)')
    .addOption(new Option('--port <n>', 'port (0 = any free port)').argParser(int(0, 65535)).default(0))
    .option(
      '--host <address>',
      'address to listen on (other than loopback only with --tls-cert/--tls-key)',
      '127.0.0.1',
    )
    .option('--tls-cert <file>', 'serve https/wss with this certificate (PEM)')
    .option('--tls-key <file>', "the certificate's private key (PEM)")
    .action(async (o: { port: number; host: string; tlsCert?: string; tlsKey?: string }) => {
      const { startWebServer, webTls } = await import('../web/server.js');
      const tls = await webTls(o.host, o.tlsCert, o.tlsKey); // beyond loopback only with TLS
      const service = new ApiService(inv, { role: 'client' }); // web token holders are API clients
      const server = await startWebServer({ port: o.port, host: o.host, service, tls });
      // The URL goes to stdout (scripts and tests read it); everything else to stderr.
      io.out(`${server.url}\n`);
      say(`Ferry console: open ${server.url}  (Ctrl-C stops it)`);
      await new Promise<void>((resolve) => {
        const stop = (): void => {
          process.off('SIGINT', stop);
          process.off('SIGTERM', stop);
          // Moves run in this process: cancel those that can be, let the others finish, then stop.
          say('stopping: waiting for moves in progress…');
          void service.manager
            .shutdown()
            .then(() => service.dispose())
            .then(() => server.close())
            .then(resolve);
        };
        process.on('SIGINT', stop);
        process.on('SIGTERM', stop);
      });
    });
  return program;
}

/** Runs the CLI and returns the exit code (never calls process.exit, so tests can call it in-process). */
export async function main(
  argv: string[],
  io: Io = stdio,
  inv: Inventory = new Inventory(),
): Promise<number> {
  const program = buildProgram(io, inv);
  try {
    await program.parseAsync(argv, { from: 'user' });
    return 0;
  } catch (err) {
    return reportError(err, io);
  } finally {
    await closeLibvirtConnections();
  }
}

function reportError(err: unknown, io: Io): number {
  if (err instanceof ExitWith) return err.code;
  if (err instanceof CommanderError) {
    // Help and version exit 0; usage errors were already printed by commander.
    return err.exitCode === 0 ? 0 : 2;
  }
  if (isFerryError(err)) {
    io.err(`ferry: ${err.message}\n`);
    if (err.hint) io.err(`  ${err.hint}\n`);
    return REFUSAL_CODES.has(err.code) ? 2 : 1;
  }
  io.err(`ferry: unexpected error: ${(err as Error).stack ?? String(err)}\n`);
  return 1;
}
