// What the Move wizard shares with its pages (provide/inject): one reactive state the pages edit.
import type { InjectionKey, Ref } from 'vue';
import { inject } from 'vue';
import type { DestinationVerdict, HostSettings, PreflightReport } from '../../../../engine/api/index.js';
import type { MoveWizardState } from '../../model/move-wizard.js';

export interface WizardContext {
  state: MoveWizardState;
  verdicts: Ref<DestinationVerdict[] | null>;
  verdictError: Ref<string | null>;
  report: Ref<PreflightReport | null>;
  reportError: Ref<string | null>;
  checking: Ref<boolean>;
  sourceSettings: Ref<HostSettings | null>;
  recheckDestinations(): void;
}

export const WIZARD: InjectionKey<WizardContext> = Symbol('move-wizard');

export function useWizard(): WizardContext {
  const ctx = inject(WIZARD);
  if (!ctx) throw new Error('a wizard page outside the Move wizard');
  return ctx;
}
