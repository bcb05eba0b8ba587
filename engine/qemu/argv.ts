// The QEMU command line for a VM. Pure: the same config gives the same devices on every host, which is
// what live migration needs (the destination's skeleton must match the source device for device).
import type { Accel, VmConfig } from '../api/index.js';

export interface VmRuntimePaths {
  /** Control monitor: lifecycle and migration; one short or long session at a time. */
  qmpSocket: string;
  /** Second monitor for status queries, so a long migration session never blocks `vm list`. */
  statusSocket: string;
  /** Everything the guest writes to its serial port, whether or not a console is connected. */
  serialLog: string;
  /**
   * The serial port as a socket Ferry reads and writes (engine/host/local/console.ts); without it the
   * serial port only writes to the log (raw QEMU runs in benchmarks).
   */
  serialSocket?: string;
  /** QEMU's VNC server, for a VM with a display (never a TCP port). */
  vncSocket?: string;
  pidFile: string;
  labGuestKernel: string;
}

export interface ArgvOptions {
  accel: Accel;
  /** Start as a migration destination: `-incoming defer`, paused until the migration completes. */
  incoming?: boolean;
  /** Start with the vCPUs stopped. */
  paused?: boolean;
  /** Allocate all guest memory up front (a migration destination: keeps first-touch cost out of the downtime). */
  prealloc?: boolean;
}

/**
 * A value in QEMU's option syntax (`-chardev socket,id=x,path=VALUE,server=on`): a comma inside a value
 * is written as two commas, else what follows it is read as more options (a state folder named
 * `a,server=off` would change the monitor; a path with `,` injects options). Every path Ferry puts into
 * an option string goes through this; JSON arguments (`-blockdev {…}`, QMP) need nothing.
 */
export function optValue(value: string): string {
  return value.replace(/,/g, ',,');
}

/** The VM's display device; configurations written before Ferry had consoles have none. */
export function vmDisplay(vm: Pick<VmConfig, 'display'>): 'vga' | 'none' {
  return vm.display ?? 'none';
}

export function labGuestAppend(lab: NonNullable<VmConfig['labGuest']>): string {
  return `ws=${lab.workingSetMiB} rate=${lab.dirtyRateMiBs}`;
}

export function qemuArgv(vm: VmConfig, paths: VmRuntimePaths, opts: ArgvOptions): string[] {
  const a: string[] = [
    '-name',
    `guest=${optValue(vm.name)},debug-threads=on`,
    '-uuid',
    vm.uuid,
    '-machine',
    `${vm.machineType}`,
    '-accel',
    opts.accel === 'tcg' && vm.cpus > 1 ? 'tcg,thread=multi' : opts.accel,
    '-cpu',
    vm.cpuModel,
    '-m',
    String(vm.memoryMiB),
    '-smp',
    String(vm.cpus),
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-msg',
    'timestamp=on',
    '-pidfile',
    paths.pidFile,
    '-chardev',
    `socket,id=qmp0,path=${optValue(paths.qmpSocket)},server=on,wait=off`,
    '-mon',
    'chardev=qmp0,mode=control',
    '-chardev',
    `socket,id=qmp1,path=${optValue(paths.statusSocket)},server=on,wait=off`,
    '-mon',
    'chardev=qmp1,mode=control',
    // The serial port: a socket that takes one client (Ferry's console; wait=off: the guest never waits
    // for one) and logs every byte the guest writes, with or without a client (measured on QEMU 7.2).
    '-chardev',
    paths.serialSocket
      ? `socket,id=serial0,path=${optValue(paths.serialSocket)},server=on,wait=off,` +
        `logfile=${optValue(paths.serialLog)},logappend=on`
      : `file,id=serial0,path=${optValue(paths.serialLog)},append=on`,
    '-serial',
    'chardev:serial0',
    // The CMOS RTC follows the host's wall clock, also while the VM is paused or moving: the one clock the
    // lab guest can measure the gap a pause or a move leaves in its own clock against (its other clocks run
    // on QEMU's virtual clock, which stops with the VM). This is QEMU's default, spelt out so that no build
    // or configuration default can change it; being the default, it changes no VM's hardware, so a VM
    // started without it moves to a host that passes it and back.
    '-rtc',
    'base=utc,clock=host',
  ];
  if (vmDisplay(vm) === 'vga') {
    // Guest hardware (it moves with the VM: the destination gets the same device), and QEMU's VNC server
    // on a unix socket in the host's private socket folder. The VNC server is host-side, not hardware.
    a.push('-device', 'VGA,id=video0');
    if (paths.vncSocket) a.push('-vnc', `unix:${optValue(paths.vncSocket)}`);
  }
  if (vm.labGuest) {
    // The lab guest boots like firmware from Ferry's own read-only image, never from a data disk.
    // -kernel (like -pidfile) takes its path as it is, not in option syntax: no escaping (a doubled
    // comma there names another file).
    a.push('-kernel', paths.labGuestKernel, '-append', labGuestAppend(vm.labGuest));
  }
  for (const d of vm.disks) {
    a.push(
      '-blockdev',
      JSON.stringify({
        driver: 'file',
        filename: d.path,
        'node-name': `${d.id}-file`,
        'auto-read-only': true,
        discard: 'unmap',
      }),
      '-blockdev',
      JSON.stringify({ driver: d.format, file: `${d.id}-file`, 'node-name': d.id }),
      '-device',
      `virtio-blk-pci,drive=${d.id},id=${d.id}-dev`,
    );
  }
  for (const n of vm.nics) {
    // No option ROM: it is not needed for the guest and would have to be identical on both hosts.
    a.push(
      '-netdev',
      `user,id=${n.id},restrict=on`,
      '-device',
      `virtio-net-pci,netdev=${n.id},mac=${n.mac},id=${n.id}-dev,romfile=`,
    );
  }
  if (opts.prealloc) a.push('-mem-prealloc');
  if (opts.incoming) a.push('-incoming', 'defer');
  if (opts.paused) a.push('-S');
  return a;
}
