// Proves each layer boundary in eslint.config.js fires (and only where it should).
import { fileURLToPath } from 'node:url';

import { ESLint } from 'eslint';
import { beforeAll, describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

// Distinctive fragments of each message in eslint.config.js.
const ENGINE_NO_UI = 'engine/ is Node-only domain code';
const ENGINE_NO_LAYERS = 'engine/ must not reach into renderer/ or electron/';
const API_NO_NODE = 'engine/api/ must run in the browser';
const API_ONLY_ZOD = 'it may only import zod and other engine/api/ files';
const API_ESCAPE = 'this relative import leaves engine/api/';
const RENDERER_NO_ELECTRON = 'renderer/ runs in a sandboxed, context-isolated page';
const RENDERER_NO_NODE = 'renderer/ runs in the browser';
const RENDERER_ONLY_API = 'renderer/ may only import engine/api/';
const RENDERER_NO_ELECTRON_DIR = 'renderer/ must not import electron/';
const ELECTRON_NO_UI = 'electron/ is the main/preload layer';

interface Case {
  file: string;
  code: string;
  /** Fragment of the expected message; null when the import is allowed. */
  expected: string | null;
}

const forbidden: Case[] = [
  // engine/
  { file: 'engine/qemu/x.ts', code: `import { app } from 'electron';`, expected: ENGINE_NO_UI },
  { file: 'engine/qemu/x.ts', code: `import { ipcMain } from 'electron/main';`, expected: ENGINE_NO_UI },
  { file: 'engine/qemu/x.ts', code: `import { ref } from 'vue';`, expected: ENGINE_NO_UI },
  { file: 'engine/host/x.ts', code: `import { defineStore } from 'pinia';`, expected: ENGINE_NO_UI },
  { file: 'engine/host/x.ts', code: `import Button from 'primevue/button';`, expected: ENGINE_NO_UI },
  { file: 'engine/host/x.ts', code: `import PrimeVue from 'primevue';`, expected: ENGINE_NO_UI },
  {
    file: 'engine/qemu/x.ts',
    code: `import App from '../../renderer/src/App.vue';`,
    expected: ENGINE_NO_LAYERS,
  },
  {
    file: 'engine/qemu/x.ts',
    code: `import { createMainWindow } from '../../electron/main.js';`,
    expected: ENGINE_NO_LAYERS,
  },
  { file: 'engine/x.ts', code: `export * from '../renderer/src/main.js';`, expected: ENGINE_NO_LAYERS },

  // engine/api/: browser-safe, zod only, self-contained
  {
    file: 'engine/api/model.ts',
    code: `import { readFile } from 'node:fs/promises';`,
    expected: API_NO_NODE,
  },
  { file: 'engine/api/model.ts', code: `import path from 'path';`, expected: API_NO_NODE },
  { file: 'engine/api/model.ts', code: `import { spawn } from 'child_process';`, expected: API_NO_NODE },
  { file: 'engine/api/model.ts', code: `import { connect } from 'net';`, expected: API_NO_NODE },
  { file: 'engine/api/model.ts', code: `import os from 'os';`, expected: API_NO_NODE },
  { file: 'engine/api/model.ts', code: `import { WebSocket } from 'ws';`, expected: API_ONLY_ZOD },
  { file: 'engine/api/model.ts', code: `import { app } from 'electron';`, expected: API_ONLY_ZOD },
  { file: 'engine/api/model.ts', code: `import { ref } from 'vue';`, expected: API_ONLY_ZOD },
  { file: 'engine/api/model.ts', code: `import { Qmp } from '../qemu/qmp.js';`, expected: API_ESCAPE },
  { file: 'engine/api/sub/x.ts', code: `import { Qmp } from '../../qemu/qmp.js';`, expected: API_ESCAPE },
  { file: 'engine/api/a/b/c.ts', code: `import { Qmp } from '../../../qemu/qmp.js';`, expected: API_ESCAPE },
  {
    file: 'engine/api/a/b/c.ts',
    code: `import App from '../../../../renderer/src/App.vue';`,
    expected: API_ESCAPE,
  },

  // renderer/
  {
    file: 'renderer/src/main.ts',
    code: `import { ipcRenderer } from 'electron';`,
    expected: RENDERER_NO_ELECTRON,
  },
  {
    file: 'renderer/src/main.ts',
    code: `import type { BrowserWindow } from 'electron';`,
    expected: RENDERER_NO_ELECTRON,
  },
  { file: 'renderer/src/main.ts', code: `import fs from 'node:fs';`, expected: RENDERER_NO_NODE },
  { file: 'renderer/src/main.ts', code: `import { join } from 'path';`, expected: RENDERER_NO_NODE },
  {
    file: 'renderer/src/stores/hosts.ts',
    code: `import { Qmp } from '../../../engine/qemu/qmp.js';`,
    expected: RENDERER_ONLY_API,
  },
  {
    file: 'renderer/src/main.ts',
    code: `import * as engine from '../../engine';`,
    expected: RENDERER_ONLY_API,
  },
  {
    file: 'renderer/src/main.ts',
    code: `import { x } from '../../engine/apix/index.js';`,
    expected: RENDERER_ONLY_API,
  },
  {
    file: 'renderer/src/main.ts',
    code: `export * from '../../engine/host/store.js';`,
    expected: RENDERER_ONLY_API,
  },
  {
    file: 'renderer/src/main.ts',
    code: `import type { FerryBridge } from '../../electron/bridge.js';`,
    expected: RENDERER_NO_ELECTRON_DIR,
  },
  {
    file: 'renderer/src/components/Pane.vue',
    code: `<script setup lang="ts">\nimport { ipcRenderer } from 'electron';\n</script>\n<template><div /></template>\n`,
    expected: RENDERER_NO_ELECTRON,
  },

  // electron/
  { file: 'electron/main.ts', code: `import { createApp } from 'vue';`, expected: ELECTRON_NO_UI },
  { file: 'electron/preload.ts', code: `import { ref } from 'vue';`, expected: ELECTRON_NO_UI },
  { file: 'electron/main.ts', code: `import App from '../renderer/src/App.vue';`, expected: ELECTRON_NO_UI },
];

const allowed: Case[] = [
  {
    file: 'engine/qemu/x.ts',
    code: `import { readFile } from 'node:fs/promises';\nimport { spawn } from 'child_process';\nimport { z } from 'zod';\nimport { HostSchema } from '../api/index.js';`,
    expected: null,
  },
  {
    file: 'engine/api/model.ts',
    code: `import { z } from 'zod';\nimport * as z4 from 'zod/v4';\nimport { ApiError } from './errors.js';`,
    expected: null,
  },
  { file: 'engine/api/sub/x.ts', code: `import { Host } from '../model.js';`, expected: null },
  { file: 'engine/api/a/b/c.ts', code: `import { Host } from '../../model.js';`, expected: null },
  {
    file: 'renderer/src/stores/hosts.ts',
    code: `import { defineStore } from 'pinia';\nimport { ref } from 'vue';\nimport Button from 'primevue/button';\nimport { HostSchema } from '../../../engine/api/index.js';`,
    expected: null,
  },
  { file: 'renderer/src/main.ts', code: `import * as api from '../../engine/api';`, expected: null },
  {
    file: 'renderer/src/components/Pane.vue',
    code: `<script setup lang="ts">\nimport { ref } from 'vue';\nimport type { Host } from '../../../engine/api/index.js';\nconst host = ref<Host | null>(null);\n</script>\n<template><div>{{ host }}</div></template>\n`,
    expected: null,
  },
  {
    file: 'electron/main.ts',
    code: `import { app } from 'electron';\nimport { join } from 'node:path';\nimport { LocalHost } from '../engine/host/local-host.js';`,
    expected: null,
  },
  // Build tooling next to the renderer runs in Node.
  { file: 'renderer/vite.config.ts', code: `import { fileURLToPath } from 'node:url';`, expected: null },
];

describe('layer boundaries (no-restricted-imports)', () => {
  let eslint: ESLint;

  beforeAll(() => {
    eslint = new ESLint({ cwd: ROOT, overrideConfigFile: `${ROOT}eslint.config.js` });
  });

  async function restrictedImportMessages(file: string, code: string): Promise<string[]> {
    const [result] = await eslint.lintText(code, { filePath: `${ROOT}${file}` });
    expect(result, `no lint result for ${file}`).toBeDefined();
    const messages = result?.messages ?? [];
    // A parse error or an "ignored file" warning would make the assertions vacuous.
    expect(messages.filter((m) => m.fatal === true || m.ruleId === null)).toEqual([]);
    return messages.filter((m) => m.ruleId === 'no-restricted-imports').map((m) => m.message);
  }

  it.each(forbidden)('reports $code in $file', async ({ file, code, expected }) => {
    const messages = await restrictedImportMessages(file, code);
    expect(messages).toHaveLength(1);
    expect(messages[0]).toContain(expected);
  });

  it.each(allowed)('allows $code in $file', async ({ file, code }) => {
    expect(await restrictedImportMessages(file, code)).toEqual([]);
  });
});
