/// <reference lib="dom" />
// What the window shows besides the data: theme, connection, and which dialog is open for what.
import { defineStore } from 'pinia';
import { nextTick, ref, watch } from 'vue';
import type { ConnectionState } from '../api/ws-client.js';

export type Theme = 'light' | 'dark';
export const THEME_KEY = 'ferry.theme';
export const DARK_CLASS = 'ferry-dark';

/** The remembered choice, else the system's preference. */
export function initialTheme(storage: Pick<Storage, 'getItem'> | null, prefersDark: boolean): Theme {
  const saved = storage?.getItem(THEME_KEY);
  if (saved === 'light' || saved === 'dark') return saved;
  return prefersDark ? 'dark' : 'light';
}

function safeStorage(): Storage | null {
  try {
    return typeof localStorage === 'undefined' ? null : localStorage;
  } catch {
    return null; // storage can be disabled for the page
  }
}

/**
 * Focuses the control that opened a dialog. When it is gone or disabled now (a move that finished took
 * the VM, and its Move… button, off the list), the control that stands in its place (the same
 * data-action, data-testid, data-move or id) does, else the first action available.
 */
export function focusOpener(el: HTMLElement): void {
  const usable = (e: Element | null): boolean =>
    e instanceof HTMLElement && e.isConnected && !(e as HTMLButtonElement).disabled;
  if (usable(el)) {
    el.focus();
    return;
  }
  const key = ['data-action', 'data-testid', 'data-move', 'id']
    .map((a) => [a, el.getAttribute(a)] as const)
    .find(([, v]) => v);
  const twin = key ? document.querySelector(`[${key[0]}="${key[1]!.replace(/["\\]/g, '\\$&')}"]`) : null;
  if (usable(twin)) {
    (twin as HTMLElement).focus();
    return;
  }
  // Somewhere useful: the first action the main window offers.
  const fallback = document.querySelector<HTMLElement>('[data-action]:not(:disabled)');
  fallback?.focus();
}

export const useUiStore = defineStore('ui', () => {
  const prefersDark =
    typeof window !== 'undefined' && typeof window.matchMedia === 'function'
      ? window.matchMedia('(prefers-color-scheme: dark)').matches
      : false;
  const theme = ref<Theme>(initialTheme(safeStorage(), prefersDark));
  const connection = ref<ConnectionState>('connecting');
  const mode = ref<'desktop' | 'web'>('web');

  /** The VM the Move wizard is open for. */
  const wizardVm = ref<string | null>(null);
  /** The host whose settings dialog is open. */
  const settingsHost = ref<string | null>(null);
  /** The move whose progress view is open. */
  const progressId = ref<string | null>(null);
  /** "Connect to Server…" is open. */
  const connectOpen = ref(false);

  function applyTheme(t: Theme): void {
    if (typeof document !== 'undefined') document.documentElement.classList.toggle(DARK_CLASS, t === 'dark');
  }
  applyTheme(theme.value);
  watch(theme, (t) => {
    applyTheme(t);
    safeStorage()?.setItem(THEME_KEY, t);
  });

  function toggleTheme(): void {
    theme.value = theme.value === 'dark' ? 'light' : 'dark';
  }

  // Focus goes back where it was when a dialog closes (WCAG 2.4.3): to the control that opened it. A
  // dialog that hands over to another (the wizard's Finish opens the progress view) keeps the first
  // opener for when the last one closes.
  let opener: HTMLElement | null = null;
  const anyOpen = (): boolean =>
    wizardVm.value !== null || settingsHost.value !== null || progressId.value !== null || connectOpen.value;

  function noteOpener(): void {
    if (typeof document === 'undefined' || anyOpen()) return;
    const active = document.activeElement;
    // Opened from within a dialog that is closing (a hand-over: the wizard's Finish, which may have lost
    // the focus to the page's body while it was disabled), the first dialog's opener stays. It is
    // forgotten once the last dialog has closed, so it is never stale.
    if (!(active instanceof HTMLElement) || active === document.body || active.closest('[role="dialog"]')) {
      return;
    }
    opener = active;
  }

  function returnFocus(): void {
    // After Vue has removed the dialog (its focus trap must not take the focus back).
    void nextTick(() => {
      if (anyOpen() || !opener) return;
      const el = opener;
      opener = null;
      focusOpener(el);
    });
  }

  function open(set: () => void): void {
    noteOpener();
    set();
  }

  function close(set: () => void): void {
    set();
    returnFocus();
  }

  return {
    theme,
    connection,
    mode,
    wizardVm,
    settingsHost,
    progressId,
    connectOpen,
    toggleTheme,
    openWizard: (vm: string) => open(() => (wizardVm.value = vm)),
    closeWizard: () => close(() => (wizardVm.value = null)),
    openSettings: (host: string) => open(() => (settingsHost.value = host)),
    closeSettings: () => close(() => (settingsHost.value = null)),
    openProgress: (id: string) => open(() => (progressId.value = id)),
    closeProgress: () => close(() => (progressId.value = null)),
    openConnect: () => open(() => (connectOpen.value = true)),
    closeConnect: () => close(() => (connectOpen.value = false)),
  };
});
