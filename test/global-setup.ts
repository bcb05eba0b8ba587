// Every test's FERRY_HOME lives under one root; at the end no QEMU started from it may be left running.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

// tmpfs where there is one: disk flushes there never stall a guest (../shared/notes/qemu-7.2-facts.md).
export const TEST_ROOT = path.join(
  fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(),
  `ferry-tests-${process.pid}`,
);

function leftovers(root: string): { pid: number; cmd: string }[] {
  const found: { pid: number; cmd: string }[] = [];
  for (const pid of fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
      if (cmd.includes('qemu-system') && cmd.includes(root)) found.push({ pid: Number(pid), cmd });
    } catch {
      /* gone */
    }
  }
  return found;
}

export default function setup({
  provide,
}: {
  provide: (key: 'testRoot', value: string) => void;
}): () => void {
  fs.mkdirSync(TEST_ROOT, { recursive: true });
  provide('testRoot', TEST_ROOT);
  return () => {
    const left = leftovers(TEST_ROOT);
    for (const p of left) {
      try {
        process.kill(p.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    try {
      execFileSync('rm', ['-rf', TEST_ROOT]);
    } catch {
      /* best effort */
    }
    if (left.length > 0) {
      throw new Error(
        `QEMU processes were left running after the tests:\n${left.map((p) => `${p.pid}: ${p.cmd}`).join('\n')}`,
      );
    }
  };
}

declare module 'vitest' {
  export interface ProvidedContext {
    testRoot: string;
  }
}
