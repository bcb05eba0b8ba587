// Issue 11, points 2 and 4, the pure parts: QEMU option escaping, private folders and exclusive files,
// and what the next look decides for a move abandoned after the switch-over.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { VmConfig } from '../../engine/api/index.js';
import { decideAfterSwitchover, describeCopy, type CopyFacts } from '../../engine/host/local/recovery.js';
import { createExclusive, ensurePrivateDir, socketDir, writeJsonAtomic } from '../../engine/host/store.js';
import { optValue, qemuArgv } from '../../engine/qemu/argv.js';

let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-hardening-unit-'));
});
afterAll(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

const vm: VmConfig = {
  formatVersion: 1,
  name: 'a,debug-threads=off',
  uuid: '6f1c1f4e-52a5-4c38-9d8e-1b2f3c4d5e6f',
  memoryMiB: 256,
  cpus: 1,
  machineType: 'pc-q35-7.2',
  cpuModel: 'qemu64',
  disks: [{ id: 'disk0', path: '/s,t/disk0.qcow2', format: 'qcow2', sizeBytes: 1, owned: true }],
  nics: [],
  labGuest: null,
  createdAt: new Date(0).toISOString(),
};

describe('QEMU option strings', () => {
  it('doubles commas in every path and name put into option syntax', () => {
    expect(optValue('/a,b/c,,d')).toBe('/a,,b/c,,,,d');
    const argv = qemuArgv(
      vm,
      {
        qmpSocket: '/run/x,server=off/q.qmp',
        statusSocket: '/run/x,server=off/q.st',
        serialLog: '/home/h,logfile=/tmp/p/serial.log',
        pidFile: '/home/h,x/qemu.pid',
        labGuestKernel: '/k,1/guest.bin',
      },
      { accel: 'tcg' },
    );
    const after = (flag: string): string[] => argv.flatMap((a, i) => (argv[i - 1] === flag ? [a] : []));
    expect(after('-name')).toEqual(['guest=a,,debug-threads=off,debug-threads=on']);
    expect(after('-chardev')).toEqual([
      'socket,id=qmp0,path=/run/x,,server=off/q.qmp,server=on,wait=off',
      'socket,id=qmp1,path=/run/x,,server=off/q.st,server=on,wait=off',
      'file,id=serial0,path=/home/h,,logfile=/tmp/p/serial.log,append=on',
    ]);
    // Plain-path options and JSON take the path as it is.
    expect(after('-pidfile')).toEqual(['/home/h,x/qemu.pid']);
    expect(JSON.parse(after('-blockdev')[0]!)).toMatchObject({ filename: '/s,t/disk0.qcow2' });
    // Kept as it is (another engineer's line).
    expect(after('-rtc')).toEqual(['base=utc,clock=host']);
  });
});

describe('files and folders', () => {
  it('uses XDG_RUNTIME_DIR for sockets when set, else the temp folder', () => {
    const old = process.env.XDG_RUNTIME_DIR;
    try {
      process.env.XDG_RUNTIME_DIR = '/run/user/4242';
      expect(socketDir('/some/state')).toMatch(/^\/run\/user\/4242\/ferry\/[0-9a-f]{10}$/);
      delete process.env.XDG_RUNTIME_DIR;
      expect(socketDir('/some/state')).toMatch(
        new RegExp(`^${os.tmpdir()}/ferry-${process.getuid!()}/[0-9a-f]{10}$`),
      );
    } finally {
      if (old === undefined) delete process.env.XDG_RUNTIME_DIR;
      else process.env.XDG_RUNTIME_DIR = old;
    }
  });

  it('makes private folders 0700 and refuses one others may write, a link, or another user’s', async () => {
    const mine = path.join(dir, 'mine');
    await ensurePrivateDir(mine);
    expect(fs.statSync(mine).mode & 0o777).toBe(0o700);
    const open = path.join(dir, 'open');
    fs.mkdirSync(open);
    fs.chmodSync(open, 0o777);
    await expect(ensurePrivateDir(open)).rejects.toMatchObject({
      code: 'unsafe-path',
      message: expect.stringContaining('others may write to it (mode 777)'),
    });
    expect(fs.statSync(open).mode & 0o777).toBe(0o777); // refused, not changed
    const link = path.join(dir, 'link');
    fs.symlinkSync(mine, link);
    await expect(ensurePrivateDir(link)).rejects.toMatchObject({
      message: expect.stringContaining('symbolic link'),
    });
    if (process.getuid!() === 0) {
      const foreign = path.join(dir, 'foreign');
      fs.mkdirSync(foreign, { mode: 0o700 });
      fs.chownSync(foreign, 65534, 65534);
      await expect(ensurePrivateDir(foreign)).rejects.toMatchObject({
        message: expect.stringContaining('belongs to another user (uid 65534)'),
      });
    }
  });

  it('writes state files 0600', async () => {
    const file = path.join(dir, 'state', 'x.json');
    await writeJsonAtomic(file, { a: 1 });
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    expect(fs.statSync(path.dirname(file)).mode & 0o777).toBe(0o700);
  });

  it('creates a new file exclusively: never over a file, never through a dangling link', async () => {
    const fresh = path.join(dir, 'fresh.qcow2');
    await createExclusive(fresh);
    expect(fs.statSync(fresh).mode & 0o777).toBe(0o600);
    const existing = path.join(dir, 'existing.qcow2');
    fs.writeFileSync(existing, 'keep me');
    await expect(createExclusive(existing)).rejects.toMatchObject({ code: 'bad-input' });
    expect(fs.readFileSync(existing, 'utf8')).toBe('keep me');
    const target = path.join(dir, 'elsewhere', 'not-yet.qcow2');
    fs.mkdirSync(path.dirname(target));
    const dangling = path.join(dir, 'dangling.qcow2');
    fs.symlinkSync(target, dangling);
    await expect(createExclusive(dangling)).rejects.toMatchObject({ code: 'bad-input' });
    expect(fs.existsSync(target)).toBe(false);
    expect(fs.readlinkSync(dangling)).toBe(target);
  });
});

describe('after the switch-over', () => {
  const src = (o: Partial<CopyFacts> = {}): CopyFacts => ({
    host: 'lab1',
    config: 'committed',
    sameVm: true,
    pid: 100,
    runState: 'postmigrate',
    migration: 'completed',
    ...o,
  });
  const dst = (o: Partial<CopyFacts> = {}): CopyFacts => ({
    host: 'lab2',
    config: 'committed',
    sameVm: true,
    pid: 200,
    runState: 'running',
    migration: 'completed',
    ...o,
  });

  it('recovers only when the destination is known to run the VM', () => {
    expect(decideAfterSwitchover(src(), dst())).toBe('recovered');
    for (const d of [
      dst({ pid: null, runState: null, migration: null, config: 'none' }), // gone
      dst({ runState: 'paused' }), // never resumed
      dst({ migration: 'active' }), // not all there
      dst({ config: 'incoming' }), // Finish never committed it
      dst({ sameVm: false }), // another VM of that name
    ])
      expect(decideAfterSwitchover(src(), d)).toBe('needs-administrator');
    // Post-copy: part of the memory is only on the source.
    expect(decideAfterSwitchover(src({ migration: 'postcopy-active' }), dst())).toBe('needs-administrator');
    // Resumed by hand on the source: the move did not happen; on both: for the administrator.
    expect(decideAfterSwitchover(src({ runState: 'running' }), dst({ pid: null }))).toBe('resolved');
    expect(decideAfterSwitchover(src({ runState: 'running' }), dst())).toBe('needs-administrator');
  });

  it('says what each host has', () => {
    expect(describeCopy(src(), 'source', 'vm1')).toBe(
      'lab1 (source): QEMU pid 100 postmigrate, outgoing migration completed',
    );
    expect(describeCopy(dst({ runState: 'paused', config: 'incoming' }), 'destination', 'vm1')).toBe(
      'lab2 (destination): QEMU pid 200 paused, incoming migration completed, configuration not committed',
    );
    expect(describeCopy(dst({ pid: null, config: 'none' }), 'destination', 'vm1')).toBe(
      'lab2 (destination): no QEMU runs vm1; no configuration of vm1 is there',
    );
  });
});
