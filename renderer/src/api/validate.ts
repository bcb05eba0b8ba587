// The renderer checks what it receives against the same contract the engine validates its inputs with:
// a drifted engine shows up as a clear error instead of a half-drawn view.
import { z } from 'zod';
import { api, type MethodName, type Output } from '../../../engine/api/index.js';
import { ApiCallError } from './errors.js';

export function checkOutput<M extends MethodName>(method: M, result: unknown): Output<M> {
  const parsed = api[method].output.safeParse(result);
  if (!parsed.success) {
    throw new ApiCallError(
      'bad-response',
      `${method}: unexpected answer from the engine (${z.prettifyError(parsed.error)})`,
    );
  }
  return parsed.data as Output<M>;
}
