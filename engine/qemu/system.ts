// What a machine offers to QEMU: the binaries, the accelerator, the CPU, memory and disk.
// Everything here reads the local machine; a remote host answers the same questions through its agent.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { FerryError, type Accel } from '../api/index.js';

export const execFileAsync = promisify(execFile);

export const QEMU_SYSTEM = 'qemu-system-x86_64';

export function installHint(): string {
  switch (process.platform) {
    case 'darwin':
      return 'install QEMU with: brew install qemu';
    case 'win32':
      return 'install QEMU from qemu.org (Windows builds) and add it to PATH, or set FERRY_QEMU';
    default:
      return 'install QEMU with: sudo apt-get install qemu-system-x86 qemu-utils';
  }
}

function isExecutable(p: string): boolean {
  try {
    fs.accessSync(p, fs.constants.X_OK);
    return fs.statSync(p).isFile();
  } catch {
    return false;
  }
}

function onPath(name: string): string | null {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (!dir) continue;
    const p = path.join(dir, process.platform === 'win32' ? `${name}.exe` : name);
    if (isExecutable(p)) return p;
  }
  return null;
}

/** FERRY_QEMU, then the host's setting, then PATH. A missing binary says how to install QEMU. */
export function findQemu(setting: string | null): string {
  const explicit = process.env.FERRY_QEMU || setting;
  if (explicit) {
    if (isExecutable(explicit)) return explicit;
    const source = process.env.FERRY_QEMU ? 'FERRY_QEMU' : 'the host setting qemuBinary';
    throw new FerryError(
      'qemu-missing',
      `QEMU not found: ${source} names ${explicit}, which is not an executable`,
      installHint(),
    );
  }
  const found = onPath(QEMU_SYSTEM);
  if (!found)
    throw new FerryError('qemu-missing', `QEMU not found: no ${QEMU_SYSTEM} on PATH`, installHint());
  return found;
}

/** qemu-img beside the QEMU binary, else on PATH. */
export function findQemuImg(qemuBinary: string): string {
  const beside = path.join(
    path.dirname(qemuBinary),
    process.platform === 'win32' ? 'qemu-img.exe' : 'qemu-img',
  );
  if (isExecutable(beside)) return beside;
  const found = onPath('qemu-img');
  if (!found) throw new FerryError('qemu-missing', 'qemu-img not found on PATH', installHint());
  return found;
}

export interface AccelChoice {
  accel: Accel;
  hardwareVirtualization: boolean;
  note: string;
}

/**
 * KVM only where the CPU really has hardware virtualization. Some machines expose /dev/kvm from a
 * software virtualizer (kvm_pvm): guests crawl and can hang there, so it counts as none and TCG is used.
 */
export function detectAccel(setting: 'auto' | 'kvm' | 'tcg'): AccelChoice {
  const hw = hardwareVirtualization();
  const forced =
    (process.env.FERRY_ACCEL as string | undefined) || (setting !== 'auto' ? setting : undefined);
  if (forced) {
    if (forced !== 'kvm' && forced !== 'tcg' && forced !== 'hvf' && forced !== 'whpx') {
      throw new FerryError('bad-input', `FERRY_ACCEL must be kvm, tcg, hvf or whpx, not "${forced}"`);
    }
    const by = process.env.FERRY_ACCEL ? 'FERRY_ACCEL' : 'host setting';
    return { accel: forced, hardwareVirtualization: hw.ok, note: `${forced} chosen by ${by}; ${hw.note}` };
  }
  if (hw.ok) return { accel: hw.accel, hardwareVirtualization: true, note: hw.note };
  return { accel: 'tcg', hardwareVirtualization: false, note: `${hw.note}; using TCG (software emulation)` };
}

function hardwareVirtualization(): { ok: boolean; accel: Accel; note: string } {
  if (process.platform === 'darwin') {
    return { ok: true, accel: 'hvf', note: 'Hypervisor.framework' };
  }
  if (process.platform === 'win32') {
    return { ok: true, accel: 'whpx', note: 'Windows Hypervisor Platform' };
  }
  const hasDev = fs.existsSync('/dev/kvm');
  if (!hasDev) return { ok: false, accel: 'kvm', note: 'no /dev/kvm' };
  if (fs.existsSync('/sys/module/kvm_pvm')) {
    return {
      ok: false,
      accel: 'kvm',
      note: '/dev/kvm is kvm_pvm, a software virtualizer, not hardware virtualization',
    };
  }
  let flags = '';
  try {
    flags = fs.readFileSync('/proc/cpuinfo', 'utf8');
  } catch {
    /* not Linux-like; fall through */
  }
  if (!/^flags\s*:.*\b(vmx|svm)\b/m.test(flags)) {
    return { ok: false, accel: 'kvm', note: '/dev/kvm exists but the CPU reports neither vmx nor svm' };
  }
  try {
    fs.accessSync('/dev/kvm', fs.constants.R_OK | fs.constants.W_OK);
  } catch {
    return { ok: false, accel: 'kvm', note: '/dev/kvm is not accessible to this user (add it to group kvm)' };
  }
  return { ok: true, accel: 'kvm', note: 'KVM with hardware virtualization' };
}

export function cpuIdentity(): { vendor: string; model: string; count: number } {
  const cpus = os.cpus();
  let vendor = 'unknown';
  let model = cpus[0]?.model ?? 'unknown';
  try {
    const info = fs.readFileSync('/proc/cpuinfo', 'utf8');
    vendor = /^vendor_id\s*:\s*(.+)$/m.exec(info)?.[1]?.trim() ?? vendor;
    model = /^model name\s*:\s*(.+)$/m.exec(info)?.[1]?.trim() ?? model;
  } catch {
    if (/intel/i.test(model)) vendor = 'GenuineIntel';
    else if (/amd/i.test(model)) vendor = 'AuthenticAMD';
    else if (/apple/i.test(model)) vendor = 'Apple';
  }
  return { vendor, model, count: cpus.length };
}

/** Memory a new VM can have without swapping: MemAvailable where Linux reports it. */
export function memoryMiB(): { total: number; free: number } {
  const total = Math.floor(os.totalmem() / 1048576);
  try {
    const m = /^MemAvailable:\s+(\d+) kB$/m.exec(fs.readFileSync('/proc/meminfo', 'utf8'));
    if (m?.[1]) return { total, free: Math.floor(Number(m[1]) / 1024) };
  } catch {
    /* fall back to os.freemem */
  }
  return { total, free: Math.floor(os.freemem() / 1048576) };
}

export async function diskFreeBytes(dir: string): Promise<number> {
  const st = await fs.promises.statfs(dir);
  return st.bavail * st.bsize;
}

export function hasRdma(): boolean {
  try {
    return fs.readdirSync('/sys/class/infiniband').length > 0;
  } catch {
    return false;
  }
}
