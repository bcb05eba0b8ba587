import { fileURLToPath } from 'node:url';

import vue from '@vitejs/plugin-vue';
import { defineConfig } from 'vite';

/** Libraries in their own chunks: they change far less often than the app (and cache apart from it). */
export const vendorChunks = {
  groups: [
    { name: 'primevue', test: /node_modules[\\/](?:primevue|@primevue|@primeuix)[\\/]/, priority: 3 },
    // The VM console's screen (noVNC) and terminal (xterm.js): loaded only by a console window or tab.
    { name: 'console', test: /node_modules[\\/](?:@novnc|@xterm)[\\/]/, priority: 3 },
    { name: 'charts', test: /node_modules[\\/](?:chart\.js|vue-chartjs|@kurkle)[\\/]/, priority: 2 },
    { name: 'vendor', test: /node_modules[\\/]/, priority: 1 },
  ],
};

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
    rolldownOptions: { output: { codeSplitting: vendorChunks } },
    // PrimeVue with the whole Aura preset is one large chunk; it loads from disk in Electron or from
    // the host's own web mode, not over the internet.
    chunkSizeWarningLimit: 1024,
  },
});
