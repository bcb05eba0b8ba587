import { fileURLToPath } from 'node:url';

import vue from '@vitejs/plugin-vue';
import { defineConfig } from 'vite';

// Standalone renderer build (web mode / `npm run build:renderer`); the desktop build
// goes through electron.vite.config.ts and writes to out/renderer instead.
export default defineConfig({
  root: fileURLToPath(new URL('.', import.meta.url)),
  // Relative asset URLs so the same build works from file:// and from any mount path.
  base: './',
  plugins: [vue()],
  build: {
    outDir: fileURLToPath(new URL('../dist/renderer', import.meta.url)),
    emptyOutDir: true,
    // Vite's 500 kB hint targets public websites; this bundle (Vue + PrimeVue with the whole
    // Aura preset) loads from disk in Electron or from the host's own web mode.
    chunkSizeWarningLimit: 1024,
  },
});
