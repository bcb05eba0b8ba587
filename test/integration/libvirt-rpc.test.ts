// Ferry's own libvirt RPC client against the libvirt lab's real libvirtd 9.0 daemons: every transport,
// host-key handling, a domain's life with its events, keepalive, a lost daemon, and a managed v3 live
// migration driven call by call. Needs Linux and root (the lab uses network namespaces).
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FerryError } from '../../engine/api/index.js';
import {
  startLibvirtd,
  startLibvirtLab,
  stopLibvirtd,
  stopLibvirtLab,
  type LibvirtLabMachine,
} from '../../engine/host/libvirt/lab.js';
import { LibvirtClient, LibvirtError, type LibvirtEvent, paramNumber } from '../../engine/libvirt/client.js';
import {
  DomainEventId,
  DomainState,
  JobType,
  LifecycleEvent,
  MigrateFlags,
} from '../../engine/libvirt/protocol.js';
import { tempHome, waitFor } from '../helpers.js';
import { isRoot, labGuestDomainXml } from '../libvirt-support.js';

describe.skipIf(!isRoot)('libvirt RPC client against the lab (root)', () => {
  let home: string;
  let lab1: LibvirtLabMachine;
  let lab2: LibvirtLabMachine;
  const clients: LibvirtClient[] = [];
  const open = async (uri: string, extra: Partial<Parameters<typeof LibvirtClient.connect>[0]> = {}) => {
    const c = await LibvirtClient.connect({ uri, ...extra });
    clients.push(c);
    return c;
  };

  beforeAll(async () => {
    home = tempHome('libvirt-rpc');
    [lab1, lab2] = (await startLibvirtLab({ home, count: 2 })) as [LibvirtLabMachine, LibvirtLabMachine];
  });
  afterAll(async () => {
    for (const c of clients) await c.close().catch(() => undefined);
    if (home) await stopLibvirtLab(home).catch(() => undefined);
  });

  it('connects over ssh (libssh2 and ssh forms), tcp, tls and the unix socket', async () => {
    const ssh = lab1.uris.ssh;
    for (const uri of [
      ssh,
      ssh.replace(/^qemu\+libssh2:/, 'qemu+ssh:'),
      lab1.uris.tcp,
      lab1.uris.tls,
      lab1.uris.unix,
    ]) {
      const c = await open(uri);
      expect(await c.getHostname()).toBe(lab1.hostname);
      expect(await c.getLibVersion()).toBe(9000000);
      expect(await c.getVersion()).toBeGreaterThan(7_000_000);
      expect(c.features).toEqual({ migrationV3: true, migrationParams: true, changeProtection: true });
      const info = await c.nodeGetInfo();
      expect(info.cpus).toBeGreaterThan(0);
      expect(info.memoryKiB).toBeGreaterThan(0n);
      expect(await c.nodeGetFreeMemory()).toBeGreaterThan(0n);
      expect(await c.getCapabilities()).toContain('<capabilities>');
      await c.close();
      expect(c.closed).toBe(true);
    }
  });

  it('refuses an unknown SSH host key until its fingerprint is accepted, then records it', async () => {
    const kh = path.join(home, 'fresh-known-hosts');
    const uri = lab1.uris.ssh.replace(/known_hosts=[^&]*/, `known_hosts=${encodeURIComponent(kh)}`);
    const err = (await LibvirtClient.connect({ uri }).catch((e: unknown) => e)) as FerryError;
    expect(err).toBeInstanceOf(FerryError);
    expect(err.code).toBe('host-key-unknown');
    const fp = err.details!.fingerprint!;
    expect(fp).toMatch(/^SHA256:[A-Za-z0-9+/]{43}$/);
    expect(err.message).toContain(fp);
    const c = await open(uri, { acceptHostKey: fp });
    expect(await c.getHostname()).toBe(lab1.hostname);
    expect(fs.readFileSync(kh, 'utf8')).toMatch(new RegExp(`^${lab1.address} ssh-`, 'm'));
    await c.close();
    // A different key for the same host is a mismatch, and acceptHostKey does not override it.
    const line = fs.readFileSync(kh, 'utf8').trim().split(' ');
    fs.writeFileSync(
      kh,
      `${line[0]} ${line[1]} AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n`,
    );
    await expect(LibvirtClient.connect({ uri, acceptHostKey: fp })).rejects.toMatchObject({
      code: line[1] === 'ssh-ed25519' ? 'host-key-mismatch' : 'host-key-unknown',
    });
  });

  it('defines, starts, pauses, stops and undefines a domain, with lifecycle events', async () => {
    const c = await open(lab1.uris.unix);
    const events: LibvirtEvent[] = [];
    c.on('event', (e) => events.push(e));
    const cb = await c.registerDomainEvent(DomainEventId.LIFECYCLE, null);
    const name = `${path.basename(home)}-life`;
    let dom = await c.domainDefineXmlFlags(
      labGuestDomainXml(name, path.join(lab1.sharedDir, `${name}.log`), { memoryMiB: 64 }),
    );
    expect(dom.id).toBe(-1);
    expect(dom.uuid).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    try {
      dom = await c.domainCreateWithFlags(dom);
      expect(dom.id).toBeGreaterThan(0);
      expect((await c.domainGetState(dom)).state).toBe(DomainState.RUNNING);
      const info = await c.domainGetInfo(dom);
      expect(info).toMatchObject({ state: DomainState.RUNNING, maxMemKiB: 65536n, nrVirtCpu: 1 });
      expect(await c.lookupDomainByUuid(dom.uuid)).toEqual(dom);
      expect((await c.listAllDomains()).map((d) => d.name)).toContain(name);
      await c.domainSuspend(dom);
      expect((await c.domainGetState(dom)).state).toBe(DomainState.PAUSED);
      await c.domainResume(dom);
      await c.domainDestroyFlags(dom);
      expect((await c.domainGetState(dom)).state).toBe(DomainState.SHUTOFF);
    } finally {
      await c.domainUndefineFlags(dom).catch(() => undefined);
    }
    await waitFor('the UNDEFINED event', async () =>
      events.some((e) => e.kind === 'lifecycle' && e.event === LifecycleEvent.UNDEFINED),
    );
    const kinds = events
      .filter((e) => e.kind === 'lifecycle')
      .map((e) => (e.kind === 'lifecycle' ? e.event : -1));
    for (const ev of [
      LifecycleEvent.DEFINED,
      LifecycleEvent.STARTED,
      LifecycleEvent.SUSPENDED,
      LifecycleEvent.STOPPED,
    ]) {
      expect(kinds).toContain(ev);
    }
    expect(events.every((e) => e.kind !== 'lifecycle' || e.callbackID === cb)).toBe(true);
    await c.deregisterDomainEvent(cb);
    const missing = await c.lookupDomainByName(name).catch((e: unknown) => e);
    expect(missing).toBeInstanceOf(LibvirtError);
    expect((missing as LibvirtError).libvirtCode).toBe(42);
  });

  it('keeps an idle connection alive with keepalive', async () => {
    const c = await open(lab2.uris.ssh, { keepaliveIntervalMs: 1000, keepaliveCount: 3 });
    await new Promise((r) => setTimeout(r, 8000));
    expect(c.closed).toBe(false);
    expect(await c.getHostname()).toBe(lab2.hostname);
  });

  it('migrates a running domain from lab1 to lab2 with the v3 params protocol, with progress', async () => {
    const src = await open(lab1.uris.ssh);
    const dst = await open(lab2.uris.ssh);
    const name = `${path.basename(home)}-mig`;
    const xml = labGuestDomainXml(name, path.join(lab1.sharedDir, `${name}.log`), { memoryMiB: 64 });
    let dom = await src.domainCreateWithFlags(await src.domainDefineXmlFlags(xml));
    const events: LibvirtEvent[] = [];
    src.on('event', (e) => events.push(e));
    await src.registerDomainEvent(DomainEventId.JOB_COMPLETED, dom);
    await src.registerDomainEvent(DomainEventId.MIGRATION_ITERATION, dom);
    try {
      await src.domainMigrateSetMaxDowntime(dom, 300);
      const flags = MigrateFlags.LIVE | MigrateFlags.PERSIST_DEST | MigrateFlags.UNDEFINE_SOURCE;
      const prot = src.features.changeProtection ? MigrateFlags.CHANGE_PROTECTION : 0;
      const params = [
        { field: 'migrate_uri', type: 'string' as const, value: `tcp://${lab2.address}` },
        { field: 'bandwidth', type: 'ullong' as const, value: 1000n },
      ];
      const begin = await src.migrateBegin3Params(dom, params, flags | prot);
      expect(begin.xml).toContain(`<name>${name}</name>`);
      const prep = await dst.migratePrepare3Params(
        [...params, { field: 'destination_xml', type: 'string', value: begin.xml }],
        begin.cookie,
        flags,
      );
      // Progress from the source while Perform blocks, on the same connection.
      const samples: number[] = [];
      let performing = true;
      const poll = (async () => {
        while (performing) {
          const st = await src.domainGetJobStats(dom).catch(() => null);
          if (st && st.type === JobType.UNBOUNDED)
            samples.push(paramNumber(st.params, 'memory_processed') ?? 0);
          await new Promise((r) => setTimeout(r, 100));
        }
      })();
      // Prepare returns the port it listens on: that URI is what Perform must use.
      const performParams = prep.uriOut
        ? [{ field: 'migrate_uri', type: 'string' as const, value: prep.uriOut }, params[1]!]
        : params;
      const perf = await src
        .migratePerform3Params(dom, null, performParams, prep.cookie, flags | prot)
        .finally(() => (performing = false));
      await poll;
      const fin = await dst.migrateFinish3Params(
        [...params, { field: 'destination_name', type: 'string', value: name }],
        perf.cookie,
        flags,
        false,
      );
      expect(fin.dom?.name).toBe(name);
      await src.migrateConfirm3Params(dom, params, fin.cookie, flags | prot, false);
      dom = fin.dom!;
      expect((await dst.domainGetState(dom)).state).toBe(DomainState.RUNNING);
      await expect(src.lookupDomainByName(name)).rejects.toBeInstanceOf(LibvirtError);
      const done = await src.domainGetJobStats(dom, 1).catch(() => null);
      if (done) expect(done.type).toBe(JobType.COMPLETED);
      await waitFor('JOB_COMPLETED', async () => events.some((e) => e.kind === 'job-completed'), 10_000);
      const completed = events.find((e) => e.kind === 'job-completed');
      expect(
        completed && completed.kind === 'job-completed' && paramNumber(completed.params, 'downtime'),
      ).toBeGreaterThan(0);
      expect(samples.length).toBeGreaterThan(0);
    } finally {
      await dst.domainDestroyFlags(dom).catch(() => undefined);
      await dst.domainUndefineFlags(dom).catch(() => undefined);
      await src.domainDestroyFlags(dom).catch(() => undefined);
      await src.domainUndefineFlags(dom).catch(() => undefined);
    }
  });

  it('fails pending calls and emits close when the daemon goes away', async () => {
    const c = await open(lab2.uris.tcp, { keepaliveIntervalMs: 1000, keepaliveCount: 3 });
    const closed = new Promise<Error | null>((r) => c.on('close', r));
    await stopLibvirtd(lab2);
    try {
      const err = await closed;
      expect((err as FerryError).code).toBe('host-disconnected');
      expect(err!.message).toMatch(
        new RegExp(`^lost the connection to ${lab2.address.replace(/\./g, '\\.')}: `),
      );
      await expect(c.getHostname()).rejects.toMatchObject({ code: 'host-disconnected' });
      await expect(LibvirtClient.connect({ uri: lab2.uris.tcp, timeoutMs: 3000 })).rejects.toMatchObject({
        code: 'host-unreachable',
        message: expect.stringMatching(/connection refused/),
      });
    } finally {
      await startLibvirtd(lab2);
    }
    const again = await open(lab2.uris.tcp);
    expect(await again.getHostname()).toBe(lab2.hostname);
  });
});
