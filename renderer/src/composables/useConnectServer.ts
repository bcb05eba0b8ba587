// "Connect to Server…" as a small state machine: the form (URI, name, SSH key), then, when the server's
// SSH host key is unknown, the fingerprint step; accepting it repeats the call with `acceptHostKey`.
// Any other error goes back to the form, shown under it as the engine words it.
import { computed, reactive, ref, watch } from 'vue';
import type { HostRecord, Input } from '../../../engine/api/index.js';
import { errorText, toApiCallError } from '../api/errors.js';
import {
  hostNameProblem,
  parseLibvirtUri,
  suggestHostName,
  uriProblem,
  uriWarning,
  type UnknownHostKey,
} from '../model/connect-server.js';

export type ConnectStep = 'form' | 'host-key';

export interface ConnectServerOptions {
  connect: (input: Input<'addLibvirtHost'>) => Promise<HostRecord>;
  /** Names Ferry already uses (suggestions avoid them; the name field says so). */
  takenNames: () => readonly string[];
}

export function useConnectServer(opts: ConnectServerOptions) {
  const form = reactive({ uri: '', name: '', sshKey: '' });
  /** The user typed a name: stop suggesting one from the URI. */
  const nameEdited = ref(false);
  const step = ref<ConnectStep>('form');
  const hostKey = ref<UnknownHostKey | null>(null);
  const busy = ref(false);
  const error = ref<string | null>(null);
  /** Field errors show once the user tried to connect (not while typing the first characters). */
  const attempted = ref(false);

  watch(
    () => form.uri,
    (uri) => {
      if (!nameEdited.value) form.name = suggestHostName(uri, opts.takenNames());
      // A different server: a fingerprint shown for the old one no longer applies.
      hostKey.value = null;
    },
  );

  function editName(name: string): void {
    form.name = name;
    nameEdited.value = name !== '';
  }

  const parsed = computed(() => parseLibvirtUri(form.uri));
  const warning = computed(() => uriWarning(form.uri));
  const uriError = computed(() =>
    form.uri.trim() === ''
      ? attempted.value
        ? 'Enter the server’s connection URI.'
        : null
      : uriProblem(form.uri),
  );
  const nameError = computed(() =>
    attempted.value || form.name !== '' ? hostNameProblem(form.name, opts.takenNames()) : null,
  );
  const sshKeyApplies = computed(() => parsed.value === null || parsed.value.transport === 'ssh');
  const canSubmit = computed(
    () =>
      !busy.value &&
      form.uri.trim() !== '' &&
      uriProblem(form.uri) === null &&
      hostNameProblem(form.name, opts.takenNames()) === null,
  );

  async function attempt(acceptHostKey: string | null): Promise<HostRecord | null> {
    busy.value = true;
    error.value = null;
    try {
      const key = form.sshKey.trim();
      return await opts.connect({
        name: form.name,
        uri: form.uri.trim(),
        sshKey: key === '' ? null : key,
        acceptHostKey,
      });
    } catch (err) {
      const e = toApiCallError(err);
      const fingerprint = e.details?.['fingerprint'];
      if (e.code === 'host-key-unknown' && fingerprint && acceptHostKey === null) {
        hostKey.value = {
          fingerprint,
          keyType: e.details?.['keyType'] ?? null,
          host: e.details?.['host'] ?? parsed.value?.host ?? null,
        };
        step.value = 'host-key';
      } else {
        step.value = 'form';
        error.value = errorText(e);
      }
      return null;
    } finally {
      busy.value = false;
    }
  }

  /** Connect (Enter in the form). Resolves to the new host, or null when the dialog stays open. */
  function submit(): Promise<HostRecord | null> {
    attempted.value = true;
    if (!canSubmit.value) return Promise.resolve(null);
    return attempt(null);
  }

  /** "Accept and Connect" on the fingerprint step: the same call, trusting exactly that key. */
  function accept(): Promise<HostRecord | null> {
    const key = hostKey.value;
    if (!key || busy.value) return Promise.resolve(null);
    return attempt(key.fingerprint);
  }

  /** Back from the fingerprint step to the form, trusting nothing. */
  function back(): void {
    step.value = 'form';
    hostKey.value = null;
  }

  return {
    form,
    step,
    hostKey,
    busy,
    error,
    parsed,
    warning,
    uriError,
    nameError,
    sshKeyApplies,
    canSubmit,
    editName,
    submit,
    accept,
    back,
  };
}
