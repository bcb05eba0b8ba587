// @ts-check
import { builtinModules } from 'node:module';

import { defineConfig, globalIgnores } from 'eslint/config';
import prettier from 'eslint-config-prettier';
import pluginVue from 'eslint-plugin-vue';
import globals from 'globals';
import tseslint from 'typescript-eslint';
import vueParser from 'vue-eslint-parser';

/*
 * Layer boundaries (the moral equivalent of VS Code's layers check):
 *
 *   engine/      Node-only domain code; also runs as CLI, web mode and host agent
 *   engine/api/  browser-safe contract (zod schemas, types) shared with renderer/
 *   electron/    Electron main + preload; may use engine/, never the UI
 *   renderer/    Vue app; may use engine/api only
 *
 * ESLint replaces (never merges) a rule's options when several config objects match
 * a file, so every layer below states its complete set of restrictions.
 */

const CODE = '{ts,mts,cts,js,mjs,cjs,vue}';

/** @param {string} s */
const escapeRegex = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

// builtinModules already lists subpaths such as `fs/promises`; `node:` covers the rest.
const BUILTIN_NAMES = builtinModules.filter((m) => !m.startsWith('node:')).map(escapeRegex);
const BUILTIN_ALT = `node:.*|(?:${BUILTIN_NAMES.join('|')})(?:/.*)?`;

// The patterns are written to be mutually exclusive within a layer, so a single bad
// import yields a single, specific message.
const RE = {
  electronPkg: '^electron(?:/.*)?$',
  uiPkgs: '^(?:vue|pinia|primevue|@primevue/.+|@primeuix/.+|@vue/.+|vue-chartjs|chart\\.js)(?:/.*)?$',
  nodeBuiltin: `^(?:${BUILTIN_ALT})$`,
  upToRenderer: '^(?:\\./)?(?:\\.\\./)+renderer(?:/|$)',
  upToElectron: '^(?:\\./)?(?:\\.\\./)+electron(?:/|$)',
  upToEngineNotApi: '^(?:\\./)?(?:\\.\\./)+engine(?:/(?!api(?:/|$))|$)',
  // Any bare specifier except zod and Node built-ins (those get their own message).
  notZodPkg: `^(?![./])(?!zod(?:/|$))(?!(?:${BUILTIN_ALT})$)`,
};

const MSG = {
  engineNoUi:
    'engine/ is Node-only domain code shared by the CLI, web mode and host agent: it must not depend on Electron or the Vue UI stack.',
  engineNoLayers:
    'engine/ must not reach into renderer/ or electron/: dependencies point from the UI layers to the engine, never back.',
  apiNoNode:
    'engine/api/ must run in the browser (renderer and web mode): Node built-ins are not allowed here; put Node code elsewhere in engine/.',
  apiOnlyZod: 'engine/api/ is the browser-safe contract: it may only import zod and other engine/api/ files.',
  apiEscape:
    'engine/api/ may only import other engine/api/ files: this relative import leaves engine/api/ (renderer/ bundles everything it imports).',
  rendererNoElectron:
    'renderer/ runs in a sandboxed, context-isolated page: it cannot import electron; use the API exposed by the preload (window.ferry).',
  rendererNoNode:
    'renderer/ runs in the browser (Electron sandbox or web mode): Node built-ins are not available; go through engine/api and the bridge.',
  rendererOnlyApi:
    'renderer/ may only import engine/api/ (the browser-safe contract); the rest of engine/ is Node-only and is reached through the API.',
  rendererNoElectronDir:
    'renderer/ must not import electron/ (main/preload) code; it talks to the main process only through window.ferry.',
  electronNoUi:
    'electron/ is the main/preload layer: it must not import vue or the renderer/ UI code; load it as a page instead.',
};

/**
 * @param {{ regex: string, message: string }[]} patterns
 * @returns {import('eslint').Linter.RulesRecord}
 */
const restrict = (patterns) => ({ 'no-restricted-imports': ['error', { patterns }] });

const engineRules = restrict([
  { regex: RE.electronPkg, message: MSG.engineNoUi },
  { regex: RE.uiPkgs, message: MSG.engineNoUi },
  { regex: RE.upToRenderer, message: MSG.engineNoLayers },
  { regex: RE.upToElectron, message: MSG.engineNoLayers },
]);

/**
 * engine/api/ at `depth` directories below engine/api: more than `depth` leading `../`
 * leaves engine/api. Globs cannot express "relative to this file", hence one config per depth.
 * @param {number | null} depth null = deeper than we enumerate: only bare specifiers are checked
 */
const apiRules = (depth) =>
  restrict([
    { regex: RE.nodeBuiltin, message: MSG.apiNoNode },
    { regex: RE.notZodPkg, message: MSG.apiOnlyZod },
    ...(depth === null ? [] : [{ regex: `^(?:\\./)?(?:\\.\\./){${depth + 1},}`, message: MSG.apiEscape }]),
  ]);
const API_MAX_DEPTH = 8;

const rendererRules = restrict([
  { regex: RE.electronPkg, message: MSG.rendererNoElectron },
  { regex: RE.nodeBuiltin, message: MSG.rendererNoNode },
  { regex: RE.upToEngineNotApi, message: MSG.rendererOnlyApi },
  { regex: RE.upToElectron, message: MSG.rendererNoElectronDir },
]);

const electronRules = restrict([
  { regex: RE.uiPkgs, message: MSG.electronNoUi },
  { regex: RE.upToRenderer, message: MSG.electronNoUi },
]);

/** Scope eslint-plugin-vue's flat config to the Vue app only. */
const vueRecommended = pluginVue.configs['flat/recommended'].map((config) => ({
  ...config,
  files: [`renderer/**/*.vue`],
}));

export default defineConfig([
  globalIgnores([
    'dist/',
    'out/',
    'release/',
    'coverage/',
    '**/node_modules/',
    'assets/lab-guest/',
    'test-results/',
    '.ferry-test/',
  ]),

  tseslint.configs.recommended,
  vueRecommended,
  {
    files: ['renderer/**/*.vue'],
    languageOptions: {
      parser: vueParser,
      parserOptions: { parser: tseslint.parser, extraFileExtensions: ['.vue'], sourceType: 'module' },
    },
  },

  {
    languageOptions: { ecmaVersion: 'latest', sourceType: 'module' },
    rules: {
      // `_`-prefixed names are the conventional "intentionally unused" marker.
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrorsIgnorePattern: '^_' },
      ],
    },
  },
  // Everything runs on Node except the page itself.
  { ignores: ['renderer/src/**'], languageOptions: { globals: { ...globals.node } } },
  { files: ['renderer/src/**'], languageOptions: { globals: { ...globals.browser } } },

  // --- layer boundaries --------------------------------------------------------------
  { name: 'ferry/layers/engine', files: [`engine/**/*.${CODE}`], rules: engineRules },
  { name: 'ferry/layers/engine-api', files: [`engine/api/**/*.${CODE}`], rules: apiRules(null) },
  ...Array.from({ length: API_MAX_DEPTH + 1 }, (_, depth) => ({
    name: `ferry/layers/engine-api/depth-${depth}`,
    files: [`engine/api/${'*/'.repeat(depth)}*.${CODE}`],
    rules: apiRules(depth),
  })),
  { name: 'ferry/layers/renderer', files: [`renderer/**/*.${CODE}`], rules: rendererRules },
  { name: 'ferry/layers/electron', files: [`electron/**/*.${CODE}`], rules: electronRules },
  {
    // Build tooling next to the renderer runs in Node, not in the page.
    name: 'ferry/layers/renderer-tooling',
    files: ['renderer/*.config.{ts,mts,js,mjs}'],
    rules: { 'no-restricted-imports': 'off' },
  },

  // Must stay last: turns off stylistic rules that fight with Prettier.
  prettier,
]);
