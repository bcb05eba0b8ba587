import { definePreset } from '@primeuix/themes';
import Aura from '@primeuix/themes/aura';
import { createPinia } from 'pinia';
import PrimeVue from 'primevue/config';
import { createApp } from 'vue';

import App from './App.vue';
import './styles.css';

const DARK_CLASS = 'ferry-dark';

// Aura with Ferry's sky-blue (matching the app icon) instead of the default emerald.
const FerryPreset = definePreset(Aura, {
  semantic: {
    primary: Object.fromEntries(
      [50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 950].map((shade) => [shade, `{sky.${shade}}`]),
    ),
  },
});

// Follow the OS theme (Electron maps nativeTheme onto prefers-color-scheme).
const darkQuery = window.matchMedia('(prefers-color-scheme: dark)');
const applyColorScheme = (dark: boolean): void => {
  document.documentElement.classList.toggle(DARK_CLASS, dark);
};
applyColorScheme(darkQuery.matches);
darkQuery.addEventListener('change', (event) => applyColorScheme(event.matches));

createApp(App)
  .use(createPinia())
  .use(PrimeVue, {
    theme: {
      preset: FerryPreset,
      options: { darkModeSelector: `.${DARK_CLASS}` },
    },
  })
  .mount('#app');
