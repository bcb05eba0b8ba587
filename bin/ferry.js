#!/usr/bin/env node
// The CLI is compiled by `npm run build:engine` (run by `prepare` after `npm ci`).
import { main } from '../dist/engine/cli/main.js';

process.exitCode = await main(process.argv.slice(2));
