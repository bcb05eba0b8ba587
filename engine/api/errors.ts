// Error codes shared by every transport (CLI, IPC, WebSocket, agent RPC). Browser-safe: no Node imports.

export const ERROR_CODES = [
  'bad-input',
  'unknown-host',
  'unknown-vm',
  'duplicate-vm',
  'duplicate-host',
  'insufficient-memory',
  'insufficient-disk',
  'missing-image',
  'qemu-missing',
  'qemu-failed',
  'qmp-error',
  'qmp-disconnected',
  'qmp-timeout',
  'lab-already-up',
  'lab-not-up',
  'vm-running',
  'vm-not-running',
  'vm-migrating',
  'unknown-migration',
  'cancel-refused',
  'migration-failed',
  'state-corrupt',
  'locked',
  'internal',
] as const;
export type ErrorCode = (typeof ERROR_CODES)[number];

/** Codes that mean "refused before anything changed" (the CLI exits 2 for these, 1 for failures). */
export const REFUSAL_CODES: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  'bad-input',
  'unknown-host',
  'unknown-vm',
  'duplicate-vm',
  'duplicate-host',
  'insufficient-memory',
  'insufficient-disk',
  'missing-image',
  'qemu-missing',
  'lab-already-up',
  'lab-not-up',
  'vm-running',
  'vm-not-running',
  'vm-migrating',
  'unknown-migration',
  'cancel-refused',
]);

/** A failure the user can act on: a stable code, a specific message and, where useful, how to fix it. */
export class FerryError extends Error {
  override readonly name = 'FerryError';
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly hint?: string,
  ) {
    super(message);
  }

  toJSON(): { code: ErrorCode; message: string; hint?: string } {
    return this.hint === undefined
      ? { code: this.code, message: this.message }
      : { code: this.code, message: this.message, hint: this.hint };
  }
}

export function isFerryError(e: unknown): e is FerryError {
  return e instanceof FerryError;
}
