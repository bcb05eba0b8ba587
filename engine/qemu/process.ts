// Starting and watching QEMU processes. QEMU runs detached (its own session) so VMs outlive the Ferry
// process that started them; Ferry finds them again through the pid and the QMP socket path.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { FerryError } from '../api/index.js';
import { QmpClient } from './qmp.js';

/** How children started by this process ended, for error messages (a signal leaves no log line). */
const exits = new Map<number, string>();

export function exitOf(pid: number): string | null {
  return exits.get(pid) ?? null;
}

/** Starts QEMU in its own session with stdout/stderr appended to logFile; returns its pid. */
export async function spawnDetached(
  binary: string,
  argv: string[],
  logFile: string,
  env?: Record<string, string>,
): Promise<number> {
  const fd = fs.openSync(logFile, 'a', 0o600); // logs are the user's own, like all of Ferry's state
  try {
    // What QEMU creates (serial log, pid file, sockets) is the user's alone: umask 077 for the child.
    const child = withPrivateUmask(() =>
      spawn(binary, argv, {
        detached: true,
        stdio: ['ignore', fd, fd],
        ...(env ? { env: { ...process.env, ...env } } : {}),
      }),
    );
    const pid = await new Promise<number>((resolve, reject) => {
      child.once('exit', (code, signal) =>
        exits.set(child.pid!, signal ? `killed by ${signal}` : `exit code ${code}`),
      );
      child.once('spawn', () => resolve(child.pid!));
      child.once('error', (err) =>
        reject(new FerryError('qemu-failed', `cannot start ${binary}: ${err.message}`)),
      );
    });
    child.unref();
    return pid;
  } finally {
    fs.closeSync(fd);
  }
}

/** Runs fn (which forks) under umask 077; where the umask cannot be set (a worker thread), as it is. */
function withPrivateUmask<T>(fn: () => T): T {
  let old: number | null = null;
  try {
    old = process.umask(0o077);
  } catch {
    old = null;
  }
  try {
    return fn();
  } finally {
    if (old !== null) process.umask(old);
  }
}

/**
 * Whether a process is alive: it exists and is not a zombie (an exited child nobody has reaped yet,
 * which still answers kill(pid, 0)).
 */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  if (process.platform !== 'linux') return true;
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

/**
 * Whether pid is a live process that is this QEMU (its command line mentions `marker`, the VM's unique
 * QMP socket path), so a recycled pid is never mistaken for the VM.
 */
export function isQemuAlive(pid: number, marker: string): boolean {
  if (!processAlive(pid)) return false;
  if (process.platform !== 'linux') return true;
  try {
    const cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    // Empty while the process is between exec()s (e.g. `ip netns exec` becoming QEMU): still alive.
    return cmdline === '' || cmdline.includes(marker);
  } catch {
    return false;
  }
}

export async function waitForExit(pid: number, marker: string, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (!isQemuAlive(pid, marker)) return true;
    await sleep(50);
  }
  return !isQemuAlive(pid, marker);
}

/** SIGKILL, and wait until the process is really gone. */
export async function killQemu(pid: number, marker: string): Promise<void> {
  if (!isQemuAlive(pid, marker)) return;
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    /* already gone */
  }
  if (!(await waitForExit(pid, marker, 10_000))) {
    throw new FerryError('qemu-failed', `QEMU pid ${pid} did not exit after SIGKILL`);
  }
}

/**
 * Waits until QEMU's QMP socket accepts a session. If QEMU exits first (bad arguments, missing file),
 * the error names the last lines QEMU printed.
 */
export async function connectWhenReady(
  socketPath: string,
  pid: number,
  logFile: string,
  timeoutMs = 15_000,
): Promise<QmpClient> {
  const deadline = Date.now() + timeoutMs;
  let lastErr: unknown = null;
  while (Date.now() < deadline) {
    if (!isQemuAlive(pid, socketPath)) {
      const how = exitOf(pid);
      throw new FerryError(
        'qemu-failed',
        `QEMU exited during start-up${how ? ` (${how})` : ''}: ${tailOf(logFile) || 'no message'}`,
      );
    }
    if (fs.existsSync(socketPath)) {
      try {
        return await QmpClient.connect(socketPath, { timeoutMs: 3000 });
      } catch (err) {
        lastErr = err;
      }
    }
    await sleep(30);
  }
  throw new FerryError(
    'qemu-failed',
    `QEMU did not open its QMP socket within ${timeoutMs} ms${lastErr ? `: ${(lastErr as Error).message}` : ''}`,
  );
}

/** The last few lines of a log, for error messages. */
export function tailOf(file: string, lines = 3): string {
  try {
    return fs.readFileSync(file, 'utf8').trim().split('\n').slice(-lines).join(' | ');
  } catch {
    return '';
  }
}
