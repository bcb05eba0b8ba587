import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

import vue from '@vitejs/plugin-vue';
import { defineConfig } from 'electron-vite';

import { vendorChunks } from './renderer/vite.config.js';

const fromRoot = (path: string): string => fileURLToPath(new URL(path, import.meta.url));

const pkg = JSON.parse(readFileSync(fromRoot('./package.json'), 'utf8')) as { version: string };

// Output layout (package.json "main" points at out/main/index.js):
//   out/main/index.js      ESM, the Electron main process
//   out/preload/index.cjs  CommonJS: sandboxed preloads cannot be ES modules
//   out/renderer/          the Vue app, loaded via file:// in production
export default defineConfig({
  main: {
    build: {
      rolldownOptions: { input: { index: fromRoot('./electron/main.ts') } },
    },
  },
  preload: {
    define: { __FERRY_VERSION__: JSON.stringify(pkg.version) },
    build: {
      rolldownOptions: {
        input: { index: fromRoot('./electron/preload.ts') },
        output: { format: 'cjs', entryFileNames: '[name].cjs' },
      },
    },
  },
  renderer: {
    root: fromRoot('./renderer'),
    plugins: [vue()],
    build: {
      rolldownOptions: { input: fromRoot('./renderer/index.html'), output: { codeSplitting: vendorChunks } },
      chunkSizeWarningLimit: 1024,
    },
  },
});
