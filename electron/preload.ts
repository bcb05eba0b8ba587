// Sandboxed preload: bundled to CommonJS and may only require a tiny subset of modules
// (electron's contextBridge/ipcRenderer, events, timers, url). Keep it that way.
import { contextBridge } from 'electron';

import type { FerryBridge } from './bridge.js';

// Injected by electron.vite.config.ts (`define`).
declare const __FERRY_VERSION__: string;

const bridge: FerryBridge = Object.freeze({ version: __FERRY_VERSION__ });

contextBridge.exposeInMainWorld('ferry', bridge);
