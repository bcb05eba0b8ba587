// Errors as the console shows them: every transport's failure becomes one ApiCallError with the
// contract's { code, message, hint } (the preload bridge can only pass plain objects across).
import { ApiErrorSchema, type ApiError } from '../../../engine/api/index.js';

export class ApiCallError extends Error implements ApiError {
  override readonly name = 'ApiCallError';
  constructor(
    readonly code: string,
    message: string,
    readonly hint?: string,
  ) {
    super(message);
  }
}

export function toApiCallError(err: unknown): ApiCallError {
  if (err instanceof ApiCallError) return err;
  const shaped = ApiErrorSchema.safeParse(err);
  if (shaped.success) return new ApiCallError(shaped.data.code, shaped.data.message, shaped.data.hint);
  if (err instanceof Error) return new ApiCallError('internal', err.message);
  return new ApiCallError('internal', String(err));
}

/** One line for a toast or an inline message: what went wrong, then how to fix it. */
export function errorText(err: unknown): string {
  const e = toApiCallError(err);
  return e.hint ? `${e.message} — ${e.hint}` : e.message;
}
