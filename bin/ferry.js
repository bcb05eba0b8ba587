#!/usr/bin/env node
// The CLI is compiled by `npm run build:engine` (run by `prepare` after `npm ci`).
import { main } from '../dist/engine/cli/main.js';

const code = await main(process.argv.slice(2));
process.exitCode = code;
// Output is flushed by now; do not let a stray handle keep a finished command alive.
setTimeout(() => process.exit(code), 2000).unref();
