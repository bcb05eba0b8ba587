// engine/api: the one contract between Ferry's engine and every client. Browser-safe (zod only).
export * from './errors.js';
export * from './model.js';
export * from './migration.js';
export * from './contract.js';
