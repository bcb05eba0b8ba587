// Reads what a QEMU binary supports (version, machine types, CPU models, migration capabilities, multifd
// compression methods) by starting it with no machine and asking over QMP.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import { FerryError } from '../api/index.js';
import { optValue } from './argv.js';
import { connectWhenReady, killQemu, spawnDetached } from './process.js';

export const QemuCapsSchema = z.object({
  binary: z.string(),
  binaryId: z.string(),
  version: z.string(),
  machineTypes: z.array(z.string()),
  /** Concrete names behind the aliases, e.g. pc → pc-i440fx-7.2, q35 → pc-q35-7.2. */
  machineAliases: z.record(z.string(), z.string()),
  defaultMachineType: z.string(),
  cpuModels: z.array(z.string()),
  migrationCapabilities: z.array(z.string()),
  multifdCompression: z.array(z.string()),
});
export type QemuCaps = z.infer<typeof QemuCapsSchema>;

/** Identifies a binary build so cached capabilities are re-read after an upgrade. */
export function binaryId(binary: string): string {
  const st = fs.statSync(binary);
  return `${fs.realpathSync(binary)}:${st.size}:${st.mtimeMs}`;
}

interface SchemaEntry {
  name: string;
  'meta-type': string;
  'arg-type'?: string;
  members?: { name: string; type?: string }[];
  values?: string[];
}

/** Follows migrate-set-parameters → multifd-compression → its enum; type names in the schema are masked. */
export function multifdCompressionFromSchema(schema: SchemaEntry[]): string[] {
  const byName = new Map(schema.map((s) => [s.name, s]));
  const cmd = byName.get('migrate-set-parameters');
  const args = cmd?.['arg-type'] ? byName.get(cmd['arg-type']) : undefined;
  const member = args?.members?.find((m) => m.name === 'multifd-compression');
  const en = member?.type ? byName.get(member.type) : undefined;
  return en?.values ?? [];
}

export async function probeQemu(binary: string): Promise<QemuCaps> {
  // A fresh private folder (0700, a name nobody can guess beforehand) for the probe's socket and log.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `ferry-probe-${process.pid}-`));
  const sock = path.join(dir, 'qmp.sock');
  const log = path.join(dir, 'qemu.log');
  const pid = await spawnDetached(
    binary,
    [
      '-machine',
      'none',
      '-nodefaults',
      '-no-user-config',
      '-display',
      'none',
      '-S',
      '-chardev',
      `socket,id=qmp,path=${optValue(sock)},server=on,wait=off`,
      '-mon',
      'chardev=qmp,mode=control',
    ],
    log,
  );
  try {
    const qmp = await connectWhenReady(sock, pid, log);
    try {
      const version = await qmp.execute<{ qemu: { major: number; minor: number; micro: number } }>(
        'query-version',
      );
      const machines =
        await qmp.execute<{ name: string; alias?: string; 'is-default'?: boolean }[]>('query-machines');
      const cpus = await qmp.execute<{ name: string }[]>('query-cpu-definitions').catch(() => []);
      const caps = await qmp.execute<{ capability: string }[]>('query-migrate-capabilities');
      const schema = await qmp.execute<SchemaEntry[]>('query-qmp-schema');
      const aliases: Record<string, string> = {};
      for (const m of machines) if (m.alias) aliases[m.alias] = m.name;
      const def = machines.find((m) => m['is-default']);
      return {
        binary,
        binaryId: binaryId(binary),
        version: `${version.qemu.major}.${version.qemu.minor}.${version.qemu.micro}`,
        machineTypes: machines.map((m) => m.name).sort(),
        machineAliases: aliases,
        defaultMachineType: def?.name ?? machines[0]?.name ?? 'pc',
        cpuModels: cpus.map((c) => c.name).sort(),
        migrationCapabilities: caps.map((c) => c.capability),
        multifdCompression: multifdCompressionFromSchema(schema),
      };
    } finally {
      await qmp.execute('quit').catch(() => undefined);
      await qmp.close();
    }
  } catch (err) {
    throw err instanceof FerryError
      ? err
      : new FerryError('qemu-failed', `probing ${binary} failed: ${(err as Error).message}`);
  } finally {
    await killQemu(pid, sock).catch(() => undefined);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
