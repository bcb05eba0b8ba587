// The QEMU command line of "Connect…" (issue 12): a display device and QEMU's VNC server on a unix
// socket for VMs that have a display, the serial port as a socket that still logs everything, every
// path escaped in option syntax; VMs configured before consoles keep their hardware.
import { describe, expect, it } from 'vitest';
import { VmConfigSchema, type VmConfig } from '../../engine/api/index.js';
import { qemuArgv, vmDisplay, type VmRuntimePaths } from '../../engine/qemu/argv.js';

const vm: VmConfig = {
  formatVersion: 1,
  name: 'c',
  uuid: '00000000-0000-4000-8000-000000000001',
  memoryMiB: 64,
  cpus: 1,
  machineType: 'pc-q35-7.2',
  cpuModel: 'qemu64',
  disks: [],
  nics: [],
  labGuest: null,
  createdAt: new Date(0).toISOString(),
  display: 'vga',
};

const paths: VmRuntimePaths = {
  qmpSocket: '/run/f/1.qmp',
  statusSocket: '/run/f/1.st',
  serialSocket: '/run/f,server=off/1.ser',
  vncSocket: '/run/f,to=9/1.vnc',
  serialLog: '/home/h,logfile=/tmp/x/serial.log',
  pidFile: '/home/h/qemu.pid',
  labGuestKernel: '/k/guest.bin',
};

const after = (argv: string[], flag: string): string[] =>
  argv.flatMap((a, i) => (argv[i - 1] === flag ? [a] : []));

describe('console hardware and sockets on the QEMU command line', () => {
  it('gives a VM with a display VGA and a VNC server on its unix socket, never a TCP port', () => {
    const argv = qemuArgv(vm, paths, { accel: 'tcg' });
    expect(after(argv, '-device')).toContain('VGA,id=video0');
    expect(after(argv, '-vnc')).toEqual(['unix:/run/f,,to=9/1.vnc']);
    expect(after(argv, '-display')).toEqual(['none']); // no local window
    expect(argv).toContain('-nodefaults');
  });

  it('makes the serial port a socket server that never waits and logs to serial.log, escaped', () => {
    const argv = qemuArgv(vm, paths, { accel: 'tcg' });
    expect(after(argv, '-chardev')).toContain(
      'socket,id=serial0,path=/run/f,,server=off/1.ser,server=on,wait=off,' +
        'logfile=/home/h,,logfile=/tmp/x/serial.log,logappend=on',
    );
    expect(after(argv, '-serial')).toEqual(['chardev:serial0']);
  });

  it('keeps a VM configured before consoles without a display (a move keeps its hardware)', () => {
    const { display: _d, ...old } = vm;
    const parsed = VmConfigSchema.parse(old);
    expect(vmDisplay(parsed)).toBe('none');
    const argv = qemuArgv(parsed, paths, { accel: 'tcg' });
    expect(argv.join(' ')).not.toMatch(/VGA|-vnc/);
    expect(vmDisplay({ display: 'none' })).toBe('none');
    // The destination of a move gets the same devices as the source (only its socket paths differ).
    const dest = qemuArgv(
      vm,
      { ...paths, vncSocket: '/run/g/1.vnc', serialSocket: '/run/g/1.ser' },
      {
        accel: 'tcg',
        incoming: true,
        paused: true,
      },
    );
    expect(after(dest, '-device')).toEqual(after(qemuArgv(vm, paths, { accel: 'tcg' }), '-device'));
  });

  it('without a serial socket (raw runs), the serial port only writes its log', () => {
    const { serialSocket: _s, vncSocket: _v, ...raw } = paths;
    const argv = qemuArgv(vm, raw, { accel: 'tcg' });
    expect(after(argv, '-chardev')).toContain(
      'file,id=serial0,path=/home/h,,logfile=/tmp/x/serial.log,append=on',
    );
    expect(argv).not.toContain('-vnc');
  });
});
