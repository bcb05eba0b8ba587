/// <reference lib="dom" />
// What the window shows besides the data: theme, connection, and which dialog is open for what.
import { defineStore } from 'pinia';
import { ref, watch } from 'vue';
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

  return {
    theme,
    connection,
    mode,
    wizardVm,
    settingsHost,
    progressId,
    connectOpen,
    toggleTheme,
    openWizard: (vm: string) => (wizardVm.value = vm),
    closeWizard: () => (wizardVm.value = null),
    openSettings: (host: string) => (settingsHost.value = host),
    closeSettings: () => (settingsHost.value = null),
    openProgress: (id: string) => (progressId.value = id),
    closeProgress: () => (progressId.value = null),
    openConnect: () => (connectOpen.value = true),
    closeConnect: () => (connectOpen.value = false),
  };
});
