// The desktop app's ApiClient: the preload's `window.ferry`, with the same answer checks and error shape
// as the web mode's client, so the stores cannot tell the two apart.
import type { ApiClient, Input, MethodName, Output } from '../../../engine/api/index.js';
import { toApiCallError } from './errors.js';
import { checkOutput } from './validate.js';
import type { ConnectionSource } from './ws-client.js';

export function bridgeClient(bridge: ApiClient): ApiClient {
  return {
    async call<M extends MethodName>(method: M, input: Input<M>): Promise<Output<M>> {
      let result: unknown;
      try {
        result = await bridge.call(method, input);
      } catch (err) {
        throw toApiCallError(err);
      }
      return checkOutput(method, result);
    },
    subscribe: (listener) => bridge.subscribe(listener),
  };
}

/** In the desktop app the engine runs in the main process: the "connection" never drops. */
export const alwaysOpen: ConnectionSource = { state: 'open', onStateChange: () => () => undefined };
