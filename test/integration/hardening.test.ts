// Issue 11, points 2 and 4, on real QEMU through the CLI: sockets in a private folder (XDG_RUNTIME_DIR,
// or a 0700 ferry-UID that is refused when unsafe), state 0700/0600, a FERRY_HOME and a VM name with
// commas that start a VM without injecting QEMU options, storage-move targets that are never overwritten
// nor followed, and the next look after a mover killed past the switch-over (resolved when the
// destination runs the VM, left paused with both hosts' facts when that is not known).
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseLabGuestSerial } from '../../engine/host/lab-guest.js';
import { isQemuAlive } from '../../engine/qemu/process.js';
import { ferry, tempHome, waitFor, type CliResult } from '../helpers.js';

const VM = 'hard';
let base: string;
let home: string;
let xdg: string;

const cli = (args: string[], env: Record<string, string> = {}): Promise<CliResult> =>
  ferry(home, args, { XDG_RUNTIME_DIR: xdg, ...env });

async function ok(args: string[], env: Record<string, string> = {}): Promise<string> {
  const r = await cli(args, env);
  expect(r.code, `ferry ${args.join(' ')}: ${r.stderr}`).toBe(0);
  return r.stdout;
}

interface Listed {
  name: string;
  host: string;
  state: string;
  pid: number | null;
  reason: string | null;
}
const vmList = async (): Promise<Listed[]> => JSON.parse(await ok(['vm', 'list', '--json'])) as Listed[];

interface Rec {
  id: string;
  status: string;
  reason: string | null;
  from: string;
  to: string;
  recovery?: { outcome: string; source: string; destination: string };
}
const migrations = async (): Promise<Rec[]> => JSON.parse(await ok(['migrations', '--json'])) as Rec[];

function runtime(host: string, vm = VM): { pid: number; qmpSocket: string } {
  return JSON.parse(fs.readFileSync(path.join(home, 'hosts', host, 'vms', vm, 'runtime.json'), 'utf8')) as {
    pid: number;
    qmpSocket: string;
  };
}

beforeAll(async () => {
  base = tempHome('hardening');
  // A state folder whose name, unescaped, would add a `logfile=` option to the serial chardev.
  home = path.join(base, 'st,logfile=injected.log');
  xdg = path.join(base, 'xdg');
  fs.mkdirSync(xdg, { mode: 0o700 });
  await ok(['lab', 'up', '--hosts', '2']);
  await ok([
    'vm',
    'create',
    VM,
    '--host',
    'lab1',
    '--memory',
    '256',
    '--disk',
    '1',
    '--lab-guest',
    '--working-set',
    '8',
    '--dirty-rate',
    '8',
  ]);
  await ok(['vm', 'start', VM]);
});
afterAll(async () => {
  await cli(['lab', 'down']).catch(() => undefined);
});

describe('files and sockets', () => {
  it('starts a VM from a FERRY_HOME with commas: options escaped, sockets under XDG_RUNTIME_DIR, state private', async () => {
    const rt = runtime('lab1');
    expect(isQemuAlive(rt.pid, rt.qmpSocket)).toBe(true);
    expect(rt.qmpSocket.startsWith(path.join(xdg, 'ferry') + '/')).toBe(true);
    for (const d of [path.join(xdg, 'ferry'), path.dirname(rt.qmpSocket)])
      expect((fs.statSync(d).mode & 0o777).toString(8), d).toBe('700');
    // QEMU got the commas doubled, and wrote its serial log where Ferry reads it.
    const cmdline = fs.readFileSync(`/proc/${rt.pid}/cmdline`, 'utf8').split('\0');
    const serial = path.join(home, 'hosts', 'lab1', 'vms', VM, 'serial.log');
    const serialSocket = (rt as { serialSocket?: string }).serialSocket ?? '';
    expect(cmdline).toContain(
      `socket,id=serial0,path=${serialSocket.replace(/,/g, ',,')},server=on,wait=off,` +
        `logfile=${serial.replace(/,/g, ',,')},logappend=on`,
    );
    await waitFor('a heartbeat in the serial log', async () =>
      parseLabGuestSerial(fs.readFileSync(serial, 'utf8')).heartbeats.length > 0 ? true : null,
    );
    // No option was injected: nothing appeared beside the state folder.
    expect(fs.readdirSync(base).sort()).toEqual([path.basename(home), 'xdg'].sort());
    expect(fs.existsSync(path.join(process.cwd(), 'injected.log'))).toBe(false);
    // Ferry's state: folders 0700, files 0600 (QEMU's own files too: serial log, pid file, disk).
    const loose: string[] = [];
    const walk = (dir: string): void => {
      for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
        const p = path.join(dir, e.name);
        if (e.name.endsWith('.lock')) continue; // a lock held this instant (proper-lockfile's own)
        const mode = fs.lstatSync(p).mode & 0o777;
        if (e.isDirectory()) {
          if (mode !== 0o700) loose.push(`${p} ${mode.toString(8)}`);
          walk(p);
        } else if (e.isFile() && mode !== 0o600) loose.push(`${p} ${mode.toString(8)}`);
      }
    };
    walk(home);
    expect(loose).toEqual([]);
  });

  it('refuses a socket folder that others may write or another user owns', async () => {
    await ok(['vm', 'create', 'idle', '--host', 'lab2', '--memory', '256', '--lab-guest']);
    const tmp = path.join(base, 'tmp');
    const shared = path.join(tmp, `ferry-${process.getuid!()}`);
    fs.mkdirSync(shared, { recursive: true });
    fs.chmodSync(shared, 0o777);
    const env = { XDG_RUNTIME_DIR: '', TMPDIR: tmp };
    let r = await cli(['vm', 'start', 'idle'], env);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(
      `refusing to use ${shared} for QEMU's sockets: others may write to it (mode 777)`,
    );
    expect(fs.statSync(shared).mode & 0o777).toBe(0o777);
    fs.chmodSync(shared, 0o700);
    fs.chownSync(shared, 65534, 65534);
    r = await cli(['vm', 'start', 'idle'], env);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('belongs to another user (uid 65534)');
    expect(fs.readdirSync(shared)).toEqual([]); // nothing made inside it
    // The same start with a private folder works.
    fs.rmSync(shared, { recursive: true });
    await ok(['vm', 'start', 'idle'], env);
    expect((fs.statSync(shared).mode & 0o777).toString(8)).toBe('700');
    expect(path.dirname(path.dirname(runtime('lab2', 'idle').qmpSocket))).toBe(shared);
    await ok(['vm', 'stop', 'idle', '--force'], env);
    await ok(['vm', 'delete', 'idle']);
  });

  it('refuses a storage-move target that exists as a file or a dangling link, leaving it untouched', async () => {
    const folder = path.join(home, 'lab', 'target');
    fs.mkdirSync(folder, { recursive: true });
    const file = path.join(folder, 'disk0.qcow2');
    fs.writeFileSync(file, 'not a disk: keep me');
    let r = await cli(['move-storage', VM, '--storage-path', folder]);
    expect(r.code, r.stderr).not.toBe(0);
    expect(r.stderr).toContain(`${file} already exists`);
    expect(fs.readFileSync(file, 'utf8')).toBe('not a disk: keep me');
    fs.rmSync(file);
    const pointsTo = path.join(home, 'lab', 'elsewhere', 'disk0.qcow2');
    fs.mkdirSync(path.dirname(pointsTo), { recursive: true });
    fs.symlinkSync(pointsTo, file);
    r = await cli(['move-storage', VM, '--storage-path', folder]);
    expect(r.code, r.stderr).not.toBe(0);
    expect(r.stderr).toContain(`${file} already exists`);
    expect(fs.lstatSync(file).isSymbolicLink()).toBe(true);
    expect(fs.readlinkSync(file)).toBe(pointsTo);
    expect(fs.existsSync(pointsTo)).toBe(false);
    // The VM still runs where it was, on its own disk.
    expect((await vmList()).find((v) => v.name === VM)).toMatchObject({ host: 'lab1', state: 'running' });
  });
});

describe('a mover killed after the switch-over', () => {
  it('destination runs the VM: the next look turns the source copy off and records "completed (recovered)"', async () => {
    const src = runtime('lab1');
    const r = await cli(['move', VM, '--to', 'lab2', '--performance', 'tcp', '--json'], {
      FERRY_TEST_EXIT_AFTER: 'finish',
    });
    expect(r.code).not.toBe(0); // killed
    expect(r.stdout).not.toContain('"type":"summary"');
    // Before the next look: both QEMUs are there, the source paused.
    expect(isQemuAlive(src.pid, src.qmpSocket)).toBe(true);
    const list = await vmList();
    const copies = list.filter((v) => v.name === VM);
    expect(copies).toEqual([expect.objectContaining({ host: 'lab2', state: 'running' })]);
    expect(isQemuAlive(src.pid, src.qmpSocket)).toBe(false);
    expect(fs.existsSync(path.join(home, 'hosts', 'lab1', 'vms', VM))).toBe(false);
    expect(fs.existsSync(src.qmpSocket)).toBe(false);
    // The shared disk is the destination's now: still there.
    const info = JSON.parse(await ok(['vm', 'info', VM, '--json'])) as {
      host: string;
      disks: { path: string }[];
    };
    expect(info.host).toBe('lab2');
    expect(fs.existsSync(info.disks[0]!.path)).toBe(true);
    const rec = (await migrations())[0]!;
    expect(rec).toMatchObject({
      from: 'lab1',
      to: 'lab2',
      status: 'completed',
      reason: expect.stringMatching(
        /^completed \(recovered\): the Ferry process running the move \(pid \d+\) ended after the switch-over during phase 5/,
      ),
      recovery: {
        outcome: 'recovered',
        source: expect.stringMatching(
          /^lab1 \(source\): QEMU pid \d+ postmigrate, outgoing migration completed$/,
        ),
        destination: expect.stringMatching(
          /^lab2 \(destination\): QEMU pid \d+ running, incoming migration completed$/,
        ),
      },
    });
    // The guest goes on on lab2.
    const serial = path.join(home, 'hosts', 'lab2', 'vms', VM, 'serial.log');
    const before = parseLabGuestSerial(fs.readFileSync(serial, 'utf8')).heartbeats.at(-1)!.pass;
    await waitFor('a newer heartbeat on lab2', async () => {
      const g = parseLabGuestSerial(fs.readFileSync(serial, 'utf8'));
      return (g.heartbeats.at(-1)?.pass ?? 0) > before ? g : null;
    });
  });

  it('destination not known to run it: the source stays paused and the history shows both hosts', async () => {
    const src = runtime('lab2');
    const dst = { dir: path.join(home, 'hosts', 'lab1', 'vms', VM) };
    const r = await cli(['move', VM, '--to', 'lab1', '--performance', 'tcp', '--json'], {
      FERRY_TEST_EXIT_AFTER: 'switchover',
    });
    expect(r.code).not.toBe(0);
    // The history is the next look here: the skeleton on lab1 never ran.
    let rec = (await migrations())[0]!;
    expect(rec).toMatchObject({
      from: 'lab2',
      to: 'lab1',
      status: 'failed',
      reason: expect.stringContaining('needs the administrator'),
      recovery: {
        outcome: 'needs-administrator',
        source: expect.stringMatching(
          /^lab2 \(source\): QEMU pid \d+ postmigrate, outgoing migration completed$/,
        ),
      },
    });
    expect(rec.reason).toContain(`the copy on lab2 is left paused`);
    expect(rec.reason).toContain(`(ferry vm resume ${VM} --host lab2, or Resolve… in the console)`);
    expect(rec.reason).toContain(rec.recovery!.source);
    expect(rec.reason).toContain(rec.recovery!.destination);
    // vm list: the source copy paused, with the facts; the skeleton on lab1 is removed.
    const copies = (await vmList()).filter((v) => v.name === VM);
    expect(copies).toEqual([
      expect.objectContaining({
        host: 'lab2',
        state: 'paused',
        reason: expect.stringContaining('needs the administrator'),
      }),
    ]);
    expect(isQemuAlive(src.pid, src.qmpSocket)).toBe(true);
    expect(fs.existsSync(dst.dir)).toBe(false);
    // A later look writes what it finds now.
    rec = (await migrations())[0]!;
    expect(rec.recovery).toMatchObject({
      outcome: 'needs-administrator',
      destination: `lab1 (destination): no QEMU runs ${VM}; no configuration of ${VM} is there`,
    });
    // The administrator resumes it on lab2; the next look notes it, and the VM can move again.
    // Aimed at the source's copy, as the reason says (no copy on lab1: refused there).
    expect((await cli(['vm', 'resume', VM, '--host', 'lab1'])).code).toBe(2);
    await ok(['vm', 'resume', VM, '--host', 'lab2']);
    rec = (await migrations())[0]!;
    expect(rec).toMatchObject({ status: 'failed', recovery: { outcome: 'resolved' } });
    expect(rec.reason).toContain(`was resumed on lab2 and does not run on lab1`);
    expect((await vmList()).filter((v) => v.name === VM)).toEqual([
      expect.objectContaining({ host: 'lab2', state: 'running' }),
    ]);
  });
});
