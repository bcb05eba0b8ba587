// An error's details (an unknown SSH host key's fingerprint) reach the console over the desktop app's
// IPC as they do over the web mode's WebSocket (api-client.test.ts): main process → preload → renderer.
import { describe, expect, it } from 'vitest';
import { FerryError, type ServerEvent } from '../../engine/api/index.js';
import { handleCall, type ApiEngine } from '../../electron/ipc.js';
import { bridgeClient } from '../../renderer/src/api/bridge-client.js';
import { ApiCallError } from '../../renderer/src/api/errors.js';

const FINGERPRINT = 'SHA256:' + 'c'.repeat(43);

const engine: ApiEngine = {
  call: () =>
    Promise.reject(
      new FerryError('host-key-unknown', 'the SSH host key of kvm1 is not known', 'check it on kvm1', {
        fingerprint: FINGERPRINT,
        keyType: 'ed25519',
        host: 'kvm1',
      }),
    ),
  subscribe: (_l: (e: ServerEvent) => void) => () => undefined,
};

describe('error details over IPC', () => {
  it('the main process replies with them, and the renderer’s error carries them', async () => {
    const input = { name: 'kvm1', uri: 'qemu+ssh://root@kvm1/system' };
    const reply = await handleCall(engine, { method: 'addLibvirtHost', input });
    expect(reply).toEqual({
      ok: false,
      error: {
        code: 'host-key-unknown',
        message: 'the SSH host key of kvm1 is not known',
        hint: 'check it on kvm1',
        details: { fingerprint: FINGERPRINT, keyType: 'ed25519', host: 'kvm1' },
      },
    });
    // The preload throws the reply's plain error object (structured clone keeps nested objects).
    const preload = {
      call: async () => {
        if (!reply.ok) throw structuredClone(reply.error);
        return reply.result;
      },
      subscribe: () => () => undefined,
    } as unknown as ApiEngine & Parameters<typeof bridgeClient>[0];
    const err = await bridgeClient(preload)
      .call('addLibvirtHost', input)
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApiCallError);
    expect((err as ApiCallError).details).toEqual({
      fingerprint: FINGERPRINT,
      keyType: 'ed25519',
      host: 'kvm1',
    });
  });
});
