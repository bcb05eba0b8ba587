// Error codes shared by every transport (CLI, IPC, WebSocket, agent RPC). Browser-safe: no Node imports.

/**
 * Every error code, and whether it means "refused before anything changed" (the CLI exits 2) or
 * "failed while doing it" (exit 1).
 */
const KINDS = {
  'bad-input': 'refused',
  'unknown-host': 'refused',
  'unknown-vm': 'refused',
  'duplicate-vm': 'refused',
  'duplicate-host': 'refused',
  'insufficient-memory': 'refused',
  'insufficient-disk': 'refused',
  'missing-image': 'refused',
  'qemu-missing': 'refused',
  'lab-already-up': 'refused',
  'lab-not-up': 'refused',
  'vm-running': 'refused',
  'vm-not-running': 'refused',
  'vm-migrating': 'refused',
  'unknown-migration': 'refused',
  'cancel-refused': 'refused',
  'not-supported': 'refused',
  /** A console of the VM's screen was asked for, and the VM has no display device. */
  'no-display': 'refused',
  /** The VM's serial console is held by another program (QEMU's serial socket takes one client). */
  'console-busy': 'refused',
  /** An API client (web token, renderer) asked for what only the administrator's CLI may do. */
  'not-permitted': 'refused',
  /** A client holds too many connections or calls in flight; it may try again when some are done. */
  'rate-limited': 'refused',
  /** A folder or file Ferry would use is not safe: another user's, writable by others, or a link. */
  'unsafe-path': 'refused',
  // Reaching a host over the network (libvirt): each says which of the usual causes it is.
  'bad-uri': 'refused',
  'host-unreachable': 'refused',
  'auth-failed': 'refused',
  'host-key-unknown': 'refused',
  'host-key-mismatch': 'refused',
  'libvirt-missing': 'refused',
  'host-disconnected': 'failed',
  /** An error reply from libvirtd: the message carries libvirt's own code and text. */
  'libvirt-error': 'failed',
  'qemu-failed': 'failed',
  'qmp-error': 'failed',
  'qmp-disconnected': 'failed',
  'qmp-timeout': 'failed',
  'migration-failed': 'failed',
  'state-corrupt': 'failed',
  locked: 'failed',
  internal: 'failed',
} as const;
export type ErrorCode = keyof typeof KINDS;
export const ERROR_CODES = Object.keys(KINDS) as ErrorCode[];
export const REFUSAL_CODES: ReadonlySet<ErrorCode> = new Set(
  ERROR_CODES.filter((c) => KINDS[c] === 'refused'),
);

/** A failure the user can act on: a stable code, a specific message and, where useful, how to fix it. */
export class FerryError extends Error {
  override readonly name = 'FerryError';
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly hint?: string,
    /** Facts a client may act on, e.g. an unknown host key's `fingerprint` for the user to accept. */
    readonly details?: Record<string, string>,
  ) {
    super(message);
  }

  toJSON(): { code: ErrorCode; message: string; hint?: string; details?: Record<string, string> } {
    return {
      code: this.code,
      message: this.message,
      ...(this.hint === undefined ? {} : { hint: this.hint }),
      ...(this.details === undefined ? {} : { details: this.details }),
    };
  }
}

export function isFerryError(e: unknown): e is FerryError {
  return e instanceof FerryError;
}
