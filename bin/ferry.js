#!/usr/bin/env node
// The CLI is compiled by `npm run build:engine` (run by `prepare` after `npm ci`) and bundled into
// dist/cli: one file instead of a few hundred modules starts about twice as fast, which every command
// (and a move's total time) pays. ssh2 stays outside the bundle: it loads optional native helpers.
// The entry starts a command's libvirt connections before it loads the rest (engine/cli/entry.ts).
import { run } from '../dist/cli/entry.js';

const code = await run(process.argv.slice(2));
process.exitCode = code;
// Output is flushed by now; do not let a stray handle keep a finished command alive.
setTimeout(() => process.exit(code), 2000).unref();
