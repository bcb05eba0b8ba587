// What the host settings dialog shares with its pages (provide/inject).
import { inject, type InjectionKey, type Ref } from 'vue';
import type { HostFacts, HostKind } from '../../../../engine/api/index.js';
import type { FormErrors, SettingsForm } from '../../model/host-settings-form.js';

export interface SettingsContext {
  host: string;
  form: SettingsForm;
  facts: Ref<HostFacts | null>;
  /** The host's kind (null until the inventory knows it): some settings apply to libvirt hosts only. */
  kind: Ref<HostKind | null>;
  errors: Ref<FormErrors>;
  warnings: Ref<string[]>;
}

export const SETTINGS: InjectionKey<SettingsContext> = Symbol('host-settings');

export function useSettings(): SettingsContext {
  const ctx = inject(SETTINGS);
  if (!ctx) throw new Error('a settings page outside the host settings dialog');
  return ctx;
}
