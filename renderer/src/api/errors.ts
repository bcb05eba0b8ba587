// Errors as the console shows them: every transport's failure becomes one ApiCallError with the
// contract's { code, message, hint, details } (the preload bridge can only pass plain objects across).
import { ApiErrorSchema, type ApiError } from '../../../engine/api/index.js';

export class ApiCallError extends Error implements ApiError {
  override readonly name = 'ApiCallError';
  constructor(
    readonly code: string,
    message: string,
    readonly hint?: string,
    /** Facts the console may act on, e.g. an unknown SSH host key's `fingerprint` to offer for acceptance. */
    readonly details?: Record<string, string>,
  ) {
    super(message);
  }
}

/** The contract's error shape (any transport's) as an ApiCallError, details included. */
export function fromApiError(e: ApiError): ApiCallError {
  return new ApiCallError(e.code, e.message, e.hint, e.details);
}

export function toApiCallError(err: unknown): ApiCallError {
  if (err instanceof ApiCallError) return err;
  const shaped = ApiErrorSchema.safeParse(err);
  if (shaped.success) return fromApiError(shaped.data);
  if (err instanceof Error) return new ApiCallError('internal', err.message);
  return new ApiCallError('internal', String(err));
}

/** One line for a toast or an inline message: what went wrong, then how to fix it. */
export function errorText(err: unknown): string {
  const e = toApiCallError(err);
  return e.hint ? `${e.message} — ${e.hint}` : e.message;
}
