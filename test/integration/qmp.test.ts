// The QMP client against a real QEMU: commands, events, error replies, timeouts and a lost connection.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QmpClient, QmpCommandError } from '../../engine/qemu/qmp.js';
import { connectWhenReady } from '../../engine/qemu/process.js';
import { tempHome } from '../helpers.js';

let dir: string;
let qemu: ChildProcess;
let sock: string;

function startQemu(): ChildProcess {
  // A paused, diskless VM is enough to exercise the protocol.
  return spawn(
    'qemu-system-x86_64',
    [
      '-machine',
      'q35',
      '-accel',
      'tcg',
      '-m',
      '64',
      '-S',
      '-nodefaults',
      '-no-user-config',
      '-display',
      'none',
      '-serial',
      `file:${path.join(dir, 'serial.log')}`,
      '-qmp',
      `unix:${sock},server=on,wait=off`,
    ],
    { stdio: 'ignore' },
  );
}

beforeAll(() => {
  dir = tempHome('qmp');
  sock = path.join('/tmp', `ferry-qmp-test-${process.pid}.sock`);
  fs.rmSync(sock, { force: true });
  qemu = startQemu();
});

afterAll(() => {
  qemu.kill('SIGKILL');
  fs.rmSync(sock, { force: true });
});

describe('QmpClient against QEMU', () => {
  it('negotiates, runs commands with matched replies and delivers events', async () => {
    const qmp = await connectWhenReady(sock, qemu.pid!, path.join(dir, 'none.log'));
    expect(qmp.greeting?.version.qemu.major).toBeGreaterThanOrEqual(7);

    // Several commands in flight at once: each reply reaches its own caller.
    const [status, version, name] = await Promise.all([
      qmp.execute<{ status: string; running: boolean }>('query-status'),
      qmp.execute<{ qemu: { major: number } }>('query-version'),
      qmp.execute<Record<string, unknown>>('query-name'),
    ]);
    expect(status).toEqual({ status: 'prelaunch', singlestep: false, running: false });
    expect(version.qemu.major).toBe(qmp.greeting?.version.qemu.major);
    expect(name).toEqual({});

    const seen: string[] = [];
    const off = qmp.on('*', (ev) => seen.push(ev.event));
    const resumed = qmp.waitEvent('RESUME');
    await qmp.execute('cont');
    const ev = await resumed;
    expect(ev.event).toBe('RESUME');
    expect(ev.timestamp.seconds).toBeGreaterThan(0);
    const stopped = qmp.waitEvent('STOP');
    await qmp.execute('stop');
    await stopped;
    off();
    expect(seen).toEqual(['RESUME', 'STOP']);

    expect(await qmp.hmp('info status')).toMatch(/VM status: paused/);
    await qmp.close();
    expect(qmp.isClosed).toBe(true);
    await expect(qmp.execute('query-status')).rejects.toMatchObject({ code: 'qmp-disconnected' });
  });

  it('turns error replies into typed errors and keeps the session usable', async () => {
    const qmp = await QmpClient.connect(sock);
    const unknown = await qmp.execute('no-such-command').catch((e: unknown) => e);
    expect(unknown).toBeInstanceOf(QmpCommandError);
    expect(unknown).toMatchObject({
      code: 'qmp-error',
      errorClass: 'CommandNotFound',
      command: 'no-such-command',
    });
    const badArgs = await qmp
      .execute('migrate-set-parameters', { 'downtime-limit': 'soon' })
      .catch((e: unknown) => e);
    expect(badArgs).toMatchObject({ errorClass: 'GenericError' });
    expect((badArgs as Error).message).toMatch(/downtime-limit/);
    expect((await qmp.execute<{ status: string }>('query-status')).status).toBe('paused');
    await qmp.close();
  });

  it('times out a command QEMU does not answer', async () => {
    const qmp = await QmpClient.connect(sock);
    process.kill(qemu.pid!, 'SIGSTOP');
    try {
      await expect(qmp.execute('query-status', undefined, 300)).rejects.toMatchObject({
        code: 'qmp-timeout',
      });
    } finally {
      process.kill(qemu.pid!, 'SIGCONT');
    }
    await qmp.close();
  });

  it('fails every pending call when QEMU is killed', async () => {
    const qmp = await QmpClient.connect(sock);
    const closed = new Promise<Error>((resolve) => qmp.onClose(resolve));
    // Freeze QEMU so the calls are surely still pending when it dies.
    process.kill(qemu.pid!, 'SIGSTOP');
    const settled = Promise.allSettled([
      qmp.execute('query-status'),
      qmp.execute('query-version'),
      qmp.waitEvent('RESUME'),
    ]);
    const exited = new Promise((resolve) => qemu.once('exit', resolve));
    process.kill(qemu.pid!, 'SIGKILL');
    await exited;
    const results = await settled;
    for (const r of results) {
      expect(r.status).toBe('rejected');
      expect((r as PromiseRejectedResult).reason).toMatchObject({ code: 'qmp-disconnected' });
    }
    expect((await closed).message).toMatch(/lost/);
    expect(qmp.isClosed).toBe(true);
    await expect(QmpClient.connect(sock, { timeoutMs: 1000 })).rejects.toMatchObject({
      code: 'qmp-disconnected',
    });
  });
});
