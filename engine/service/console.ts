// "Connect…": a VM's serial console and screen as a byte stream, whatever carries it on (the web mode's
// WebSocket, the desktop app's IPC). The stream connects to the VM's sockets on the host where it runs;
// when the VM moves, the source's QEMU goes away and the stream ends with `vm-gone`: the viewer asks
// `consoleInfo` again and connects to the destination.
import { FerryError, type ConsoleInfo, type ConsoleKind } from '../api/index.js';
import type { Duplex } from 'node:stream';
import type { HostDriver } from '../host/driver.js';
import { LibvirtHost } from '../host/libvirt/libvirt-host.js';
import { LibvirtError } from '../libvirt/client.js';
import type { Inventory } from '../host/inventory.js';
import { ConsoleStream, openLocalConsole, serialLogTail } from '../host/local/console.js';
import { isRunning, LocalContext } from '../host/local/context.js';
import { vmDisplay } from '../qemu/argv.js';

export { ConsoleStream, type ConsoleEnd } from '../host/local/console.js';

export interface ConsoleRequest {
  vm: string;
  /** That host's copy of the VM; by default the host it runs on. */
  host?: string;
  kind: ConsoleKind;
}

const LIVE = new Set(['running', 'paused', 'migrating', 'starting', 'stopping']);

/**
 * The host of the VM's console: the given one (which must have the VM), else the one it runs on. When
 * two hosts list it (a move between Finish and Confirm, or one interrupted after the switch-over), the
 * copy whose QEMU runs the guest wins over a paused or stopped one.
 */
export async function consoleHost(inv: Inventory, vm: string, host?: string): Promise<HostDriver> {
  if (host !== undefined) {
    const h = await inv.host(host);
    if (!(await h.hasVm(vm))) throw new FerryError('unknown-vm', `there is no VM named "${vm}" on ${host}`);
    return h;
  }
  const found: HostDriver[] = [];
  for (const h of await inv.hosts()) {
    if (h.record.kind === 'libvirt') continue; // asked below, only if no own host has it
    if (await h.hasVm(vm).catch(() => false)) found.push(h);
  }
  if (found.length > 1) {
    const states = await Promise.all(
      found.map((h) =>
        h
          .vmInfo(vm)
          .then((i) => i.state)
          .catch(() => null),
      ),
    );
    const running = found.find((_, i) => states[i] === 'running');
    const live = found.find((_, i) => LIVE.has(states[i] ?? ''));
    return running ?? live ?? found[0]!;
  }
  return found[0] ?? inv.locate(vm);
}

/**
 * A console on a libvirt host (LibvirtHost.openConsole: a libvirt stream for the serial port, an SSH
 * channel to the VNC listener) as the same ConsoleStream: when it ends, the domain still running there
 * means it was closed; the domain gone or stopped (moved: Confirm killed the source) means `vm-gone`.
 */
async function openLibvirtConsole(h: LibvirtHost, vm: string, kind: ConsoleKind): Promise<ConsoleStream> {
  let d: Duplex;
  try {
    d = await h.openConsole(vm, kind);
  } catch (err) {
    // libvirt allows one console session per domain (virsh console elsewhere, another Ferry).
    if (err instanceof LibvirtError && /active console session/i.test(err.libvirtMessage)) {
      throw new FerryError(
        'console-busy',
        `${vm}'s serial console on ${h.name} is open elsewhere (virsh console, or another Ferry); close it there`,
      );
    }
    throw err;
  }
  const s = new ConsoleStream(vm, h.name, kind, {
    write: (b) => d.write(b),
    close: () => d.destroy(),
    pause: () => d.pause(),
    resume: () => d.resume(),
  });
  d.on('data', (chunk: Buffer) => s.push(chunk));
  let ending = false;
  const ended = (err?: Error): void => {
    if (ending || s.ended) return;
    ending = true;
    void h
      .vmInfo(vm)
      .then((i) => LIVE.has(i.state) && i.state !== 'stopping')
      .catch(() => false)
      .then((running) =>
        s.finish(
          running
            ? err
              ? { code: 'error', message: err.message }
              : { code: 'closed', message: `the console of ${vm} was closed on ${h.name}` }
            : {
                code: 'vm-gone',
                message: `VM "${vm}" is no longer running on ${h.name} (it stopped or moved)`,
              },
        ),
      );
  };
  d.on('end', () => ended());
  d.on('close', () => ended());
  d.on('error', (err: Error) => ended(err));
  return s;
}

/** Opens the VM's serial console or screen on the host where it runs. */
export async function openConsole(inv: Inventory, req: ConsoleRequest): Promise<ConsoleStream> {
  const h = await consoleHost(inv, req.vm, req.host);
  if (h instanceof LibvirtHost) return openLibvirtConsole(h, req.vm, req.kind);
  return openLocalConsole(new LocalContext(h.record), req.vm, req.kind);
}

/** What the console window shows before (and instead of) a live console. */
export async function consoleInfo(inv: Inventory, vm: string, host?: string): Promise<ConsoleInfo> {
  const h = await consoleHost(inv, vm, host);
  if (h instanceof LibvirtHost) {
    const [info, log, facts] = await Promise.all([
      h.vmInfo(vm),
      h.readSerial(vm, 0).catch(() => null),
      h.consoleFacts(vm),
    ]);
    const running = LIVE.has(info.state);
    const reason = !running
      ? `VM "${vm}" is ${info.state} on ${h.name}: start it to connect`
      : facts.vnc
        ? undefined
        : `${vm} has no VNC screen on ${h.name}: only its serial console can be shown`;
    return {
      host: h.name,
      vm,
      running,
      display: facts.vnc ? 'vga' : 'none',
      serial: true,
      serialLog: log ? tail(log.text) : '',
      ...(reason === undefined ? {} : { reason }),
    };
  }
  const ctx = new LocalContext(h.record);
  const config = await ctx.vmConfig(vm);
  const info = await h.vmInfo(vm); // observes (and settles) the VM's real state first
  const rt = await ctx.runtime(vm);
  const running = LIVE.has(info.state) && isRunning(rt);
  const display = vmDisplay(config);
  let reason: string | undefined;
  if (!running) reason = `VM "${vm}" is ${info.state} on ${h.name}: start it to connect`;
  else if (!rt.serialSocket)
    reason = `VM "${vm}" was started before Ferry could connect to serial ports: turn it off and start it again to type into it`;
  else if (display === 'none') reason = `VM "${vm}" has no display: only its serial console can be shown`;
  return {
    host: h.name,
    vm,
    running,
    display,
    serial: true,
    serialLog: await serialLogTail(ctx, vm),
    ...(reason === undefined ? {} : { reason }),
  };
}

function tail(text: string, max = 64 * 1024): string {
  if (text.length <= max) return text;
  const cut = text.slice(-max);
  const nl = cut.indexOf('\n');
  return nl >= 0 ? cut.slice(nl + 1) : cut;
}
