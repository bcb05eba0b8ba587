// Lab hosts joined by a real, shaped link: each host in its own network namespace with a veth into a
// bridge, its egress shaped by a tc token bucket, so "1 Gbit/s" is a real 1 Gbit/s link (root only).
import crypto from 'node:crypto';
import { FerryError } from '../api/index.js';
import { execFileAsync } from '../qemu/system.js';

export interface LinkPlan {
  bridge: string;
  hosts: { netns: string; address: string; vethOut: string; vethIn: string }[];
}

/** Names are derived from FERRY_HOME so two labs on one machine never collide (interface names ≤ 15). */
export function planLink(home: string, count: number): LinkPlan {
  const tag = crypto.createHash('sha256').update(home).digest('hex').slice(0, 6);
  const subnet = 10 + (parseInt(tag, 16) % 240);
  return {
    bridge: `fb${tag}`,
    hosts: Array.from({ length: count }, (_, i) => ({
      netns: `ferry-${tag}-${i + 1}`,
      address: `10.77.${subnet}.${i + 1}`,
      vethOut: `fv${tag}${i + 1}`,
      vethIn: `fp${tag}${i + 1}`,
    })),
  };
}

async function ip(...args: string[]): Promise<void> {
  try {
    await execFileAsync('ip', args);
  } catch (err) {
    throw new FerryError(
      'internal',
      `ip ${args.join(' ')} failed: ${(err as { stderr?: string }).stderr?.trim() ?? (err as Error).message}`,
    );
  }
}

export async function createLink(plan: LinkPlan, mbit: number): Promise<void> {
  if (process.platform !== 'linux' || process.getuid?.() !== 0) {
    throw new FerryError(
      'bad-input',
      'a shaped lab link needs Linux and root (network namespaces, veth, tc)',
    );
  }
  try {
    await ip('link', 'add', plan.bridge, 'type', 'bridge');
    await ip('link', 'set', plan.bridge, 'up');
    for (const h of plan.hosts) {
      await ip('netns', 'add', h.netns);
      await ip('link', 'add', h.vethOut, 'type', 'veth', 'peer', 'name', h.vethIn);
      await ip('link', 'set', h.vethIn, 'netns', h.netns);
      await ip('link', 'set', h.vethOut, 'master', plan.bridge);
      await ip('link', 'set', h.vethOut, 'up');
      await ip('-n', h.netns, 'link', 'set', 'lo', 'up');
      await ip('-n', h.netns, 'addr', 'add', `${h.address}/24`, 'dev', h.vethIn);
      await ip('-n', h.netns, 'link', 'set', h.vethIn, 'up');
      // Shape what leaves each host: a token bucket at the link's rate.
      await execFileAsync('ip', [
        'netns',
        'exec',
        h.netns,
        'tc',
        'qdisc',
        'add',
        'dev',
        h.vethIn,
        'root',
        'tbf',
        'rate',
        `${mbit}mbit`,
        'burst',
        '256kb',
        'latency',
        '50ms',
      ]);
    }
  } catch (err) {
    await removeLink(plan);
    throw err;
  }
}

export async function removeLink(plan: LinkPlan): Promise<void> {
  for (const h of plan.hosts) await execFileAsync('ip', ['netns', 'del', h.netns]).catch(() => undefined);
  await execFileAsync('ip', ['link', 'del', plan.bridge]).catch(() => undefined);
}
